"""keytok: key-token analysis and sparse retrieval with LLM embeddings.

An embedding LLM turns a text into one vector; projected through the LM head of its base model, that vector
scores every vocabulary token, and the top ones are the text's *key tokens*. keytok inspects them, indexes
them as weighted terms of a sparse inverted index (next to a FAISS dense index and BM25), and benchmarks
dense against sparse retrieval.

The public API (everything else is an inner module)::

    import keytok

    model = keytok.KeyTokenModel("smollm2-135m", method="prompteol")
    model.encode(["a text", "another"])             # dense embeddings, np.ndarray [n, dim]
    model.key_tokens("a text", k=10)                # [KeyToken(rank, token, score, in_input, ...), ...]
    docs = model.encode_document(["a text", ...])   # sparse key-token vectors, scipy CSR [n, vocab]
    q = model.encode_query("a query", idf=docs)     # own tokens + expansion, CSR [1, vocab]
    model.decode(q)                                 # [(token, weight), ...]

    index = keytok.SparseIndex.build("my-index", ["d1", ...], docs, model.meta)
    index.search(q, k=10)                           # [(doc id, score), ...]

    retriever = keytok.build_index({"d1": "a text", ...}, "indexes/demo", model=model, kinds="sparse,dense")
    retriever = keytok.Retriever.open("indexes/demo")
    retriever.search("a query", k=10, system="sparse")  # [Hit(doc_id, score, title, matched, ...), ...]

- `KeyTokenModel`: embeddings, key tokens, alignment, calibration, sparse document/query vectors.
- `KeyToken`: one key token of a text.
- `Calibration`: a fitted PC1 adjustment (``KeyTokenModel.calibrate``), saved and loaded as safetensors.
- `SparseIndex`: the native inverted index over key-token vectors (build, open, search, add, delete).
- `DenseIndex`: a FAISS index over embeddings with string doc ids.
- `build_index`: build an index folder (sparse, dense, Lucene, BM25) from a corpus, or a shard of it, and open it.
- `merge_indexes`: merge the N shards of a corpus into the index a single build gives, and open it.
- `export_model`: write a model and its embedding method as an ONNX graph folder that another runtime runs.
- `add_documents`, `delete_documents`: update an index folder in place, atomically, one writer at a time.
- `Retriever`: an index folder opened for search, with the key tokens that matched.
- `Hit`: one search result.
- `train`: train an embedder for key tokens from a named recipe (qrels, STS pairs, or a corpus alone).
- `write_trec_run`: write search results as a TREC run file.
- `KeytokError`: every fault in the user's input, described in one line.

``import keytok`` is cheap: torch, transformers and FAISS load when a name that needs them is first used.
"""

import importlib as _importlib
import typing as _typing

from keytok._version import __version__ as __version__  # re-exported
from keytok.errors import KeytokError

__all__ = [
    "Calibration",
    "DenseIndex",
    "Hit",
    "KeyToken",
    "KeyTokenModel",
    "KeytokError",
    "Retriever",
    "SparseIndex",
    "add_documents",
    "build_index",
    "delete_documents",
    "export_model",
    "merge_indexes",
    "train",
    "write_trec_run",
]

# name -> module it lives in; imported on first access (PEP 562), so `import keytok` loads no torch.
_LAZY = {
    "Calibration": "keytok.representations.calibration",
    "DenseIndex": "keytok.engines.dense",
    "Hit": "keytok.pipeline.searcher",
    "KeyToken": "keytok.representations.projection",
    "KeyTokenModel": "keytok.api",
    "Retriever": "keytok.api",
    "SparseIndex": "keytok.engines.sparse",
    "add_documents": "keytok.api",
    "build_index": "keytok.api",
    "delete_documents": "keytok.api",
    "export_model": "keytok.encoding.graph",
    "merge_indexes": "keytok.api",
    "train": "keytok.api",
    "write_trec_run": "keytok.pipeline.searcher",
}

if _typing.TYPE_CHECKING:
    from keytok.api import (
        KeyTokenModel,
        Retriever,
        add_documents,
        build_index,
        delete_documents,
        merge_indexes,
        train,
    )
    from keytok.encoding.graph import export_model
    from keytok.engines.dense import DenseIndex
    from keytok.engines.sparse import SparseIndex
    from keytok.pipeline.searcher import Hit, write_trec_run
    from keytok.representations.calibration import Calibration
    from keytok.representations.projection import KeyToken


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keytok' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {"__version__"} | {n for n in globals() if n.startswith("__")})
