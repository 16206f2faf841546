"""Exports that the field's own tools open: whisperx writers, pysubs2, webvtt-py, pyannote's RTTM reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ether_prep.cli import app

pytestmark = pytest.mark.slow  # they read the store the real cpu pipeline wrote (conftest `aligned`)


@pytest.fixture(scope="module")
def exported(aligned: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("exports")
    for fmt in ("json", "srt", "vtt", "txt", "tsv", "rttm"):
        result = CliRunner().invoke(app, ["export", str(dest), "--out", str(aligned["store"]), "--format", fmt])
        assert result.exit_code == 0, result.output
    return dest


def _call(dest: Path, ext: str) -> Path:
    """The two-party telephone call's export (the session with the most turns)."""
    return next(dest.glob(f"sample-*.{ext}"))


def test_whisperx_writers_accept_our_json(exported: Path, tmp_path: Path) -> None:
    from whisperx.utils import get_writer

    result = json.loads(_call(exported, "json").read_text())
    assert result["uri"] == "sample" and len(result["segments"]) >= 5
    words = [w for seg in result["segments"] for w in seg["words"]]
    assert words == result["word_segments"] and all({"word", "start", "end", "score", "speaker", "interpolated"}
                                                     <= set(w) for w in words)
    options = {"max_line_width": None, "max_line_count": None, "highlight_words": False}
    for fmt in ("srt", "vtt", "json", "txt", "tsv"):
        get_writer(fmt, str(tmp_path))(result, "sample.wav", options)
        written = (tmp_path / f"sample.{fmt}").read_text()
        assert result["segments"][0]["text"].split()[0] in written, fmt


def test_subtitle_libraries_parse_our_srt_and_vtt(exported: Path) -> None:
    import pysubs2
    import webvtt

    segments = json.loads(_call(exported, "json").read_text())["segments"]
    subs = pysubs2.load(str(_call(exported, "srt")))
    assert len(subs) == len(segments)
    assert subs[0].start == round(segments[0]["start"] * 1000) and segments[0]["text"] in subs[0].text
    captions = webvtt.read(str(_call(exported, "vtt")))
    assert len(captions) == len(segments)
    assert captions[0].voice == segments[0]["speaker"] and captions[0].text == segments[0]["text"]


def test_txt_and_tsv_hold_one_utterance_per_line(exported: Path) -> None:
    segments = json.loads(_call(exported, "json").read_text())["segments"]
    lines = _call(exported, "txt").read_text().splitlines()
    assert lines == [f"[{s['speaker']}]: {s['text']}" for s in segments]
    rows = [r.split("\t") for r in _call(exported, "tsv").read_text().splitlines()]
    assert rows[0] == ["start", "end", "speaker", "text"] and len(rows) == len(segments) + 1
    assert int(rows[1][0]) == round(segments[0]["start"] * 1000) and rows[1][2] == segments[0]["speaker"]


def test_pyannote_reads_our_rttm_keyed_by_the_file_stem(exported: Path) -> None:
    from pyannote.database.util import load_rttm, load_uem

    annotations = load_rttm(str(_call(exported, "rttm")))
    assert list(annotations) == ["sample"]
    assert len(annotations["sample"].labels()) == 2
    extent = load_uem(str(_call(exported, "uem")))["sample"].extent()
    assert extent.start == 0.0 and extent.end == pytest.approx(30.0, abs=0.1)
