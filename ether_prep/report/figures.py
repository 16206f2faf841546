"""The session figure: what to draw, as a plain :class:`~ether_prep.adapters.matplotlib_plot.Figure` (the
adapter draws it). One time axis for everything: the speaker timeline (turns, utterances, dialogue pairs,
speech the completeness guard left uncovered), then per person an AU heatmap and valence/expressivity lines."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..adapters.matplotlib_plot import Figure, HeatmapPanel, LinePanel, Series, SpanLayer, SpanPanel, SpanRow
from ..align.cues import face_cue_steps

if TYPE_CHECKING:
    from .data import PersonData, SessionData

__all__ = ["MAX_BINS", "person_label", "session_figure", "speaker_colors", "speaker_label"]

MAX_BINS = 600  # time bins of the heatmaps and lines: a long session is averaged, not drawn frame by frame
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def speaker_colors(speakers: list[str]) -> dict[str, str]:
    return {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(speakers)}


def speaker_label(speaker: str, roles: dict[str, str]) -> str:
    role = roles.get(speaker)
    return f"{speaker} ({role})" if role and role != "unknown" else speaker


def person_label(p: PersonData, roles: dict[str, str]) -> str:
    linked = speaker_label(p.speaker, roles) if p.speaker else "no speaker linked"
    return f"person {p.person}: {linked}"


def _timeline(data: SessionData) -> SpanPanel:
    speakers = data.speakers
    colors = speaker_colors(speakers)
    rows = []
    utts = data.utterances or {}
    for s in speakers:
        turns = [(a, b) for a, b, k in data.turns or [] if k == s]
        spans = [(float(a), float(b)) for a, b, k in zip(utts.get("start", []), utts.get("end", []),
                                                         utts.get("speaker", []), strict=True) if str(k) == s]
        rows.append(SpanRow(speaker_label(s, data.roles), [
            SpanLayer(turns, colors[s], "diarized turns", thickness=0.8, alpha=0.3),
            SpanLayer(spans, colors[s], "utterances", thickness=0.45)]))
    pairs = data.alignment.pairs if data.alignment is not None else {}
    pair_spans = [(float(a), float(b)) for a, b in zip(pairs.get("start", []), pairs.get("end", []), strict=True)]
    if pair_spans:
        rows.append(SpanRow("dialogue pairs", [SpanLayer(pair_spans, "#555555", "dialogue pairs", thickness=0.35,
                                                         alpha=0.7)]))
    uncovered = [(float(u["start"]), float(u["end"])) for u in (data.coverage or {}).get("uncovered") or []]
    rows.append(SpanRow("uncovered speech", [SpanLayer(uncovered, "#ffdddd", "speech without words",
                                                       thickness=0.6, hatch="////")]))
    return SpanPanel("Who spoke when", rows)


def _binned(times: np.ndarray, values: np.ndarray, duration: float, n_bins: int) -> np.ndarray:
    """(n_bins, D) mean of the finite ``values`` (F, D) in each of ``n_bins`` even bins of [0, duration]."""
    values = values.reshape(len(times), -1)
    which = np.clip((times / max(duration, 1e-9) * n_bins).astype(int), 0, n_bins - 1)
    ok = np.isfinite(values)
    sums = np.zeros((n_bins, values.shape[1]))
    counts = np.zeros((n_bins, values.shape[1]))
    np.add.at(sums, which, np.where(ok, values, 0.0))
    np.add.at(counts, which, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def session_figure(data: SessionData) -> Figure | None:
    """The session's figure; None when there is nothing on a time axis (no speech and no face)."""
    panels: list[SpanPanel | HeatmapPanel | LinePanel] = []
    if data.turns or data.utterances is not None or data.coverage:
        panels.append(_timeline(data))
    faces = data.faces
    duration = data.duration or 1.0
    if faces is not None and data.persons and len(faces.time):
        # Half as many bins as frames: every bin holds a frame (no blank stripes between analysed frames).
        n_bins = max(1, min(MAX_BINS, len(faces.time) // 2))
        centers = (np.arange(n_bins) + 0.5) * duration / n_bins
        names = [*faces.au_names, *faces.emotion_names]
        for p in data.persons:
            label = person_label(p, data.roles)
            au = _binned(faces.time, p.au, duration, n_bins)
            panels.append(HeatmapPanel(f"{label}: action units", au.T, list(faces.au_names),
                                       colorbar="AU score"))
            values = np.concatenate([p.au, p.emotion], axis=1)
            available = np.isfinite(values).any(axis=0)
            valence, expressivity = face_cue_steps(values, names, available)
            both = _binned(faces.time, np.stack([valence, expressivity], axis=1), duration, n_bins)
            panels.append(LinePanel(f"{label}: face valence and expressivity", [
                Series("valence", centers, both[:, 0], "#d62728"),
                Series("expressivity", centers, both[:, 1], "#2ca02c")]))
    if not panels:
        return None
    return Figure(duration=duration if math.isfinite(duration) else 1.0, panels=panels)
