"""The report's HTML: `render(runs, datasets, skipped)` gives one self-contained page.

Every text from a file goes through `_e`: `html.escape`, and bidi controls
shown as visible escapes (class names, paths and params are user-controlled,
and a right-to-left override would make `gnp.exe` read `exe.png`). The
page loads nothing: styles and the small sorting script are inline, images
are `data:` URIs. On load the script also writes a self-check into
`<body data-selfcheck>` (script errors, images that did not decode, rows
per runs table, where the first runs table and the best run's detail end
on the first screen), which the browser test reads.

Runs are shown best validation accuracy first: the `OPEN_RUNS` best of each
dataset in full, the others folded in `<details>`. A run with more than
`MAX_MATRIX_CLASSES` classes shows its most confused pairs instead of the
full matrix, so the page grows with the classes, not with their square.
"""

from __future__ import annotations

import datetime
import html
import json
import re
from collections import defaultdict
from typing import Any

from ..store import shown_path
from .leaderboard import short_run_id

OPEN_RUNS = 3
"""Runs per dataset shown in full; the others are folded (`<details>`)."""
MAX_MATRIX_CLASSES = 30
"""Above this many classes a run shows its `TOP_CONFUSED` most confused pairs, not the matrix."""
TOP_CONFUSED = 20
CLASSES_PER_TABLE = 12  # the per-class table is cut into tables this many classes wide, so it fits the page
SHOWN_PAIRS = 24

_STYLE = """
body{font:14px/1.35 system-ui,sans-serif;margin:16px 24px;color:#222;max-width:1400px}
h1{font-size:21px;margin:0 0 4px}h2{font-size:18px;margin:18px 0 6px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:12px 0 4px}p{margin:4px 0}
table{border-collapse:collapse;margin:4px 0;font-size:13px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td.t,th.t{text-align:left}table.runs th{cursor:pointer}table.runs td,table.runs th{white-space:nowrap}
tr.best td{background:#e6f4e6;font-weight:600}.note{color:#a15c00}.skip{color:#b00}.sub{color:#666;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.thumb{width:150px;font-size:11px;overflow-wrap:anywhere}
.thumb img,.ph{width:64px;height:64px}.ph{background:#eee;display:inline-block;text-align:center;font-size:9px}
.cm{font-size:12px}.cm td,.cm th{padding:1px 3px}.cm td{min-width:22px}.wide{overflow-x:auto}.run{margin:0 0 10px 8px}
details.run>summary{cursor:pointer;font-weight:600;margin:4px 0}.plot{max-width:420px}
"""

_SCRIPT = """
window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message))});
var _ce=console.error;console.error=function(){window.__errors.push([].join.call(arguments,' '));_ce.apply(console,arguments)};
function sortTable(th){var t=th.closest('table'),b=t.tBodies[0],i=[].indexOf.call(th.parentNode.children,th),
d=th.dataset.dir==='asc'?'desc':'asc';th.dataset.dir=d;var rows=[].slice.call(b.rows);
rows.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].textContent,c=y.cells[i].dataset.v||y.cells[i].textContent,
p=parseFloat(a),q=parseFloat(c),r=(isNaN(p)||isNaN(q))?a.localeCompare(c):p-q;return d==='asc'?r:-r});
rows.forEach(function(r){b.appendChild(r)})}
function bottom(s){var e=document.querySelector(s);return e?Math.round(e.getBoundingClientRect().bottom):null}
window.addEventListener('load',function(){var imgs=[].slice.call(document.images),rows={};
[].forEach.call(document.querySelectorAll('table.runs'),function(t){rows[t.id]=t.tBodies[0].rows.length});
document.body.dataset.selfcheck=JSON.stringify({errors:window.__errors,images:imgs.length,
broken:imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).map(function(i){return i.alt}),rows:rows,
screen:{height:window.innerHeight,width:window.innerWidth,scrollWidth:document.documentElement.scrollWidth,
table:bottom('table.runs'),best:bottom('.run.first .matrix')}})});
"""

_COLUMNS = ("#", "backbone", "head", "variant", "params", "val acc", "test acc", "test F1", "fit s", "hash",
            "images", "run")
_PARAMS_SHOWN = 48  # characters of a head's params in the runs table; the cell's title holds them all

# Bidi embeddings, overrides, isolates and marks: shown as `\u202e` so a name reads as stored.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def render(runs: list, datasets: list, skipped: list[tuple[str, str]], *, runs_dir: str) -> str:
    """The page: per dataset, the runs best first, the best in full, per-class scores, data and leakage."""
    by_dataset = defaultdict(list)
    for run in runs:
        by_dataset[run.dataset].append(run)
    names = list(by_dataset) or [runs_dir]
    body = [f"<h1>Model report: {_e(', '.join(names))}</h1>",
            f"<p class=sub>{_count(len(runs), 'run')} under {_e(runs_dir)}, {len(skipped)} skipped; written "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Best validation accuracy first; "
            "click a column header to sort.</p>"]
    for number, (name, mine) in enumerate(by_dataset.items()):
        ranked = best_first(mine)
        body.append(f"<h2>{_e(name)}: {_count(len(ranked), 'run')}</h2>")
        body.append(_runs_table(f"runs-{number}", ranked))
        body += [_run(run, rank, folded=False, first=number == 0 and rank == 1)
                 for rank, run in enumerate(ranked[:OPEN_RUNS], 1)]
        if len(ranked) > OPEN_RUNS:
            body.append(f"<h3>The other {_count(len(ranked) - OPEN_RUNS, 'run')} (click to open)</h3>")
            body += [_run(run, rank, folded=True) for rank, run in enumerate(ranked[OPEN_RUNS:], OPEN_RUNS + 1)]
        body.append(_per_class(ranked))
        body += [_dataset(data) for data in datasets if data.name == name]
    if skipped:
        body.append("<h2>Skipped run folders</h2><ul>")
        body += [f"<li class=skip>{_e(folder)}: {_e(reason)}</li>" for folder, reason in skipped]
        body.append("</ul>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(', '.join(names))} · bottleneck "
            f"report</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>{''.join(body)}</body></html>\n")


def best_first(runs: list) -> list:
    """Runs by validation accuracy, then test accuracy, highest first; runs without a score last, in run order."""
    def key(run):
        val, test = run.scores["val_accuracy"], run.scores["test_accuracy"]
        return (val is None, -(val or 0.0), test is None, -(test or 0.0))

    return sorted(runs, key=key)


def _runs_table(table_id: str, ranked: list) -> str:
    best = ranked[0] if ranked and ranked[0].scores["val_accuracy"] is not None else None
    head = "".join(f"<th class=t onclick='sortTable(this)'>{c}</th>" for c in _COLUMNS)
    rows = []
    for rank, run in enumerate(ranked, 1):
        params = json.dumps(run.params, sort_keys=True)
        cells = [
            _num(rank, 0), _td(run.backbone), _td(run.head + (" ★" if run is best else "")), _td(run.variant or "-"),
            f"<td class=t title='{_e(params)}'>{_e(_cut(params, _PARAMS_SHOWN))}</td>",
            _num(run.scores["val_accuracy"]), _num(run.scores["test_accuracy"]),
            _num(run.scores["test_macro_f1"]), _num(run.fit_seconds, 2), _td(run.content_hash[:8]),
            _num(run.n_images, 0),
            f"<td class=t title='{_e(run.folder.name)}'><a href='#{_anchor(run)}'>{_e(short_run_id(str(run.folder)))}</a></td>",
        ]
        rows.append(f"<tr{' class=best' if run is best else ''}>{''.join(cells)}</tr>")
    return (f"<div class=wide><table class=runs id={table_id}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _per_class(ranked: list) -> str:
    """F1 per class (precision and recall in each cell's title), a row per run, cut into tables that fit."""
    classes = ranked[0].class_names
    out = [f"<details{' open' if len(classes) <= MAX_MATRIX_CLASSES else ''}><summary><b>Per-class F1</b> "
           f"({len(classes)} classes, a row per run; hover a score for precision and recall)</summary>"]
    for start in range(0, len(classes), CLASSES_PER_TABLE):
        chunk = classes[start:start + CLASSES_PER_TABLE]
        rows = []
        for rank, run in enumerate(ranked, 1):
            per_class = run.metrics[run.split_shown]["per_class"]
            cells = [_td(f"{rank}. {run.backbone} / {run.head} {run.variant}".strip() + f" ({run.split_shown})")]
            for name in chunk:
                scores = per_class.get(name) if isinstance(per_class.get(name), dict) else {}
                p, r, f1 = (scores.get(k) if isinstance(scores.get(k), (int, float)) else None
                            for k in ("precision", "recall", "f1"))
                title = f"precision {_fmt(p)}, recall {_fmt(r)}"
                cells.append(f"<td title='{title}'>{_fmt(f1)}</td>")
            rows.append(f"<tr>{''.join(cells)}</tr>")
        head = "".join(f"<th>{_e(c)}</th>" for c in chunk)
        out.append(f"<div class=wide><table><tr><th class=t>run</th>{head}</tr>{''.join(rows)}</table></div>")
    return "".join(out) + "</details>"


def _dataset(data) -> str:
    out = [f"<h3>Data of {_e(data.feature_set)} ({_e(data.backbone)})</h3>"]
    if data.error:
        return out[0] + f"<p class=note>{_e(data.error)}</p>"
    splits = ("train", "validation", "test")
    out.append(f"<p>Images under {_e(data.data_root or 'an unrecorded data folder')}.</p>")
    out += [f"<p class=note>{_e(note)}</p>" for note in data.notes]
    out.append("<table><tr><th class=t>class</th>" + "".join(f"<th>{s}</th>" for s in splits) + "</tr>")
    for name, counts in data.counts.items():
        out.append(f"<tr>{_td(name)}" + "".join(f"<td>{counts.get(s, 0)}</td>" for s in splits) + "</tr>")
    totals = "".join(f"<td>{sum(c.get(s, 0) for c in data.counts.values())}</td>" for s in splits)
    out.append(f"<tr><th class=t>all</th>{totals}</tr></table>")
    if data.skipped:
        out.append(f"<p>{_count(len(data.skipped), 'file')} skipped at extraction:</p><ul>")
        out += [f"<li>{_e(path)}: {_e(reason)}</li>" for path, reason in data.skipped]
        out.append("</ul>")
    check = data.leakage
    shown = min(len(data.pair_rows), SHOWN_PAIRS)
    out.append(f"<h3>Near-duplicates and split leakage ({_e(data.backbone)} features)</h3>"
               f"<p>{_count(check.n_pairs, 'pair')} with cosine similarity &ge; {check.threshold:g}; "
               f"<b>{check.n_cross_split:,} cross train/validation/test</b>"
               f"{f' (the {shown} most similar shown)' if check.n_cross_split > shown else ''}; "
               f"{_count(len(data.conflicts), 'file')} stored under two classes.</p>")
    if data.pair_rows:
        out.append("<div class=grid>")
        for pair in data.pair_rows[:SHOWN_PAIRS]:
            out.append(f"<div class=thumb style='width:320px'>{_image(pair.get('image_a', ''), pair['a'])}"
                       f"{_image(pair.get('image_b', ''), pair['b'])}<br>{pair['similarity']:.4f}: "
                       f"{_e(pair['a'])} ({_e(pair['split_a'])}, {_e(pair['class_a'])}) ~ {_e(pair['b'])} "
                       f"({_e(pair['split_b'])}, {_e(pair['class_b'])})</div>")
        out.append("</div>")
    for group in data.conflicts:
        out.append(f"<p class=note>Same file in two classes: {_e(', '.join(group))}</p>")
    return "".join(out)


def _run(run, rank: int, *, folded: bool, first: bool = False) -> str:
    """A run's detail; `folded` puts it in a closed `<details>` whose summary is the heading."""
    scores = " · ".join(f"{label} {_fmt(run.scores[key])}" for label, key in
                        (("val", "val_accuracy"), ("test", "test_accuracy")) if run.scores[key] is not None)
    heading = " · ".join(p for p in (f"{rank}. {run.backbone}", run.head, run.variant, scores) if p)
    title = f"{run.dataset} · {run.backbone} · {run.head}{' · ' + run.variant if run.variant else ''} · {run.split_shown}"
    body = [f"<p class=sub>{_e(str(run.folder))}</p>"]
    body += [f"<p class=note>{_e(n)}</p>" for n in run.notes]
    epochs, best = run.metrics.get("epochs_run"), run.metrics.get("best_epoch")
    if isinstance(epochs, int) and isinstance(best, int):
        body.append(f"<p>Best epoch <b>{best}</b> of {epochs} (by validation loss; its weights are the head's).</p>")
    matrix = run.metrics[run.split_shown]["confusion_matrix"]
    body.append("<div class=grid>")
    if len(run.class_names) <= MAX_MATRIX_CLASSES:
        body.append(f"<div class=matrix>{_matrix(matrix, run.class_names, True, title)}</div>"
                    f"{_matrix(matrix, run.class_names, False, title)}")
    else:
        body.append(f"<div class=matrix>{_confused_pairs(matrix, run.class_names, title)}</div>")
    for caption, uri in run.plots.items():
        if uri:
            body.append(f"<p>{caption}{' (best epoch ' + str(best) + ')' if caption == 'history' and best else ''}:"
                        f"<br><img class=plot alt='{_e(caption)} of {_e(run.folder.name)}' src='{uri}'></p>")
    body.append("</div>")
    if run.misclassified:
        body.append(f"<p>Misclassified {run.split_shown} images, most confident first:</p><div class=grid>")
        for row in run.misclassified:
            body.append(f"<div class=thumb>{_image(row['image'], row['path'])}<br>{_e(row['path'])}<br>"
                        f"true <b>{_e(row['true'])}</b>, predicted <b>{_e(row['predicted'])}</b> "
                        f"{row['probability']:.2f}</div>")
        body.append("</div>")
    elif run.predictions is not None:
        body.append(f"<p>No misclassified {run.split_shown} image.</p>")
    classes = f"run{' first' if first else ''}"
    if folded:
        return (f"<details class='{classes}' id='{_anchor(run)}'><summary>{_e(heading)}</summary>"
                f"{''.join(body)}</details>")
    return f"<div class='{classes}' id='{_anchor(run)}'><h3>{_e(heading)}</h3>{''.join(body)}</div>"


def _matrix(matrix: list[list[int]], class_names: list[str], normalised: bool, title: str) -> str:
    what = "normalised by true class" if normalised else "counts"
    head = "".join(f"<th>{_e(c)}</th>" for c in class_names)
    rows = []
    for name, row in zip(class_names, matrix):
        total = sum(row) or 1
        cells = []
        for value in row:
            share = value / total
            text = f"{share:.2f}" if normalised else str(value)
            cells.append(f"<td style='background:rgba(31,119,180,{share:.3f})'>{text}</td>")
        rows.append(f"<tr><th class=t>{_e(name)}</th>{''.join(cells)}</tr>")
    return (f"<div><b>Confusion matrix, {what}</b><br><small>{_e(title)}; rows true, columns predicted</small>"
            f"<table class=cm><tr><th></th>{head}</tr>{''.join(rows)}</table></div>")


def _confused_pairs(matrix: list[list[int]], class_names: list[str], title: str) -> str:
    """The `TOP_CONFUSED` largest off-diagonal counts: a matrix of many classes would not be read anyway."""
    pairs = sorted(((count, t, p) for t, row in enumerate(matrix) for p, count in enumerate(row) if t != p and count),
                   key=lambda item: (-item[0], item[1], item[2]))
    rows = "".join(
        f"<tr>{_td(class_names[t])}{_td(class_names[p])}<td>{count}</td>"
        f"<td>{count / (sum(matrix[t]) or 1):.2f}</td></tr>"
        for count, t, p in pairs[:TOP_CONFUSED]
    )
    return (f"<div><b>Most confused classes</b> ({len(class_names)} classes: the full matrix is in the run's "
            f"metrics.json and confusion_matrix.png)<br><small>{_e(title)}</small>"
            f"<table><tr><th class=t>true</th><th class=t>predicted</th><th>images</th><th>share of true</th></tr>"
            f"{rows or '<tr><td colspan=4>none</td></tr>'}</table></div>")


def _anchor(run) -> str:
    return "run-" + _e(run.folder.name)


def _image(uri: str, path: str) -> str:
    if not uri:
        return f"<span class=ph title='{_e(path)}'>missing:<br>{_e(path[-40:])}</span>"
    return f"<img alt='{_e(path)}' src='{uri}'>"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _td(text: Any) -> str:
    return f"<td class=t>{_e(str(text))}</td>"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "<td data-v=''>-</td>"
    return f"<td data-v='{value}'>{value:.{digits}f}</td>"


def _e(text: str) -> str:
    # A file name's bytes that are not UTF-8 as \xNN, bidi controls as \uNNNN: shown, never acted on.
    visible = _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", shown_path(text))
    return html.escape(visible, quote=True)
