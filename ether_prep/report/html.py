"""Self-contained HTML: one page per session and the batch index. Pictures are inlined (``data:`` URIs), the
style and the index's sorting script are in the page: nothing is fetched, so a page opens offline."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from .figures import person_label, speaker_label

if TYPE_CHECKING:
    from .data import SessionData

__all__ = ["INDEX_METRICS", "IndexRow", "index_page", "session_page", "verdict"]

_STYLE = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;margin:0;
 background:#fafafa}
main{max-width:1240px;margin:0 auto;padding:16px 20px}
h1{font-size:20px;margin:4px 0;overflow-wrap:anywhere}
h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;overflow-wrap:anywhere}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-weight:600;font-size:12px}
.review{background:#fff0c2;color:#7a5200}.failed{background:#ffd9d9;color:#8a0000}
.ok{background:#dcf5dc;color:#1d5e1d}.unchecked{background:#e6e6e6;color:#444}
.box{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin:8px 0;overflow-wrap:anywhere}
.box.failed{border-color:#e99}.box.review{border-color:#e8c66a}
.side{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.side .fig{flex:3 1 620px;min-width:0}
.side .transcript{flex:1 1 280px;min-width:0;max-height:900px;overflow-y:auto;background:#fff;border:1px solid #ddd;
 border-radius:6px;padding:6px 10px}
img.figure{max-width:100%;height:auto;display:block;background:#fff}
.transcript ol{list-style:none;margin:0;padding:0}.transcript li{margin:0 0 6px}
.t{color:#777;font-size:12px;font-variant-numeric:tabular-nums}.who{font-weight:600}
.persons{display:flex;flex-wrap:wrap;gap:12px}
.person{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;flex:1 1 300px;min-width:0}
.thumbs{display:flex;gap:6px;flex-wrap:wrap;margin:4px 0}.thumbs figure{margin:0}
.thumbs img{height:112px;width:auto;max-width:100%;border-radius:3px}
.thumbs figcaption{font-size:11px;color:#666;text-align:center}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
td{overflow-wrap:break-word}
th{background:#f0f0f0}th[data-col]{cursor:pointer;user-select:none}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.flagged td{background:#fff7e0}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
.note{color:#555;font-style:italic}
table#sessions{font-size:12px;width:100%}table#sessions td.why{min-width:170px}
table#sessions th,table#sessions td{padding:3px 4px}
table#sessions td.name{min-width:150px;max-width:170px;overflow-wrap:anywhere}
.sub{color:#666;font-size:11px}
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th[data-col]').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = +th.dataset.col;
    var down = th.dataset.dir !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = down ? 'asc' : 'desc';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : (isNaN(nx) ? 1 : 0) - (isNaN(ny) ? 1 : 0) ||
              String(x).localeCompare(String(y));
      return down ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

# qc metrics shown in the index, in order (name in sessions.parquet / the qc stage's metrics, heading)
INDEX_METRICS = (("speech_share", "speech share"), ("speech_coverage", "speech cover\u00adage"),
                 ("words_per_minute", "words / min"), ("speakers_with_face", "speakers with face"),
                 ("link_confidence", "link confi\u00addence"), ("speaker_face_share", "speaker face share"),
                 ("corrupt_frames", "corrupt frames"), ("dropped_frames", "dropped frames"),
                 ("audio_missing_s", "audio missing (s)"), ("speakers", "speak\u00aders"), ("persons", "persons"))


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main>{js}</body></html>\n")


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return escape(str(v))
    return "" if not math.isfinite(f) else f"{f:.{digits}g}"


def _sort_value(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return escape(str(v or ""), quote=True)
    return "" if not math.isfinite(f) else repr(f)


def _time(t: float) -> str:
    m, s = divmod(max(float(t), 0.0), 60)
    return f"{int(m)}:{s:04.1f}"


def _img(data: bytes, mime: str, alt: str, cls: str) -> str:
    return (f'<img class="{cls}" alt="{escape(alt, quote=True)}" '
            f'src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}">')


def verdict(data: SessionData) -> tuple[str, str, list[str]]:
    """(css class, label, reasons) of a session: failed (a stage failed or is damaged), needs review (qc),
    ok, or not checked (qc has not run)."""
    if data.failed:
        return "failed", "failed", [f"{r.stage}: {r.message or r.state}" for r in data.failed]
    if data.review.needs_review:
        return "review", "needs review", list(data.review.reasons)
    if data.review.needs_review is False:
        return "ok", "ok", []
    return "unchecked", "not checked", ["the qc stage has not run on this session"]


def _scrub(text: str, data: SessionData, deidentify: bool, hide: Sequence[str]) -> str:
    """``text`` with the recording's path and name replaced when de-identifying (messages name the file)."""
    if deidentify:
        for h in sorted((h for h in hide if h), key=len, reverse=True):
            text = text.replace(h, "[recording]")
        text = text.replace(data.id, data.name)
    return text


def session_page(data: SessionData, figure_png: bytes | None, deidentify: bool = False,
                 hide: Sequence[str] = ()) -> str:
    """The HTML page of one session. ``hide``: strings (the recording's path, name) left out of messages when
    ``deidentify``, which also leaves out thumbnails and transcript text."""
    if deidentify:  # every message shown (reasons, notes, what is missing) without the recording's name
        data.missing = {k: _scrub(v, data, deidentify, hide) for k, v in data.missing.items()}
        for p in data.persons:
            p.thumbnail_note = _scrub(p.thumbnail_note, data, deidentify, hide)
    cls, label, reasons = verdict(data)
    roles = data.roles
    parts = [f"<h1>{escape(data.name)}</h1>",
             '<p class="meta">'
             + ("" if deidentify else f"recording <code>{escape(data.relpath)}</code> · ")
             + f"{escape(data.kind or 'unknown kind')} · {_num(data.duration, 4)} s · "
               f'<span class="badge {cls}" id="verdict">{escape(label)}</span> · '
               f'<a href="../index.html">batch index</a></p>']
    if reasons and cls in ("failed", "review"):
        what = "What failed" if cls == "failed" else "Why it needs review"
        parts.append(f'<div class="box {cls}" id="why"><b>{what}</b><ul>'
                     + "".join(f"<li>{escape(_scrub(r, data, deidentify, hide))}</li>" for r in reasons)
                     + "</ul></div>")
    face = next((r for r in data.stages if r.stage == "face"), None)
    if face is not None and face.state == "skipped":
        parts.append(f'<div class="box" id="audio-only"><b>Audio only</b>: '
                     f"{escape(_scrub(face.message or 'no video', data, deidentify, hide))}. "
                     f"The speech parts are shown; there are no faces.</div>")
    if deidentify:
        parts.append('<p class="note">De-identified: thumbnails and transcript text are left out; the session is '
                     "named by its keyed alias.</p>")
    parts.append(_stages(data, deidentify, hide))
    parts.append(_timeline_section(data, figure_png, roles, deidentify))
    parts.append(_persons_section(data, roles, deidentify))
    parts.append(_cues_section(data, roles, deidentify))
    parts.append(_qc_section(data))
    parts.append(_provenance(data))
    return _page(f"{data.name}: ether-prep report", "\n".join(parts), _SORT_SCRIPT)


def _stages(data: SessionData, deidentify: bool, hide: Sequence[str]) -> str:
    rows = "".join(
        f'<tr class="{"flagged" if r.state in ("failed", "damaged") else ""}"><td>{escape(r.stage)}</td>'
        f"<td>{escape(r.state)}</td><td>{escape(_scrub(r.message, data, deidentify, hide))}</td></tr>"
        for r in data.stages)
    return ('<h2>Stages</h2><div class="scroll"><table id="stages"><thead><tr><th>stage</th><th>state</th>'
            f"<th>note or failure</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _timeline_section(data: SessionData, figure_png: bytes | None, roles: dict[str, str], deidentify: bool) -> str:
    out = ["<h2>Timeline, faces over time and transcript</h2>"]
    if figure_png is None:
        why = "; ".join(f"{k}: {v}" for k, v in data.missing.items() if k in ("turns", "utterances", "faces"))
        out.append(f'<p class="note" id="no-figure">Nothing to draw on a time axis ({escape(why or "no data")}).</p>')
        return "".join(out)
    heat = " with an AU heatmap and valence/expressivity lines per person" if data.persons else ""
    alt = f"timeline of speakers, utterances, dialogue pairs and uncovered speech{heat}"
    fig = f'<div class="fig">{_img(figure_png, "image/png", alt, "figure")}</div>'
    utts = data.utterances
    if utts is None:
        tx = f'<p class="note">No transcript: {escape(data.missing.get("utterances", ""))}</p>'
    elif not len(utts.get("id", ())):
        tx = '<p class="note">No speech was transcribed.</p>'
    else:
        items = []
        for a, b, s, text in zip(utts["start"], utts["end"], utts["speaker"], utts["text"], strict=True):
            words = '<span class="note">[text left out]</span>' if deidentify else escape(str(text))
            items.append(f'<li><span class="t">{_time(a)}–{_time(b)}</span> '
                         f'<span class="who">{escape(speaker_label(str(s), roles))}</span><br>{words}</li>')
        tx = f'<ol id="transcript">{"".join(items)}</ol>'
    out.append(f'<div class="side">{fig}<div class="transcript"><b>Transcript</b>{tx}</div></div>')
    return "".join(out)


def _persons_section(data: SessionData, roles: dict[str, str], deidentify: bool) -> str:
    out = ["<h2>Persons on screen</h2>"]
    if data.faces is None:
        out.append(f'<p class="note" id="no-persons">No faces: {escape(data.missing.get("faces", ""))}</p>')
        return "".join(out)
    if not data.persons:
        out.append('<p class="note" id="no-persons">The face stage found no face.</p>')
        return "".join(out)
    cards = []
    for p in data.persons:
        if deidentify:
            thumbs = '<p class="note">thumbnails left out (de-identified)</p>'
        elif p.thumbnails:
            thumbs = '<div class="thumbs">' + "".join(
                f"<figure>{_img(t.png, 'image/png', f'person {p.person} at {t.time:.2f} s', 'thumb')}"
                f"<figcaption>{_time(t.time)}</figcaption></figure>" for t in p.thumbnails) + "</div>"
        else:
            thumbs = f'<p class="note">{escape(p.thumbnail_note or "no thumbnail")}</p>'
        link = (f"linked to <b>{escape(speaker_label(p.speaker, roles))}</b>, confidence "
                f"<b>{_num(p.confidence, 2)}</b> ({escape(p.source)})" if p.speaker else "<b>no speaker linked</b>")
        cards.append(f'<div class="person" data-person="{p.person}" data-speaker="{escape(p.speaker, quote=True)}">'
                     f"<b>{escape(person_label(p, roles))}</b>{thumbs}<div>{link}</div>"
                     f'<div class="t">tracks {", ".join(map(str, p.tracks))} · {p.n_frames} frame(s) with a face, '
                     f"{_time(p.first_time) if math.isfinite(p.first_time) else '-'}–"
                     f"{_time(p.last_time) if math.isfinite(p.last_time) else '-'}</div></div>")
    out.append(f'<div class="persons" id="persons">{"".join(cards)}</div>')
    return "".join(out)


def _cues_section(data: SessionData, roles: dict[str, str], deidentify: bool) -> str:
    out = ["<h2>Incongruence cues per utterance</h2>"]
    if data.alignment is None:
        out.append(f'<p class="note">No cues: {escape(data.missing.get("alignment", ""))}</p>')
        return "".join(out)
    u = data.alignment.utterances
    n = len(u.get("id", ()))
    if not n:
        out.append('<p class="note">No utterances.</p>')
        return "".join(out)
    mismatch = np.nan_to_num(np.asarray(u["mismatch"], dtype=float), nan=-1.0)
    flagged = np.array([bool(f) for f in u["flags"]])
    order = sorted(range(n), key=lambda i: (not flagged[i], -mismatch[i], i))
    top = [i for i in order if flagged[i] or mismatch[i] >= 0][:5]
    out.append('<p class="note">Cues rank utterances for annotators; they are not labels (formulas in '
               "ether_prep/align/cues.py). Mismatch needs the speaker's face on screen.</p>")
    if top:
        items = []
        for i in top:
            words = "" if deidentify else (f"“{escape(str(u['text'][i]))}”" + (
                f" (distress word <b>{escape(str(u['distress_word'][i]))}</b>)" if u["distress_word"][i] else ""))
            flags = f' <span class="badge review">{escape(str(u["flags"][i]))}</span>' if flagged[i] else ""
            items.append(f"<li>{_time(u['start'][i])} <b>{escape(speaker_label(str(u['speaker'][i]), roles))}</b> "
                         f"mismatch {_num(u['mismatch'][i], 2)}{flags} {words}</li>")
        out.append(f'<div class="box" id="candidates"><b>Strongest candidates</b><ol>{"".join(items)}</ol></div>')
    cols = [("start", "start"), ("speaker", "speaker"), ("role", "role")]
    cols += [] if deidentify else [("text", "words"), ("distress_word", "distress word")]
    cols += [("text_valence", "text valence"), ("text_arousal", "text arousal"), ("text_distress", "text distress"),
             ("face_valence", "face valence"), ("face_expressivity", "face expressivity"),
             ("speaker_coverage", "face coverage"), ("mismatch", "mismatch"), ("flags", "flags")]
    head = "".join(f'<th data-col="{k}">{escape(h)}</th>' for k, (_, h) in enumerate(cols))
    rows = []
    for i in order:
        cells = []
        for key, _ in cols:
            v = u[key][i]
            if key == "start":
                cells.append(f'<td class="num" data-sort="{_sort_value(v)}">{_time(v)}</td>')
            elif key == "speaker" or isinstance(v, str | np.str_):
                cells.append(f'<td data-sort="{escape(str(v), quote=True)}">{escape(str(v))}</td>')
            else:
                cells.append(f'<td class="num" data-sort="{_sort_value(v)}">{_num(v, 2)}</td>')
        rows.append(f'<tr class="{"flagged" if flagged[i] else ""}">{"".join(cells)}</tr>')
    out.append(f'<div class="scroll"><table id="cues" class="sortable"><thead><tr>{head}</tr></thead>'
               f'<tbody>{"".join(rows)}</tbody></table></div>')
    return "".join(out)


def _qc_section(data: SessionData) -> str:
    out = ["<h2>Quality check</h2>"]
    if data.review.needs_review is None:
        out.append(f'<p class="note">Not checked: {escape(data.missing.get("review", "the qc stage has not run"))}'
                   "</p>")
        return "".join(out)
    rows = "".join(f"<tr><td>{escape(k)}</td><td class='num'>{_num(v, 4) or 'does not apply'}</td></tr>"
                   for k, v in sorted(data.review.metrics.items()))
    out.append(f'<div class="scroll"><table id="qc"><thead><tr><th>metric</th><th>value</th></tr></thead>'
               f"<tbody>{rows}</tbody></table></div>")
    return "".join(out)


def _provenance(data: SessionData) -> str:
    rows = []
    for r in data.stages:
        m = r.marker
        if not m.get("version") and not m.get("backend"):
            continue
        model = m.get("model") or {}
        model_text = ", ".join(f"{k}: {v}" for k, v in model.items()) if isinstance(model, dict) else str(model)
        libs = ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items())
        params = json.dumps(m.get("params") or {}, sort_keys=True, separators=(", ", ": "))
        rows.append(f"<tr><td>{escape(r.stage)}</td><td>{escape(str(m.get('version', '')))}</td>"
                    f"<td>{escape(str(m.get('backend', '')))}</td><td>{escape(model_text)}</td>"
                    f"<td><pre>{escape(params)}</pre></td><td>{escape(libs)}</td>"
                    f"<td>{escape(str(m.get('finished_at') or ''))}</td></tr>")
    return ('<h2>Provenance</h2><div class="scroll"><table id="provenance"><thead><tr><th>stage</th><th>version</th>'
            "<th>backend</th><th>model</th><th>parameters</th><th>libraries</th><th>finished</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


class IndexRow:
    """One session's line in the index."""

    def __init__(self, data: SessionData, href: str, deidentify: bool, hide: Sequence[str]) -> None:
        self.cls, self.label, reasons = verdict(data)
        self.reasons = [_scrub(r, data, deidentify, hide) for r in reasons]
        self.name, self.href = data.name, href
        self.relpath = "" if deidentify else data.relpath
        self.kind, self.duration = data.kind, data.duration
        self.metrics = dict(data.review.metrics)
        self.utterances = len(data.utterances.get("id", ())) if data.utterances is not None else None

    @property
    def rank(self) -> int:
        """Needs review first, then failed, then not checked, then ok."""
        return {"review": 0, "failed": 1, "unchecked": 2, "ok": 3}[self.cls]


def index_page(rows: list[IndexRow], store: str, deidentify: bool = False) -> str:
    """The batch index: one row per session, needs-review sessions first with their reasons, sortable."""
    rows = sorted(rows, key=lambda r: (r.rank, r.name))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    heads = ["#", "session", "dura\u00adtion (s)", "verdict", "reasons", "utter\u00adances",
             *(h for _, h in INDEX_METRICS)]
    head = "".join(f'<th data-col="{k}">{escape(h)}</th>' for k, h in enumerate(heads))
    body = []
    for k, r in enumerate(rows):
        where = f"{r.relpath} · {r.kind}" if r.relpath else r.kind
        shown = [x if len(x) <= 240 else x[:239] + "…" for x in r.reasons]  # the page has them whole
        cells = [f'<td class="num" data-sort="{k}">{k + 1}</td>',
                 f'<td class="name" data-sort="{escape(r.name, quote=True)}"><a href="{escape(r.href, quote=True)}">'
                 f'{escape(r.name)}</a><br><span class="sub">{escape(where)}</span></td>',
                 f'<td class="num" data-sort="{_sort_value(r.duration)}">{_num(r.duration, 4)}</td>',
                 f'<td data-sort="{r.rank}"><span class="badge {r.cls}">{escape(r.label)}</span></td>',
                 f'<td class="why" data-sort="{len(r.reasons)}">{"<br>".join(escape(x) for x in shown)}</td>',
                 f'<td class="num" data-sort="{_sort_value(r.utterances)}">{_num(r.utterances, 6)}</td>']
        cells += [f'<td class="num" data-sort="{_sort_value(r.metrics.get(m))}">{_num(r.metrics.get(m))}</td>'
                  for m, _ in INDEX_METRICS]
        body.append(f'<tr class="session {r.cls}" data-verdict="{r.cls}">{"".join(cells)}</tr>')
    summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    html = (f"<h1>ether-prep report</h1><p class=\"meta\">{len(rows)} session(s) of <code>"
            f"{escape('[store]' if deidentify else store)}</code>: {escape(summary)}. Sessions that need review "
            "come first; click a column heading to sort by it.</p>"
            f'<div class="scroll"><table id="sessions" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')
    return _page("ether-prep report", html, _SORT_SCRIPT)
