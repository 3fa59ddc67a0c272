"""Indexes over keytok vectors.

- :mod:`keytok.indexes.manifest`: the ``manifest.json`` every index folder carries (format version,
  the model and method that produced the vectors, counts, size and sha256 of every file), shared by the
  sparse, dense and Lucene indexes.
- :mod:`keytok.indexes.sparse`: the native inverted index over quantised key-token impacts
  (segmented token-major postings, memory-mapped, exact top-k).
"""
