"""Embedding methods: how a text becomes one vector from a causal LM.

A method is a prompt template, a pooling rule, and optionally bidirectional attention on the
last layers. Presets cover the papers' embedders; every field can be overridden:

==========  ===============================================  ==============  ======
name        template                                          pooling         bidir
==========  ===============================================  ==============  ======
mean        ``{text}``                                        mean            0
wmean       ``{text}``                                        weighted_mean   0      (SGPT: weights 1..L)
last        ``{text}``                                        last            0
prompteol   ``This sentence : "{text}" means in one word:"``  last            0
bellm       ``The representative word for sentence {text} is:"``  last        1      (BeLLM)
instruct    ``{instruction}\\n{text}``                         mean (text)     0      (GritLM-style)
bidir       ``{text}``                                        mean            1      (LLM2Vec-style)
==========  ===============================================  ==============  ======

``bidirectional=all`` (recorded as -1) makes every layer bidirectional, whatever the depth (LLM2Vec, GritLM).
Spec strings select and adjust a preset: ``"bellm"``, ``"mean:bidirectional=2"``,
``"instruct:instruction=Retrieve relevant passages"``. :meth:`EmbeddingMethod.key` is the
canonical form recorded in caches, calibrations and index manifests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from keytok.errors import KeytokError

Pooling = Literal["mean", "weighted_mean", "last"]
POOLINGS: tuple[str, ...] = ("mean", "weighted_mean", "last")

PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
BELLM_TEMPLATE = 'The representative word for sentence {text} is:"'


@dataclass(frozen=True)
class EmbeddingMethod:
    """How to embed a text: prompt template, pooling, bidirectional layers, instruction.

    ``template`` must contain ``{text}`` once; ``{instruction}`` is filled from ``instruction``.
    With ``pool_text_only`` mean poolings average over the text's tokens only, not the prompt's
    (GritLM excludes its instruction from the mean). ``bidirectional`` makes the last k decoder
    layers attend in both directions (padding still masked). ``append_eos`` adds the EOS token
    (e5-mistral pools the last token after an appended EOS).
    """

    name: str
    template: str = "{text}"
    pooling: Pooling = "mean"
    bidirectional: int = 0
    instruction: str = ""
    pool_text_only: bool = False
    append_eos: bool = False

    def __post_init__(self) -> None:
        if self.template.count("{text}") != 1:
            raise KeytokError(
                f"method '{self.name}': template must contain {{text}} exactly once: {self.template!r}"
            )
        if self.pooling not in POOLINGS:
            raise KeytokError(
                f"method '{self.name}': unknown pooling '{self.pooling}' (choose from {', '.join(POOLINGS)})"
            )
        if self.bidirectional < -1:
            raise KeytokError(
                f"method '{self.name}': bidirectional must be >= 0 or all (-1), got {self.bidirectional}"
            )
        if "{instruction}" in self.template and not self.instruction:
            raise KeytokError(f"method '{self.name}': its template needs an instruction (instruction=...)")

    @property
    def prefix(self) -> str:
        """The prompt text before ``{text}``, with the instruction filled in."""
        return self.template.split("{text}")[0].replace("{instruction}", self.instruction)

    @property
    def suffix(self) -> str:
        """The prompt text after ``{text}``."""
        return self.template.split("{text}")[1].replace("{instruction}", self.instruction)

    def key(self) -> str:
        """Canonical, stable description of the method (recorded in manifests and cache keys)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        """A short human-readable form, e.g. ``prompteol (last, bidirectional=0)``."""
        extra = [f"pooling={self.pooling}"]
        if self.bidirectional:
            extra.append(f"bidirectional={'all' if self.bidirectional == -1 else self.bidirectional}")
        if self.instruction:
            extra.append(f"instruction={self.instruction!r}")
        return f"{self.name} ({', '.join(extra)})"

    @classmethod
    def from_key(cls, key: str) -> EmbeddingMethod:
        """Inverse of :meth:`key`."""
        try:
            return cls(**json.loads(key))
        except (json.JSONDecodeError, TypeError) as exc:
            raise KeytokError(f"not an embedding method record: {key[:80]!r}") from exc


PRESETS: dict[str, EmbeddingMethod] = {
    m.name: m
    for m in (
        EmbeddingMethod("mean", pooling="mean"),
        EmbeddingMethod("wmean", pooling="weighted_mean"),
        EmbeddingMethod("last", pooling="last"),
        EmbeddingMethod("prompteol", template=PROMPTEOL_TEMPLATE, pooling="last"),
        EmbeddingMethod("bellm", template=BELLM_TEMPLATE, pooling="last", bidirectional=1),
        EmbeddingMethod(
            "instruct",
            template="{instruction}\n{text}",
            pooling="mean",
            pool_text_only=True,
            instruction="Represent this text for retrieval",
        ),
        EmbeddingMethod("bidir", pooling="mean", bidirectional=1),
    )
}


def _coerce(field_name: str, value: str) -> object:
    kinds = {f.name: f.type for f in fields(EmbeddingMethod)}
    kind = str(kinds[field_name])
    if field_name == "bidirectional" and value.strip().lower() == "all":
        return -1  # every layer (keytok.models.bidirectional.ALL_LAYERS)
    if "int" in kind:
        try:
            return int(value)
        except ValueError as exc:
            raise KeytokError(f"method option {field_name} must be an integer, got {value!r}") from exc
    if "bool" in kind:
        if value.lower() in {"1", "true", "yes"}:
            return True
        if value.lower() in {"0", "false", "no"}:
            return False
        raise KeytokError(f"method option {field_name} must be true or false, got {value!r}")
    return value.replace("\\n", "\n")


def get_method(spec: str | EmbeddingMethod, **overrides: object) -> EmbeddingMethod:
    """Resolve a method spec (``"name"`` or ``"name:opt=value,opt=value"``) plus keyword overrides.

    Overrides whose value is None are ignored, so CLI options can be passed straight through.
    """
    if isinstance(spec, EmbeddingMethod):
        method = spec
    else:
        spec = spec.strip()
        if spec.startswith("{"):
            method = EmbeddingMethod.from_key(spec)
        else:
            name, _, opts = spec.partition(":")
            if name not in PRESETS:
                raise KeytokError(f"unknown method '{name}' (choose from {', '.join(PRESETS)})")
            method = PRESETS[name]
            valid = {f.name for f in fields(EmbeddingMethod)} - {"name"}
            for opt in filter(None, (o.strip() for o in opts.split(","))):
                key, eq, value = opt.partition("=")
                if not eq or key not in valid:
                    raise KeytokError(
                        f"bad method option {opt!r} in '{spec}' (options: {', '.join(sorted(valid))})"
                    )
                method = replace(method, **{key: _coerce(key, value)})
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(method, **overrides) if overrides else method


DEFAULT_METHOD = "prompteol"

MethodChoice = str | EmbeddingMethod | Mapping[str, object] | None
"""What a caller may say about the method: a spec or :class:`EmbeddingMethod` (that method), a mapping of
field changes (``{"bidirectional": 2}``: the model's own method, changed so), or None (the model's own)."""


def resolve_method(named: MethodChoice, recorded: str | EmbeddingMethod | None = None) -> EmbeddingMethod:
    """The one rule for the method a model embeds with: the one the caller names, else the one the model
    records, else PromptEOL.

    ``recorded`` is what the model carries (:attr:`keytok.models.loading.LoadedModel.recorded_method`: a
    ``keytok train`` checkpoint's ``keytok.json``, else its recipe's method). ``named`` may instead be a
    mapping of field changes, applied to the recorded method (``--bidirectional 3`` on a checkpoint keeps its
    template and pooling). The encoder, and through it every entry point (CLI, ``KeyTokenModel``,
    ``build_index``, the bench), resolves here; an index records the method it was built with.
    """
    if named is None or isinstance(named, Mapping):
        return get_method(recorded if recorded is not None else DEFAULT_METHOD, **dict(named or {}))
    return get_method(named)
