"""Label review (ferlib.analysis.review): ordering, paging, precision at k against known flips, cleanlab's ranking
aligned to a run, the exported CSV; the review widget driven through its callbacks (no browser); the hoverable
embedding (ferlib.analysis.interactive) self-contained."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ferlib import analysis
from ferlib.analysis import review
from ferlib.analysis.runs import RunRecord

K = 8
NAMES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


def make_set(run_id="ce-a", *, n=40, seed=0, oracle=False, rankings=("score", "neg_aum")) -> review.ReviewSet:
    """A synthetic review set: every third face flipped; ``score`` ranks the flips first, ``neg_aum`` is random."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, K, n)
    flipped = np.arange(n) % 3 == 0
    given = np.where(flipped, (clean + 1) % K, clean)
    scores = {"score": flipped + rng.uniform(0, 0.5, n), "neg_aum": rng.normal(size=n)}
    return review.ReviewSet(run_id=run_id, label="ce (oracle)" if oracle else "ce", noise="symmetric:0.3", seed=seed,
                            oracle=oracle, ids=np.array([f"face{i:03d}.png" for i in range(n)]),
                            split=np.full(n, "train"), given=given, clean=clean,
                            scores={r: scores[r] for r in rankings}, distribution=np.eye(K)[clean] * 0.7 + 0.3 / K,
                            source="method_target", votes=rng.integers(0, 5, (n, K)).astype(np.float32),
                            images=rng.integers(0, 256, (n + 5, 12, 12, 1), dtype=np.uint8),
                            rows=np.arange(n) + 5, class_names=NAMES)


def test_review_order_ranks_by_score_nan_last_within_a_class():
    score = np.array([0.2, np.nan, 0.9, 0.5, 0.9, -1.0])
    assert review.review_order(score).tolist() == [2, 4, 3, 0, 5, 1]  # ties in index order, NaN last
    given = np.array([1, 1, 0, 1, 1, 0])
    assert review.review_order(score, given, label=1).tolist() == [4, 3, 0, 1]
    assert review.review_order(score, given, label=7).tolist() == []
    with pytest.raises(ValueError, match=r"given must have the shape of score \(6,\)"):
        review.review_order(score, given[:3], label=1)


def test_pages_cover_the_order_once_and_refuse_outside_pages():
    order = np.arange(10)[::-1]
    pages = [review.page_of(order, p, 4) for p in range(review.n_pages(len(order), 4))]
    assert [len(p) for p in pages] == [4, 4, 2] and np.concatenate(pages).tolist() == order.tolist()
    assert review.n_pages(0, 4) == 1 and review.page_of(order[:0], 0, 4).tolist() == []
    with pytest.raises(ValueError, match=r"page must lie in \[0, 3\)"):
        review.page_of(order, 3, 4)
    with pytest.raises(ValueError, match="page_size must be an integer >= 1"):
        review.n_pages(10, 0)


def test_precision_at_k_counts_known_flips_among_the_first_k():
    flipped = np.array([False, True, False, True])
    order = np.array([3, 1, 0, 2])
    assert review.precision_at_k(order, flipped, [1, 2, 3, 10]).tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    assert np.isnan(review.precision_at_k(order[:0], flipped, [5])).all()
    with pytest.raises(ValueError, match="every k must be >= 1"):
        review.precision_at_k(order, flipped, [0])


def test_precision_table_and_the_best_ranking_per_noise():
    sets = [make_set(f"ce-s{i}", seed=i) for i in range(3)] + [make_set("oracle", oracle=True)]
    sets[3].scores["neg_aum"] = sets[3].flipped.astype(float) + 1  # the oracle's second ranking is perfect too
    table = review.precision_table(sets, ks=(5, 10))
    assert len(table) == 8 and set(table["ranking"]) == {"score", "neg_aum"}
    perfect = table[table["ranking"] == "score"]
    assert (perfect["p_at_5"] == 1.0).all() and (perfect["p_at_10"] == 1.0).all()
    assert table["rate"].tolist() == pytest.approx([14 / 40] * 8)
    best = review.best_precision(table, k=10)
    assert best[["noise", "method", "ranking", "n_seeds"]].values.tolist() == [["symmetric:0.3", "ce", "score", 3]]
    assert best["p_at_10_mean"].iloc[0] == 1.0 and best["rate_mean"].iloc[0] == pytest.approx(0.35)
    assert review.best_precision(table, k=10, oracle=True)["method"].iloc[0] == "ce"  # ties: first by name
    assert review.best_set(sets, table, ranking="neg_aum", k=10).run_id != "oracle"
    with pytest.raises(ValueError, match="no p_at_50 column"):
        review.best_precision(table, k=50)
    one_class = review.precision_table(sets[:1], ks=(100,), label=3)
    assert one_class["n"].iloc[0] == int((sets[0].given == 3).sum())


def test_cleanlab_ranking_follows_the_run_order_and_needs_the_same_labels():
    from ferlib.analysis import cleanlab_scores

    rng = np.random.default_rng(1)
    ids = np.array([f"f{i:02d}" for i in range(20)])
    given = rng.integers(0, 3, 20)
    probs = rng.dirichlet(np.ones(3), 20)
    perm = rng.permutation(20)
    readout = {"ids": ids[perm], "given": given[perm]}
    other = (ids, (given + 1) % 3, probs)
    ranked = review.cleanlab_ranking(readout, [other, (ids, given, probs)])
    np.testing.assert_allclose(ranked, cleanlab_scores(given, probs)[perm])
    assert review.cleanlab_ranking(readout, [other]) is None
    assert review.cleanlab_ranking({"ids": ids[:5], "given": given[:5]}, [(ids, given, probs)]) is None


def test_review_set_from_a_run_record_suggests_the_method_target():
    n = 6
    readout = {"ids": np.array([f"t{i}" for i in range(n)]), "given": np.array([0, 1, 2, 3, 4, 5]),
               "clean": np.array([0, 1, 2, 3, 4, 0]), "train_logits": np.eye(K)[np.zeros(n, int)] * 5,
               "method_target": np.eye(K)[[7, 6, 5, 4, 3, 2]], "method_score": np.arange(n, dtype=float),
               "method_aum": np.zeros(n)}
    run = RunRecord(path=Path("x"), result={"run_id": "r", "method": "lanet", "classes": K, "noise": "n", "seed": 2},
                    epochs=None, readout=readout)
    data = SimpleNamespace(ids=np.array(["other"] + list(readout["ids"])[::-1]), split=np.array(["train"] * 7),
                           votes=np.arange(7 * K, dtype=np.float32).reshape(7, K), images=np.arange(7)[:, None])
    s = review.review_set(run, data=data)
    assert s.suggested.tolist() == [7, 6, 5, 4, 3, 2] and s.source == "method_target"
    assert set(s.scores) == {"score", "neg_aum"} and s.flipped.tolist() == [False] * 5 + [True]
    assert s.faces([0, 5]).ravel().tolist() == [6, 1]  # rows found by id in the dataset
    np.testing.assert_array_equal(s.votes[0], data.votes[6])
    del readout["method_target"]
    assert (review.review_set(run, data=data).suggested == 0).all()  # the model's prediction instead
    with pytest.raises(ValueError, match=r"run_ids \['nope'\] are not finished runs here; valid: r"):
        review.review_sets([run], run_ids=["nope"], data=data)


def test_export_writes_the_marked_faces_most_suspicious_first(tmp_path):
    s = make_set()
    order = review.review_order(s.scores["score"])
    marks = {int(order[5]): "fine", int(order[0]): "wrong label", int(order[2]): "ambiguous"}
    path = review.export_review(review.review_rows(s, marks, ranking="score"), tmp_path / "out" / "reviewed.csv")
    table = pd.read_csv(path)
    assert tuple(table.columns) == review.EXPORT_COLUMNS
    assert table["id"].tolist() == [s.ids[i] for i in order[[0, 2, 5]]]
    assert table["decision"].tolist() == ["wrong label", "ambiguous", "fine"]
    assert table["given"].tolist() == [NAMES[s.given[i]] for i in order[[0, 2, 5]]]
    assert table["suggested"].tolist() == [NAMES[s.clean[i]] for i in order[[0, 2, 5]]]
    assert table["score"].tolist() == pytest.approx(s.scores["score"][order[[0, 2, 5]]])
    assert set(table["split"]) == {"train"} and set(table["run_id"]) == {"ce-a"}
    with pytest.raises(ValueError, match=r"one of \['wrong label', 'ambiguous', 'fine'\], got \{3: 'bad'\}"):
        review.review_rows(s, {3: "bad"}, ranking="score")
    with pytest.raises(ValueError, match="ranking 'cleanlab' is not available for ce-a; valid: score, neg_aum"):
        review.review_rows(s, {}, ranking="cleanlab")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['decision'"):
        review.export_review(pd.DataFrame(columns=[c for c in review.EXPORT_COLUMNS if c != "decision"]),
                             tmp_path / "x.csv")


def test_review_page_figure_titles_each_face_in_rank_order():
    s = make_set()
    fig = review.review_page_figure(s, ranking="score", label="happiness", page_size=3)
    order = review.review_order(s.scores["score"], s.given, label=1)
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert [t.split("\n")[0] for t in titles] == [f"#{r + 1} score {s.scores['score'][i]:.2f}"
                                                  for r, i in enumerate(order[:3])]
    assert all("given happiness" in t for t in titles)
    with pytest.raises(ValueError, match="unknown class 'joy'; valid: neutral, happiness"):
        review.review_page_figure(s, label="joy")


# ------------------------------------------------------------------------------------------ the widget
def test_widget_pages_filters_marks_and_exports(tmp_path):
    pytest.importorskip("ipywidgets")
    from ferlib.analysis.review_widget import STATIC_TEXT, ReviewWidget

    sets = [make_set("ce-a", seed=0), make_set("ce-b", seed=1, rankings=("score",))]
    w = ReviewWidget(sets, ranking="neg_aum", page_size=4, path=tmp_path / "reviewed_labels.csv")
    shown = lambda: [i for i, _ in w.cards]  # noqa: E731
    by_aum = review.review_order(sets[0].scores["neg_aum"])
    assert shown() == by_aum[:4].tolist() and w.prev.disabled and not w.next.disabled
    assert w.label.label == "all classes" and w.ranking.value == "neg_aum"
    w.next.click()
    assert shown() == by_aum[4:8].tolist() and w.position.value == "page 2 of 10 (40 faces)"
    p8 = review.precision_at_k(by_aum, sets[0].flipped, [8])[0]
    assert f"<b>{p8:.0%}</b> (p@8;" in w.precision.value

    w.label.value = 2  # a class resets to its first page
    in_class = review.review_order(sets[0].scores["neg_aum"], sets[0].given, label=2)
    assert w.page == 0 and shown() == in_class[:4].tolist()
    w.ranking.value = "score"
    first = review.review_order(sets[0].scores["score"], sets[0].given, label=2)[:4].tolist()
    assert shown() == first
    w.cards[0][1].value = "wrong label"
    w.cards[1][1].value = "fine"
    w.cards[1][1].value = None  # unmarked again
    assert w.decisions == {(0, first[0]): ("wrong label", "score")}

    w.run.value = 1  # the second run has only "score"
    assert w.ranking.options == ("score",) and w.ranking.value == "score"
    other = review.review_order(sets[1].scores["score"], sets[1].given, label=2)[0]
    w.cards[0][1].value = "ambiguous"
    w.run.value = 0
    assert w.cards[0][1].value == "wrong label"  # a mark is kept across runs and pages

    w.export.click()
    table = pd.read_csv(tmp_path / "reviewed_labels.csv")
    assert table[["id", "run_id", "decision"]].values.tolist() == [[sets[0].ids[first[0]], "ce-a", "wrong label"],
                                                                   [sets[1].ids[other], "ce-b", "ambiguous"]]
    assert table["score"].tolist() == pytest.approx([sets[0].scores["score"][first[0]],
                                                     sets[1].scores["score"][other]])
    assert w.status.value.startswith("2 mark(s) written to")
    w.path.value = str(tmp_path)  # a folder: one line in the status, no exception in the callback
    w.export.click()
    assert w.status.value.startswith("not exported:")
    bundle = w._repr_mimebundle_()
    assert bundle["text/plain"] == STATIC_TEXT and "application/vnd.jupyter.widget-view+json" in bundle


def test_widget_refuses_no_run_and_a_bad_page_size():
    pytest.importorskip("ipywidgets")
    with pytest.raises(ValueError, match="no run to review"):
        analysis.ReviewWidget([])
    with pytest.raises(ValueError, match="page_size must be an integer >= 1"):
        analysis.ReviewWidget([make_set()], page_size=0)


# ------------------------------------------------------------------------------------------ hoverable embeddings
def test_hover_embedding_is_self_contained_and_hovers_ids_labels_and_score():
    pytest.importorskip("bokeh")
    from bokeh.models import HoverTool

    n = 30
    rng = np.random.default_rng(0)
    clean = rng.integers(0, K, n)
    given = np.where(np.arange(n) % 4 == 0, (clean + 1) % K, clean)
    ids = np.array([f"face{i}" for i in range(n)])
    grid = analysis.hover_embedding(rng.normal(size=(n, 2)), {"clean": clean, "given": given,
                                                              "flipped": given != clean},
                                    {"face": ids, "score": rng.uniform(size=n)}, class_names=NAMES)
    figures = [child[0] for child in grid.children]
    assert len(figures) == 3 and all(f.x_range is figures[0].x_range for f in figures)
    source = figures[0].renderers[0].data_source
    assert list(source.data["h0"]) == ids.tolist() and list(source.data["l0"]) == [NAMES[c] for c in clean]
    assert list(source.data["l2"]).count("flipped") == int((given != clean).sum())
    (hover,) = [t for t in figures[0].tools if isinstance(t, HoverTool)]
    assert hover.tooltips == [("face", "@h0"), ("score", "@h1{0.000}"), ("clean", "@l0"), ("given", "@l1"),
                              ("flipped", "@l2")]
    html, loader = analysis.bokeh_html(grid).data, analysis.bokeh_loader().data
    fetched = re.compile(r"<(script|link)[^>]*\s(src|href)=")
    assert not fetched.search(html) and not fetched.search(loader)  # nothing fetched: no server, no network
    assert "root.Bokeh = bokeh" in loader and len(loader) > 500_000 and "Bokeh.safely" in html
    with pytest.raises(ValueError, match="hover field 'face' has 3 values, the embedding 30"):
        analysis.hover_embedding(rng.normal(size=(n, 2)), {}, {"face": ids[:3]})


def test_run_hover_embedding_shows_the_embedded_faces():
    pytest.importorskip("bokeh")
    readout = {"ids": np.array(["a", "b", "c", "d"]), "test_ids": np.array(["t0", "t1", "t2"]),
               "given": np.array([0, 1, 2, 3]), "clean": np.array([0, 1, 2, 0]),
               "test_labels": np.array([1, 1, 0]), "method_score": np.array([0.1, 0.2, 0.3, 0.4])}
    run = RunRecord(path=Path("x"), result={"run_id": "r", "method": "ce", "classes": K}, epochs=None,
                    readout=readout)
    emb = {"train": (np.zeros((2, 2)), {"clean label": np.array([0, 0]), "flipped": np.array([False, True])}),
           "test": (np.zeros((2, 2)), {"label": np.array([1, 0])}), "index": {"train": [1, 3], "test": [0, 2]}}
    train = analysis.run_hover_embedding(run, emb, "train").children[0][0].renderers[0].data_source.data
    assert list(train["h0"]) == ["b", "d"] and list(train["h1"]) == pytest.approx([0.2, 0.4])
    test = analysis.run_hover_embedding(run, emb, "test").children[0][0].renderers[0].data_source.data
    assert list(test["h0"]) == ["t0", "t2"] and list(test["l0"]) == ["happiness", "neutral"]
