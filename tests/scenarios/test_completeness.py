"""Speech completeness: no stretch of detected speech ends up without words unless the store says why.

Fast tests check the pure coverage / merge functions of ``ether_prep.speech`` on hand-made inputs. Slow tests
build two-person-style dialogue files from whole shared clips of different speakers (three GRID clips trimmed
to 0.3-2.7 s, the LibriSpeech clip, jfk), joined with 0.15 s gaps into files of 13-23 s (one whisperx chunk
each), and run the real offline ``cpu`` speech stages over them: every clip's words must be found inside its
own time window, with coverage recorded in the store. Today's whisperx behaviour (no timestamps in the batch,
no guard) is run on the same files for comparison and reported beside it (not asserted: an upstream fix or
another CPU code path may change what bare whisperx loses, while ether-prep is right either way).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ether_prep import speech as sp

from ..conftest import pipeline, pipeline_file
from ..media import SR, speech_clip, words_in_place, write_wav

GAP_S = 0.15
PER_CLIP_IN_PLACE = 0.67
# Four files, 17 clips; adjacent clips are always different speakers.
ORDERS = [["bbaf2n", "libri", "lwbsza", "jfk"],
          ["libri", "swwp2s", "bbaf2n", "lwbsza"],
          ["swwp2s", "jfk", "bbaf2n", "libri"],
          ["lwbsza", "swwp2s", "libri", "bbaf2n", "lwbsza"]]


# ------------------------------------------------------------------------------------------ fast: pure logic
def _energy(seconds: float, loud: list[tuple[float, float]], hop: float = 0.01) -> np.ndarray:
    """Frame energies (dB) of a signal that is loud within ``loud`` and quiet elsewhere."""
    e = np.full(round(seconds / hop), -80.0)
    for a, b in loud:
        e[round(a / hop): round(b / hop)] = -20.0
    return e


def _same(a: object, b: object) -> bool:
    """Equal lists of (start, end) pairs, to a microsecond."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return x.shape == y.shape and np.allclose(x, y, atol=1e-6)


def _w(text: str, start: float, end: float, **extra: object) -> dict:
    return {"text": text, "start": start, "end": end, "score": 0.9, "interpolated": False, **extra}


def test_speech_regions_follow_the_voiced_signal_inside_the_vad() -> None:
    energy = _energy(6.0, [(0.5, 1.2), (1.3, 1.5), (1.9, 2.5), (4.4, 4.45)])
    # VAD region 0-3 s: quiet edges trimmed, the 0.4 s pause split out, the 0.1 s dip kept;
    # VAD region 4-5 s holds only a 50 ms blip: kept as 4.4-4.45 would be under min_speech, so it goes.
    assert _same(sp.refine_speech_regions([(0.0, 3.0), (4.0, 5.0)], energy), [(0.5, 1.5), (1.9, 2.5)])
    # A VAD region the energy cannot confirm at all (soft speech) is kept whole.
    assert sp.refine_speech_regions([(3.0, 3.8)], energy) == [(3.0, 3.8)]


def test_coverage_and_uncovered_speech_with_slack() -> None:
    regions = [(0.0, 2.0), (3.0, 5.0)]
    words = [_w("a", 0.0, 0.5), _w("b", 0.9, 2.0), _w("c", 3.1, 3.4)]
    total, covered = sp.speech_coverage(regions, words)
    assert total == pytest.approx(4.0) and covered == pytest.approx(0.5 + 1.1 + 0.3)
    # with word edges good to 0.15 s, only 0.65-0.75 and 3.55-5.0 are left
    assert sp.speech_coverage(regions, words, slack=0.15)[1] == pytest.approx(4.0 - 0.1 - 1.45)
    # 0.5-0.9 is a 0.4 s gap between words: within 2 x 0.15 s slack of them it is not speech without words
    # (0.1 s left); 3.55-5.0 after "c" is.
    assert _same(sp.uncovered_speech(regions, words, slack=0.15, min_len=0.3), [(3.55, 5.0)])
    assert _same(sp.uncovered_speech(regions, words, slack=0.0, min_len=0.3), [(0.5, 0.9), (3.4, 5.0)])
    assert _same(sp.subtract_spans([(0.0, 1.0)], [(0.2, 0.4), (0.3, 0.6)]), [(0.0, 0.2), (0.6, 1.0)])


def test_stretched_words_go_to_their_neighbours_region() -> None:
    regions = [(0.03, 1.99), (3.07, 8.01)]
    # The dialogue failure: the first turn was skipped and its audio given to the first word of the next.
    words, n = sp.cut_stretched_words([_w("Mr.", 0.68, 3.31), _w("Quilter", 3.53, 3.81)], regions)
    assert n == 1 and (words[0]["start"], words[0]["end"]) == (3.07, 3.31)
    # The mirror case: the last turn skipped, the last word before it stretched forward.
    words, _ = sp.cut_stretched_words([_w("with", 0.85, 1.11), _w("soon.", 1.55, 7.5)], regions)
    assert (words[1]["start"], words[1]["end"]) == (1.55, 1.99)
    # Neighbours on both sides: the region it overlaps most. Words in one region are left alone.
    words, n = sp.cut_stretched_words([_w("for", 1.0, 1.5), _w("you,", 1.6, 3.2), _w("ask", 3.3, 3.6)], regions)
    assert n == 1 and (words[1]["start"], words[1]["end"]) == (1.6, 1.99)
    assert sp.cut_stretched_words([_w("x", 0.1, 0.5)], regions) == ([_w("x", 0.1, 0.5)], 0)


def test_words_far_longer_than_their_text_are_cut_back_until_redecoding_finds_nothing_there() -> None:
    # The failure found on a windowed run: "is the [apostle of the middle classes and we are glad] to ..." came
    # out as a 2.3 s "the"; the previous word ends at it, the next does not start at its end: its start stays.
    words = [_w("is", 178.32, 178.56), _w("the", 178.56, 180.88), _w("to", 181.5, 181.8)]
    cut, n = sp.cut_long_words(words)
    assert n == 1 and cut[1]["start"] == 178.56 and cut[1]["end"] == pytest.approx(178.56 + 0.1 + 3 * 0.08)
    assert cut[1]["cut"] == (178.56, 180.88) and "cut" not in cut[0]
    # The mirror case (the first word after skipped speech stretches back) keeps its end; a word said slowly
    # but within 3 x its length, or under 1 s, is left alone.
    back, _ = sp.cut_long_words([_w("so", 1.0, 1.2), _w("Mister", 3.0, 5.0), _w("Quilter", 5.0, 5.4)])
    assert back[1]["end"] == 5.0 and back[1]["start"] == pytest.approx(5.0 - 0.1 - 6 * 0.08)
    assert sp.cut_long_words([_w("well", 0.0, 0.95), _w("internationalisation", 2.0, 4.0)])[1] == 0
    # Re-decoding reaches into the cut word (its whole extent), not only 0.3 s before the speech it hid.
    (lo, hi), = sp.redecode_windows([(179.05, 180.9)], cut, duration=200.0)
    assert lo == 178.56 and hi == pytest.approx(181.2)
    # Words found where it was cut: it stays cut (and the overlap is for place_words_in_speech); none: restored.
    found = [*cut, _w("apostle", 178.74, 179.12, source="redecode")]
    kept, n_left = sp.restore_cut_words(sorted(found, key=lambda w: w["start"]))
    assert n_left == 1 and all("cut" not in w for w in kept) and kept[1]["end"] < 179.0
    restored, n_left = sp.restore_cut_words(cut)
    assert n_left == 0 and (restored[1]["start"], restored[1]["end"]) == (178.56, 180.88)


def test_a_long_recording_is_cut_in_its_longest_pause_near_the_even_place() -> None:
    # Speech with pauses of 0.4 s at 4 s and 1.2 s at 7 s: the longest wins over the nearer; of two as long,
    # the nearer the target.
    energy = _energy(12.0, [(0.0, 4.0), (4.4, 7.0), (8.2, 12.0)])
    assert sp.longest_pause(energy, target=5.0) == pytest.approx((7.6, 1.2))
    even = _energy(12.0, [(0.0, 3.0), (3.5, 8.0), (8.5, 12.0)])
    assert sp.longest_pause(even, target=7.0) == pytest.approx((8.25, 0.5))
    # No pause at all (a steady tone, loud): the cut says so with length 0; digital silence is one pause.
    at, length = sp.longest_pause(np.full(1200, -20.0), target=6.0)
    assert length == 0.0 and at == pytest.approx(6.005, abs=0.01)
    assert sp.longest_pause(np.full(1200, -90.0), target=6.0) == (6.0, 12.0)


def test_redecode_windows_join_pad_and_stop_at_words() -> None:
    words = [_w("a", 1.0, 1.5), _w("b", 9.0, 9.5)]
    uncovered = [(2.0, 3.0), (3.5, 4.0), (9.8, 10.5)]
    # 2-3 and 3.5-4 have no word between them: one window; padded by 0.3 s; the last stops at the end.
    assert _same(sp.redecode_windows(uncovered, words, duration=10.6, pad=0.3), [(1.7, 4.3), (9.5, 10.6)])
    # Padding never reaches into a word; windows never exceed max_len.
    assert _same(sp.redecode_windows([(1.6, 2.0)], words, 10.6, pad=0.3), [(1.5, 2.3)])
    assert len(sp.redecode_windows([(2.0, 3.0), (3.5, 4.0)], words, 10.6, max_len=1.5)) == 2


def test_redecoded_words_stay_in_their_window_and_echoes_are_dropped() -> None:
    moved = sp.shift_words([_w("x", 0.2, 0.6), _w("y", 0.9, 1.4)], start=10.0, end=11.0)
    assert _same([(w["start"], w["end"]) for w in moved], [(10.2, 10.6), (10.9, 11.0)])
    have = [_w("Well,", 5.0, 5.2)]
    keep, echoes = sp.drop_echoes(have, [_w("well", 4.6, 4.9), _w("hello", 2.0, 2.4), _w("well", 2.5, 2.7)])
    assert [w["start"] for w in keep] == [2.0, 2.5] and [w["text"] for w in echoes] == ["well"]


def test_words_are_placed_inside_speech_in_time_order() -> None:
    regions = [(1.0, 2.0), (3.0, 4.0)]
    energy = _energy(6.0, [(0.8, 2.3), (3.0, 4.0)])
    words = [_w("early", 0.7, 1.3),      # the VAD opened late on voiced signal: region grows to 0.8
             _w("late", 1.8, 2.6),       # voiced until 2.3: region grows to 2.3, the word is cut there
             _w("inside", 3.2, 3.6),
             _w("overlap", 3.5, 3.9),    # starts before the previous word ends: the previous one is cut
             _w("lost", 5.0, 5.3)]       # in no region, no voiced signal: moved to the nearest edge
    out, speech = sp.place_words_in_speech(words, regions, energy)
    assert _same(speech, [(0.8, 2.3), (3.0, 4.0)])
    assert _same([(w["start"], w["end"]) for w in out], [(0.8, 1.3), (1.8, 2.3), (3.2, 3.5), (3.5, 3.9), (4.0, 4.0)])
    assert [w["interpolated"] for w in out] == [False, False, False, False, True]
    for a, b in itertools.pairwise(out):
        assert a["start"] <= b["start"] and a["end"] <= b["start"]
    assert all(any(s <= w["start"] <= w["end"] <= e for s, e in speech) for w in out)


def test_completeness_params_are_validated(tmp_path: Path) -> None:
    from ether_prep.config import load_config
    from ether_prep.errors import ConfigError

    for params, message in [({"min_uncovered_s": 0.0}, "min_uncovered_s"),
                            ({"coverage_slack_s": 2}, "coverage_slack_s"), ({"completeness": "maybe"}, "completeness")]:
        cfg = pipeline_file(tmp_path, "p", [{"stage": "audio"}, {"stage": "transcribe", "params": params}])
        with pytest.raises(ConfigError, match=message):
            load_config(cfg)
    tx = pipeline("cpu").stage("transcribe").params
    assert tx.completeness and tx.timestamps and tx.min_uncovered_s == 0.3


# ------------------------------------------------------------------------------------------ slow: real models
def _build_dialogues(raw: Path) -> dict[str, list[tuple[str, float, float]]]:
    """Write the dialogue files; returns each file's clip windows (name, start, end): the ground-truth turns."""
    clips = {name: speech_clip(name) for name in {n for order in ORDERS for n in order}}
    gap = np.zeros(round(GAP_S * SR), dtype=np.float32)
    files = {}
    for k, order in enumerate(ORDERS):
        parts, windows, n = [], [], 0
        for i, name in enumerate(order):
            if i:
                parts.append(gap)
                n += len(gap)
            windows.append((name, n / SR, (n + len(clips[name])) / SR))
            parts.append(clips[name])
            n += len(clips[name])
        write_wav(raw / f"dialogue{k}.wav", np.concatenate(parts), SR)
        files[f"dialogue{k}.wav"] = windows
    # One speaker count per file, as a researcher would give it (sessions.csv overrides the pipeline's 2).
    rows = [f"{f},{len(set(n for n, _, _ in w))}" for f, w in files.items()]
    (raw / "sessions.csv").write_text("file,num_speakers\n" + "\n".join(rows) + "\n")
    # Each clip alone too: what the recogniser hears of a clip at all is the most a dialogue can find in place.
    (raw / "alone").mkdir()
    for name, audio in clips.items():
        write_wav(raw / "alone" / f"{name}.wav", audio, SR)
    return files


def _run(raw: Path, store: Path, only: list[str], **transcribe_params: object):
    from ether_prep.runner import run_pipeline
    from ether_prep.store import Store

    summary = run_pipeline(pipeline("cpu", transcribe=transcribe_params), raw, store, only=only, executor="inline")
    assert not [o for o in summary.outcomes if o.state == "failed"], summary.report()
    return Store(store)


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory: pytest.TempPathFactory):
    """The dialogue files through the cpu speech stages, and through today's whisperx behaviour for comparison."""
    from ether_prep.sessions import session_id

    raw = tmp_path_factory.mktemp("dialogues")
    files = _build_dialogues(raw)
    store = _run(raw, tmp_path_factory.mktemp("store") / "s.zarr", ["audio", "transcribe", "diarize", "utterances"])
    # whisperx as it is: chunks decoded without timestamps, no completeness guard.
    bare = _run(raw, tmp_path_factory.mktemp("bare") / "s.zarr", ["audio", "transcribe"],
                timestamps=False, completeness=False)
    return {"files": files, "store": store, "bare": bare, "sid": {f: session_id(f) for f in files},
            "alone": {name: session_id(f"alone/{name}.wav") for name in {n for o in ORDERS for n in o}}}


def _report(store, dialogues: dict, label: str) -> list[dict]:
    alone = {}
    for name, sid in dialogues["alone"].items():
        words = store.session(sid).read_table("transcribe", "words")
        alone[name] = words_in_place(words, [(name, 0.0, float("inf"))])[0]["hits"]
    rows = []
    for f, windows in dialogues["files"].items():
        words = store.session(dialogues["sid"][f]).read_table("transcribe", "words")
        rows += [{**r, "file": f, "alone": alone[r["clip"]]} for r in words_in_place(words, windows)]
    total = sum(r["hits"] for r in rows) / sum(r["n"] for r in rows)
    print(f"\n{label}: {total:.1%} of reference words in place over {len(rows)} clips")
    for r in rows:
        print(f"  {r['file']} {r['clip']:7s} {r['start']:5.2f}-{r['end']:5.2f} s  in place {r['hits']}/{r['n']}"
              f" ({r['hits'] / r['n']:.0%}; {r['alone']} alone)  WER {r['wer']:.2f}  [{r['text']}]")
    return rows


@pytest.mark.slow
def test_every_clip_is_found_in_its_own_window(dialogues) -> None:
    bare = _report(dialogues["bare"], dialogues, "whisperx as it is (no timestamps, no guard)")
    rows = _report(dialogues["store"], dialogues, "cpu pipeline")
    assert len(rows) == 17
    lost = sum(r["hits"] / r["n"] < 0.4 for r in bare)
    print(f"bare whisperx: {lost} of {len(bare)} clips lost or misplaced (under 40% of their words in place)")
    # What the guard achieves: nine in ten reference words in place, and every clip found in its own window:
    # two thirds of the reference words the recogniser hears in that clip on its own (tiny.en hears GRID's
    # "bin blue at f two now" as "bimblu f two now" whatever the context; that is not a lost turn).
    assert sum(r["hits"] for r in rows) / sum(r["n"] for r in rows) >= 0.9
    assert all(r["hits"] >= PER_CLIP_IN_PLACE * r["alone"] and r["hits"] > 0 for r in rows), rows
    for r in rows:
        if r["clip"] in ("libri", "jfk"):
            assert r["errors"] <= 1, r  # at most one misheard word of 17 or 22 (another CPU may mishear one)


@pytest.mark.slow
def test_word_times_are_monotone_inside_audio_and_speech(dialogues) -> None:
    for f, windows in dialogues["files"].items():
        g = dialogues["store"].session(dialogues["sid"][f])
        w = g.read_table("transcribe", "words")
        speech = g.read_table("transcribe", "speech")
        duration = windows[-1][2]
        assert set(w["source"]) <= {"batch", "redecode"} and set(speech["channel"]) == {-1}
        assert (np.diff(w["start"]) >= 0).all() and (w["end"][:-1] <= w["start"][1:] + 1e-9).all()
        assert (w["start"] >= 0).all() and (w["end"] <= duration + 1e-6).all() and (w["end"] >= w["start"]).all()
        inside = [(a >= speech["start"] - 1e-9) & (b <= speech["end"] + 1e-9) for a, b in zip(w["start"], w["end"],
                                                                                          strict=True)]
        assert all(x.any() for x in inside), f"{f}: a word lies outside speech"
        attrs = g.stage_group("transcribe").attrs
        assert attrs["speech_seconds"] == pytest.approx(float(np.sum(speech["end"] - speech["start"])))
        assert 0.95 <= attrs["speech_coverage"] <= 1.0
        assert attrs["covered_seconds"] == pytest.approx(attrs["speech_coverage"] * attrs["speech_seconds"])
        for u in attrs["uncovered"]:  # what stays without words says why
            assert u["end"] - u["start"] >= 0.3 and u["reason"]
        assert all(len(x) == 2 for x in attrs["redecoded"])
        print(f"\n{f}: coverage {attrs['speech_coverage']:.3f}, re-decoded {attrs['redecoded']}, "
              f"uncovered {attrs['uncovered']}, note {g.stage_state('transcribe').note!r}")
    # The guard did work here: some file had speech re-decoded, and those words are in the table.
    redecoded = [dialogues["store"].session(s).stage_group("transcribe").attrs["redecoded"]
                 for s in dialogues["sid"].values()]
    assert any(redecoded)
    assert any("redecode" in dialogues["store"].session(s).read_table("transcribe", "words")["source"]
               for s in dialogues["sid"].values())


def _clip_of(start: float, end: float, windows: list[tuple[str, float, float]], file: str) -> int:
    """The clip whose window holds the word (50 ms tolerance at the edges: the gaps are 0.15 s of silence)."""
    hits = [i for i, (_, a, b) in enumerate(windows) if a - 0.05 <= start and end <= b + 0.05]
    assert hits, f"{file}: word at {start:.2f}-{end:.2f} s lies in no clip's window (turn)"
    return hits[0]


@pytest.mark.slow
def test_every_word_is_attributed_to_its_clips_turn(dialogues) -> None:
    for f, windows in dialogues["files"].items():
        g = dialogues["store"].session(dialogues["sid"][f])
        w = g.read_table("utterances", "words")
        u = g.read_table("utterances", "utterances")
        clips = [_clip_of(a, b, windows, f) for a, b in zip(w["start"], w["end"], strict=True)]
        for i in range(len(u["id"])):
            spanned = {windows[c][0] for c in clips[int(u["word_start"][i]):int(u["word_end"][i])]}
            # Adjacent clips are different speakers: an utterance never mixes two clips' words.
            assert len(spanned) == 1, f"{f}: utterance {u['text'][i]!r} spans clips {spanned}"
        speakers = [str(s) for s in w["speaker"]]
        counts = [Counter(speakers[k] for k, c in enumerate(clips) if c == i) for i in range(len(windows))]
        print(f"\n{f}: clip -> speakers " + ", ".join(f"{n}: {dict(x)}" for (n, _, _), x in zip(windows, counts,
                                                                                             strict=True)))
        # Every turn change is a speaker change: adjacent clips (different voices) never share a label.
        for (a, x), (b, y) in itertools.pairwise(zip([n for n, _, _ in windows], counts, strict=True)):
            assert not set(x) & set(y), f"{f}: {a} and {b} (different voices, one after the other) share a label"
        # A clip is one voice: its most frequent label carries at least three quarters of its words.
        for (name, _, _), x in zip(windows, counts, strict=True):
            assert x and max(x.values()) >= 0.75 * sum(x.values()), f"{f}: {name} is split between {dict(x)}"
        # One label per clip and one per voice: the segmentation diarizer keeps jfk's 11 s whole and tells the
        # 2.4 s GRID voices apart.
        strict = all(len(x) == 1 for x in counts) and len({next(iter(x)) for x in counts if len(x) == 1}) == len(
            {n for n, _, _ in windows})
        print(f"{f}: one label per clip and per voice: {strict}")
        assert strict, f"{f}: clips -> speakers {[dict(x) for x in counts]}: not one label per clip and per voice"
