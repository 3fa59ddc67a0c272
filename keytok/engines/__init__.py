"""Engines: storage and search over vectors and text, with no model, encoder or calibration.

Each engine is a folder with a ``manifest.json`` (:mod:`keytok.engines.manifest`): the native sparse index
(:mod:`keytok.engines.sparse`), the FAISS dense index (:mod:`keytok.engines.dense`), Lucene impact and BM25
indexes (:mod:`keytok.engines.lucene`); run fusion (:mod:`keytok.engines.fusion`) and the write lock
(:mod:`keytok.engines.lock`). What goes into them and how a query is encoded is :mod:`keytok.pipeline`'s.
"""
