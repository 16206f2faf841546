"""Issue 21: ``ether-prep report``, an HTML page per session and an index over the batch.

One real cpu pipeline run (module fixture) over the side-by-side clip, an edited two-person dialogue whose
audio stops 1.5 s before its picture (the qc check ``audio_complete`` flags it), a truncated video (fails
``audio`` and ``face``) and an audio-only recording (jfk); each test reads the report written from that store.
The browser test opens the pages in Debian's headless Chromium through the DevTools protocol.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import time
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from .conftest import DATA, GRID2, audio_config, pipeline
from .media import GRID_A, GRID_B, edited_dialogue
from .trust_media import JFK, ffmpeg

# Whole spoken parts of each GRID clip, twice each: A, B, A, B (as tests/test_dialogue.py).
TURNS = ((GRID_A, 8, 66), (GRID_B, 14, 66), (GRID_A, 8, 66), (GRID_B, 14, 66))


class _Page(HTMLParser):
    """The parts of a report page the tests look at: elements by id, person cards, images, table rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}  # id -> text inside
        self.persons: list[dict] = []
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}  # table id -> body rows (cell texts)
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of open elements
        self._texts: dict[str, list[str]] = {}
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "br":  # a line break separates words
            self.handle_data(" ")
        if tag in ("img", "br", "meta", "link"):
            if tag == "img":
                self.images.append({**a, "person": self.persons[-1]["person"] if self._in_person() else ""})
                if self._in_person():
                    self.persons[-1]["images"].append(a)
            return
        self._open.append((tag, a.get("id")))
        if a.get("id"):
            self._texts[a["id"]] = []
        if "person" in a.get("class", "").split() and "data-person" in a:
            self.persons.append({"person": a["data-person"], "speaker": a.get("data-speaker", ""), "images": [],
                                 "depth": len(self._open)})
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "table":
            self._table = a.get("id")
            self.rows.setdefault(self._table or "", [])
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._in_body:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def _in_person(self) -> bool:
        return bool(self.persons) and len(self._open) >= self.persons[-1]["depth"]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows[self._table or ""].append(self._row)
            self._row = None
        if tag == "tbody":
            self._in_body = False
        while self._open:
            open_tag, _ = self._open.pop()
            if self.persons and len(self._open) < self.persons[-1]["depth"]:
                self.persons[-1]["depth"] = 10**9  # closed
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self._texts[ident].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def text(self, ident: str) -> str:
        return " ".join("".join(self._texts.get(ident, [])).split())


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from typer.testing import CliRunner

    from ether_prep.cli import app
    from ether_prep.runner import run_pipeline
    from ether_prep.store import Store

    tmp = tmp_path_factory.mktemp("report")
    raw = tmp / "raw"
    raw.mkdir()
    (raw / GRID2.name).symlink_to(GRID2)
    edited_dialogue(tmp / "dialogue_whole.mp4", TURNS)
    # The picture goes on 1.5 s after the sound stops (its last frame held): audio cut off, for qc to flag.
    ffmpeg("-i", tmp / "dialogue_whole.mp4", "-vf", "tpad=stop_mode=clone:stop_duration=1.5", "-c:v", "libx264",
           "-preset", "veryfast", "-c:a", "copy", raw / "dialogue.mp4")
    whole = (DATA / "face" / "WolfgangLanger_Pexels.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(whole[: len(whole) // 10])
    (raw / "jfk.flac").symlink_to(JFK)
    store = tmp / "store.zarr"
    summary = run_pipeline(pipeline("cpu"), raw, store, family=None, executor="inline", progress=False)
    assert not summary.ok and {o.session_id.split("-")[0] for o in summary.failed} == {"truncated"}, summary.report()
    # the command as a user runs it: a failed session is reported (its page says why), not an error
    result = CliRunner().invoke(app, ["report", str(tmp / "report"), "--out", str(store), "--figures", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "4 session page(s)" in result.output and "6 figure file(s)" in result.output
    ids = {sid.split("-")[0]: sid for sid in Store(store, mode="r").session_ids()}
    return {"tmp": tmp, "store": store, "dest": tmp / "report", "output": result.output, "ids": ids}


def _page(batch: dict, name: str) -> tuple[str, _Page]:
    text = (batch["dest"] / "sessions" / f"{batch['ids'][name]}.html").read_text(encoding="utf-8")
    return text, _Page(text)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grid_two_faces_side_by_side", "dialogue"])
def test_page_names_speakers_words_thumbnails_heatmap_cues(batch: dict, name: str) -> None:
    from ether_prep.stages.align import read_align
    from ether_prep.stages.face import read_faces
    from ether_prep.stages.utterances import read_transcript
    from ether_prep.store import Store

    group = Store(batch["store"], mode="r").session(batch["ids"][name])
    utts = read_transcript(group).utterances
    speakers = sorted({str(s) for s in utts["speaker"]})
    assert len(speakers) == 2, speakers
    text, page = _page(batch, name)
    transcript = page.text("transcript")
    for s in speakers:  # both speakers named, in the transcript and on the person cards
        assert s in transcript
    words = [w for t in utts["text"] for w in str(t).split()]
    assert words and all(w in transcript for w in words)  # every transcribed word is on the page
    # one card per person of the face stage, each with its thumbnails (faces cropped from the video)
    persons = sorted({t.person for t in read_faces(group).tracks})
    assert [int(p["person"]) for p in page.persons] == persons == [0, 1]
    links = read_align(group).links
    linked = {int(p): str(s) for p, s in zip(links["person"], links["speaker"], strict=True)}
    thumbs = {}
    for card in page.persons:
        assert card["speaker"] == linked[int(card["person"])] and card["speaker"] in speakers
        imgs = [i for i in card["images"] if i.get("class") == "thumb"]
        assert 1 <= len(imgs) <= 3
        blobs = [base64.b64decode(i["src"].split(",", 1)[1]) for i in imgs]
        assert all(i["src"].startswith("data:image/png;base64,") for i in imgs)
        assert all(_png_size(b)[1] == 112 for b in blobs)
        thumbs[card["person"]] = blobs
    assert thumbs["0"][0] != thumbs["1"][0]
    assert {p["speaker"] for p in page.persons} == set(speakers)  # each speaker linked to a face
    # the figure: inline PNG, and as files for papers: the AU heatmap's rows and the lines named in the SVG
    figure = [i for i in page.images if i.get("class") == "figure"]
    assert len(figure) == 1 and "AU heatmap" in figure[0]["alt"]
    assert _png_size(base64.b64decode(figure[0]["src"].split(",", 1)[1]))[0] > 600
    svg = (batch["dest"] / "figures" / f"{batch['ids'][name]}.svg").read_text(encoding="utf-8")
    for label in ("Who spoke when", "action units", "AU12", "AU25", "face valence and expressivity", *speakers):
        assert label in svg, label
    assert _png_size((batch["dest"] / "figures" / f"{batch['ids'][name]}.png").read_bytes())[0] > 600
    # the cue table: one row per aligned utterance, its mismatch as the align stage stored it
    aligned = read_align(group).utterances
    rows = page.rows["cues"]
    assert len(rows) == len(aligned["id"]) == len(utts["id"])
    assert {r[-2] for r in rows} == {f"{m:.2g}" if m == m else "" for m in aligned["mismatch"]}
    assert "Strongest candidates" in page.text("candidates")
    assert "Provenance" in text and "mediapipe" in page.text("provenance")


@pytest.mark.slow
def test_index_links_every_session_with_the_flagged_one_first(batch: dict) -> None:
    from ether_prep.stages.qc import read_review
    from ether_prep.store import Store

    store = Store(batch["store"], mode="r")
    flagged = [sid for sid in store.session_ids() if read_review(store.session(sid)).needs_review]
    assert flagged == [batch["ids"]["dialogue"]]  # audio that stops before the picture
    page = _Page((batch["dest"] / "index.html").read_text(encoding="utf-8"))
    rows = page.rows["sessions"]
    names = [r[1].split()[0] for r in rows]
    assert sorted(names) == sorted(store.session_ids())
    assert names[0] == flagged[0] and rows[0][3] == "needs review" and "audio_complete" in rows[0][4]
    assert names[1] == batch["ids"]["truncated"] and rows[1][3] == "failed"
    hrefs = [h for h in page.links if h.startswith("sessions/")]
    assert sorted(hrefs) == sorted(f"sessions/{sid}.html" for sid in store.session_ids())
    assert all((batch["dest"] / h).is_file() for h in hrefs)
    # sortable by the qc figures: their columns, each cell carrying its number for the sorting script
    heads = page.text("sessions")
    assert "speech cover\u00adage" in heads and "link confi\u00addence" in heads and "audio missing (s)" in heads


@pytest.mark.slow
def test_failed_and_audio_only_pages_say_why(batch: dict) -> None:
    from ether_prep.store import Store

    store = Store(batch["store"], mode="r")
    _, page = _page(batch, "truncated")
    state = store.session(batch["ids"]["truncated"]).stage_state("audio")
    assert state.state == "failed" and state.error
    why = page.text("why")
    assert page.text("verdict") == "failed" and "What failed" in why and state.error in unescape(why)
    assert "truncated or corrupt" in why and "face:" in why
    assert page.rows["stages"] and any(r[:2] == ["audio", "failed"] for r in page.rows["stages"])
    assert "No faces" in page.text("no-persons") and not page.persons
    # audio only: the speech parts, a note saying there is no video
    _, page = _page(batch, "jfk")
    assert "Audio only" in page.text("audio-only") and "no video stream" in page.text("audio-only")
    assert page.text("transcript") and page.rows["cues"]
    figure = [i for i in page.images if i.get("class") == "figure"]
    assert len(figure) == 1 and "heatmap" not in figure[0]["alt"]
    assert not page.persons and not [i for i in page.images if i.get("class") == "thumb"]
    svg = (batch["dest"] / "figures" / f"{batch['ids']['jfk']}.svg").read_text(encoding="utf-8")
    assert "Who spoke when" in svg and "action units" not in svg


@pytest.mark.slow
def test_deidentified_report_leaves_out_thumbnails_text_and_names(batch: dict) -> None:
    from ether_prep.report import build_report
    from ether_prep.stages.utterances import read_transcript
    from ether_prep.store import Store

    dest = batch["tmp"] / "shared"
    summary = build_report(str(batch["store"]), dest, deidentify=True, progress=False)
    store = Store(batch["store"], mode="r")
    pages = [p.read_text(encoding="utf-8") for p in summary.pages]
    everything = "\n".join([*pages, summary.index.read_text(encoding="utf-8")])
    assert len(pages) == 4 and all(p.name.startswith("session-") for p in summary.pages)
    for sid in store.session_ids():
        group = store.session(sid)
        assert sid not in everything and group.info["relpath"] not in everything
        for t in (read_transcript(group).utterances.get("text", []) if sid.startswith(("dialogue", "jfk")) else []):
            assert str(t) not in everything
    assert "truncated.mp4" not in everything and "jfk.flac" not in everything and str(batch["tmp"]) not in everything
    assert 'class="thumb"' not in everything and 'class="person"' in everything
    assert everything.count('class="figure"') == 3  # the figures stay: times, speakers, AUs


def _external(html: str) -> list[str]:
    """Every URL in the page that is not inline (data:) or a relative link to another page of the report."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']|url\(\s*["']?([^"')]*)""", html)
    urls = [a or b for a, b in found]
    return [u for u in urls if not u.startswith("data:") and not re.fullmatch(r"(\.\./)?[\w./-]+\.html", u)]


async def _open_in_chromium(ws_url: str, url: str, shot: Path) -> dict:
    """Load ``url`` in the page behind ``ws_url`` (DevTools protocol) at 1280 px, wait for load, screenshot the
    whole page; return the requests the page sent, console errors and the page's scroll width."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        counter = 0
        events: list[dict] = []

        async def call(method: str, **params: object) -> dict:
            nonlocal counter
            counter += 1
            await ws.send_json({"id": counter, "method": method, "params": params})
            while True:
                msg = json.loads((await ws.receive(timeout=60)).data)
                if msg.get("id") == counter:
                    assert "error" not in msg, msg
                    return msg.get("result", {})
                events.append(msg)

        for domain in ("Network", "Page", "Log", "Runtime"):
            await call(f"{domain}.enable")
        await call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            assert time.monotonic() < deadline, "the page did not finish loading in 60 s"
            events.append(json.loads((await ws.receive(timeout=60)).data))
        width = (await call("Runtime.evaluate", expression="document.documentElement.scrollWidth"))["result"]["value"]
        height = (await call("Runtime.evaluate", expression="document.documentElement.scrollHeight"))["result"]["value"]
        await call("Emulation.setDeviceMetricsOverride", width=1280, height=int(height), deviceScaleFactor=1,
                   mobile=False)
        png = await call("Page.captureScreenshot", format="png")
        shot.write_bytes(base64.b64decode(png["data"]))
        requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
        errors = [e["params"] for e in events if e.get("method") in ("Log.entryAdded", "Runtime.exceptionThrown")]
        return {"scroll_width": width, "height": height, "requests": requests, "errors": errors}


@pytest.mark.slow
def test_pages_in_headless_chromium(batch: dict, tmp_path: Path) -> None:
    """Opened in Chromium at 1280 px: nothing overflows the width, and no request leaves the page (counted by the
    browser itself, every request the page sends; the HTML is searched for outside URLs too)."""
    import urllib.request

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: scripts/setup.sh installs it with apt-get (as root or with "
                    "sudo); without either it cannot be installed here")
    profile = tmp_path / "profile"
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--hide-scrollbars", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                             "--disable-background-networking", "--disable-component-update", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start its DevTools"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            target = next(t for t in json.loads(answer.read()) if t["type"] == "page")
        shots = {}
        for name, path in (("dialogue", batch["dest"] / "sessions" / f"{batch['ids']['dialogue']}.html"),
                           ("jfk", batch["dest"] / "sessions" / f"{batch['ids']['jfk']}.html"),
                           ("truncated", batch["dest"] / "sessions" / f"{batch['ids']['truncated']}.html"),
                           ("index", batch["dest"] / "index.html")):
            assert _external(path.read_text(encoding="utf-8")) == []
            shot = tmp_path / f"{name}.png"
            seen = asyncio.run(_open_in_chromium(target["webSocketDebuggerUrl"], path.as_uri(), shot))
            assert seen["scroll_width"] <= 1280, (name, seen["scroll_width"])
            leaving = [u for u in seen["requests"] if not u.startswith(("file:", "data:"))]
            assert leaving == [], (name, leaving)
            assert seen["requests"][0] == path.as_uri()  # the browser's count saw the page's own load
            assert seen["errors"] == [], (name, seen["errors"])
            assert _png_size(shot.read_bytes())[0] == 1280
            shots[name] = (shot, seen)
        keep = os.environ.get("ETHER_PREP_REPORT_SHOTS")  # a folder to keep the screenshots in, to look at them
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for name, (shot, seen) in shots.items():
                shutil.copy(shot, Path(keep) / shot.name)
                (Path(keep) / f"{name}.json").write_text(json.dumps({k: v for k, v in seen.items()}, indent=1))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_report_of_sessions_without_models(tmp_path: Path) -> None:
    """The fast tier: a store with only the audio stage run (no model), a truncated video failing it and an audio
    file done; the report renders both pages, saying what failed and what has not run."""
    from ether_prep.config import load_pipeline
    from ether_prep.report import build_report
    from ether_prep.runner import run_pipeline

    raw = tmp_path / "raw"
    raw.mkdir()
    whole = (DATA / "face" / "WolfgangLanger_Pexels.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(whole[: len(whole) // 10])
    shutil.copy(JFK, raw / "jfk.flac")
    store = tmp_path / "store.zarr"
    run_pipeline(load_pipeline("audio", audio_config(tmp_path)), raw, store, executor="inline", progress=False)
    summary = build_report(str(store), tmp_path / "report", progress=False)
    assert len(summary.pages) == 2 and [n.split("-")[0] for n in summary.failed] == ["truncated"]
    failed = _Page(next(p for p in summary.pages if p.name.startswith("truncated")).read_text())
    assert failed.text("verdict") == "failed" and "truncated or corrupt" in failed.text("why")
    done = _Page(next(p for p in summary.pages if p.name.startswith("jfk")).read_text())
    assert done.text("verdict") == "not checked" and "stage 'utterances' has not run" in done.text("no-figure")
    index = _Page(summary.index.read_text())
    assert [r[3] for r in index.rows["sessions"]] == ["failed", "not checked"]


def test_face_cue_steps_average_to_the_utterance_cues() -> None:
    """The report's per-frame valence and expressivity are the align stage's cue formulas before their average."""
    import numpy as np

    from ether_prep.align.cues import face_cue_steps, face_cues
    from ether_prep.face import AU_NAMES, EMOTION_NAMES

    names = [*AU_NAMES, *EMOTION_NAMES]
    values = np.random.default_rng(0).uniform(0, 1, (40, len(names)))
    values[5:9] = np.nan  # no face
    mask = np.isfinite(values).all(axis=1)
    valence, expressivity = face_cue_steps(values, names)
    assert np.isnan(valence[5:9]).all() and np.isfinite(valence[mask]).all()
    assert np.allclose((valence[mask].mean(), expressivity[mask].mean()), face_cues(values, mask, names))
    no_emotions = np.isin(names, EMOTION_NAMES)
    v2, e2 = face_cue_steps(values, names, available=~no_emotions)
    assert np.allclose((v2[mask].mean(), e2[mask].mean()), face_cues(values, mask, names, available=~no_emotions))
