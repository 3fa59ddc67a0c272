"""``export_index``: one entry point that writes any interop format from a built index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keytok.errors import KeytokError
from keytok.interop.source import load_source

__all__ = ["FORMATS", "ExportSummary", "export_index"]

#: Format name → what ``out`` is and what it holds.
FORMATS: dict[str, str] = {
    "anserini-jsonvector": "a folder of Anserini JsonVectorCollection .jsonl files (impact index input)",
    "ciff": "one Common Index File Format file (.ciff, or .ciff.gz for gzip)",
    "opensearch": "a folder: mapping.json and bulk-NNNNN.ndjson files for a rank_features field",
    "safetensors": "one safetensors file: CSR indptr / indices / data and the document ids",
}


@dataclass
class ExportSummary:
    """What :func:`export_index` wrote."""

    format: str
    out: Path
    docs: int
    postings: int
    vocab_size: int
    scale: float
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "format": self.format,
            "out": str(self.out),
            "docs": self.docs,
            "postings": self.postings,
            "vocab_size": self.vocab_size,
            "scale": self.scale,
            "files": [str(f) for f in self.files],
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        """One human-readable line."""
        return (
            f"exported {self.docs:,} documents ({self.postings:,} postings) as {self.format} to {self.out}: "
            f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}, {self.bytes / 2**20:.2f} MiB, "
            f"{self.seconds:.1f} s"
        )


def export_index(
    index: str | os.PathLike[str],
    format: str,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    **options: Any,
) -> ExportSummary:
    """Export the native sparse vectors of ``index`` in ``format`` (a key of :data:`FORMATS`) to ``out``.

    ``options`` go to the format's writer: ``shards`` (anserini-jsonvector), ``index_name``, ``field`` and
    ``docs_per_file`` (opensearch). The output is written atomically; an existing ``out`` is replaced only
    with ``overwrite=True``. Raises :class:`KeytokError` for an unknown format, an unknown option, or an
    index that cannot be read.
    """
    if format not in FORMATS:
        raise KeytokError(f"unknown export format {format!r} (choose from {', '.join(FORMATS)})")
    allowed = {
        "anserini-jsonvector": {"shards"},
        "opensearch": {"index_name", "field", "docs_per_file"},
    }.get(format, set())
    extra = sorted(set(options) - allowed)
    if extra:
        raise KeytokError(f"option {extra[0]!r} does not apply to the {format} format")
    started = time.perf_counter()
    source = load_source(index)
    out = Path(out)
    if format == "anserini-jsonvector":
        from keytok.interop.anserini import write_jsonvector

        files = write_jsonvector(source, out, overwrite=overwrite, **options)
    elif format == "ciff":
        from keytok.interop.ciff import write_ciff

        write_ciff(source, out, overwrite=overwrite)
        files = [out]
    elif format == "opensearch":
        from keytok.interop.opensearch import write_bulk

        if "index_name" in options:
            options["index"] = options.pop("index_name")
        files = write_bulk(source, out, overwrite=overwrite, **options)
    else:
        from keytok.interop.safetensors_io import write_csr

        files = [write_csr(source, out, overwrite=overwrite)]
    return ExportSummary(
        format=format,
        out=out,
        docs=source.n_docs,
        postings=int(source.vectors.nnz),
        vocab_size=source.vocab_size,
        scale=source.scale,
        files=files,
        bytes=sum(f.stat().st_size for f in files),
        seconds=time.perf_counter() - started,
    )
