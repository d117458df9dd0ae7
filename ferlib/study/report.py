"""The study's report: result tables over a runs folder, HTML renderings of executed notebooks, ``index.html``.

Everything here reads files and writes files atomically; nothing trains. :func:`write_report` is what
:func:`ferlib.study.run_study` calls at the end, and it can be called alone to refresh a report::

    write_report(runs_dir="runs/smoke", reports_dir="reports/smoke")

Layout of ``reports_dir``::

    index.html        the answer first: the setting (data, splits, network, start, training, augmentation,
                      precision, machine, noise, runs, why the numbers are below the papers'), the findings in a
                      few sentences generated from the verdicts, the headline figure and table, links to every
                      view; then, folded, every verdict, the memorisation drop, the rare classes' gains, the two
                      starts, every configuration, the cross-dataset scores, the training runs, the settings;
                      failures and skipped (corrupted) runs when there are any
    figures/headline.png  the headline figure (ferlib.analysis.headline.plot_headline)
    headline.csv      the headline table (ferlib.analysis.headline.headline_table)
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
    <notebook>.ipynb / .html          executed analysis notebooks (00, 01, 03, 04, 05, 06, 07, 99), each page titled,
                                      linking back to index.html, with a table of contents when long
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


def _contrast(results):
    """:func:`ferlib.analysis.noise_contrast` of the real annotator against its synthetic twin when the runs hold
    both (None otherwise)."""
    from ferlib.analysis import noise_contrast

    if not {"annotator", "annotator_matched"} <= set(results.get("noise", ())):
        return None
    return noise_contrast(results, noise="annotator", other="annotator_matched")


# ----------------------------------------------------------------------------------- HTML of notebooks
def render_html(notebook: str | os.PathLike, html_path: str | os.PathLike | None = None, *, exporter=None,
                title: str | None = None, index: str | None = None) -> Path:
    """Render an executed notebook to HTML (nbconvert ``HTMLExporter``: markdown and outputs, no code cells, no
    In/Out prompts; the code stays in the ``.ipynb`` beside it); atomic write.

    The page is self-contained: saved widget state is dropped (a widget needs a kernel, and nbconvert would load
    the widget manager from a CDN), so a widget shows its plain-text form, as ``07_review_labels``' review widget
    says where it runs; the hoverable figures carry their JavaScript inline (:mod:`ferlib.analysis.interactive`).
    Its figures are stored as palette PNGs (:func:`_compact_png`), its stylesheet holds the rules it uses
    (:func:`ferlib.analysis.pages.compact_styles`: 13 KB instead of 260 KB), and it is framed by
    :func:`ferlib.analysis.pages.frame_page`: ``title`` (default: the notebook's own,
    :func:`notebook_title`) as the page's title, a link back to ``index`` (a relative link; None: none) and a
    table of contents on a long page. The default output is the notebook's path with ``.html``.
    """
    import nbformat

    from ferlib.analysis.pages import compact_styles, frame_page

    notebook = Path(notebook)
    html_path = Path(html_path) if html_path else notebook.with_suffix(".html")
    exporter = exporter or _exporter()
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output["data"]["image/png"] = _compact_png(output["data"]["image/png"])
    body, _ = exporter.from_notebook_node(nb)
    title = title or _first_heading(nb) or notebook.stem
    return atomic_write_text(html_path, compact_styles(frame_page(body, title=title, index=index)))


def _compact_png(data: str) -> str:
    """A base64 PNG re-encoded with a palette of at most 256 colours (a figure has few; a face gallery is grey):
    about a quarter of the bytes, by eye the same figure; the original when that is not smaller."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(data)
    with Image.open(io.BytesIO(raw)) as image:
        if image.mode == "P":  # a palette already
            return data
        out = io.BytesIO()
        image.convert("RGBA").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, format="PNG",
                                                                                          optimize=True)
    return base64.b64encode(out.getvalue()).decode() if out.tell() < len(raw) else data


def _exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)


def render_all(reports_dir: str | os.PathLike, *, force: bool = False, log=print) -> list[Path]:
    """Render every ``*.ipynb`` in ``reports_dir`` and ``reports_dir/runs`` whose HTML is missing or older.

    Each page is titled ``"<notebook title> · <study>"`` (a training cell's ``"<run id> · 02_train"``) and links
    back to the study's ``index.html``. A notebook that cannot be rendered is logged and skipped. Returns the HTML
    files written.
    """
    reports_dir = Path(reports_dir)
    pages = [(nb, None, "index.html") for nb in sorted(reports_dir.glob("*.ipynb"))]
    pages += [(nb, f"{nb.stem} · 02_train · {reports_dir.name}", "../index.html")
              for nb in sorted((reports_dir / "runs").glob("*.ipynb"))]
    exporter, written = None, []
    for nb, title, index in pages:
        out = nb.with_suffix(".html")
        if not force and out.exists() and out.stat().st_mtime >= nb.stat().st_mtime:
            continue
        exporter = exporter or _exporter()
        try:
            title = title or f"{notebook_title(nb) or nb.stem} · {reports_dir.name}"
            written.append(render_html(nb, out, exporter=exporter, title=title, index=index))
        except Exception as exc:  # a half-written notebook must not stop the report
            log(f"warning: could not render {portable_path(nb)}: {type(exc).__name__}: {exc}")
    return written


def _first_heading(nb) -> str | None:
    """The first line of a notebook's first markdown cell, without ``#`` marks (None if there is none)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.strip():
                    return line.strip().lstrip("#").strip() or None
    return None


def notebook_title(path: str | os.PathLike) -> str | None:
    """The first line of the notebook's first markdown cell, without ``#`` marks (None if there is none or the
    notebook cannot be read)."""
    import nbformat

    try:
        return _first_heading(nbformat.read(Path(path), as_version=4))
    except Exception:
        return None


# ----------------------------------------------------------------------------------- index.html
#: The index's headline figure, relative to the reports folder.
HEADLINE_FIGURE = "figures/headline.png"


def write_report(*, runs_dir: str | os.PathLike, reports_dir: str | os.PathLike, study: dict | None = None,
                 order: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the tables of ``reports_dir`` (see the module docstring), its headline figure and ``index.html``.

    Parameters
    ----------
    runs_dir : folder of run directories (every ``*/result.json`` in which :func:`ferlib.rundir.find_problem`
        finds no fault is a finished run). Runs whose ``result.json`` fails the check, here or in the nested
        ``ablations/``, ``cleanlab/`` and ``init/`` folders, are left out of the tables and listed in
        ``index.html`` with the reason.
    study : the study's record (:func:`study_record`: ``StudySpec.to_dict()`` plus ``describe``): its name,
        description, grid and settings.
    order : notebook names, to list the views in the study's order (others follow by name).

    Returns the path of ``index.html``.
    """
    import warnings

    from ferlib.analysis import (ablation_comparison, class_gains, cross_eval_summary, findings_text,
                                 init_contrast_table, memorisation_summary, memorisation_table, per_class_summary)
    from ferlib.analysis.headline import ablation_findings, headline_findings, headline_table, main_setting

    reports_dir, runs_dir = Path(reports_dir), Path(runs_dir)
    with warnings.catch_warnings():  # the skipped runs are listed in the page instead
        warnings.simplefilter("ignore", rundir.RunWarning)
        results = rundir.collect_results(runs_dir)
        memorisation = memorisation_summary(memorisation_table(runs_dir))
        gains = class_gains(per_class_summary(runs_dir), baseline=_BASELINE)
        init = init_contrast_table(runs_dir)
        ablations = ablation_comparison(runs_dir) if (runs_dir / "ablations").is_dir() else None
    skipped = rundir.problems(runs_dir, recursive=True)
    summary, (comparison, refused) = _summary(results), _comparison(results)
    noise_order = ((study or {}).get("grid") or {}).get("noise") or ()
    main, left_out = main_setting(results)  # the headline never averages runs trained otherwise
    tables = {"results.csv": results, "summary.csv": summary, "paired.csv": comparison,
              "memorisation.csv": memorisation, "class_gains.csv": gains,
              "headline.csv": headline_table(main, baseline=_BASELINE, noise_order=noise_order)
              if len(main) else None,
              "cross_eval.csv": cross_eval_summary(runs_dir), "init_contrast.csv": init}
    for name, table in tables.items():
        if table is not None and (len(table) or name not in ("cross_eval.csv", "init_contrast.csv")):
            write_table(reports_dir / name, table)
    findings = (headline_findings(main, comparison, memorisation, baseline=_BASELINE, noise_order=noise_order,
                                  contrast=_contrast(main)) if len(main) else [])
    if ablations is not None:
        findings += ablation_findings(ablations, comparison, baseline=_BASELINE, noise_order=noise_order)
    verdicts = findings_text(summary, comparison, memorisation, baseline=_BASELINE) if len(results) else []
    failures_path = reports_dir / "failures.json"
    index = _Index(reports_dir=reports_dir, runs_dir=runs_dir, study=study or {}, order=list(order))
    sections = [
        ("Setting", _setting_html(main, runs_dir, reports_dir, study, noise_order)),
        ("Findings", _findings_html(findings, refused, _headline_figure(main, reports_dir, noise_order))),
        ("Headline table", _headline_html(tables["headline.csv"], left_out)),
        ("Views", index.views_html()),
        ("Failures", _failures_html(read_json(failures_path) if failures_path.exists() else {}, reports_dir)),
        (f"Skipped runs ({len(skipped)})", _skipped_html(skipped, runs_dir)),
        ("Details", "\n".join([_verdicts_html(verdicts, comparison), _memorisation_html(memorisation),
                               _rare_gains_html(gains), _init_html(init), _summary_html(summary),
                               _cross_eval_html(tables["cross_eval.csv"]), index.runs_html(),
                               _settings_html(study)])),
    ]
    return atomic_write_text(reports_dir / "index.html", index.page(results, sections))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:72em;color:#222;padding:0 1em;
line-height:1.45}
h1{margin-bottom:.1em}h2{margin-top:1.6em;border-bottom:1px solid #e3e3e3;padding-bottom:.15em}
p.lead{font-size:1.1em;color:#444;margin-top:.2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}
th,td{padding:.25em .6em;border-bottom:1px solid #e5e5e5;text-align:left;vertical-align:top}
thead th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.oracle td,tr.control td{color:#555;font-style:italic;background:#fafafa}
table.setting{background:#f7f9fb;border:1px solid #dde3ea;width:100%}table.setting th{width:9em;background:none;
color:#555;font-weight:600}table.setting tr.why td,table.setting tr.why th{color:#7a4b00}
table.headline{font-size:.84em}table.headline th,table.headline td{padding:.2em .42em}
table.headline th{text-align:center}table.headline td:first-child{white-space:nowrap}.grp{border-left:1px solid #ccc}
table.headline tr.control td:first-child,table.headline tr.oracle td:first-child{white-space:normal}
ol.findings li{margin:.45em 0}figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#666;font-size:.9em}
details{margin:.6em 0;padding:.3em .7em;border:1px solid #e5e5e5;border-radius:4px}
details>summary{cursor:pointer;font-weight:600;color:#1a5fb4}details[open]>summary{margin-bottom:.5em}
details table{font-size:.85em}details table td{white-space:nowrap}details table td:last-child{white-space:normal}
nav.toc{background:#f4f6f8;border:1px solid #dde2e6;border-radius:4px;padding:.4em .8em;font-size:.95em}
a{color:#1a5fb4}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}.fail{color:#a00}
.muted{color:#666;font-size:.9em}li{margin:.2em 0}
"""


class _Index:
    """The frame of ``index.html`` and its lists of pages (views, training runs)."""

    def __init__(self, *, reports_dir: Path, runs_dir: Path, study: dict, order: list[str]) -> None:
        self.reports_dir, self.runs_dir, self.study, self.order = reports_dir, runs_dir, study, order

    def page(self, results, sections: list[tuple[str, str]]) -> str:
        """The whole page: title, description, contents, then the non-empty sections."""
        name = self.study.get("name", self.reports_dir.name)
        description = self.study.get("description", "")
        shown = [(title, body) for title, body in sections if body]
        toc = " &middot; ".join(f"<a href='#{_anchor(t)}'>{_e(t)}</a>" for t, _ in shown)
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study {_e(name)}"
                 + (f": {_e(description)}" if description else "") + f"</title><style>{_CSS}</style></head><body>",
                 f"<h1>Study <code>{_e(name)}</code></h1>",
                 f"<p class='lead'>{_e(description)}</p>" if description else "",
                 f"<nav class='toc'>Contents: {toc}</nav>"]
        parts += [f"<h2 id='{_anchor(t)}'>{_e(t)}</h2>\n{body}" for t, body in shown]
        parts.append(f"<p class='muted'>Written {datetime.now().isoformat(timespec='seconds')} from "
                     f"<code>{_e(portable_path(self.runs_dir))}</code> ({len(results)} finished runs there). "
                     "Every table as CSV beside this page.</p></body></html>\n")
        return "\n".join(p for p in parts if p)

    def views_html(self) -> str:
        """The rendered analysis notebooks, in the study's order, each with what it shows."""
        rank = {n: i for i, n in enumerate(self.order)}
        pages = sorted((p for p in self.reports_dir.glob("*.html") if p.name != "index.html"),
                       key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
        items = [f"<li><a href='{_e(p.name)}'>{_e(notebook_title(p.with_suffix('.ipynb')) or p.stem)}</a>"
                 + (f" &mdash; {_e(NOTEBOOK_DESCRIPTIONS[p.stem])}" if p.stem in NOTEBOOK_DESCRIPTIONS else "")
                 + "</li>" for p in pages]
        return f"<ul>{''.join(items)}</ul>" if items else ""

    def runs_html(self) -> str:
        """Every training cell's rendered 02_train page, folded."""
        pages = sorted((self.reports_dir / "runs").glob("*.html"))
        if not pages:
            return ""
        items = [f"<li><a href='runs/{_e(p.name)}'>{_e(p.stem)}</a> &mdash; "
                 f"{_e(_run_line(find_cell(self.runs_dir, p.stem)))}</li>" for p in pages]
        return (f"<details><summary>Training runs: one page per cell ({len(items)})</summary><ul>{''.join(items)}"
                "</ul></details>")


def _anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def _setting_html(results, runs_dir: Path, reports_dir: Path, study, noise_order) -> str:
    """The Setting box (:func:`ferlib.analysis.headline.study_setting`) of the grid's runs."""
    from ferlib.analysis.headline import study_setting

    if not len(results):
        return ""
    first = runs_dir / str(results["run_id"].iloc[0]) if "run_id" in results else rundir.finished_runs(runs_dir)[0]
    prepared = reports_dir / "00_prepare_data.json"
    full_train = (read_json(prepared).get("split_counts") or {}).get("train") if prepared.exists() else None
    extra = {words: len(rundir.finished_runs(runs_dir / folder))
             for folder, words in (("init", "start-contrast runs (init/)"), ("cleanlab", "cross-fitted CE folds for "
                                   "cleanlab (cleanlab/)"), ("ablations", "ablation runs (ablations/)"))}
    rows = study_setting(results, rundir.read_config(first), study=study, full_train=full_train, extra_runs=extra,
                         baseline=_BASELINE, noise_order=noise_order)
    return ("<table class='setting'>" + "".join(
        f"<tr{' class=why' if what == 'why so low' else ''}><th>{_e(what)}</th><td>{_e(words)}</td></tr>"
        for what, words in rows) + "</table>")


def _headline_figure(results, reports_dir: Path, noise_order) -> str:
    """:func:`ferlib.analysis.headline.plot_headline` saved as :data:`HEADLINE_FIGURE`; its ``<figure>``."""
    from ferlib.analysis import save_figure
    from ferlib.analysis.headline import labelled_runs, plot_headline

    if not len(results) or "last.acc" not in results:
        return ""
    save_figure(plot_headline(results, baseline=_BASELINE, noise_order=noise_order), reports_dir / HEADLINE_FIGURE)
    kinds = set(labelled_runs(results, baseline=_BASELINE)["kind"])
    references = [words for kind, words in (("oracle", "the oracle, trained on the human votes"),
                                            ("control", "CE on the clean labels")) if kind in kinds]
    return (f"<figure><img src='{HEADLINE_FIGURE}' alt='test accuracy per method and noise setting'><figcaption>"
            "Each method's test accuracy at the last epoch (filled; mean &plusmn; std over seeds) and at the epoch "
            "its validation accuracy chose (hollow): the line between them is what training on costs."
            + (f" Reference line{'s' * (len(references) > 1)}: {' and '.join(references)}." if references else "")
            + "</figcaption></figure>")


def _findings_html(findings: list[str], refused: str | None, figure: str) -> str:
    """The findings in sentences (:func:`ferlib.analysis.headline.headline_findings`), the rule behind them,
    the headline figure."""
    if not findings and not refused:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in [*findings, *([refused] if refused else [])])
    return (f"<ol class='findings'>{items}</ol><p class='muted'>A difference is called <b>supported</b> when it has "
            "the same sign in every seed, there are at least 3 seeds and the paired t-test over seeds gives "
            "p &lt; 0.05 (with 3 seeds: |t| &gt; 4.30). Every verdict: <a href='#details'>Details</a>.</p>" + figure)


def _headline_html(table, left_out: int = 0) -> str:
    """The headline table (:func:`ferlib.analysis.headline.headline_table`): one column group per metric, one
    column per noise setting; the control and the oracle one cell per metric across the noise settings.
    ``left_out``: runs of other settings in the folder, not in the table (said under it)."""
    from ferlib.analysis.headline import HEADLINE_METRICS
    from ferlib.analysis.labels import METRIC_NAMES
    from ferlib.analysis.style import noise_label

    if table is None or not len(table):
        return ""
    columns = [c for c in table.columns if " | " in c]
    metrics = [m for m in HEADLINE_METRICS if any(c.startswith(f"{m} | ") for c in columns)]
    noises = list(dict.fromkeys(c.split(" | ", 1)[1] for c in columns))
    head = ("<tr><th rowspan='2'>method</th>" + "".join(f"<th colspan='{len(noises)}'{_GROUP}>"
                                                        f"{_e(METRIC_NAMES[m])}</th>" for m in metrics) + "</tr><tr>"
            + "".join(f"<th{_GROUP * (i == 0)}>{_e(noise_label(n))}</th>" for _ in metrics
                      for i, n in enumerate(noises)) + "</tr>")
    notes = {"control": "no noise", "oracle": "never reads the noisy labels"}
    body = []
    for r in table.to_dict("records"):
        if r["kind"] in notes:
            cells = "".join(f"<td class='num grp' colspan='{len(noises)}' style='text-align:center'>"
                            f"{_e(r[f'{m} | {noises[0]}'])}</td>" for m in metrics)
            runs = f"{r['runs']} run{'s' * (r['runs'] != 1)}"
            body.append(f"<tr class='{r['kind']}'><td>{_e(r['method'])} <span class='muted'>({notes[r['kind']]}, "
                        f"{runs})</span></td>{cells}</tr>")
        else:
            body.append(f"<tr><td>{_e(r['method'])}</td>"
                        + "".join(f"<td class='num{' grp' * (i == 0)}'>{_e(r[f'{m} | {n}'])}</td>"
                                  for m in metrics for i, n in enumerate(noises))
                        + "</tr>")
    return ("<p class='muted'>Test accuracy in %, mean &plusmn; std over the seeds of each noise setting (Setting, "
            "runs): at the last epoch (the primary "
            "number), at the epoch each run's validation accuracy chose (early-stopped), and the mean of the "
            "per-class accuracies at the last epoch. Rows: <a href='headline.csv'>headline.csv</a>.</p>"
            f"<table class='headline'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
            + (f"<p class='muted'>{left_out} run(s) of other settings (epochs, subset, network ...) in the runs folder "
               "are left out of the setting, the findings, this table and the figure; every configuration is under "
               "Details.</p>" if left_out else ""))


_GROUP = " class='grp'"  # the first column of a metric's group in the headline table


def _verdicts_html(verdicts: list[str], comparison) -> str:
    """Every verdict, folded: :func:`ferlib.analysis.findings_text`'s lists and the seed-paired table."""
    from ferlib.analysis import format_paired
    from ferlib.analysis.pages import html_table

    if comparison.empty:
        return ""
    return (f"<details><summary>Every verdict: each method against {_BASELINE.upper()}, seed by seed "
            f"({len(comparison)} comparisons)</summary><ul>" + "".join(f"<li>{_e(v)}</li>" for v in verdicts)
            + "</ul><p class='muted'>Each method minus CE on the same seed (the seed also draws the noise, so both "
            "saw the same flipped labels): differences in percentage points; wins: seeds where the method is "
            "higher; p: paired t-test over seeds.</p>"
            + html_table(format_paired(comparison), cls="paired", csv="paired.csv") + "</details>")


def _memorisation_html(memorisation) -> str:
    """Each setting's memorisation drop (:func:`ferlib.analysis.memorisation_summary`): peak test epoch and
    accuracy, last-epoch accuracy and the drop between them, mean ± std over seeds, in %; folded."""
    import pandas as pd

    from ferlib.analysis.labels import method_labels, start_label
    from ferlib.analysis.pages import html_table
    from ferlib.analysis.seeds import mean_std_text
    from ferlib.analysis.style import noise_label

    if memorisation.empty:
        return ""
    records = memorisation.to_dict("records")
    labels = method_labels(memorisation["method"], memorisation["variant"], memorisation["oracle"])
    rows = pd.DataFrame([{"method": label, "noise": noise_label(r["noise"]), "start": start_label(r["start"]),
                          "seeds": r["seeds"],
                          "peak test acc": mean_std_text(r["peak_test_acc_mean"], r["peak_test_acc_std"]),
                          "peak epoch": mean_std_text(r["peak_epoch_mean"], r["peak_epoch_std"], scale=1),
                          "last test acc": mean_std_text(r["last_test_acc_mean"], r["last_test_acc_std"]),
                          "drop": mean_std_text(r["drop_mean"], r["drop_std"])}
                         for label, r in zip(labels, records)])
    if rows["start"].nunique() == 1:
        rows = rows.drop(columns="start")
    return ("<details><summary>Memorisation: every method's peak test epoch against its last</summary>"
            "<p class='muted'>Test accuracy (%) at each run's best test epoch and at its last; the drop between them "
            "is what memorising the flipped labels costs. The peak is read off the per-epoch curves after training, "
            "for this diagnosis only: no number on this page is selected on test. Mean &plusmn; std over seeds.</p>"
            + html_table(rows, cls="memorisation", csv="memorisation.csv") + "</details>")


def _rare_gains_html(gains) -> str:
    """The rare classes' last-epoch test accuracy gains over :data:`_BASELINE` (:func:`ferlib.analysis.class_gains`),
    in points, one row per method, noise and start, one column per rare class (baseline's accuracy in brackets);
    folded."""
    import pandas as pd

    from ferlib.analysis.labels import method_labels, start_label
    from ferlib.analysis.pages import html_table
    from ferlib.analysis.style import noise_label

    rare = gains[gains["rare"]] if not gains.empty else gains
    if rare.empty:
        return ""
    classes = dict.fromkeys(rare["class"], "")  # every rare class a column, in the canonical order
    rows = []
    for (method, noise, start), group in rare.groupby(["method", "noise", "start"], sort=True):
        row = {"method": method_labels([method])[0], "noise": noise_label(noise), "start": start_label(start),
               **classes}
        row.update({c: f"{100 * g:+.1f} ({100 * b:.1f})" for c, g, b in
                    zip(group["class"], group["gain"], group["baseline_acc_mean"])})
        rows.append(row)
    table = pd.DataFrame(sorted(rows, key=lambda r: ("oracle" in r["method"], r["method"].lower())))
    if table["start"].nunique() == 1:
        table = table.drop(columns="start")
    return (f"<details><summary>Rare classes: each method's gain over {_BASELINE.upper()}</summary><p class='muted'>"
            f"Last-epoch test accuracy of each rare class minus {_BASELINE.upper()}'s at the same noise and start, in "
            f"points ({_BASELINE.upper()}'s accuracy in brackets); means over seeds, not paired. Every class: "
            "<a href='class_gains.csv'>class_gains.csv</a>.</p>" + html_table(table, cls="gains") + "</details>")


def _init_html(init) -> str:
    """The init contrast (:func:`ferlib.analysis.init_contrast_table`): each method from the grid's start minus
    the same method from the other start, seed by seed, in points; folded."""
    from ferlib.analysis import format_paired
    from ferlib.analysis.pages import html_table

    if init.empty:
        return ""
    return ("<details><summary>Start: the grid's weights against the other start</summary><p class='muted'>The same "
            "method, noise and seed trained from the grid's start and from the other one (<code>init/</code>); test "
            "accuracy differences (grid minus other) in percentage points, paired t-test over seeds.</p>"
            + html_table(format_paired(init), cls="init", csv="init_contrast.csv") + "</details>")


def _summary_html(summary) -> str:
    """Every configuration (:func:`ferlib.analysis.format_summary`: ``"mean ± std"`` in %, display names, oracle
    rows marked and last) with the seeds, realised noise rate, best epoch and time per epoch; folded."""
    import pandas as pd

    from ferlib.analysis import format_summary
    from ferlib.analysis.pages import Html, html_table

    if summary.empty:
        return ""
    shown = format_summary(summary, metrics=_SHOWN_METRICS)
    metrics = [c for c in shown.columns if c.startswith(("last.", "best."))]
    rows = []
    for r, f in zip(summary.to_dict("records"), shown.to_dict("records")):
        method = _e(f["method"]) + (f" <span class='muted'>[{_e(f['start'])} start]</span>" if "start" in f else "")
        if "ON TEST" in str(r.get("selection", "")):
            method += " <b>[best epoch selected on test]</b>"
        if r.get("flags"):
            method += f" <b class='fail'>[{_e(r['flags'])}]</b>"
        rows.append({"method": Html(method), "recipe": r.get("recipe", "shared"), "noise": f["noise"],
                     "noise rate (%)": 100 * r["noise_rate_mean"] if "noise_rate_mean" in r else None,
                     "seeds": r.get("seeds", ""), "epochs": r.get("epochs"),
                     **{c.replace(".", " ").replace("_", " ") + " (%)": f[c] for c in metrics},
                     "best epoch": r.get("best_epoch_mean"), "s / epoch": r.get("time_per_epoch_s_mean")})
    oracle = [bool(o) and o == o for o in summary.get("oracle", [False] * len(summary))]
    return (f"<details><summary>Every configuration: mean &plusmn; std over seeds ({len(rows)} rows)</summary>"
            "<p class='muted'>last = the last epoch (the primary number); best = the epoch with the highest "
            "validation accuracy (unless marked as selected on test). Oracle rows read what a noisy-label method may "
            "not (the human votes): upper bounds, not competitors.</p>"
            + html_table(pd.DataFrame(rows), cls="results", csv="summary.csv",
                         row_classes=["oracle" if o else "" for o in oracle])
            + "<p class='muted'>One row per run: <a href='results.csv'>results.csv</a>.</p></details>")


def _cross_eval_html(cross) -> str:
    """The cross-dataset table (:func:`ferlib.analysis.format_cross_eval`: method x target, ``"mean ± std"`` in
    %) and what each target masked; nothing when no run was scored on another dataset."""
    from ferlib.analysis import format_cross_eval
    from ferlib.analysis.pages import html_table

    if cross is None or cross.empty:
        return ""
    targets = cross.drop_duplicates("target_key")
    masked = "".join(f"<li><b>{_e(t)}</b> ({_e(s)} split): {_e(m or 'no class')} masked out of the argmax; "
                     f"{_num(n, digits=0)} samples scored, {_num(x, digits=0)} excluded (a class the runs lack)</li>"
                     for t, s, m, n, x in zip(targets["target"], targets["split"], targets["masked"], targets["n"],
                                             targets["n_excluded"]))
    return ("<details><summary>Cross-dataset evaluation</summary><p class='muted'>Each finished run scored on other "
            "datasets without training, its predictions restricted to the classes the target shares with it "
            "(<code>ferlib.cross_eval</code>); test accuracy and mean accuracy in %, mean &plusmn; std over seeds."
            "</p>" + html_table(format_cross_eval(cross), cls="cross", csv="cross_eval.csv")
            + f"<ul>{masked}</ul></details>")


def _settings_html(study) -> str:
    """The study's settings (its record) as a table, and the command that ran it; folded."""
    if not study:
        return ""
    skip = {"name", "description", "describe", "command", "resolved_methods"}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_setting_text(v))}</td></tr>" for k, v in study.items()
                   if k not in skip and v not in (None, {}, [], ""))
    command = (f"<p>Command: <code>{_e(study['command'])}</code></p>" if study.get("command") else "")
    return ("<details><summary>Study settings (<a href='study.json'>study.json</a>)</summary>"
            f"<table class='settings'>{rows}</table>{command}</details>")


def _setting_text(value) -> str:
    """A setting's value in words: a mapping as ``key: value`` pairs, a list comma-joined."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_setting_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting_text(v) for v in value)
    return str(value)


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
    return (f"<p class='fail'>{len(failures)} step(s) failed.</p><p class='muted'>Recorded in "
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
    return (f"<p class='fail'>{len(skipped)} run folder(s) skipped.</p><p class='muted'>Left out of every table: "
            "their files are corrupted or partial. Running the study again re-runs them (or delete the folder)."
            "</p><ul>" + "".join(items) + "</ul>")


def _run_line(folder: Path | None) -> str:
    """What the cell whose run folder is ``folder`` (:func:`~ferlib.study.spec.find_cell`, any kind) gave."""
    if folder is None or not rundir.is_finished(folder):
        return "02_train for this cell (no result.json: unfinished or failed)"
    from ferlib.analysis.style import method_label, noise_label

    r = rundir.read_result(folder)
    tag = " (oracle)" if r.get("oracle") is True and "oracle" not in method_label(r.get("method", "")) else ""
    tag += f", variant {r['variant']}" if r.get("variant") else ""
    tag += f", fold {r['fold'][0]} of {r['fold'][1]} held out as the test split" if r.get("fold") else ""
    return (f"{method_label(r.get('method', ''))}{tag}, {noise_label(r.get('noise'))}, seed {r.get('seed')}: "
            f"test accuracy {_num(r['last'].get('acc'), pct=True, digits=1)}% at the last epoch, "
            f"{_num((r.get('best') or {}).get('acc'), pct=True, digits=1)}% early-stopped")


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
