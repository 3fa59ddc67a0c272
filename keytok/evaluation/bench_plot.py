"""The bench's picture: quality (nDCG@10) against end-to-end latency, one colour per family of systems.

A bench has some twenty rows in two crowds: systems with no model at query time answer in milliseconds, while
every system that runs the model pays the same ~100 ms first, so on one latency axis the second crowd is a
knot of points a few milliseconds and thousandths of nDCG apart. The picture therefore has one panel per crowd,
side by side on one nDCG axis, each with its own latency range (a log scale where it spans more than a factor
of ten). Names written beside the points would overlap, so each point carries a number, moved apart where
numbers would collide (a thin line leads back to the point) and kept inside its panel, and a key beside the
panels gives each number its system, grouped by family.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keytok.pipeline.kinds import BENCH_SYSTEMS, REGISTRY, needs_model, system_parts

# Families, in the key's order: (name, colour, marker). Okabe-Ito colours, told apart with colour blindness
# too; each family also has its own marker.
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("BM25 fused, model at query time", "#D55E00", "o"),
    ("BM25 fused, no model (LLM-free)", "#0072B2", "s"),
    ("BM25 alone", "#000000", "D"),
    ("key tokens, expanded queries (model)", "#009E73", "^"),
    ("key tokens, no model (LLM-free)", "#56B4E9", "v"),
    ("dense (and dense+sparse)", "#CC79A7", "P"),
    ("other (not a --system)", "#999999", "X"),
)
FONT = 8  # points, numbers and key
DPI = 130


@dataclass(frozen=True)
class PlotPoint:
    """One system on the picture: its name in the key, its family, nDCG@10, end-to-end latency and the model's
    part of that latency (0: no model at query time; such a point goes in the left panel)."""

    name: str
    family: str
    ndcg: float
    latency_ms: float
    model_ms: float = 0.0


def family(system: str) -> str:
    """The family of a ``--system`` string: whether a text engine (BM25) is in it, whether the model runs at
    query time."""
    parts = system_parts(system)
    forms = {REGISTRY[p.partition(":")[0]].query_form for p in parts}
    model = needs_model(parts)
    if "text" in forms:
        if forms == {"text"}:
            return "BM25 alone"
        return FAMILIES[0][0] if model else FAMILIES[1][0]
    if "embedding" in forms:
        return "dense (and dense+sparse)"
    return FAMILIES[3][0] if model else FAMILIES[4][0]


def point_of_row(row: Mapping[str, Any]) -> PlotPoint:
    """A row of results.json as a point, named by its ``--system`` (the spec's first word). A row written
    before rows had a spec is known by its label; one that is no system keeps its label, in grey."""
    spec = str(row.get("spec") or "")
    system = spec.split()[0] if spec else _system_of_label(str(row["system"]))
    return PlotPoint(
        system or str(row["system"]),
        family(system) if system else FAMILIES[-1][0],
        float(row["quality"]["nDCG@10"]),
        float(row["end_to_end_p50_ms"]),
        float(row.get("encode_ms") or 0.0),
    )


def _system_of_label(label: str) -> str:
    """The ``--system`` of a bench row's label (a fused row's label ends with its fusion settings), or
    ``""`` for a label no row of :data:`~keytok.pipeline.kinds.BENCH_SYSTEMS` has."""
    base = label.rsplit(" (", 1)[0] if label.endswith(")") and "weights" in label else label
    return next((s for name, s in BENCH_SYSTEMS if base in (name, name.format(factory="Flat"))), "")


def plot_results(
    results: str | os.PathLike[str], png: str | os.PathLike[str], title: str | None = None
) -> None:
    """Draw the picture of a bench's results.json into ``png`` (title: the corpus and model by default)."""
    payload = json.loads(Path(results).read_text(encoding="utf-8"))
    ctx = payload.get("context", {})
    default = f"{Path(str(ctx.get('corpus', ''))).name}: {ctx.get('model', '')}"
    plot_rows(payload["rows"], Path(png), title or default)


def plot_rows(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Draw rows of results.json (dicts with ``spec``, ``system``, ``quality``, ``end_to_end_p50_ms``)."""
    plot_points([point_of_row(r) for r in rows], path, title)


def plot_points(points: Sequence[PlotPoint], path: Path, title: str) -> None:
    """Draw ``points`` into the PNG ``path`` (written atomically); see :func:`draw_points`."""
    import matplotlib.pyplot as plt

    from keytok.utils.atomic import atomic_path

    fig = draw_points(points, title)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


# The panels, left to right: a title and which points it holds.
PANELS: tuple[tuple[str, Any], ...] = (
    ("no model at query time", lambda p: p.model_ms <= 0),
    ("model at query time (its {model} ms per query included)", lambda p: p.model_ms > 0),
)


def draw_points(points: Sequence[PlotPoint], title: str) -> Any:
    """The picture of ``points`` as a matplotlib figure: one panel per non-empty group of :data:`PANELS`
    (one nDCG axis), the numbered key on the right; points numbered by family, then in the order given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [name for name, _, _ in FAMILIES]
    ranked = sorted(points, key=lambda p: order.index(p.family) if p.family in order else len(order))
    numbered = list(enumerate(ranked, start=1))
    groups = [(name, [(n, p) for n, p in numbered if holds(p)]) for name, holds in PANELS]
    groups = [(name, group) for name, group in groups if group]
    fig = plt.figure(figsize=(4.4 * len(groups) + 4.8, 5.6), layout="constrained", dpi=DPI)
    grid = fig.add_gridspec(1, len(groups) + 1, width_ratios=[1.0] * len(groups) + [1.1])
    axes: list[Any] = []
    for i, (name, group) in enumerate(groups):
        ax = fig.add_subplot(grid[0, i], sharey=axes[0] if axes else None)
        _scatter(ax, [p for _, p in group])
        model = float(np.median([p.model_ms for _, p in group]))
        ax.set_title(name.format(model=f"{model:.0f}"), fontsize=9)
        ax.tick_params(labelleft=i == 0)
        axes.append(ax)
    y = np.array([p.ndcg for p in ranked])
    pad = 0.08 * max(y.max() - y.min(), 0.01)
    axes[0].set_ylim(y.min() - pad, y.max() + pad)
    axes[0].set_ylabel("nDCG@10")
    fig.suptitle(title, fontsize=10)
    _key(fig.add_subplot(grid[0, -1]), ranked)
    fig.canvas.draw()  # the layout is fixed now: numbers can be placed in pixels
    for ax, (_, group) in zip(axes, groups, strict=True):
        _number_points(ax, group)
    return fig


def _style(name: str) -> tuple[str, str]:
    """A family's colour and marker."""
    return next(((c, m) for n, c, m in FAMILIES if n == name), FAMILIES[-1][1:])


def _scatter(ax: Any, points: Sequence[PlotPoint]) -> None:
    """The points, coloured by family, on an x range that holds them all with a margin; latency on a log
    scale when it spans more than a factor of ten."""
    from matplotlib.ticker import FuncFormatter

    x = np.array([max(p.latency_ms, 1e-3) for p in points])
    for p, xi in zip(points, x, strict=True):
        colour, marker = _style(p.family)
        ax.scatter(
            [xi], [p.ndcg], s=36, color=colour, marker=marker, edgecolors="white", linewidths=0.5, zorder=3
        )
    log = x.max() / x.min() > 10
    if log:
        ax.set_xscale("log")
        lo, hi = np.log10(x.min()), np.log10(x.max())
        pad = 0.1 * max(hi - lo, 0.5)
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
    else:
        pad = 0.1 * max(x.max() - x.min(), 0.1 * x.max(), 1e-3)
        ax.set_xlim(max(x.min() - pad, 0), x.max() + pad)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if log:
        # matplotlib writes minor ticks as 2×10^0 on a short log axis; plain numbers, and on under two decades
        # only at 2 and 5 of each decade, where they fit
        few = np.log10(x.max() / x.min()) < 2
        ax.xaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if few and _mantissa(v) in (2, 5) else "")
        )
    ax.set_xlabel("end-to-end latency per query, p50 (ms" + (", log scale)" if log else ")"), fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def _mantissa(v: float) -> int:
    """The leading digit of ``v`` (``5`` for 0.5, 50 and 500)."""
    return round(v / 10 ** np.floor(np.log10(v) + 1e-9))


def _key(ax: Any, points: Sequence[PlotPoint]) -> None:
    """The numbered key: each family's name in its colour, then its systems with nDCG@10 and latency, in
    aligned columns."""
    ax.axis("off")
    width = max(len(p.name) for p in points)
    lines = [(f"{'#':>2}  {'system (--system)':<{width}}  nDCG@10   latency", "#555555", False)]
    last = None
    for n, p in enumerate(points, start=1):
        if p.family != last:
            lines.append((p.family, _style(p.family)[0], True))
            last = p.family
        lines.append((f"{n:>2}  {p.name:<{width}}  {p.ndcg:7.3f}  {_ms(p.latency_ms):>8}", "#222222", False))
    step = min(1 / (len(lines) + 1), 0.05)
    for i, (text, colour, header) in enumerate(lines):
        ax.text(
            0.0, 1 - i * step, text, transform=ax.transAxes, va="top", ha="left", color=colour,
            fontsize=FONT + (0.5 if header else 0), fontweight="bold" if header else "normal",
            family="sans-serif" if header else "monospace",
        )  # fmt: skip


def _ms(ms: float) -> str:
    """A latency short enough for the key (three significant digits)."""
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:,.0f} ms"


def _number_points(ax: Any, numbered: Sequence[tuple[int, PlotPoint]]) -> None:
    """Write each point's number beside it (to its right, or to its left near the right edge), moved up or
    down until no two numbers overlap and all stay inside the axes; a number moved away from its point gets a
    thin line back to it."""
    dpi = ax.figure.dpi
    data = [(max(p.latency_ms, 1e-3), p.ndcg) for _, p in numbered]
    xy = ax.transData.transform(data)
    box = ax.get_window_extent()
    height = 1.25 * FONT * dpi / 72
    width = 1.3 * FONT * dpi / 72
    offset = np.where(xy[:, 0] + 1.5 * width > box.x1, -0.9 * width, 0.9 * width)
    start = xy + np.column_stack([offset, np.zeros(len(xy))])
    start[:, 0] = np.clip(start[:, 0], box.x0 + width / 2, box.x1 - width / 2)
    placed = _spread(start, xy, (width, height), (box.y0 + height / 2, box.y1 - height / 2))
    for (n, _), (x0, y0), (x1, y1), at in zip(numbered, xy, placed, data, strict=True):
        moved = abs(y1 - y0) > 0.4 * height
        note = ax.annotate(
            str(n), at, textcoords="offset points",
            xytext=((x1 - x0) * 72 / dpi, (y1 - y0) * 72 / dpi), fontsize=FONT, va="center", ha="center",
            color="#222222",
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "#888888", "shrinkA": 0, "shrinkB": 3}
            if moved else None,
        )  # fmt: skip
        note.set_in_layout(False)


def _spread(
    start: np.ndarray, marks: np.ndarray, size: tuple[float, float], bounds: tuple[float, float]
) -> np.ndarray:
    """Label centres near ``start`` (pixels) such that no two label boxes of ``size`` (width, height)
    overlap and no label covers a marker at ``marks``: overlapping labels are pushed apart vertically, a
    little at a time and in the order of their points, a label off a marker it covers, all kept within
    ``bounds``."""
    width, height = size
    pos = start.astype(float).copy()
    for _ in range(400):
        moved = False
        for i in range(len(pos)):
            for j in range(len(marks)):
                dx, dy = pos[i] - marks[j]
                if j != i and abs(dx) < width / 2 + 4 and abs(dy) < height / 2 + 4:
                    pos[i, 1] += (1.0 if dy >= 0 else -1.0) * (height / 2 + 4.5 - abs(dy))
                    moved = True
            for j in range(i + 1, len(pos)):
                dx, dy = pos[j] - pos[i]
                if abs(dx) >= width or abs(dy) >= height:
                    continue
                push = (height - abs(dy)) / 2 + 0.5
                sign = 1.0 if start[j, 1] >= start[i, 1] else -1.0  # keep the points' vertical order
                pos[i, 1] -= sign * push
                pos[j, 1] += sign * push
                moved = True
        pos[:, 1] = np.clip(pos[:, 1], *bounds)
        if not moved:
            break
    return pos
