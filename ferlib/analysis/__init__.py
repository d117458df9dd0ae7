"""Analysis of finished runs: the plain functions behind the study notebooks (``notebooks/*.ipynb``).

Every number and figure a notebook shows is computed here, on arrays or run directories
(:mod:`ferlib.rundir` describes a run directory), so the notebooks stay thin and the logic is tested.
The functions live in one sub-module per concept and are all re-exported here (``analysis.summary_table``):

=======================  ===============================================================================
``runs``                 :func:`list_runs`, :func:`load_run`, :func:`load_runs`, :func:`one_per_method`,
                         :func:`run_dataset`, :func:`images_by_id`, :func:`saved_features`,
                         :func:`class_names_for`, :func:`start_name`, :func:`run_start`
``distributions``        :func:`softmax`, :func:`kl_divergence`, :func:`js_divergence`,
                         :func:`chebyshev_distance`, :func:`clark_distance`, :func:`canberra_distance`,
                         :func:`cosine_similarity`, :func:`intersection_similarity`, :data:`LDL_MEASURES`,
                         :func:`recovered_distribution`, :func:`label_distribution_metrics`,
                         :func:`label_distribution_table`, :func:`label_distribution_summary`,
                         :func:`choose_faces`, :func:`distribution_examples`
``detection``            :func:`detection_metrics`, :func:`flag_metrics`, :func:`uncertainty_table`,
                         :func:`extreme_samples`, :func:`plot_extremes`, :func:`out_of_sample_probs`,
                         :func:`cleanlab_issues`, :func:`cleanlab_scores`, :func:`cleanlab_table`,
                         :func:`detection_summary`, :func:`relabel_summary`, :func:`relabel_table`,
                         :func:`ranking_score`, :func:`fold_groups`, :func:`best_rankings`,
                         :func:`best_ranking_words`
``tables``               :func:`parse_noise`, :func:`summary_table`, :func:`format_summary`,
                         :func:`timing_table`, :func:`per_class_table`, :func:`per_class_summary`,
                         :func:`cross_eval_table`, :func:`cross_eval_summary`, :func:`format_cross_eval`
``answer``               :func:`paired_comparison`, :func:`format_paired`, :func:`init_contrast_table`,
                         :func:`ablation_table`, :func:`ablation_comparison`, :func:`memorisation_table`,
                         :func:`memorisation_summary`, :func:`class_gains`,
                         :func:`findings_text`
``seeds``                :func:`seed_summary`, :func:`format_seed_summary`, :func:`mean_std_text`,
                         :func:`mean_std_column`, :func:`seeds_text`
``dataprep``             :func:`sample_faces`, :func:`noise_table`, :func:`noise_examples`,
                         :func:`try_landmarks`, :func:`va_values`, :func:`va_summary`
``embeddings``           :func:`embed_umap`, :func:`run_embeddings`, :func:`silhouette`, :func:`logit_features`,
                         :func:`embedding_features`, :func:`flip_panels`, :func:`fit_groups`
``curves``               :func:`epoch_table`, :func:`curve_summary`, :func:`fit_table`, :func:`fit_summary`
``flips``                :func:`realised_transitions`, :func:`vote_statistics`, :func:`vote_frame`, :func:`flip_votes`,
                         :func:`flip_vote_summary`, :func:`format_vote_summary`, :func:`ambiguity_verdict`,
                         :func:`noise_contrast`
``perclass``             :func:`wilson_interval`, :func:`test_confusions`, :func:`best_methods`,
                         :func:`class_accuracy`
``interactive``          :func:`hover_embedding`, :func:`run_hover_embedding`, :func:`bokeh_loader`,
                         :func:`bokeh_html`
``review``               :data:`DECISIONS`, :data:`REVIEW_RANKINGS`, :class:`ReviewSet`, :func:`review_set`,
                         :func:`review_sets`, :func:`fold_settings`, :func:`cleanlab_ranking`,
                         :func:`review_order`, :func:`n_pages`, :func:`page_of`, :func:`precision_at_k`,
                         :func:`precision_table`, :func:`best_precision`, :func:`best_set`, :func:`review_rows`,
                         :func:`export_review`, :func:`review_page_figure`
``review_widget``        :class:`ReviewWidget` (ipywidgets, for JupyterLab)
``plots``                :func:`plot_confusion`, :func:`plot_confusions`, :func:`plot_learning_curves`,
                         :func:`plot_seed_curves`, :func:`plot_memorisation`, :func:`plot_transition`,
                         :func:`plot_transitions`, :func:`plot_bars`, :func:`plot_by_noise`,
                         :func:`plot_noise_curve`, :func:`plot_class_accuracy`, :func:`plot_differences`,
                         :func:`plot_ablations`, :func:`plot_detection`, :func:`plot_vote_entropy`, :func:`face_grid`,
                         :func:`plot_distributions`, :func:`plot_embedding`, :func:`plot_embedding_grid`,
                         :func:`plot_va`, :func:`plot_review_page` (colours and names: :mod:`.style`)
``headline``             :data:`HEADLINE_METRICS`, :func:`main_setting`, :func:`labelled_runs`,
                         :func:`headline_table`, :func:`headline_findings`, :func:`study_setting`,
                         :func:`plot_headline` (what a study's index opens with)
``labels``               :func:`method_labels`, :func:`method_display`, :func:`start_label`,
                         :data:`METRIC_NAMES` (table rows in :mod:`.style`'s display names)
``pages``                :class:`Html`, :func:`html_table`, :func:`frame_page`, :func:`page_sections`
                         (tables and the frame of the rendered pages)
``notebook``             :func:`setup_notebook`, :func:`chdir_repo_root`, :func:`save_figure`,
                         :func:`record_metrics`
=======================  ===============================================================================

Heavy dependencies (scikit-learn, cleanlab, umap-learn, matplotlib, bokeh, ipywidgets) are imported inside the
functions that need them, so ``import ferlib.analysis`` is cheap. Plot helpers build ``matplotlib.figure.Figure``
objects directly (no pyplot state, Agg canvas); a notebook displays one by making it the cell's last expression.
"""
from __future__ import annotations

from .answer import (PAIRED_METRICS, ablation_comparison, ablation_table, class_gains, findings_text, format_paired,
                     init_contrast_table, memorisation_summary, memorisation_table, paired_comparison)
from .curves import curve_summary, epoch_table, fit_summary, fit_table
from .dataprep import noise_examples, noise_table, sample_faces, try_landmarks, va_summary, va_values
from .detection import RANKINGS  # noqa: F401  (module constant, public as before but not in __all__)
from .detection import (best_ranking_words, best_rankings, cleanlab_issues, cleanlab_scores, cleanlab_table,
                        detection_metrics, detection_summary, extreme_samples, flag_metrics, fold_groups,
                        out_of_sample_probs, plot_extremes, ranking_score, relabel_summary, relabel_table,
                        uncertainty_table)
from .distributions import (LDL_MEASURES, canberra_distance, chebyshev_distance, choose_faces, clark_distance,
                            cosine_similarity, distribution_examples, intersection_similarity, js_divergence,
                            kl_divergence, label_distribution_metrics, label_distribution_summary,
                            label_distribution_table, recovered_distribution, softmax)
from .embeddings import (embed_umap, embedding_features, fit_groups, flip_panels, logit_features, run_embeddings,
                         silhouette)
from .flips import (ambiguity_verdict, flip_vote_summary, flip_votes, format_vote_summary, noise_contrast,
                    realised_transitions, vote_frame, vote_statistics)
from .headline import (HEADLINE_METRICS, headline_findings, headline_table, labelled_runs, main_setting,
                       plot_headline, study_setting)
from .interactive import bokeh_html, bokeh_loader, hover_embedding, run_hover_embedding
from .labels import METRIC_NAMES, method_display, method_labels, start_label
from .notebook import chdir_repo_root, record_metrics, save_figure, setup_notebook
from .pages import Html, frame_page, html_table, page_sections
from .perclass import best_methods, class_accuracy, test_confusions, wilson_interval
from .plots import (face_grid, plot_ablations, plot_bars, plot_by_noise, plot_class_accuracy, plot_confusion,
                    plot_confusions, plot_detection, plot_differences, plot_distributions, plot_embedding,
                    plot_embedding_grid, plot_learning_curves, plot_memorisation, plot_noise_curve, plot_review_page,
                    plot_seed_curves, plot_transition, plot_transitions, plot_va, plot_vote_entropy)
from .review import (DECISIONS, EXPORT_COLUMNS, REVIEW_RANKINGS, ReviewSet, best_precision, best_set, cleanlab_ranking,
                     export_review, fold_settings, n_pages, page_of, precision_at_k, precision_table, review_order,
                     review_page_figure, review_rows, review_set, review_sets)
from .review_widget import ReviewWidget
from .runs import (RunRecord, class_names_for, images_by_id, list_runs, load_run, load_runs, one_per_method,
                   run_dataset, run_start, saved_features, start_name)
from .seeds import format_seed_summary, mean_std_column, mean_std_text, seed_summary, seeds_text
from .tables import (cross_eval_summary, cross_eval_table, format_cross_eval, format_summary,
                     parse_noise, per_class_summary, per_class_table, summary_table, timing_table)

__all__ = [
    "RunRecord", "list_runs", "load_run", "load_runs", "one_per_method", "run_dataset", "images_by_id",
    "saved_features", "class_names_for", "start_name", "run_start",
    "softmax", "kl_divergence", "js_divergence", "chebyshev_distance", "clark_distance", "canberra_distance",
    "cosine_similarity", "intersection_similarity", "LDL_MEASURES", "recovered_distribution",
    "label_distribution_metrics", "label_distribution_table", "label_distribution_summary", "choose_faces",
    "distribution_examples",
    "detection_metrics", "flag_metrics", "uncertainty_table", "extreme_samples", "plot_extremes", "out_of_sample_probs",
    "cleanlab_issues", "cleanlab_scores", "cleanlab_table", "detection_summary", "relabel_summary", "relabel_table",
    "ranking_score", "fold_groups", "best_rankings", "best_ranking_words",
    "epoch_table", "curve_summary", "fit_table", "fit_summary",
    "realised_transitions", "vote_statistics", "vote_frame", "flip_votes", "flip_vote_summary", "format_vote_summary",
    "ambiguity_verdict", "noise_contrast",
    "wilson_interval", "test_confusions", "best_methods", "class_accuracy",
    "parse_noise", "summary_table", "format_summary", "timing_table", "per_class_table", "per_class_summary",
    "cross_eval_table", "cross_eval_summary", "format_cross_eval",
    "PAIRED_METRICS", "paired_comparison", "format_paired", "init_contrast_table", "ablation_table",
    "ablation_comparison", "memorisation_table",
    "memorisation_summary", "class_gains", "findings_text",
    "seed_summary", "format_seed_summary", "mean_std_text", "mean_std_column", "seeds_text",
    "sample_faces", "noise_table", "noise_examples", "try_landmarks", "va_values", "va_summary",
    "embed_umap", "run_embeddings", "silhouette", "logit_features", "embedding_features", "flip_panels", "fit_groups",
    "hover_embedding", "run_hover_embedding", "bokeh_loader", "bokeh_html",
    "DECISIONS", "REVIEW_RANKINGS", "EXPORT_COLUMNS", "ReviewSet", "review_set", "review_sets", "fold_settings",
    "cleanlab_ranking", "review_order", "n_pages", "page_of", "precision_at_k", "precision_table", "best_precision",
    "best_set", "review_rows", "export_review", "review_page_figure", "ReviewWidget",
    "plot_confusion", "plot_confusions", "plot_learning_curves", "plot_seed_curves", "plot_memorisation",
    "plot_transition", "plot_transitions", "plot_bars", "plot_by_noise", "plot_noise_curve", "plot_class_accuracy",
    "plot_differences", "plot_ablations", "plot_detection", "plot_vote_entropy", "face_grid", "plot_distributions",
    "plot_embedding", "plot_embedding_grid", "plot_va", "plot_review_page",
    "setup_notebook", "chdir_repo_root", "save_figure", "record_metrics",
    "HEADLINE_METRICS", "main_setting", "labelled_runs", "headline_table", "headline_findings", "study_setting",
    "plot_headline", "method_labels", "method_display", "start_label", "METRIC_NAMES", "Html", "html_table",
    "frame_page", "page_sections",
]
