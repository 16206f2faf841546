"""openSMILE adapter: acoustic voice features. The only module that imports ``opensmile``.

The ``opensmile`` wheel ships the SMILExtract library and its configurations (eGeMAPS, GeMAPS, ComParE), so it
needs no download. Low-level descriptors (LLDs) come per 10 ms frame (each frame ``frame_s`` long, starting at
``k * hop_s``); functionals summarise one signal (an utterance) in one vector.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FEATURE_SETS", "LEVELS", "VoiceExtractor", "opensmile_version"]

# pipelines.yaml name -> opensmile.FeatureSet member; level name -> opensmile.FeatureLevel member, and the sets
# that have it (openSMILE gives delta LLDs for ComParE only).
FEATURE_SETS = ("eGeMAPSv02", "GeMAPSv01b", "ComParE_2016")
LEVELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lld": ("LowLevelDescriptors", FEATURE_SETS),
    "lld_deltas": ("LowLevelDescriptors_Deltas", ("ComParE_2016",)),
}
_HOP_S = 0.01  # every openSMILE set named above steps its LLD frames by 10 ms


def opensmile_version() -> str:
    """The installed ``opensmile`` package's version (its library is inside the wheel)."""
    from importlib.metadata import version

    return version("opensmile")


@dataclass
class VoiceExtractor:
    """One feature set's LLD and functionals extractors at one sample rate, built once (per worker)."""

    feature_set: str
    level: str
    sample_rate: int
    _lld: Any = field(default=None, repr=False)
    _func: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import opensmile

        fs = getattr(opensmile.FeatureSet, self.feature_set)
        self._lld = opensmile.Smile(fs, getattr(opensmile.FeatureLevel, LEVELS[self.level][0]),
                                    sampling_rate=self.sample_rate)
        self._func = opensmile.Smile(fs, opensmile.FeatureLevel.Functionals, sampling_rate=self.sample_rate)
        # Frame length from one short run (the index gives each frame's start and end).
        probe = self._lld.process_signal(np.zeros(self.sample_rate // 5, np.float32), self.sample_rate)
        self.frame_s = float((probe.index[0][1] - probe.index[0][0]).total_seconds())
        self.hop_s = _HOP_S

    @property
    def lld_names(self) -> list[str]:
        return list(self._lld.feature_names)

    @property
    def functional_names(self) -> list[str]:
        return list(self._func.feature_names)

    def lld(self, signal: np.ndarray) -> np.ndarray:
        """(frames, D) float32 LLDs of a mono signal; frame k starts at ``k * hop_s`` s into it. A signal
        shorter than one frame gives no frames (openSMILE would give one row of NaN)."""
        if len(signal) < round((self.frame_s + 3 * self.hop_s) * self.sample_rate):
            return np.zeros((0, len(self.lld_names)), np.float32)
        frame = self._lld.process_signal(np.asarray(signal, np.float32), self.sample_rate)
        return frame.to_numpy(dtype=np.float32)

    def functionals(self, signal: np.ndarray) -> np.ndarray:
        """(F,) float32 functionals of one signal; NaN for a signal too short to describe (under ~0.1 s)."""
        with warnings.catch_warnings():  # "Segment too short, filling with NaN": the NaN says so
            warnings.simplefilter("ignore", UserWarning)
            frame = self._func.process_signal(np.asarray(signal, np.float32), self.sample_rate)
        return frame.to_numpy(dtype=np.float32)[0]
