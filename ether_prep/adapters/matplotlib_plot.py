"""matplotlib adapter: draws the report's figures from a plain description (:class:`Figure`) and encodes
pictures as PNG. The only module that imports ``matplotlib``.

The report decides what to draw (:mod:`ether_prep.report.figures`); this module only draws it, with the
non-interactive Agg backend (no display needed), every panel on one shared time axis.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Figure", "HeatmapPanel", "LinePanel", "Series", "SpanLayer", "SpanPanel", "SpanRow", "encode_png",
           "matplotlib_version", "render"]


@dataclass(frozen=True)
class SpanLayer:
    """Bars of one kind on a row: ``spans`` (start, end) s, drawn ``thickness`` (0..1) of the row high."""

    spans: list[tuple[float, float]]
    color: str
    label: str
    thickness: float = 0.8
    alpha: float = 1.0
    hatch: str | None = None


@dataclass(frozen=True)
class SpanRow:
    label: str
    layers: list[SpanLayer]


@dataclass(frozen=True)
class SpanPanel:
    """A timeline: one row per label, bars on it (turns, utterances, pairs, uncovered speech)."""

    title: str
    rows: list[SpanRow]
    height: float = 0.0  # inches; 0: from the number of rows


@dataclass(frozen=True)
class HeatmapPanel:
    """``matrix`` (rows x bins; NaN blank) over the time range of the figure, one bin each ``bin_s``."""

    title: str
    matrix: np.ndarray
    row_labels: list[str]
    vmin: float = 0.0
    vmax: float = 1.0
    cmap: str = "viridis"
    colorbar: str = ""
    height: float = 2.4


@dataclass(frozen=True)
class Series:
    label: str
    times: np.ndarray
    values: np.ndarray
    color: str


@dataclass(frozen=True)
class LinePanel:
    title: str
    series: list[Series]
    ylim: tuple[float, float] = (-1.0, 1.0)
    height: float = 1.3


@dataclass(frozen=True)
class Figure:
    """Panels stacked on one time axis from 0 to ``duration`` s."""

    duration: float
    panels: list[SpanPanel | HeatmapPanel | LinePanel] = field(default_factory=list)
    width: float = 11.0  # inches
    dpi: int = 90


def matplotlib_version() -> str:
    import matplotlib

    return str(matplotlib.__version__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display: files only
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: editable and searchable in a paper
    matplotlib.rcParams["svg.hashsalt"] = "ether-prep"  # the same figure gives the same SVG
    import matplotlib.pyplot as plt

    return plt


def _height(panel: SpanPanel | HeatmapPanel | LinePanel) -> float:
    if isinstance(panel, SpanPanel):
        return panel.height or 0.45 + 0.32 * max(len(panel.rows), 1)
    return panel.height


def render(figure: Figure, formats: tuple[str, ...] = ("png",)) -> dict[str, bytes]:
    """The figure encoded in each of ``formats`` (``png``, ``svg``)."""
    plt = _pyplot()
    heights = [_height(p) for p in figure.panels] or [1.0]
    fig, axes = plt.subplots(len(heights), 1, sharex=True, squeeze=False,
                             figsize=(figure.width, sum(heights) + 0.5),
                             gridspec_kw={"height_ratios": heights, "hspace": 0.55})
    try:
        xmax = max(figure.duration, 1e-3)
        for ax, panel in zip(axes[:, 0], figure.panels, strict=False):
            # A text, not set_title: placing titles measures every axis' ticks on each draw (a third of it).
            ax.text(0.0, 1.03, panel.title, transform=ax.transAxes, fontsize=9, va="bottom", ha="left")
            ax.tick_params(labelsize=8)
            if isinstance(panel, SpanPanel):
                _spans(ax, panel)
            elif isinstance(panel, HeatmapPanel):
                _heatmap(fig, ax, panel, xmax)
            else:
                _lines(ax, panel)
            ax.set_xlim(0, xmax)
        axes[-1, 0].set_xlabel("session time (s)", fontsize=8)
        fig.subplots_adjust(left=0.17, right=0.86, top=1 - 0.3 / (sum(heights) + 0.5),
                            bottom=0.45 / (sum(heights) + 0.5))
        out = {}
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=figure.dpi, metadata={"Date": None} if fmt == "svg" else None)
            out[fmt] = buf.getvalue()
        return out
    finally:
        plt.close(fig)


def _spans(ax, panel: SpanPanel) -> None:
    n = len(panel.rows)
    seen: set[str] = set()
    for i, row in enumerate(panel.rows):
        y = n - 1 - i
        for layer in row.layers:
            if not layer.spans:
                continue
            bars = [(a, max(b - a, 1e-3)) for a, b in layer.spans]
            h = layer.thickness
            label = layer.label if layer.label not in seen else None
            seen.add(layer.label)
            ax.broken_barh(bars, (y - h / 2, h), facecolors=layer.color, alpha=layer.alpha,
                           hatch=layer.hatch, edgecolor="black" if layer.hatch else "none", linewidth=0.3,
                           label=label)
    ax.set_yticks(range(n), [r.label for r in reversed(panel.rows)], fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    if seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def _heatmap(fig, ax, panel: HeatmapPanel, xmax: float) -> None:
    import matplotlib as mpl

    cmap = mpl.colormaps[panel.cmap].with_extremes(bad="#eeeeee")  # no face: light grey, not a value
    image = ax.imshow(np.ma.masked_invalid(panel.matrix), aspect="auto", interpolation="nearest", cmap=cmap,
                      vmin=panel.vmin, vmax=panel.vmax, extent=(0, xmax, len(panel.row_labels) - 0.5, -0.5))
    ax.set_yticks(range(len(panel.row_labels)), panel.row_labels, fontsize=6)
    # An inset outside the panel: a colorbar taking room from the axis would shift its time axis off the others'.
    bar = fig.colorbar(image, cax=ax.inset_axes((1.01, 0.0, 0.012, 1.0)))
    bar.ax.tick_params(labelsize=6)
    if panel.colorbar:
        bar.set_label(panel.colorbar, fontsize=7)


def _lines(ax, panel: LinePanel) -> None:
    for s in panel.series:
        ax.plot(s.times, s.values, color=s.color, linewidth=1.0, label=s.label)
    ax.axhline(0.0, color="#999999", linewidth=0.5)
    ax.set_ylim(*panel.ylim)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def encode_png(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 picture as PNG bytes."""
    plt = _pyplot()
    buf = io.BytesIO()
    plt.imsave(buf, np.ascontiguousarray(rgb, dtype=np.uint8), format="png")
    return buf.getvalue()
