"""The HTML pieces of the report's pages (ferlib.analysis.pages): tables as a reader wants them, each view's frame."""
from __future__ import annotations

import re

import pandas as pd

from ferlib.analysis.pages import Html, compact_styles, frame_page, html_table, page_sections


def _cells(table: str) -> list[list[str]]:
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)]


def test_tables_drop_row_numbers_and_round_each_column_as_its_values_need():
    frame = pd.DataFrame({"method": ["ce", "<nla>"], "auroc": [0.91234, 0.5], "acc (%)": [62.2456, 48.0],
                          "epochs": [30.0, 30.0], "n": [5000, 12], "gap": [float("nan"), 0.25]}, index=[3, 7])
    page = html_table(frame)
    assert "<th>method</th><th>auroc</th><th>acc (%)</th><th>epochs</th><th>n</th><th>gap</th>" in page
    assert _cells(page)[1:] == [["ce", "0.912", "62.2", "30", "5,000", ""],
                                ["&lt;nla&gt;", "0.500", "48.0", "30", "12", "0.250"]]
    assert "<td class='num'>0.912</td>" in page and "<td>ce</td>" in page  # numbers right-aligned, text not
    assert page.startswith("<div style='overflow-x:auto'><table")  # a wide table scrolls by itself
    texts = html_table(pd.DataFrame({"acc": ["62.2 ± 0.4", "+5.0"], "method": ["CE", "30% symmetric"]}))
    assert "<td class='num'>62.2 ± 0.4</td><td>CE</td>" in texts and "<td class='num'>+5.0</td>" in texts
    assert _cells(html_table(pd.DataFrame({"lr": [0.001, 0.000125]})))[1:] == [["0.001"], ["0.000125"]]


def test_a_meaningful_index_becomes_columns_and_header_levels_are_joined():
    wide = pd.DataFrame({"acc": [0.5, 0.6]}, index=pd.Index(["ce", "nla"], name="method"))
    assert "<th>method</th><th>acc</th>" in html_table(wide)
    pivot = pd.DataFrame([[1.5, 2.5]], columns=pd.MultiIndex.from_tuples([("acc", "noise a"), ("acc", "noise b")]))
    assert "<th>acc · noise a</th><th>acc · noise b</th>" in html_table(pivot)
    labels = pd.DataFrame({"last": [0.5]}, index=["acc"])  # unnamed labels: kept, under an empty header
    assert _cells(html_table(labels))[1] == ["acc", "0.500"]


def test_long_tables_show_their_first_rows_and_fold_the_rest_with_the_csv_linked():
    frame = pd.DataFrame({"i": range(45), "name": [f"r{i}" for i in range(45)]})
    page = html_table(frame, max_rows=30, csv="detection.csv", cls="wide")
    shown, folded = page.split("<details>", 1)
    assert len(_cells(shown)) == 31 and "r29" in shown and "r30" not in shown  # the head row and 30 rows
    assert "<summary>all 45 rows (15 more)</summary>" in folded and len(_cells(folded)) == 46
    assert "<a href='detection.csv'>detection.csv</a>" in page and "<table class='dataframe wide'>" in page
    assert "<details>" not in html_table(frame.head(30)) and html_table(frame.iloc[:0]) == ""


def test_html_cells_and_row_classes_pass_through():
    frame = pd.DataFrame({"method": [Html("CE <span class='muted'>(control)</span>"), "<b>"]})
    page = html_table(frame, row_classes=["control", ""])
    assert "<tr class='control'><td>CE <span class='muted'>(control)</span></td></tr>" in page
    assert "<tr><td>&lt;b&gt;</td></tr>" in page


NBCONVERT_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Notebook</title></head>
<body class="jp-Notebook" data-jp-theme-light="true"><h1 id="05-·-Uncertainty">05 · Uncertainty</h1>
{sections}</body></html>"""


def _page(*titles: str) -> str:
    return NBCONVERT_PAGE.format(sections="".join(
        f'<h2 id="{t.replace(" ", "-")}">{t}<a class="anchor-link" href="#{t.replace(" ", "-")}">¶</a></h2>'
        for t in titles))


def test_each_view_gets_its_title_a_link_back_and_contents_when_long():
    page = frame_page(_page("The answer", "Detection & AUROC", "Galleries"), title="05 · Uncertainty — smoke",
                      index="../index.html")
    assert "<title>05 · Uncertainty — smoke</title>" in page and "<title>Notebook" not in page
    nav = page.split("<nav class='ferlib'>", 1)[1].split("</nav>", 1)[0]
    assert page.index("<nav class='ferlib'>") > page.index("<body")  # inside the body, before the content
    assert "<a href='../index.html'>&larr; study index</a>" in nav
    assert re.findall(r"<li><a href='#([^']+)'>([^<]+)</a></li>", nav) == [
        ("The-answer", "The answer"), ("Detection-&amp;-AUROC", "Detection &amp; AUROC"), ("Galleries", "Galleries")]
    assert page_sections(_page("A", "B")) == [("A", "A"), ("B", "B")]
    short = frame_page(_page("A", "B"), title="00 · Data", index="index.html")
    assert "Contents" not in short and "&larr; study index" in short


def test_a_view_shows_every_dataframe_as_such_a_table(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from ferlib import analysis

    shell = InteractiveShell.instance()
    try:
        monkeypatch.chdir(tmp_path)
        analysis.setup_notebook("99_summary", tmp_path)
        shown, _ = shell.display_formatter.format(pd.DataFrame({"auroc": [0.81234]}))
        assert shown["text/html"] == html_table(pd.DataFrame({"auroc": [0.81234]}))
    finally:
        InteractiveShell.clear_instance()


_PAGE = """<html><head><style type="text/css">
/* a comment {with braces} */
:root{--used:1px;--chained:var(--base);--base:red;--unused:url("data:image/svg+xml;utf8,<svg a='b;c'/>");
--inline:blue}
.jp-Cell .jp-Output{margin:var(--used)}
.jp-Unused{color:var(--unused)}
.jp-Cell ol:not(.list-inline){padding:var(--chained)}
.jp-Cell, .jp-Other{display:block}
pre{line-height:1}
@media print{.jp-Cell{display:none}.jp-Gone{color:red}}
@media screen{.jp-Gone{color:red}}
</style></head><body><div class="jp-Cell"><div class='jp-Output' style="color:var(--inline)">x</div>
<ol><li>y</li></ol></div></body></html>"""


def test_compact_styles_keeps_the_rules_and_custom_properties_a_page_uses_and_drops_the_rest():
    out = compact_styles(_PAGE)
    assert ".jp-Cell .jp-Output{margin:var(--used)}" in out
    assert ".jp-Cell ol:not(.list-inline){" in out  # a class under :not() need not occur
    assert ".jp-Cell, .jp-Other{display:block}" in out and "pre{line-height:1}" in out
    assert "@media print{.jp-Cell{display:none}}" in out and "@media screen" not in out and "jp-Gone" not in out
    assert "jp-Unused" not in out and "--unused" not in out and "comment" not in out
    root = re.search(r":root\{(.*?)\}", out).group(1).split(";")
    assert sorted(decl.split(":")[0] for decl in root) == ["--base", "--chained", "--inline", "--used"]
    assert out.endswith("<ol><li>y</li></ol></div></body></html>")  # the body is untouched
