"""Interop formats: keytok's key-token vectors for the engines users run at scale.

Every export reads the *native* sparse index's integer vectors (:mod:`keytok.interop.source`), so an
engine that imports them ranks documents as keytok does:

=======================  ===================================================  ===========================
format                   module                                               reader here
=======================  ===================================================  ===========================
``anserini-jsonvector``  :mod:`keytok.interop.anserini` (Lucene impacts)      :func:`~keytok.interop.anserini.index_jsonvector`
``ciff``                 :mod:`keytok.interop.ciff` (PISA, JASS, Terrier)     :func:`~keytok.interop.ciff.read_ciff`
``opensearch``           :mod:`keytok.interop.opensearch` (``rank_features``) :func:`~keytok.interop.opensearch.check_bulk`
``safetensors``          :mod:`keytok.interop.safetensors_io` (CSR)           :func:`~keytok.interop.safetensors_io.read_csr`
=======================  ===================================================  ===========================

``keytok export INDEX --format F --out PATH`` runs :func:`export_index`.
"""

from __future__ import annotations

from keytok.interop.export import FORMATS, ExportSummary, export_index
from keytok.interop.source import ExportSource, load_source

__all__ = ["FORMATS", "ExportSource", "ExportSummary", "export_index", "load_source"]
