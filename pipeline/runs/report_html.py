"""The report's HTML: `render(runs, datasets, skipped)` gives one self-contained page.

Every text from a file goes through `html.escape` (class names, paths and
params are user-controlled). The page loads nothing: styles and the small
sorting script are inline, images are `data:` URIs. On load the script
also writes a self-check into `<body data-selfcheck>` (script errors, images
that did not decode, rows per runs table), which the browser test reads.
"""

from __future__ import annotations

import datetime
import html
import json
from collections import defaultdict
from typing import Any

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.t,th.t{text-align:left}table.runs th{cursor:pointer}
tr.best td{background:#e6f4e6;font-weight:600}.note{color:#a15c00}.skip{color:#b00}
.grid{display:flex;flex-wrap:wrap;gap:8px}.thumb{width:150px;font-size:11px;overflow-wrap:anywhere}
.thumb img,.ph{width:64px;height:64px}.ph{background:#eee;display:inline-block;text-align:center;font-size:9px}
.cm td{min-width:28px}.wide{overflow-x:auto}.run{margin-left:8px}
"""

_SCRIPT = """
window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message))});
var _ce=console.error;console.error=function(){window.__errors.push([].join.call(arguments,' '));_ce.apply(console,arguments)};
function sortTable(th){var t=th.closest('table'),b=t.tBodies[0],i=[].indexOf.call(th.parentNode.children,th),
d=th.dataset.dir==='asc'?'desc':'asc';th.dataset.dir=d;var rows=[].slice.call(b.rows);
rows.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].textContent,c=y.cells[i].dataset.v||y.cells[i].textContent,
p=parseFloat(a),q=parseFloat(c),r=(isNaN(p)||isNaN(q))?a.localeCompare(c):p-q;return d==='asc'?r:-r});
rows.forEach(function(r){b.appendChild(r)})}
window.addEventListener('load',function(){var imgs=[].slice.call(document.images),rows={};
[].forEach.call(document.querySelectorAll('table.runs'),function(t){rows[t.id]=t.tBodies[0].rows.length});
document.body.dataset.selfcheck=JSON.stringify({errors:window.__errors,images:imgs.length,
broken:imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).map(function(i){return i.alt}),rows:rows})});
"""

_COLUMNS = ("backbone", "head", "kind", "params", "val acc", "test acc", "test macro F1", "fit s", "content hash",
            "images", "run")


def render(runs: list, datasets: list, skipped: list[tuple[str, str]], *, runs_dir: str) -> str:
    """The page: per dataset, the runs table, per-class scores, data and leakage; then each run."""
    by_dataset = defaultdict(list)
    for run in runs:
        by_dataset[run.dataset].append(run)
    body = [f"<h1>Model report: {_e(runs_dir)}</h1>",
            f"<p>{len(runs)} runs, {len(skipped)} skipped; written "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Click a column header to sort.</p>"]
    for number, (name, mine) in enumerate(by_dataset.items()):
        body.append(f"<h2>Dataset {_e(name)}</h2>")
        body.append(_runs_table(f"runs-{number}", mine))
        body.append(_per_class(mine))
        for data in datasets:
            if data.name == name:
                body.append(_dataset(data))
    if skipped:
        body.append("<h2>Skipped run folders</h2><ul>")
        body += [f"<li class=skip>{_e(folder)}: {_e(reason)}</li>" for folder, reason in skipped]
        body.append("</ul>")
    body.append("<h2>Runs</h2>")
    body += [_run(run) for run in runs]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>bottleneck report</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>{''.join(body)}</body></html>\n")


def _runs_table(table_id: str, runs: list) -> str:
    with_val = [r for r in runs if r.scores["val_accuracy"] is not None]
    best = max(with_val, key=lambda r: r.scores["val_accuracy"]) if with_val else None
    head = "".join(f"<th class=t onclick='sortTable(this)'>{c}</th>" for c in _COLUMNS)
    rows = []
    for i, run in enumerate(runs):
        sweep = run.metrics.get("sweep")
        params = json.dumps(run.params, sort_keys=True)
        if isinstance(sweep, dict):
            params = f"sweep chose {json.dumps(sweep.get('params', run.params), sort_keys=True)}"
        cells = [
            _td(run.backbone), _td(run.head + (" ★ best validation" if run is best else "")), _td(run.kind),
            _td(params), _num(run.scores["val_accuracy"]), _num(run.scores["test_accuracy"]),
            _num(run.scores["test_macro_f1"]), _num(run.fit_seconds, 2), _td(run.content_hash[:12]),
            _num(run.n_images, 0), f"<td class=t><a href='#run-{_e(run.folder.name)}'>{_e(run.folder.name)}</a></td>",
        ]
        rows.append(f"<tr{' class=best' if run is best else ''}>{''.join(cells)}</tr>")
    return (f"<div class=wide><table class=runs id={table_id}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _per_class(runs: list) -> str:
    classes = runs[0].class_names
    head = "".join(f"<th colspan=3>{_e(r.backbone)} / {_e(r.head)} ({r.split_shown})</th>" for r in runs)
    sub = "<th class=t>class</th>" + "<th>P</th><th>R</th><th>F1</th>" * len(runs)
    rows = []
    for name in classes:
        cells = [_td(name)]
        for run in runs:
            scores = run.metrics[run.split_shown]["per_class"].get(name)
            scores = scores if isinstance(scores, dict) else {}
            cells += [_num(scores.get(k) if isinstance(scores.get(k), (int, float)) else None)
                      for k in ("precision", "recall", "f1")]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<h3>Per-class precision / recall / F1</h3><div class=wide><table><tr><th></th>{head}</tr>"
            f"<tr>{sub}</tr>{''.join(rows)}</table></div>")


def _dataset(data) -> str:
    out = [f"<h3>Data of {_e(data.feature_set)} ({_e(data.backbone)})</h3>"]
    if data.error:
        return out[0] + f"<p class=note>{_e(data.error)}</p>"
    splits = ("train", "validation", "test")
    out.append(f"<p>Images under {_e(data.data_root or 'an unrecorded data folder')}.</p><table><tr><th class=t>class</th>"
               + "".join(f"<th>{s}</th>" for s in splits) + "</tr>")
    for name, counts in data.counts.items():
        out.append(f"<tr>{_td(name)}" + "".join(f"<td>{counts.get(s, 0)}</td>" for s in splits) + "</tr>")
    totals = "".join(f"<td>{sum(c.get(s, 0) for c in data.counts.values())}</td>" for s in splits)
    out.append(f"<tr><th class=t>all</th>{totals}</tr></table>")
    if data.skipped:
        out.append(f"<p>{len(data.skipped)} files skipped at extraction:</p><ul>")
        out += [f"<li>{_e(path)}: {_e(reason)}</li>" for path, reason in data.skipped]
        out.append("</ul>")
    check = data.leakage
    out.append(f"<h3>Near-duplicates and split leakage ({_e(data.backbone)} features)</h3>"
               f"<p>{check.n_pairs} pairs with cosine similarity &ge; {check.threshold:g}; "
               f"<b>{check.n_cross_split} cross train/validation/test</b>"
               f"{f' (the {len(data.pair_rows)} most similar listed)' if check.n_cross_split > len(data.pair_rows) else ''}; "
               f"{len(data.conflicts)} files stored under two classes.</p>")
    if data.pair_rows:
        out.append("<div class=grid>")
        for pair in data.pair_rows[:24]:
            out.append(f"<div class=thumb style='width:320px'>{_image(pair.get('image_a', ''), pair['a'])}"
                       f"{_image(pair.get('image_b', ''), pair['b'])}<br>{pair['similarity']:.4f}: "
                       f"{_e(pair['a'])} ({_e(pair['split_a'])}, {_e(pair['class_a'])}) ~ {_e(pair['b'])} "
                       f"({_e(pair['split_b'])}, {_e(pair['class_b'])})</div>")
        out.append("</div>")
    for group in data.conflicts:
        out.append(f"<p class=note>Same file in two classes: {_e(', '.join(group))}</p>")
    return "".join(out)


def _run(run) -> str:
    title = f"{run.dataset} · {run.backbone} · {run.head} · {run.split_shown}"
    out = [f"<div class=run id='run-{_e(run.folder.name)}'><h3>{_e(title)}</h3><p>{_e(str(run.folder))}</p>"]
    out += [f"<p class=note>{_e(n)}</p>" for n in run.notes]
    epochs, best = run.metrics.get("epochs_run"), run.metrics.get("best_epoch")
    if isinstance(epochs, int) and isinstance(best, int):
        out.append(f"<p>Best epoch <b>{best}</b> of {epochs} (by validation loss; its weights are the head's).</p>")
    matrix = run.metrics[run.split_shown]["confusion_matrix"]
    out.append(f"<div class=grid>{_matrix(matrix, run.class_names, True, title)}"
               f"{_matrix(matrix, run.class_names, False, title)}</div>")
    for caption, uri in run.plots.items():
        if uri:
            out.append(f"<p>{caption}{' (best epoch ' + str(best) + ')' if caption == 'history' and best else ''}:"
                       f"<br><img alt='{_e(caption)} of {_e(run.folder.name)}' src='{uri}' style='max-width:640px'></p>")
    if run.misclassified:
        out.append(f"<p>Misclassified {run.split_shown} images, most confident first:</p><div class=grid>")
        for row in run.misclassified:
            out.append(f"<div class=thumb>{_image(row['image'], row['path'])}<br>{_e(row['path'])}<br>"
                       f"true <b>{_e(row['true'])}</b>, predicted <b>{_e(row['predicted'])}</b> "
                       f"{row['probability']:.2f}</div>")
        out.append("</div>")
    elif run.predictions is not None:
        out.append(f"<p>No misclassified {run.split_shown} image.</p>")
    return "".join(out) + "</div>"


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


def _image(uri: str, path: str) -> str:
    if not uri:
        return f"<span class=ph title='{_e(path)}'>missing:<br>{_e(path[-40:])}</span>"
    return f"<img alt='{_e(path)}' src='{uri}'>"


def _td(text: Any) -> str:
    return f"<td class=t>{_e(str(text))}</td>"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "<td data-v=''>-</td>"
    return f"<td data-v='{value}'>{value:.{digits}f}</td>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
