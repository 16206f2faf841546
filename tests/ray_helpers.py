"""Small stages for executor tests (registered by the tests that use them), and a store digest.

- ``nap``: reads ``audio/waveform``, stores its RMS per second, and sleeps ``seconds_per_session`` while
  reporting progress, so that a test can catch a worker mid-session. A recording with a ``<name>.crash``
  file beside it kills its worker process the first time (the file is removed); one whose name contains
  ``bad`` fails with a StageError, as a bad file would.
- ``asr_nap`` (after ``audio``) and ``face_nap`` (on its own): the same naps, for pipelines that give them
  GPUs.
- ``window_nap``: the nap computed in time windows (``resources.window_s``), for window scheduling tests.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from ether_prep.errors import StageError
from ether_prep.stages import STAGES
from ether_prep.stages.audio import read_audio
from ether_prep.stages.base import Stage, Window
from ether_prep.store import write_array

TEST_STAGES = {
    "nap": "tests.ray_helpers:NapStage",
    "asr_nap": "tests.ray_helpers:AsrNapStage",
    "face_nap": "tests.ray_helpers:FaceNapStage",
    "window_nap": "tests.ray_helpers:WindowNapStage",
}


@contextmanager
def registered_test_stages() -> Iterator[None]:
    """The test stages in the stage registry while the block runs, through monkeypatch: the registry is
    restored however the block ends."""
    with pytest.MonkeyPatch.context() as patch:
        for name, target in TEST_STAGES.items():
            patch.setitem(STAGES, name, target)
        yield


@dataclass(frozen=True)
class NapParams:
    seconds_per_session: float = 1.0


class NapStage(Stage):
    name = "nap"
    requires = ("audio",)
    needs_stream = "audio"
    Params = NapParams

    def run(self, session: Any, store: Any, out: zarr.Group) -> str | None:
        crash = Path(f"{session.path}.crash")
        if crash.exists():
            crash.unlink()
            os._exit(1)  # the worker process dies mid-session, as an OOM kill would do it
        if "bad" in session.relpath:
            raise StageError(f"{session.relpath}: refused by the nap stage")
        audio = read_audio(store)
        wave, rate = audio.samples().astype(np.float64), audio.sample_rate
        seconds = max(1, int(np.ceil(len(wave) / rate)))
        rms = np.array([np.sqrt(np.mean(wave[i * rate:(i + 1) * rate] ** 2)) for i in range(seconds)])
        write_array(out, "rms", rms.astype(np.float32))
        steps = 10
        for k in range(steps):
            time.sleep(self.params.seconds_per_session / steps)
            self.report_progress(len(wave) / rate * (k + 1) / (steps + 1))
        return None


class WindowNapStage(NapStage):
    """The nap, computed in windows of ``resources.window_s`` whole seconds when given: each window stores its
    seconds' RMS and naps its share, noting the stage's state as it ran; the join concatenates them (the same
    ``rms`` as the whole nap) and keeps those states. A ``<name>.crash`` file kills the worker of the first
    window that sees it; ``bad`` fails window 2."""

    name = "window_nap"
    windowed = True

    def windows(self, session: Any, store: Any) -> list[Window]:
        step = self.spec.resources.window_s
        duration = session.probe.duration
        if step is None or duration < 2 * step:
            return []
        starts = np.arange(0, int(np.ceil(duration)), int(step))
        return [Window(k, len(starts), float(a), float(min(a + step, duration))) for k, a in enumerate(starts)]

    def run_window(self, session: Any, store: Any, window: Window, out: zarr.Group) -> None:
        crash = Path(f"{session.path}.crash")
        if crash.exists():
            crash.unlink()
            os._exit(1)
        if "bad" in session.relpath and window.index == 1:
            raise StageError(f"{session.relpath}: refused by the nap stage")
        audio = read_audio(store)
        wave, rate = audio.samples().astype(np.float64), audio.sample_rate
        out.attrs["stage_state"] = store.stage_state(self.name).state  # what `status` says meanwhile
        seconds = range(int(window.start), int(np.ceil(window.end)))
        write_array(out, "rms", np.array([np.sqrt(np.mean(wave[i * rate:(i + 1) * rate] ** 2)) for i in seconds],
                                         dtype=np.float32))
        time.sleep(self.params.seconds_per_session * (window.end - window.start) / session.probe.duration)

    def join(self, session: Any, store: Any, windows: list[zarr.Group], out: zarr.Group) -> str | None:
        write_array(out, "rms", np.concatenate([np.asarray(g["rms"][...]) for g in windows]))
        out.attrs["stage_states"] = [g.attrs["stage_state"] for g in windows]
        return None


class AsrNapStage(NapStage):
    """A GPU-shaped nap after ``audio``, as transcription is."""

    name = "asr_nap"


class FaceNapStage(Stage):
    """A GPU-shaped nap that reads no other stage, as ``face``; stores one value per media second."""

    name = "face_nap"
    Params = NapParams

    def run(self, session: Any, store: Any, out: zarr.Group) -> str | None:
        write_array(out, "seconds", np.arange(int(session.probe.duration), dtype=np.int32))
        time.sleep(self.params.seconds_per_session)
        return None


# Markers' times and worker, and the times stages measure (face speed, identity embedding and completeness
# guard seconds, at any depth of the attrs), differ between any two runs.
_VOLATILE = {"started_at", "finished_at", "elapsed_s", "worker"}
_MEASURED = {"fps_analysed", "embedding_seconds", "completeness_seconds"}


def _nan_safe(value: Any) -> Any:
    return "NaN" if isinstance(value, float) and value != value else value


def _unmeasured(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unmeasured(v) for k, v in value.items() if k not in _MEASURED}
    return value


def comparable_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """A group's attributes less what measures time (which differs between any two runs)."""
    out = _unmeasured(attrs)
    if "stage" in out:
        out["stage"] = {k: v for k, v in dict(out["stage"]).items() if k not in _VOLATILE}
        if isinstance(out["stage"].get("outputs"), dict):  # when its files were written: a time too
            out["stage"]["outputs"] = {k: v for k, v in out["stage"]["outputs"].items() if k != "written_ns"}
    return out


def _group_digest(group: zarr.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["@attrs"] = comparable_attrs(dict(group.attrs))
    for name, arr in group.arrays():
        data = np.asarray(arr[...])
        raw = (np.array(data.tolist(), dtype=str).tobytes() if data.dtype.kind in "OTU"
               else np.ascontiguousarray(data).tobytes())
        out[name] = (data.shape, str(data.dtype), hashlib.sha1(raw).hexdigest(), dict(arr.attrs))
    for name, sub in group.groups():
        out[name] = _group_digest(sub)
    return out


def store_digest(location: str | Path) -> dict[str, Any]:
    """Everything a store holds, as comparable values: every attribute (less times and worker), every array's
    shape, dtype and a hash of its contents; plus the Parquet manifests' contents."""
    from ether_prep.store import Store

    store = Store(location, mode="r")
    digest: dict[str, Any] = {sid: _group_digest(store.session(sid).group) for sid in store.session_ids()}
    for name in ("utterances", "dialogue_pairs", "sessions"):
        path = store.manifest_path(name)
        import fsspec

        fs, target = fsspec.core.url_to_fs(str(path))
        if fs.exists(target):
            import pyarrow.parquet as pq

            with fs.open(target, "rb") as fh:
                rows = pq.read_table(fh).to_pylist()
            # align_finished_at is when align ran (the rows' fingerprint says what it computed): like the markers'
            # times, it differs between any two runs.
            digest[f"{name}.parquet"] = [{k: _nan_safe(v) for k, v in row.items() if k != "align_finished_at"}
                                         for row in rows]
    return digest
