"""The encoder as one portable graph: token ids -> pooled embedding and the LM head's top-k, in ONNX.

:class:`PooledGraph` wraps a causal LM and an :class:`~keytok.models.methods.EmbeddingMethod` into one
module whose outputs are what keytok computes from a text:

* ``pooled`` [batch, hidden]: the final-norm last-layer states pooled by the method (last token, mean,
  position-weighted mean, over the text's own tokens for ``pool_text_only`` methods), bidirectional
  layers included;
* ``top_scores`` / ``top_ids`` [batch, top_k]: the top-k raw logits of the LM head applied to that
  embedding (soft-capped like the model's own logits), before keytok's PC1 or centring adjustment (those
  belong to an index or a calibration, not to the model).

Inputs are right-padded ``input_ids`` and ``attention_mask`` [batch, sequence] (int64), plus ``pool_mask``
(1 on the text's own tokens) for ``pool_text_only`` methods; positions are 0..n-1 inside the graph, as
keytok's encoder gives them. :func:`export_onnx` writes the graph (``torch.onnx.export``, dynamo) with the
tokenizer and ``keytok-export.json``: the prompt's token ids around the text, the padding id and the
truncation rule, so that another runtime reproduces keytok's vectors. :func:`cached_graph` keeps one export
per (model sha256, method, top-k) in the keytok cache for the ``onnx`` backend
(:mod:`keytok.encoding.backends`).

ONNX export needs the optional packages ``onnx`` and ``onnxscript`` (``pip install keytok[onnx]``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from keytok.errors import KeytokError
from keytok.models.bidirectional import BidirectionalLayers
from keytok.models.loading import LoadedModel
from keytok.models.methods import EmbeddingMethod

GRAPH_FILE = "model.onnx"
EXPORT_RECORD = "keytok-export.json"
EXPORT_FORMATS = ("onnx",)
DEFAULT_TOP_K = 256  # >= the default 128 expansion tokens per query + 1 + the special tokens they skip
OPSET = 18
EXPORT_VERSION = 1  # bump when the graph's inputs, outputs or layout change (invalidates the cache)


class PooledGraph(torch.nn.Module):
    """A causal LM with a method's pooling and its LM head's top-k: the graph that :func:`export_onnx` writes."""

    def __init__(self, model: LoadedModel, method: EmbeddingMethod, top_k: int = DEFAULT_TOP_K) -> None:
        super().__init__()
        self.lm = model.model
        self.method = method
        self.top_k = max(1, min(int(top_k), model.vocab_size))
        cfg = model.model.config.get_text_config()
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pool_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :].expand_as(input_ids)
        bidirectional = (
            BidirectionalLayers(self.lm, self.method.bidirectional) if self.method.bidirectional else None
        )
        try:
            hidden = self.lm.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        finally:
            if bidirectional is not None:
                bidirectional.remove()
        embedding = pool_states(hidden.float(), attention_mask, self.method.pooling, pool_mask)
        head = self.lm.get_output_embeddings()
        logits = embedding @ head.weight.float().T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias.float()
        scores, ids = logits.topk(self.top_k, dim=1)
        if self.softcap:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return embedding, scores, ids


def pool_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, pool_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`keytok.encoding.encoder.pool_hidden` written with tensor operations only (traceable):
    ``pool_mask`` marks the tokens a mean pools over (default: every real token)."""
    if pooling == "last":
        last = attention_mask.sum(1) - 1
        return hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[2])).squeeze(1)
    weights = (pool_mask if pool_mask is not None else attention_mask).to(hidden.dtype)
    if pooling == "weighted_mean":
        weights = weights * torch.cumsum(weights, dim=1)
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-9)


def graph_inputs(method: EmbeddingMethod) -> list[str]:
    """The graph's input names for ``method`` (``pool_mask`` only where the mean skips the prompt)."""
    names = ["input_ids", "attention_mask"]
    if method.pool_text_only and method.pooling != "last":
        names.append("pool_mask")
    return names


GRAPH_OUTPUTS = ["pooled", "top_scores", "top_ids"]


def _require_exporter() -> None:
    missing = [name for name in ("onnx", "onnxscript") if not _importable(name)]
    if missing:
        raise KeytokError(
            f"ONNX export needs the optional package(s) {', '.join(missing)}: pip install 'keytok[onnx]'"
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def export_record(encoder: Any, top_k: int) -> dict[str, Any]:
    """What another runtime needs to turn a text into the graph's inputs, and what the graph is."""
    from keytok._version import __version__

    m = encoder.method
    return {
        "export_version": EXPORT_VERSION,
        "keytok_version": __version__,
        "format": "onnx",
        "opset": OPSET,
        "model": encoder.model.name,
        "model_sha256": encoder.model.fingerprint,
        "method": m.key(),
        "method_name": m.name,
        "prompt_template": m.template.replace("{instruction}", m.instruction),
        "pooling": m.pooling,
        "bidirectional_layers": m.bidirectional,
        "pool_text_only": m.pool_text_only,
        "max_length": encoder.max_length,
        "tokens": {
            # ids = lead + prefix + text[:max_text_tokens] + suffix + trail; text tokenised without specials
            "lead": list(encoder._lead),
            "prefix": list(encoder._prefix),
            "suffix": list(encoder._suffix),
            "trail": list(encoder._trail),
            "max_text_tokens": encoder._room,
            "pad_id": int(encoder.pad_id),
            "padding": "right",
            "special_ids": sorted(int(i) for i in encoder.model.tokenizer.all_special_ids),
        },
        "inputs": graph_inputs(m),
        "outputs": GRAPH_OUTPUTS,
        "top_k": top_k,
        "hidden_size": encoder.model.hidden_size,
        "vocab_size": encoder.vocab_size,
        "note": "pooled: final-norm states pooled by the method, fp32; top_scores/top_ids: raw LM-head "
        "logits of the embedding, before any keytok calibration or centring",
    }


def export_onnx(
    encoder: Any, out: str | os.PathLike[str], top_k: int = DEFAULT_TOP_K, *, with_tokenizer: bool = True
) -> Path:
    """Write ``encoder``'s model and method as ``out/model.onnx`` (fp32) with ``keytok-export.json`` and
    (``with_tokenizer``) the tokenizer's files; returns ``out``. The folder is replaced atomically."""
    from keytok.utils.atomic import atomic_dir

    _require_exporter()
    if encoder._head_model is not None:
        raise KeytokError("export: an encoder with another model's LM head (--head) cannot be exported")
    method = encoder.method
    graph = PooledGraph(encoder.model, method, top_k).eval()
    names = graph_inputs(method)
    sample_ids = encoder.tokenize(["a", "a longer sample text"]).ids
    from keytok.encoding.encoder import pad_batch

    ids, mask, _ = pad_batch(sample_ids, encoder.pad_id, "cpu")
    args: tuple[torch.Tensor, ...] = (ids, mask)
    if "pool_mask" in names:
        args = (*args, mask.clone())
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
    dynamic = {name: {0: batch, 1: seq} for name in names}
    record = export_record(encoder, graph.top_k)
    model = encoder.model.model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    model.to(device="cpu", dtype=torch.float32)
    try:
        with atomic_dir(out) as tmp, torch.inference_mode(False), torch.no_grad(), _quiet_export():
            program = torch.onnx.export(
                graph,
                args,
                dynamo=True,
                input_names=names,
                output_names=GRAPH_OUTPUTS,
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
            import onnx

            proto = program.model_proto
            entry = proto.metadata_props.add()
            entry.key, entry.value = "keytok", json.dumps(record, sort_keys=True)
            onnx.save_model(proto, str(tmp / GRAPH_FILE))
            (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            if with_tokenizer:
                encoder.model.tokenizer.save_pretrained(tmp)
    except KeytokError:
        raise
    except Exception as exc:  # the exporter raises many kinds; say which model and method failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KeytokError(
            f"cannot export '{encoder.model.name}' with method {method.describe()} to ONNX: {first[:300]}"
        ) from exc
    finally:
        model.to(device=device, dtype=dtype)
    return Path(out)


class _quiet_export:
    """torch.onnx prints progress lines and warnings on every export: keep them off a keytok user's screen."""

    def __enter__(self) -> None:
        import contextlib
        import io
        import logging
        import warnings

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        logger = logging.getLogger("torch")
        level = logger.level
        logger.setLevel(logging.ERROR)
        self._stack.callback(logger.setLevel, level)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def graph_key(encoder: Any, top_k: int) -> str:
    """Cache key of an encoder's graph: model sha256, method, top-k, keytok's export version and opset."""
    parts = [encoder.model.fingerprint, encoder.method.key(), str(top_k), str(EXPORT_VERSION), str(OPSET)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def graph_folder(encoder: Any, top_k: int = DEFAULT_TOP_K) -> Path:
    """Where ``encoder``'s exported graph lives in the keytok cache (it may not be there yet)."""
    from keytok.utils.hashing import cache_dir

    return cache_dir() / "graphs" / graph_key(encoder, top_k)


def graph_is_cached(encoder: Any, top_k: int = DEFAULT_TOP_K) -> bool:
    """Whether ``encoder``'s graph was exported into the keytok cache (by ``keytok models prepare`` or a
    first use of the onnx backend)."""
    return _exported(graph_folder(encoder, top_k))


def _exported(folder: Path) -> bool:
    return (folder / GRAPH_FILE).is_file() and (folder / EXPORT_RECORD).is_file()


def cached_graph(encoder: Any, top_k: int = DEFAULT_TOP_K) -> Path:
    """The folder of ``encoder``'s exported graph in the keytok cache, exported on first use."""
    folder = graph_folder(encoder, top_k)
    if not _exported(folder):
        import logging

        logging.getLogger(__name__).warning(
            "keytok: exporting %s to ONNX once for the onnx backend (minutes for a large model)",
            encoder.model.name,
        )
        export_onnx(encoder, folder, top_k, with_tokenizer=False)
    return folder


def read_export_record(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``keytok-export.json`` of an exported graph folder."""
    path = Path(folder) / EXPORT_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KeytokError(f"{path}: not a keytok export record ({exc})") from None
    if not isinstance(record, dict) or record.get("export_version") != EXPORT_VERSION:
        raise KeytokError(f"{path}: made by another keytok export version")
    return record


def export_model(
    model: Any,
    out: str | os.PathLike[str],
    *,
    format: str = "onnx",
    method: str | EmbeddingMethod | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_length: int = 512,
) -> Path:
    """Export a model with an embedding method as a portable graph folder; returns the folder.

    ``model``: a model spec (packaged name, .gguf, folder, hub id), a :class:`~keytok.models.loading.LoadedModel`
    or a :class:`keytok.KeyTokenModel` (whose method is then the default). ``method``: by default the model's
    recorded one, else PromptEOL. The folder holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask``
    [and ``pool_mask``]; outputs ``pooled``, ``top_scores``, ``top_ids``), ``keytok-export.json`` (prompt
    template, prompt token ids, padding and truncation, pooling) and the tokenizer's files.

    >>> keytok.export_model("smollm2-135m-keytok", "exported/")  # doctest: +SKIP
    """
    from keytok.encoding.encoder import Encoder

    if format not in EXPORT_FORMATS:
        raise KeytokError(f"unknown export format '{format}' (choose from {', '.join(EXPORT_FORMATS)})")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise KeytokError(f"top_k must be a positive integer, got {top_k!r}")
    encoder = getattr(model, "encoder", None)
    if encoder is None or method is not None:
        loaded = getattr(encoder, "model", None) or model
        encoder = Encoder(loaded, method, dtype="fp32", device="cpu", max_length=max_length, backend="torch")
    return export_onnx(encoder, out, top_k)


def prepare_query_graph(model: str) -> Path | None:
    """Export packaged or local ``model``'s graph (its recorded method) into the keytok cache where its search
    queries will run in it (:func:`keytok.encoding.backends.graph_for_queries`: ONNX Runtime installed, the
    machine's queries in fp32 on the CPU); returns the folder, or None where they will run in torch.
    ``keytok models prepare`` calls it, so that a search does not pay an export of minutes."""
    from keytok.encoding.backends import graph_suits
    from keytok.encoding.encoder import Encoder
    from keytok.encoding.precision import resolve_precision

    if not graph_suits(resolve_precision("auto")):
        return None
    return cached_graph(Encoder(model, None, dtype="fp32", device="cpu", backend="torch"))
