"""The study's report: result tables over a runs folder, HTML renderings of executed notebooks, ``index.html``.

Everything here reads files and writes files atomically; nothing trains. :func:`write_report` is what
:func:`ferlib.study.run_study` calls at the end, and it can be called alone to refresh a report::

    write_report(runs_dir="runs/smoke", reports_dir="reports/smoke")

Layout of ``reports_dir``::

    index.html        the answer (findings in words, accuracy against noise, each method against CE seed by seed,
                      the memorisation drop, the rare classes' gains, the two starts), summary table, failures, skipped
                      (corrupted) runs, links to every rendered notebook (outputs only)
    results.csv       one row per finished run (collect_results), tidy
    summary.csv       one row per configuration: mean and std over seeds (ferlib.analysis.summary_table)
    paired.csv        each method against CE, seed by seed (ferlib.analysis.paired_comparison)
    memorisation.csv  peak and last test epoch per setting, mean and std over seeds
                      (ferlib.analysis.memorisation_summary)
    class_gains.csv   each method's per-class accuracy minus CE's (ferlib.analysis.class_gains)
    init_contrast.csv the grid's start against the other, seed by seed (ferlib.analysis.init_contrast_table; only
                      when the runs folder has an init/ folder)
    cross_eval.csv    the runs' scores on other datasets, mean and std over seeds (ferlib.analysis.cross_eval_summary;
                      only when a run has them)
    failures.json     {key: {notebook, error, traceback, ...}} of what failed (written by the runner)
    study.json        the resolved study spec of the last invocation
    <notebook>.ipynb / .html          executed analysis notebooks (00, 01, 03, 04, 05, 06, 99)
    runs/<run_id>.ipynb / .html       one executed 02_train per cell, of every kind (grid, ablations/, cleanlab/, init/)
"""
from __future__ import annotations

import html
import json
import math
import os
from datetime import datetime
from pathlib import Path

from ferlib import rundir
from ferlib.paths import portable_path
from ferlib.results import atomic_write_text, read_json, write_table

from .spec import find_cell

__all__ = ["render_html", "render_all", "write_report", "NOTEBOOK_DESCRIPTIONS"]

#: One line per study notebook, used when a notebook has no markdown title of its own.
NOTEBOOK_DESCRIPTIONS = {
    "00_prepare_data": "Dataset: splits, class counts and sample images.",
    "01_inject_noise": "Noise protocols: realised noise rates and transition matrices of the train labels.",
    "03_ablations": "Ablations: each method with its components switched off one at a time.",
    "04_label_distributions": "Label distributions: what each method learns as targets, against the human votes.",
    "05_uncertainty": "Uncertainty: how well each method's per-sample score finds the flipped labels.",
    "06_embeddings": "Embeddings: feature-space views of clean and mislabelled training images.",
    "07_review_labels": "Label review: the most suspicious faces of each class, precision at k of each ranking.",
    "99_summary": "Summary: accuracy over noise settings and seeds, learning curves, the main table.",
}

#: Test metrics the index shows (``<stage>.<metric>``, mean ± std over seeds), as :func:`format_summary` writes them.
_SHOWN_METRICS = ("acc", "mean_acc")
#: The method the answer compares every other one with, seed by seed.
_BASELINE = "ce"


# ----------------------------------------------------------------------------------- tables
def _summary(results):
    """:func:`ferlib.analysis.summary_table` of the finished runs (empty when there is none): the same table
    ``99_summary`` shows and writes, so ``summary.csv`` is one thing whichever wrote it last."""
    import pandas as pd

    from ferlib.analysis import summary_table

    if results.empty:
        return pd.DataFrame()
    metrics = [m for m in ("acc", "mean_acc", "macro_f1") if f"last.{m}" in results]
    return summary_table(results, metrics=metrics or ("acc",))


def _comparison(results):
    """:func:`ferlib.analysis.paired_comparison` against :data:`_BASELINE` on the metrics of
    :data:`ferlib.analysis.PAIRED_METRICS` the results have, and the reason when there is none (no run, or runs
    it cannot pair: e.g. the baseline trained with several option sets): the same table ``99_summary`` writes.
    A folder the comparison refuses still gets its report."""
    import pandas as pd

    from ferlib.analysis import PAIRED_METRICS, paired_comparison

    metrics = [m for m in PAIRED_METRICS if m in results]
    if results.empty or not metrics:
        return pd.DataFrame(), None
    try:
        return paired_comparison(results, baseline=_BASELINE, metrics=metrics), None
    except ValueError as exc:
        return pd.DataFrame(), f"No seed-paired comparison with {_BASELINE}: {exc}."


# ----------------------------------------------------------------------------------- HTML of notebooks
def render_html(notebook: str | os.PathLike, html_path: str | os.PathLike | None = None, *, exporter=None) -> Path:
    """Render an executed notebook to HTML (nbconvert ``HTMLExporter``: markdown and outputs, no code cells, no
    In/Out prompts; the code stays in the ``.ipynb`` beside it); atomic write.

    The page is self-contained: saved widget state is dropped (a widget needs a kernel, and nbconvert would load
    the widget manager from a CDN), so a widget shows its plain-text form, as ``07_review_labels``' review widget
    says where it runs; the hoverable figures carry their JavaScript inline (:mod:`ferlib.analysis.interactive`).
    The default output is the notebook's path with ``.html``.
    """
    import nbformat

    notebook = Path(notebook)
    html_path = Path(html_path) if html_path else notebook.with_suffix(".html")
    exporter = exporter or _exporter()
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata.pop("widgets", None)
    body, _ = exporter.from_notebook_node(nb)
    return atomic_write_text(html_path, body)


def _exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)


def render_all(reports_dir: str | os.PathLike, *, force: bool = False, log=print) -> list[Path]:
    """Render every ``*.ipynb`` in ``reports_dir`` and ``reports_dir/runs`` whose HTML is missing or older.

    A notebook that cannot be rendered is logged and skipped. Returns the HTML files written.
    """
    reports_dir = Path(reports_dir)
    notebooks = sorted(reports_dir.glob("*.ipynb")) + sorted((reports_dir / "runs").glob("*.ipynb"))
    exporter, written = None, []
    for nb in notebooks:
        out = nb.with_suffix(".html")
        if not force and out.exists() and out.stat().st_mtime >= nb.stat().st_mtime:
            continue
        exporter = exporter or _exporter()
        try:
            written.append(render_html(nb, out, exporter=exporter))
        except Exception as exc:  # a half-written notebook must not stop the report
            log(f"warning: could not render {nb}: {type(exc).__name__}: {exc}")
    return written


def notebook_title(path: str | os.PathLike) -> str | None:
    """The first line of the notebook's first markdown cell, without ``#`` marks (None if there is none)."""
    import nbformat

    try:
        nb = nbformat.read(Path(path), as_version=4)
    except Exception:
        return None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.strip():
                    return line.strip().lstrip("#").strip() or None
    return None


# ----------------------------------------------------------------------------------- index.html
def write_report(*, runs_dir: str | os.PathLike, reports_dir: str | os.PathLike, study: dict | None = None,
                 order: list[str] | tuple[str, ...] = ()) -> Path:
    """Write ``results.csv``, ``summary.csv`` and ``index.html`` of ``reports_dir`` (see module docstring).

    Parameters
    ----------
    runs_dir : folder of run directories (every ``*/result.json`` in which :func:`ferlib.rundir.find_problem`
        finds no fault is a finished run). Runs whose ``result.json`` fails the check, here or in the nested
        ``ablations/`` and ``cleanlab/`` folders, are left out of the tables and listed in ``index.html`` with the
        reason.
    study : the study's description (``StudySpec.to_dict()`` plus ``describe``), shown at the top.
    order : notebook names, to list the analysis reports in the study's order (others follow by name).

    Returns the path of ``index.html``.
    """
    import warnings

    from ferlib.analysis import (class_gains, cross_eval_summary, findings_text, init_contrast_table,
                                 memorisation_summary, memorisation_table, per_class_summary)

    reports_dir = Path(reports_dir)
    with warnings.catch_warnings():  # the skipped runs are listed in the page instead
        warnings.simplefilter("ignore", rundir.RunWarning)
        results = rundir.collect_results(runs_dir)
        memorisation = memorisation_summary(memorisation_table(runs_dir))
        gains = class_gains(per_class_summary(runs_dir), baseline=_BASELINE)
        init = init_contrast_table(runs_dir)
    skipped = rundir.problems(runs_dir, recursive=True)
    summary, (comparison, refused) = _summary(results), _comparison(results)
    findings = findings_text(summary, comparison, memorisation, baseline=_BASELINE) if len(results) else []
    findings += [refused] if refused else []
    cross = cross_eval_summary(runs_dir)
    write_table(reports_dir / "results.csv", results)
    write_table(reports_dir / "summary.csv", summary)
    write_table(reports_dir / "paired.csv", comparison)
    write_table(reports_dir / "memorisation.csv", memorisation)
    write_table(reports_dir / "class_gains.csv", gains)
    if not cross.empty:
        write_table(reports_dir / "cross_eval.csv", cross)
    if not init.empty:
        write_table(reports_dir / "init_contrast.csv", init)
    failures_path = reports_dir / "failures.json"
    failures = read_json(failures_path) if failures_path.exists() else {}
    page = _page(results, summary, failures, reports_dir, Path(runs_dir), study, list(order), skipped, cross,
                 _answer_html(findings, comparison, reports_dir) + _memorisation_html(memorisation)
                 + _rare_gains_html(gains) + _init_html(init))
    return atomic_write_text(reports_dir / "index.html", page)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:78em;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.oracle td{color:#666;font-style:italic}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}.fail{color:#a00}li{margin:.2em 0}
.muted{color:#666;font-size:.9em}
"""


def _page(results, summary, failures, reports_dir: Path, runs_dir: Path, study, order, skipped=None,
          cross=None, answer: str = "") -> str:
    name = (study or {}).get("name", reports_dir.name)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study {_e(name)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Study <code>{_e(name)}</code></h1>"]
    if study and study.get("description"):
        parts.append(f"<p>{_e(study['description'])}</p>")
    parts.append(f"<p class='muted'>Written {datetime.now().isoformat(timespec='seconds')} from "
                 f"<code>{_e(runs_dir)}</code>: {len(results)} finished run(s). Accuracies are test-split "
                 "percentages; <b>last</b> = last epoch (the primary number), <b>best</b> = epoch with the "
                 "highest validation accuracy (unless marked as selected on test). "
                 "Mean &plusmn; std over seeds where there are several. "
                 "Per-run rows: <a href='results.csv'>results.csv</a>; this table: "
                 "<a href='summary.csv'>summary.csv</a>.</p>")
    parts.append(answer)
    parts.append("<h2>Results</h2>")
    parts.append(_summary_html(summary) if not summary.empty else "<p>No finished run yet.</p>")
    if cross is not None and not cross.empty:
        parts.append(_cross_eval_html(cross))
    parts.append(_failures_html(failures, reports_dir))
    parts.append(_skipped_html(skipped or {}, runs_dir))
    parts.append(_reports_html(reports_dir, runs_dir, order))
    if study and study.get("describe"):
        parts.append(f"<h2>Study settings</h2><pre>{_e(study['describe'])}</pre>")
        if study.get("command"):
            parts.append(f"<p class='muted'>Command: <code>{_e(study['command'])}</code></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


#: The figures of ``99_summary`` the answer shows when they exist (paths relative to the reports folder).
_ANSWER_FIGURES = ("figures/99_summary/last.acc_by_noise.png", "figures/99_summary/last.mean_acc_by_noise.png")


def _answer_html(findings: list[str], comparison, reports_dir: Path) -> str:
    """The answer the page opens with: :func:`ferlib.analysis.findings_text`'s sentences, ``99_summary``'s
    accuracy-by-noise figures (seed spread as error bars) and the seed-paired comparison with the baseline
    (:func:`ferlib.analysis.paired_comparison`), differences in points."""
    from ferlib.analysis import format_paired

    if not findings:
        return ""
    sentences = "<h2>Answer</h2><ul class='answer'>" + "".join(f"<li>{_e(line)}</li>" for line in findings) + "</ul>"
    sentences += "".join(f"<img src='{_e(f)}' alt='{_e(Path(f).stem)}' style='max-width:49%'>"
                         for f in _ANSWER_FIGURES if (reports_dir / f).is_file())
    if comparison.empty:
        return sentences
    note = (f"<p class='muted'>Each method minus {_BASELINE} on the same seed (the seed also draws the noise, so "
            "both saw the same flipped labels): test accuracy differences in percentage points; wins: seeds where "
            "the method is higher; p: paired t-test over seeds; last.*: the last epoch (the primary result), "
            "best.acc: the epoch of highest validation accuracy (early stopping). "
            "Rows: <a href='paired.csv'>paired.csv</a>.</p>")
    return "\n".join([sentences, note, _table(format_paired(comparison).to_dict("records"), "paired")])


def _memorisation_html(memorisation) -> str:
    """Each setting's memorisation drop (:func:`ferlib.analysis.memorisation_summary`): peak test epoch and
    accuracy, last-epoch accuracy and the drop between them, mean ± std over seeds, in %."""
    from ferlib.analysis.seeds import mean_std_text

    if memorisation.empty:
        return ""
    rows = [{"method": r["method"] + (f" ({r['variant']})" if r["variant"] else "") + (" [oracle]" if r["oracle"]
                                                                                      else ""),
             "noise": r["noise"], "start": r["start"], "seeds": r["seeds"],
             "peak test acc": mean_std_text(r["peak_test_acc_mean"], r["peak_test_acc_std"]),
             "peak epoch": mean_std_text(r["peak_epoch_mean"], r["peak_epoch_std"], scale=1),
             "last test acc": mean_std_text(r["last_test_acc_mean"], r["last_test_acc_std"]),
             "drop": mean_std_text(r["drop_mean"], r["drop_std"])} for r in memorisation.to_dict("records")]
    return ("<h3>Memorisation: peak against last epoch</h3><p class='muted'>Test accuracy (%) at each run's best "
            "test epoch and at its last; the drop between them is what memorising the flipped labels costs. The "
            "peak is read off the per-epoch curves after training, for this diagnosis only: no number above is "
            "selected on test. Mean &plusmn; std over seeds. Rows: <a href='memorisation.csv'>memorisation.csv</a>."
            "</p>" + _table(rows, "memorisation"))


def _rare_gains_html(gains) -> str:
    """The rare classes' last-epoch test accuracy gains over :data:`_BASELINE` (:func:`ferlib.analysis.class_gains`),
    in points, one row per method, noise and start, one column per rare class (baseline's accuracy in brackets)."""
    rare = gains[gains["rare"]] if not gains.empty else gains
    if rare.empty:
        return ""
    classes = dict.fromkeys(rare["class"], "")  # every rare class a column, in the canonical order
    rows = []
    for (method, noise, start), group in rare.groupby(["method", "noise", "start"], sort=False):
        row = {"method": method, "noise": noise, "start": start, **classes}
        row.update({c: f"{100 * g:+.1f} ({100 * b:.1f})" for c, g, b in
                    zip(group["class"], group["gain"], group["baseline_acc_mean"])})
        rows.append(row)
    return (f"<h3>Rare classes: gain over {_BASELINE}</h3><p class='muted'>Last-epoch test accuracy of each rare "
            f"class minus {_BASELINE}'s at the same noise and start, in points ({_BASELINE}'s accuracy in brackets); "
            "means over seeds, not paired. Every class: <a href='class_gains.csv'>class_gains.csv</a>.</p>"
            + _table(sorted(rows, key=lambda r: (r["noise"], r["start"], r["method"])), "gains"))


def _init_html(init) -> str:
    """The init contrast (:func:`ferlib.analysis.init_contrast_table`): each method from the grid's start minus
    the same method from the other start, seed by seed, in points."""
    from ferlib.analysis import format_paired

    if init.empty:
        return ""
    return ("<h3>Start: the grid's weights against the other start</h3><p class='muted'>The same method, noise "
            "and seed trained from the grid's start and from the other one (<code>init/</code>); test accuracy "
            "differences (grid minus other) in percentage points, paired t-test over seeds. Rows: "
            "<a href='init_contrast.csv'>init_contrast.csv</a>.</p>"
            + _table(format_paired(init).to_dict("records"), "init"))


def _table(rows: list[dict], cls: str) -> str:
    """An HTML table of ``rows`` (dicts with the same keys, already formatted), the keys as its head."""
    head = list(rows[0])
    return (f"<table class='{cls}'><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{_e(r.get(h, ''))}</td>" for h in head) + "</tr>" for r in rows)
            + "</tbody></table>")


def _summary_html(summary) -> str:
    """The results table: :func:`ferlib.analysis.format_summary` of the summary (``"mean ± std"`` in %, oracle
    rows marked and last) with the seeds, realised noise rate, best epoch and time per epoch beside it."""
    from ferlib.analysis import format_summary

    shown = format_summary(summary, metrics=_SHOWN_METRICS)
    metrics = [c for c in shown.columns if c.startswith(("last.", "best."))]
    head = (["method", "recipe", "noise", "noise rate", "seeds", "epochs"] + [c.replace(".", " ").replace("_", " ")
                                                                   for c in metrics] + ["best epoch", "s / epoch"])
    rows = []
    for r, f in zip(summary.to_dict("records"), shown.to_dict("records")):
        method = _e(f["method"])
        if r.get("variant"):
            method += f" <span class='muted'>({_e(r['variant'])})</span>"
        if "start" in f:
            method += f" <span class='muted'>[{_e(f['start'])} start]</span>"
        if "ON TEST" in str(r.get("selection", "")):
            method += " <b>[best epoch selected on test]</b>"
        if r.get("flags"):
            method += f" <b class='fail'>[{_e(r['flags'])}]</b>"
        cells = [method, _e(r.get("recipe", "shared")), _e(r.get("noise", "")),
                 _num(r.get("noise_rate_mean"), pct=True), _e(r.get("seeds", "")),
                 _num(r.get("epochs"), digits=0)]
        cells += [_e(f[c]) for c in metrics]
        cells += [_num(r.get("best_epoch_mean"), digits=1), _num(r.get("time_per_epoch_s_mean"), digits=1)]
        cls = " class='oracle'" if r.get("oracle") else ""
        rows.append(f"<tr{cls}>" + "".join(
            f"<td class='num'>{c}</td>" if i >= 3 else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    has_oracle = "oracle" in summary and summary["oracle"].astype(bool).any()
    note = ("<p class='muted'>(oracle) rows see information a noisy-label method may not (e.g. the human votes): "
            "upper bounds, not competitors.</p>" if has_oracle else "")
    return ("<table class='results'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>" + note)


def _cross_eval_html(cross) -> str:
    """The cross-dataset table (:func:`ferlib.analysis.format_cross_eval`: method x target, ``"mean ± std"`` in
    %) and what each target masked."""
    from ferlib.analysis import format_cross_eval

    targets = cross.drop_duplicates("target_key")
    masked = "".join(f"<li><b>{_e(t)}</b> ({_e(s)} split): {_e(m or 'no class')} masked out of the argmax; "
                     f"{_num(n, digits=0)} samples scored, {_num(x, digits=0)} excluded (a class the runs lack)</li>"
                     for t, s, m, n, x in zip(targets["target"], targets["split"], targets["masked"], targets["n"],
                                             targets["n_excluded"]))
    return ("<h2>Cross-dataset evaluation</h2><p class='muted'>Each finished run scored on other datasets without "
            "training, its predictions restricted to the classes the target shares with it "
            "(<code>ferlib.cross_eval</code>); test accuracy and mean accuracy in %, mean &plusmn; std over seeds. "
            "Rows: <a href='cross_eval.csv'>cross_eval.csv</a>.</p>"
            + format_cross_eval(cross).to_html(index=False, classes="cross", border=0) + f"<ul>{masked}</ul>")


def _failures_html(failures: dict, reports_dir: Path) -> str:
    if not failures:
        return ""
    items = []
    for key, rec in sorted(failures.items()):
        link = ""
        report = rec.get("report")
        if report and (reports_dir / report).with_suffix(".html").exists():
            link = f" (<a href='{_e(Path(report).with_suffix('.html').as_posix())}'>executed notebook</a>)"
        items.append(f"<li><b>{_e(key)}</b>{link}: <span class='fail'>{_e(rec.get('error', ''))}</span></li>")
    return (f"<h2 class='fail'>Failures ({len(failures)})</h2><p class='muted'>Recorded in "
            f"<a href='failures.json'>failures.json</a> with tracebacks; a failed cell is retried on the next "
            "run of the study and cleared when it succeeds.</p><ul>" + "".join(items) + "</ul>")


def _skipped_html(skipped: dict, runs_dir: Path) -> str:
    """The run folders left out of the tables because their ``result.json`` failed the check, and why."""
    if not skipped:
        return ""
    items = []
    for folder, reason in sorted(skipped.items()):
        try:
            name = folder.relative_to(runs_dir).as_posix()
        except ValueError:
            name = str(folder)
        items.append(f"<li><code>{_e(name)}</code>: <span class='fail'>{_e(reason)}</span></li>")
    return (f"<h2 class='fail'>Skipped runs ({len(skipped)})</h2><p class='muted'>Left out of every table above: "
            "their files are corrupted or partial. Running the study again re-runs them (or delete the folder)."
            "</p><ul>" + "".join(items) + "</ul>")


def _reports_html(reports_dir: Path, runs_dir: Path, order: list[str]) -> str:
    rank = {n: i for i, n in enumerate(order)}
    analysis = sorted(reports_dir.glob("*.html"), key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    analysis = [p for p in analysis if p.name != "index.html"]
    items = []
    for page in analysis:
        title = notebook_title(page.with_suffix(".ipynb")) or NOTEBOOK_DESCRIPTIONS.get(page.stem, "")
        items.append(f"<li><a href='{_e(page.name)}'>{_e(page.stem)}</a> &mdash; {_e(title)}</li>")
    runs = []
    for page in sorted((reports_dir / "runs").glob("*.html")):
        runs.append(f"<li><a href='runs/{_e(page.name)}'>{_e(page.stem)}</a> &mdash; "
                    f"{_e(_run_line(find_cell(runs_dir, page.stem)))}</li>")
    out = ["<h2>Reports</h2>"]
    out.append("<ul>" + "".join(items) + "</ul>" if items else "<p>No analysis notebook rendered.</p>")
    if runs:
        out.append(f"<h3>Training runs ({len(runs)})</h3><ul>" + "".join(runs) + "</ul>")
    return "\n".join(out)


def _run_line(folder: Path | None) -> str:
    """What the cell whose run folder is ``folder`` (:func:`~ferlib.study.spec.find_cell`, any kind) gave."""
    if folder is None or not rundir.is_finished(folder):
        return "02_train for this cell (no result.json: unfinished or failed)"
    r = rundir.read_result(folder)
    tag = " [oracle]" if r.get("oracle") is True else ""
    tag += f", variant {r['variant']}" if r.get("variant") else ""
    tag += f", fold {r['fold'][0]} of {r['fold'][1]} held out as the test split" if r.get("fold") else ""
    return (f"02_train: {r.get('method')}{tag}, noise {r.get('noise')}, seed {r.get('seed')}: last-epoch test acc "
            f"{_num(r['last'].get('acc'), pct=True)}%, best-epoch {_num((r.get('best') or {}).get('acc'), pct=True)}%")


def _num(value, std=None, *, pct: bool = False, digits: int = 2) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return ""
    scale = 100.0 if pct else 1.0
    text = f"{float(value) * scale:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" &plusmn; {float(std) * scale:.{digits}f}"
    return text


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def study_record(spec, command: str | None = None) -> dict:
    """What :func:`write_report` shows of a study (and what the runner writes to ``study.json``)."""
    record = spec.to_dict()
    record["data_resolved"] = portable_path(spec.data_path()) if spec.data is not None else None
    record["describe"] = spec.describe()
    if command:
        record["command"] = command
    json.dumps(record, default=str)  # fail early if something is not JSON-able
    return record
