"""Studies: a grid of runs (methods x noise x seeds) executed through the notebooks, with an HTML report.

``load_profile("smoke" | "cpu" | "full", data=..., **overrides)`` gives a :class:`StudySpec`;
``run_study(spec, runs_dir=..., reports_dir=...)`` runs it (resumable) and writes ``reports_dir/index.html``
(its results table is :func:`ferlib.analysis.summary_table` / :func:`ferlib.analysis.format_summary`).
Command line: ``python -m ferlib study --profile smoke`` (:func:`ferlib.study.runner.study_main`).
The notebook stack (papermill, nbconvert) is imported only when a study runs.
"""
from .report import render_html, write_report
from .runner import StudyOutcome, add_study_arguments, ensure_kernel, execute_notebook, main, run_study, study_main
from .spec import NOTEBOOKS, ROLES, Grid, StudySpec, list_profiles, load_profile

__all__ = ["StudySpec", "Grid", "NOTEBOOKS", "ROLES", "load_profile", "list_profiles", "run_study", "StudyOutcome",
           "ensure_kernel", "execute_notebook", "write_report", "render_html",
           "add_study_arguments", "study_main", "main"]
