"""``ether-prep export DEST --format clips``: a short video per utterance and per dialogue pair, for
vision-language models (Video-LLaVA, IDEFICS-style trainers), with the samples listed in their JSONL layout.

Layout of ``DEST``::

    utterances.jsonl                one line per utterance clip
    pairs.jsonl                     one line per dialogue-pair clip (a client turn and the counsellor's reply)
    clips/<session>/u00003.mp4      H.264 (yuv420p) + AAC mono, ``fps`` frames a second, short side ``size``
    clips/<session>/p00001.mp4
    shards/utterances-000000.tar    with ``shards`` > 0: WebDataset shards (``<key>.mp4`` + ``<key>.json``)
    shards/pairs-000000.tar

Each line: ``id``, ``video`` (relative to ``DEST``), ``conversations`` (``[{"from": "human", "value":
"<video>\\n..."}, {"from": "gpt", "value": ...}]``), then the sample's transcript, roles, times, the align
stage's incongruence cues and how the clip was cut (see :func:`_utterance_record`, :func:`_pair_record`).

An utterance clip shows its speaker's face (``crop="face"``): the face the align stage linked to the speaker
(its person, over all of that person's tracks), cut ``face_scale`` times the face's size, one box size for the
whole clip and its centre smoothed (:mod:`~ether_prep.exports.clip_boxes`); a pair clip holds the client's and
the counsellor's faces in one box. Without the speaker's face in view (no face linked, or none during the clip)
the clip is the full frame, and the line says why (``crop``, ``crop_note``). ``crop="full"``: always the full
frame. Frames are those shown at ``start + k / fps``; the audio is the store's waveform over the same span
(``n_frames / fps`` seconds, so duration is within one frame of the utterance's).

Each recording is decoded once for all its clips (:func:`ether_prep.adapters.pyav.iter_frames_shown`), and
each clip encoded in this process (:class:`ether_prep.adapters.pyav.ClipEncoder`). A clip that cannot be cut
is reported (session, sample, why) and the export goes on. De-identified: texts scrubbed, ids and paths aliased,
every face in every frame pixelated (voices stay in the audio: ``audio=False`` leaves it out).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, EtherPrepError, StoreError
from .clip_boxes import Crop, crop_track, face_boxes_at, output_size, person_boxes, pixelate

if TYPE_CHECKING:
    from ..adapters.pyav import ShownFrame
    from ..deidentify import Deidentifier, IdAliases
    from ..stages.face import FaceOutputs
    from ..store import SessionGroup, Store

__all__ = ["CROPS", "KINDS", "ClipOptions", "ClipsSummary", "export_clips"]

CROPS = ("face", "full")
KINDS = ("utterance", "pair")
UTTERANCE_PROMPT = "<video>\nWhat does the {role} say in this clip from a counselling session?"
PAIR_PROMPT = ("<video>\nIn this clip from a counselling session the client says: \"{client_text}\"\n"
               "How does the counsellor reply?")
_CUES = ("text_valence", "text_arousal", "text_distress", "face_valence", "face_expressivity", "mismatch")


@dataclass(frozen=True)
class ClipOptions:
    """How clips are cut (``ether-prep export --format clips`` options)."""

    crop: str = "face"  # face: the speaker's face (a pair: both faces); full: the whole frame
    fps: float = 8.0
    size: int = 224  # pixels of the short side
    kinds: tuple[str, ...] = KINDS
    audio: bool = True
    shards: int = 0  # WebDataset tar shards per kind (0: none)
    face_scale: float = 1.6  # crop side / face box side
    smooth_s: float = 0.5  # Gaussian smoothing of the crop's centre
    crf: int = 23  # x264 quality (lower: better, larger)
    preset: str = "veryfast"

    def validate(self) -> None:
        """A ConfigError naming each wrong option and its valid values."""
        problems = []
        if self.crop not in CROPS:
            problems.append(f"--crop {self.crop!r} is not one of {', '.join(CROPS)}")
        if not 0 < self.fps <= 60 or not math.isfinite(self.fps):
            problems.append(f"--fps {self.fps} must be above 0 and at most 60")
        if not 16 <= self.size <= 4096:
            problems.append(f"--size {self.size} must be 16..4096 pixels (the clip's short side)")
        if not self.kinds or set(self.kinds) - set(KINDS):
            problems.append(f"--clips {','.join(self.kinds)!r}: give utterances, pairs or both")
        if self.shards < 0:
            problems.append(f"--shards {self.shards} must be 0 (no shards) or more")
        if not 1.0 <= self.face_scale <= 10 or self.smooth_s < 0 or not 0 <= self.crf <= 51:
            problems.append("face_scale must be 1..10, smooth_s >= 0 and crf 0..51")
        if problems:
            raise ConfigError("clips export: " + "; ".join(problems))


@dataclass
class ClipsSummary:
    """What an export wrote: clips per kind, the JSONL files and shards, the clips that failed (each naming its
    session, sample and why) and notes on sessions with nothing to cut."""

    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    jsonl: dict[str, Path] = field(default_factory=dict)
    shards: list[Path] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.written['utterance']} utterance clip(s), {self.written['pair']} pair clip(s) written; "
                f"{len(self.failed)} failed; {len(self.notes)} session(s) without clips")


@dataclass
class _Plan:
    """One clip to cut: its sample (kind, real id, times, JSONL fields) and the persons it shows."""

    kind: str
    sample_id: str
    start: float
    end: float
    persons: list[int]  # person ids (-1: no face linked)
    speakers: list[str]
    record: dict[str, Any]
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class _Session:
    """One session's clips to cut and what they read."""

    group: SessionGroup
    name: str  # the session id, or its alias
    ids: Callable[[Any], Any]  # aliases ids and paths when de-identified
    plans: list[_Plan]
    recording: Path
    faces: FaceOutputs | None
    audio: Any


def _float(v: Any) -> float | None:
    """A JSON number, or None for NaN (JSON has no NaN)."""
    v = float(v)
    return v if math.isfinite(v) else None


def _cues(u: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    cues: dict[str, Any] = {k: _float(u[k][i]) for k in _CUES if k in u}
    cues["distress_word"] = str(u["distress_word"][i]) or None if "distress_word" in u else None
    cues["flags"] = [f for f in str(u["flags"][i]).split(";") if f] if "flags" in u else []
    return cues


def _utterance_record(u: dict[str, np.ndarray], i: int, text: Callable[[str], str],
                      ids: Callable[[Any], Any]) -> dict[str, Any]:
    """The JSONL fields of utterance ``i`` of the align table ``u`` (video and crop fields come later)."""
    role, transcript = str(u["role"][i]), text(str(u["text"][i]))
    return {
        "id": ids(str(u["id"][i])),
        "conversations": [{"from": "human", "value": UTTERANCE_PROMPT.format(role=role)},
                          {"from": "gpt", "value": transcript}],
        "kind": "utterance", "utterance_id": ids(str(u["id"][i])), "transcript": transcript,
        "speaker": str(u["speaker"][i]), "role": role, "listener": str(u["listener"][i]) or None,
        "listener_role": str(u["listener_role"][i]) or None,
        "start": float(u["start"][i]), "end": float(u["end"][i]), "duration": float(u["end"][i] - u["start"][i]),
        "cues": _cues(u, i),
    }


def _pair_record(p: dict[str, np.ndarray], j: int, u: dict[str, np.ndarray], row: dict[str, int],
                 text: Callable[[str], str], ids: Callable[[Any], Any]) -> dict[str, Any]:
    """The JSONL fields of dialogue pair ``j`` (``row``: utterance id -> its row in ``u``)."""
    ci, ki = row[str(p["client_utterance"][j])], row[str(p["counsellor_utterance"][j])]
    client, counsellor = text(str(p["client_text"][j])), text(str(p["counsellor_text"][j]))
    return {
        "id": ids(str(p["id"][j])),
        "conversations": [{"from": "human", "value": PAIR_PROMPT.format(client_text=client)},
                          {"from": "gpt", "value": counsellor}],
        "kind": "pair", "pair_id": ids(str(p["id"][j])), "transcript": f"client: {client}\ncounsellor: {counsellor}",
        "client_text": client, "counsellor_text": counsellor,
        "client_speaker": str(u["speaker"][ci]), "counsellor_speaker": str(u["speaker"][ki]),
        "client_utterances": ids([x for x in str(p["client_utterances"][j]).split(";") if x]),
        "counsellor_utterances": ids([x for x in str(p["counsellor_utterances"][j]).split(";") if x]),
        "start": float(p["start"][j]), "end": float(p["end"][j]), "duration": float(p["end"][j] - p["start"][j]),
        "gap": _float(p["gap"][j]),
        "cues": {"client_mismatch": _float(p["client_mismatch"][j]),
                 "client_flags": [f for f in str(p["client_flags"][j]).split(";") if f],
                 "client": _cues(u, ci), "counsellor": _cues(u, ki)},
    }


def _person(u: dict[str, np.ndarray], i: int) -> int:
    return int(u["speaker_person"][i]) if "speaker_person" in u else -1


def plan_clips(align: Any, options: ClipOptions, text: Callable[[str], str] = str,
               ids: Callable[[Any], Any] = lambda v: v) -> list[_Plan]:
    """The clips of one session from its align tables (:func:`ether_prep.stages.align.read_align`), each
    with its frame times."""
    u, p = align.utterances, align.pairs
    common = {"session_id": None, "role_assumed": bool(align.attrs.get("role_assumed", True))}
    plans = []
    if "utterance" in options.kinds:
        for i in range(len(u["id"])):
            plans.append(_Plan("utterance", str(u["id"][i]), float(u["start"][i]), float(u["end"][i]),
                               [_person(u, i)], [str(u["speaker"][i])],
                               {**_utterance_record(u, i, text, ids), **common}))
    if "pair" in options.kinds:
        row = {str(x): i for i, x in enumerate(u["id"])}
        for j in range(len(p["id"])):
            ci, ki = row[str(p["client_utterance"][j])], row[str(p["counsellor_utterance"][j])]
            plans.append(_Plan("pair", str(p["id"][j]), float(p["start"][j]), float(p["end"][j]),
                               [_person(u, ci), _person(u, ki)], [str(u["speaker"][ci]), str(u["speaker"][ki])],
                               {**_pair_record(p, j, u, row, text, ids), **common}))
    for plan in plans:
        n = max(1, round((plan.end - plan.start) * options.fps))
        plan.times = plan.start + np.arange(n) / options.fps
    return plans


# ------------------------------------------------------------------------------------------ per session
def _open_session(group: SessionGroup, options: ClipOptions, deid: Deidentifier | None,
                  raw_dir: Path | None, aliases: IdAliases | None) -> _Session | str:
    """A session's clips to cut, or a note saying why it has none (audio only, no speech). A StoreError when
    its align stage has not completed."""
    from ..stages.align import read_align
    from ..stages.audio import read_audio
    from ..stages.face import read_faces

    info, sid = group.info, group.id
    name = deid.alias(sid) if deid is not None else sid
    probe = info.get("probe") or {}
    if info.get("kind") == "audio" or probe.get("has_video") is False:
        return f"session {name!r}: audio only (no video): no clips"
    align = read_align(group)
    if align is None:
        state = group.stage_state("align")
        if state.state == "skipped":  # nothing to align (no speech, a still picture): a note, not a failure
            return f"session {name!r}: align skipped{': ' + state.message if state.message else ''}: no clips"
        raise StoreError(f"session {name!r}: align is {state.state}{': ' + state.message if state.message else ''}; "
                         f"run `ether-prep align` first")
    ids = aliases if aliases is not None else (lambda v: v)
    plans = plan_clips(align, options, deid.text if deid is not None else str, ids)
    if not len(align.utterances["id"]):
        return f"session {name!r}: no speech (no utterances): no clips"
    for plan in plans:
        plan.record["session_id"] = name
    relpath = str(info.get("relpath", ""))
    recording = raw_dir / relpath if raw_dir is not None else Path(str(info.get("path", "")))
    audio = read_audio(group) if options.audio else None
    if audio is not None and audio.waveform is None:  # a video without sound: clips without an audio track
        audio = None
    return _Session(group, name, ids, plans, recording, read_faces(group), audio)


def _crop(session: _Session, plan: _Plan, frame_size: tuple[int, int], options: ClipOptions
          ) -> tuple[Crop | None, str | None]:
    """The plan's crop boxes (None: full frame) and why the full frame, when it is."""
    if options.crop == "full":
        return None, None
    faces = session.faces
    who = [s for s, p in zip(plan.speakers, plan.persons, strict=True) if p < 0]
    if faces is None or not faces.tracks:
        return None, "no face in this recording"
    person = faces.person
    boxes = [person_boxes(faces.box, person, p) if p >= 0 else None for p in plan.persons]
    crop = crop_track(plan.times, faces.time, boxes, frame_size, options.face_scale, options.smooth_s)
    if crop is None:
        unlinked = f"no face linked to {', '.join(who)}" if who else ""
        return None, unlinked or f"the face of {', '.join(plan.speakers)} is not in view during the clip"
    _coverage(plan, crop.coverage)
    return crop, (f"no face linked to {', '.join(who)}: the crop shows the others" if who else None)


def _coverage(plan: _Plan, coverage: list[float | None]) -> None:
    """The fraction of the clip's analysed frames showing each person's face, as JSONL fields."""
    keys = ["face_coverage"] if plan.kind == "utterance" else ["client_face_coverage", "counsellor_face_coverage"]
    plan.record.update(dict(zip(keys, coverage, strict=True)))


class _Cut:
    """One clip being written: its crop, its encoder, how many frames it has."""

    def __init__(self, session: _Session, plan: _Plan, frame_size: tuple[int, int], dest: Path,
                 options: ClipOptions) -> None:
        from ..adapters.pyav import ClipEncoder

        width, height = frame_size
        self.plan, self.k = plan, 0
        self.crop, note = _crop(session, plan, (width, height), options)
        w, h = self.crop.size if self.crop is not None else (width, height)
        self.out_w, self.out_h = output_size(w, h, options.size)
        self.hide = (face_boxes_at(session.faces.time, session.faces.box, plan.times)
                     if session.faces is not None and plan.record.get("deidentified") else None)
        audio = None
        if session.audio is not None:
            sr = int(session.audio.sample_rate)
            first, n = round(plan.start * sr), round(len(plan.times) / options.fps * sr)
            audio = np.zeros(n, np.float32)
            got = np.asarray(session.audio.samples(max(first, 0), first + n), np.float32)[:n]
            audio[:len(got)] = got
        self.path = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.encoder = ClipEncoder(dest, self.out_w, self.out_h, options.fps, audio,
                                   int(session.audio.sample_rate) if audio is not None else 16000,
                                   options.crf, options.preset)
        plan.record.update({
            "crop": "face" if self.crop is not None else "full_frame", "crop_note": note,
            "crop_box": self.crop.mean_box if self.crop is not None else [0, 0, width, height],
            "frame_size": [width, height], "width": self.out_w, "height": self.out_h, "fps": float(options.fps),
            "n_frames": len(plan.times), "clip_duration": len(plan.times) / options.fps,
            "has_audio": audio is not None})
        for key in (["face_coverage"] if plan.kind == "utterance" else
                    ["client_face_coverage", "counsellor_face_coverage"]):
            plan.record.setdefault(key, None)

    def add(self, frame: ShownFrame) -> bool:
        """Add the clip's next frame; True when it was the last one (the file is then complete)."""
        box = tuple(int(v) for v in self.crop.boxes[self.k]) if self.crop is not None else None
        if self.hide is None:
            self.encoder.add(frame, box)
        else:  # de-identified: the faces pixelated on an RGB copy of the crop
            x0, y0, x1, y1 = box or (0, 0, frame.width, frame.height)
            self.encoder.add(pixelate(frame.rgb[y0:y1, x0:x1], self.hide[self.k] - np.array([x0, y0, x0, y0])))
        self.k += 1
        if self.k == len(self.plan.times):
            self.encoder.close()
            return True
        return False


def _cut_session(session: _Session, dest: Path, options: ClipOptions, done: Callable[[_Plan], None],
                 failed: Callable[[_Plan, str], None]) -> None:
    """Decode the session's recording once and write every clip of it; ``done``/``failed`` hear of each."""
    from ..adapters.pyav import iter_frames_shown

    plans = session.plans
    owner = np.concatenate([np.full(len(p.times), i) for i, p in enumerate(plans)])
    step = np.concatenate([np.arange(len(p.times)) for p in plans])
    times = np.concatenate([p.times for p in plans])
    order = np.argsort(times, kind="stable")
    cuts: dict[int, _Cut] = {}  # the clips being written (a finished one is let go: its encoder holds buffers)
    closed: set[int] = set()  # written or failed: later frames of a failed clip are ignored
    last_seen = None
    try:
        for g, frame in iter_frames_shown(session.recording, times[order]):
            last_seen = frame.time
            i = int(owner[order[g]])
            if i in closed:
                continue
            try:
                if i not in cuts:
                    cuts[i] = _Cut(session, plans[i], (frame.width, frame.height), dest / plans[i].record["video"],
                                   options)
                assert cuts[i].k == step[order[g]]
                if cuts[i].add(frame):
                    closed.add(i)
                    del cuts[i]
                    done(plans[i])
            except EtherPrepError as exc:
                _close(cuts, closed, i)
                failed(plans[i], str(exc))
    except EtherPrepError as exc:  # the recording cannot be read (any more): every clip not finished fails
        why = str(exc)
    else:
        why = None
    for i, plan in enumerate(plans):
        if i not in closed:
            _close(cuts, closed, i)
            span = f"{plan.start:.2f}-{plan.end:.2f} s"
            failed(plan, why or (f"the video ends at {last_seen:.2f} s, before the clip ({span}) does"
                                 if last_seen is not None else f"the video shows no frame in the clip ({span})"))


def _close(cuts: dict[int, _Cut], closed: set[int], i: int) -> None:
    """Give up clip ``i``: its partial file removed."""
    cut = cuts.pop(i, None)
    if cut is not None:
        cut.encoder.abort()
    closed.add(i)


# ------------------------------------------------------------------------------------------ the export
def _sessions(store: Store, session_ids: Iterable[str], options: ClipOptions, deid: Deidentifier | None,
              raw_dir: Path | None, summary: ClipsSummary) -> list[_Session]:
    from ..deidentify import IdAliases

    out = []
    for sid in session_ids:
        group = store.session(sid)
        aliases = IdAliases(deid, [(sid, str(group.info.get("relpath", "")))]) if deid is not None else None
        try:
            opened = _open_session(group, options, deid, raw_dir, aliases)
        except EtherPrepError as exc:
            summary.failed.append(aliases(str(exc)) if aliases is not None else str(exc))
            continue
        if isinstance(opened, str):
            summary.notes.append(opened)
            continue
        if not opened.recording.is_file():
            summary.failed += [f"session {opened.name!r}, {p.kind} {opened.ids(p.sample_id)!r}: recording not "
                               f"found at {opened.recording if deid is None else 'its stored path'}; give the "
                               f"folder of recordings (--raw)" for p in opened.plans]
            continue
        for p in opened.plans:
            clip_id = opened.ids(p.sample_id)
            p.record["video"] = f"clips/{clip_id}.mp4"
            p.record["deidentified"] = deid is not None
        out.append(opened)
    return out


def export_clips(store: Store, session_ids: Iterable[str], dest: Path, options: ClipOptions | None = None,
                 deid: Deidentifier | None = None, raw_dir: Path | None = None, progress: bool = True
                 ) -> ClipsSummary:
    """Write the clips of ``session_ids`` and their JSONL lines under ``dest`` (see the module docstring)."""
    from tqdm import tqdm

    options = options or ClipOptions()
    options.validate()
    summary = ClipsSummary()
    sessions = _sessions(store, session_ids, options, deid, raw_dir, summary)
    dest.mkdir(parents=True, exist_ok=True)
    total = sum(len(s.plans) for s in sessions)
    bar = tqdm(total=total, desc="clips", unit="clip", disable=not progress or not sys.stderr.isatty(),
               file=sys.stderr)
    files = {k: dest / f"{k}s.jsonl" for k in options.kinds}
    parts = {k: open(f"{path}.part", "w", encoding="utf-8") for k, path in files.items()}  # noqa: SIM115
    try:
        for session in sessions:
            for plan in _export_session(session, dest, options, summary, bar.update):
                parts[plan.kind].write(json.dumps(plan.record, ensure_ascii=False) + "\n")
                summary.written[plan.kind] += 1
    finally:
        bar.close()
        for fh in parts.values():
            fh.close()
    for k, path in files.items():
        os.replace(f"{path}.part", path)
        summary.jsonl[k] = path
    if options.shards:
        summary.shards = _write_shards(summary.jsonl, dest, options.shards)
    return summary


def _export_session(session: _Session, dest: Path, options: ClipOptions, summary: ClipsSummary,
                    tick: Callable[[], object]) -> list[_Plan]:
    """Cut one session's clips; the failures go into ``summary``; returns the clips written, by id."""
    finished: list[_Plan] = []

    def failed(plan: _Plan, why: str) -> None:
        if plan.record.get("deidentified"):  # an error message may quote the recording's path
            why = session.ids(why.replace(str(session.recording), "the recording"))
        summary.failed.append(f"session {session.name!r}, {plan.kind} {session.ids(plan.sample_id)!r}: {why}")
        tick()

    def done(plan: _Plan) -> None:
        finished.append(plan)
        tick()

    _cut_session(session, dest, options, done, failed)
    return sorted(finished, key=lambda p: (p.kind, p.sample_id))


def _write_shards(jsonl: dict[str, Path], dest: Path, n_shards: int) -> list[Path]:
    """WebDataset shards per kind, from the JSONL lines and the clips they point at."""
    from ..adapters.webdataset_shards import ShardSample, sample_key, write_shards

    paths = []
    for kind, path in jsonl.items():
        samples = []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            samples.append(ShardSample(sample_key(record["id"]), dest / record["video"], line.encode("utf-8")))
        paths += write_shards(samples, dest / "shards", f"{kind}s", n_shards)
    return paths
