"""Stage registry. Stage modules are light (they import their adapters lazily), so the registry can be
used by config validation and ``--help`` without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import resolve

if TYPE_CHECKING:
    from .base import Stage

__all__ = ["STAGES", "stage_class", "stage_classes"]

# name -> "module:Class"; the order is the canonical pipeline order.
STAGES: dict[str, str] = {
    "audio": "ether_prep.stages.audio:AudioStage",
    "transcribe": "ether_prep.stages.transcribe:TranscribeStage",
    "diarize": "ether_prep.stages.diarize:DiarizeStage",
    "utterances": "ether_prep.stages.utterances:UtterancesStage",
    "face": "ether_prep.stages.face:FaceStage",
    "align": "ether_prep.stages.align:AlignStage",
    "voice": "ether_prep.stages.voice:VoiceStage",
    # After align: their manifest columns follow the rows align defines (they read only utterances and turns).
    "timing": "ether_prep.stages.timing:TimingStage",
    "text": "ether_prep.stages.text:TextStage",
    "qc": "ether_prep.stages.qc:QcStage",
}


def stage_class(name: str) -> type[Stage]:
    """The class implementing stage ``name``."""
    return resolve(STAGES, name, "stage")


def stage_classes() -> list[type[Stage]]:
    """Every registered stage's class, in pipeline order (what the manifests and the dataset collect from)."""
    return [stage_class(name) for name in STAGES]
