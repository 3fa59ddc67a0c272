"""Where the encoder's forward pass runs: PyTorch (eager), or the exported graph in ONNX Runtime.

Backends (``--backend``):

* ``torch``: the model in PyTorch, in the precision :mod:`keytok.encoding.precision` picks; any device.
* ``onnx``: the method's whole graph (:mod:`keytok.encoding.graph`: layers, pooling, LM-head top-k) in ONNX
  Runtime, fp32, on the CPU. One graph call per batch instead of hundreds of eager operator calls, so a
  single query pays far less per-call overhead. Exported once per model and method into the keytok cache.
* ``onnx-int8``: the same graph with its linear layers' weights in int8 (ONNX Runtime ``MatMulNBits``,
  8 bits, blocks of 32, fp32 activations): a quarter of the weight bytes to read per query.
* ``auto`` (the default): ``torch`` for documents. For search queries of a long-lived searcher (``keytok
  serve``, ``keytok.Retriever``, the bench's query column; ``keytok search`` asks for ``torch``), ``onnx`` when the queries run in fp32 on the CPU, ONNX Runtime is
  installed and the graph is already in the keytok cache (``keytok models prepare`` exports it on CPUs without
  bf16 units, so ``make setup`` does for the default model); otherwise ``torch``, with no first-use export of
  minutes. Measured on this project's 2-core AVX2 CPU (no AVX-512, VNNI or bf16): a query alone took 123 ms
  in ONNX Runtime against 235 ms in torch on a quiet machine, and 238 against 398 ms under load, with the same
  top-10 key tokens and cosine 1.000000 (experiments/results/bench_encode_avx2_quiet.md, bench_query_avx2.md).
  In bulk the two are level (376 and 371 tokens/s), so documents stay on torch. The int8 ways lose key tokens
  or speed (the same pages); CPUs with bf16 units keep torch's bf16 until ONNX is measured there.

The ONNX backends need the optional packages ``onnxruntime``, ``onnx`` and ``onnxscript``
(``pip install 'keytok[onnx]'``); without them keytok runs on ``torch`` as before.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keytok.errors import KeytokError

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
INT8_FILE = "model.int8.onnx"
INT8_BLOCK = 32
_TOP_MEMO_ROWS = 256  # rows whose graph top-k is kept for logits_topk (queries; a bulk encode skips it)


def onnx_available() -> bool:
    """True when the packages the ONNX backends need are installed."""
    return all(importlib.util.find_spec(n) is not None for n in ("onnxruntime", "onnx", "onnxscript"))


def graph_suits(precision: Any) -> bool:
    """Whether queries in ``precision`` run faster in the ONNX graph: fp32 on the CPU, ONNX Runtime installed."""
    return precision.device.type == "cpu" and precision.name == "fp32" and onnx_available()


def graph_for_queries(encoder: Any) -> bool:
    """Whether ``auto`` runs ``encoder``, an encoder of search queries, in ONNX Runtime (see the module doc)."""
    from keytok.encoding.graph import graph_is_cached

    return graph_suits(encoder.precision) and graph_is_cached(encoder)


def resolve_backend(name: str, precision: Any) -> str:
    """Turn ``--backend`` into the backend that will run (checked against the precision and device)."""
    if name not in BACKENDS:
        raise KeytokError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    if name == "auto":
        return "torch"
    if name == "torch":
        return name
    if precision.device.type != "cpu":
        raise KeytokError(
            f"backend {name} runs on the CPU; device {precision.device.type} needs backend torch"
        )
    if precision.name != "fp32":
        raise KeytokError(f"backend {name} computes in fp32; dtype {precision.name} needs backend torch")
    if not onnx_available():
        raise KeytokError(
            f"backend {name} needs onnxruntime, onnx and onnxscript: pip install 'keytok[onnx]'"
        )
    return name


def quantize_weights_int8(graph: Path, out: Path) -> Path:
    """``graph``'s MatMul weights as blockwise int8 (``MatMulNBits``), the LM head kept fp32; written to ``out``."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    from keytok.utils.atomic import atomic_path

    model = onnx.load(str(graph))
    # The LM head reads the pooled vector once per text: its int8 would change key tokens for no speed.
    head = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and _is_head(model, n)]
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=INT8_BLOCK, is_symmetric=True, bits=8)
    quantizer = nbits.MatMulNBitsQuantizer(
        model, bits=8, block_size=INT8_BLOCK, is_symmetric=True, nodes_to_exclude=head, algo_config=config
    )
    quantizer.process()
    with atomic_path(out) as tmp:
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    return out


def _is_head(model: Any, node: Any) -> bool:
    """The MatMul whose output is the vocabulary logits (its weight has vocab_size rows or columns)."""
    import json

    record = {p.key: p.value for p in model.metadata_props}.get("keytok")
    vocab = json.loads(record)["vocab_size"] if record else None
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    return any(vocab in shapes.get(name, []) for name in node.input)


class OnnxRunner:
    """A warm ONNX Runtime session of an encoder's graph: padded token ids -> pooled embeddings.

    The session is made once (no per-call setup). The top-k that the graph computes along with each
    embedding is remembered for small calls (queries), so that the LM-head projection of those rows,
    when no adjustment changed them, is not computed a second time (:meth:`top_for`).
    """

    def __init__(
        self, encoder: Any, quantized: bool = False, threads: int | None = None, spin: bool = False
    ) -> None:
        import onnxruntime as ort

        from keytok.encoding.graph import GRAPH_FILE, cached_graph, graph_inputs, read_export_record

        folder = cached_graph(encoder)
        self.record = read_export_record(folder)
        path = folder / GRAPH_FILE
        if quantized:
            path = folder / INT8_FILE
            if not path.is_file():
                quantize_weights_int8(folder / GRAPH_FILE, path)
        options = ort.SessionOptions()
        self.threads = threads or torch.get_num_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: on a CPU shared with other work a spinning thread
        # stalls every operator of a query (2 shared cores: 2,052 -> 265 ms per query; bench_query_avx2.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a damaged cache file: say which
            raise KeytokError(f"cannot open the ONNX graph {path}: {str(exc).splitlines()[0]}") from exc
        self.path = path
        self.inputs = graph_inputs(encoder.method)
        self.top_k = int(self.record["top_k"])
        self._top: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def pooled(
        self, input_ids: torch.Tensor, mask: torch.Tensor, pool_mask: torch.Tensor | None
    ) -> torch.Tensor:
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
        if "pool_mask" in self.inputs:
            feeds["pool_mask"] = (pool_mask if pool_mask is not None else mask).to(torch.long).numpy()
        emb, scores, ids = self.session.run(None, feeds)
        if emb.shape[0] <= 16:
            for r in range(emb.shape[0]):
                self._top[emb[r].tobytes()] = (scores[r], ids[r])
                self._top.move_to_end(emb[r].tobytes())
            while len(self._top) > _TOP_MEMO_ROWS:
                self._top.popitem(last=False)
        return torch.from_numpy(emb)

    def top_for(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The graph's top-``k`` logits of these exact embedding rows, if it computed them all, else None."""
        if k > self.top_k or rows.ndim != 2:
            return None
        found = [self._top.get(np.ascontiguousarray(r, dtype=np.float32).tobytes()) for r in rows]
        if any(f is None for f in found):
            return None
        scores = np.stack([f[0][:k] for f in found]).astype(np.float32)  # type: ignore[index]
        ids = np.stack([f[1][:k] for f in found]).astype(np.int64)  # type: ignore[index]
        return scores, ids
