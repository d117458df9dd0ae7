"""HTML pieces of the study's rendered pages: tables as a reader wants them (no index column, numbers rounded,
the first rows shown and the rest folded, the CSV linked) and the frame of a rendered notebook (its title, a link
back to the index, a table of contents). :func:`setup_notebook` makes :func:`html_table` the way every view shows a
DataFrame; :mod:`ferlib.study.report` builds the index and frames each rendered notebook with these."""
from __future__ import annotations

import html
import math
import re
from numbers import Integral, Real

__all__ = ["Html", "html_table", "frame_page", "page_sections", "compact_styles", "MAX_ROWS"]

#: Rows a table shows before the rest are folded (``<details>``).
MAX_ROWS = 30
#: Sections a page needs before it gets a table of contents.
_TOC_MIN_SECTIONS = 3


class Html(str):
    """A table cell's text that is already HTML (not escaped again by :func:`html_table`)."""


def _e(value) -> str:
    return value if isinstance(value, Html) else html.escape(str(value), quote=True)


def _decimals(column) -> int | None:
    """Decimals of a float column: none when every value is whole, 3 when every |value| <= 1 (fractions, AUROC),
    else 1 (percentages, points, seconds); -1 (3 significant digits) when every value is below 0.01 (learning
    rates); None for a column that is not all numbers."""
    values = [v for v in column if not (isinstance(v, float) and math.isnan(v))]
    if not values or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        return None
    if all(float(v).is_integer() for v in values):
        return 0
    largest = max(abs(float(v)) for v in values)
    return -1 if largest < 0.01 else 3 if largest <= 1 else 1


def _flat(frame):
    """``frame`` with its index as columns when it means something (named, several levels, or labels), dropped
    when it is unnamed row numbers; multi-level column names joined with `` · ``."""
    import pandas as pd

    if isinstance(frame.index, pd.MultiIndex) or frame.index.name is not None:
        out = frame.reset_index()
    elif pd.api.types.is_integer_dtype(frame.index):
        out = frame.reset_index(drop=True)
    else:
        out = frame.reset_index(names=[""])
    if isinstance(out.columns, pd.MultiIndex):
        out = out.copy()
        out.columns = [" · ".join(str(p) for p in c if str(p)) for c in out.columns]
    return out


_NUMBER_TEXT = re.compile(r"[+\-]?\d[\d.,]*( ± \d[\d.,]*)?%?")  # "62.2 ± 0.4", "+5.0", "0.850"


def _cell(value, decimals: int | None) -> tuple[str, bool]:
    """(HTML of one value, whether it is a number or a number's text, right-aligned)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", False
    if isinstance(value, str) and not isinstance(value, Html) and _NUMBER_TEXT.fullmatch(value):
        return _e(value), True
    if isinstance(value, Real) and not isinstance(value, bool) and decimals is not None:
        return (f"{int(value):,}" if decimals == 0 and isinstance(value, Integral) else
                f"{float(value):.3g}" if decimals < 0 else f"{float(value):.{decimals}f}"), True
    return _e(value), False


def html_table(frame, *, cls: str = "", max_rows: int = MAX_ROWS, csv: str | None = None,
               row_classes=None) -> str:
    """A DataFrame as an HTML table: no index column (a meaningful index becomes columns), floats rounded per
    column (whole numbers without decimals, fractions to 3 decimals, larger values to 1), numbers right-aligned,
    missing values blank; cells of type :class:`Html` are inserted as they are, the rest escaped.

    Parameters
    ----------
    frame : pandas.DataFrame (an empty one gives ``""``).
    cls : CSS class(es) of the ``<table>`` besides ``dataframe``.
    max_rows : rows shown; a longer table shows its first ``max_rows`` and folds the whole table into a
        ``<details>`` below them.
    csv : a link to the table's CSV, written under the table.
    row_classes : one CSS class per row (``""`` for none), e.g. ``oracle``.
    """
    if frame is None or not len(frame):
        return ""
    frame = _flat(frame)
    decimals = {c: _decimals(frame[c]) for c in frame.columns}
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    classes = list(row_classes) if row_classes is not None else [""] * len(frame)
    for record, row_cls in zip(frame.itertuples(index=False), classes):
        cells = [_cell(v, decimals[c]) for c, v in zip(frame.columns, record)]
        attr = f" class='{row_cls}'" if row_cls else ""
        rows.append(f"<tr{attr}>" + "".join(f"<td class='num'>{t}</td>" if num else f"<td>{t}</td>"
                                            for t, num in cells) + "</tr>")

    def table(body: list[str]) -> str:  # a wide table scrolls by itself, not the page
        return (f"<div style='overflow-x:auto'><table class='{('dataframe ' + cls).strip()}'><thead><tr>{head}"
                f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")

    out = table(rows[:max_rows])
    if len(rows) > max_rows:
        out += (f"<details><summary>all {len(rows)} rows ({len(rows) - max_rows} more)</summary>"
                + table(rows) + "</details>")
    if csv:
        out += f"<p class='muted'>Rows: <a href='{_e(csv)}'>{_e(csv)}</a>.</p>"
    return out


# ----------------------------------------------------------------------------------- the frame of a page
_H2 = re.compile(r"<h2 id=\"([^\"]+)\">(.*?)</h2>", re.S)
_TAG = re.compile(r"<[^>]+>")

_FRAME_CSS = """<style>
nav.ferlib{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:12px 20px 0;
padding:.6em 1em;background:#f4f6f8;border:1px solid #dde2e6;border-radius:4px;font-size:14px;line-height:1.5}
nav.ferlib a{color:#1a5fb4;text-decoration:none}nav.ferlib a:hover{text-decoration:underline}
nav.ferlib ol{margin:.3em 0 0;padding-left:1.6em;columns:2}
.jp-RenderedHTMLCommon table.dataframe th,.jp-RenderedHTMLCommon table.dataframe td{text-align:left}
.jp-RenderedHTMLCommon table.dataframe td.num{text-align:right}
</style>"""


def page_sections(page: str) -> list[tuple[str, str]]:
    """``[(anchor id, heading text)]`` of the level-2 headings of an nbconvert page, in order."""
    out = []
    for anchor, inner in _H2.findall(page):
        text = html.unescape(_TAG.sub("", inner)).replace("¶", "").strip()
        out.append((html.unescape(anchor), text))
    return out


def frame_page(page: str, *, title: str, index: str | None = "index.html") -> str:
    """An nbconvert page with its frame: ``<title>`` set to ``title``, and at the top a bar linking back to the
    study's ``index`` (a relative link; None: no link) and, on a page with at least three sections, a table of
    contents of its level-2 headings."""
    page = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title)}</title>", page, count=1, flags=re.S)
    parts = []
    if index:
        parts.append(f"<a href='{_e(index)}'>&larr; study index</a> &middot; <b>{_e(title)}</b>")
    sections = page_sections(page)
    if len(sections) >= _TOC_MIN_SECTIONS:
        parts.append("Contents:<ol>" + "".join(f"<li><a href='#{_e(a)}'>{_e(t)}</a></li>" for a, t in sections)
                     + "</ol>")
    if not parts:
        return page
    nav = f"<nav class='ferlib'>{'<br>'.join(parts)}</nav>"
    page = page.replace("</head>", _FRAME_CSS + "</head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, page, count=1)


# ----------------------------------------------------------------------------------- a page's own stylesheet
_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_STYLE = re.compile(r"(<style[^>]*>)(.*?)(</style>)", re.S)
_CLASS_ATTR = re.compile(r"""class\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_SELECTOR_CLASS = re.compile(r"\.(-?[_a-zA-Z][\w-]*)")
_PSEUDO_ARGS = re.compile(r"\([^()]*\)")  # :not(.x), :is(.a, .b): classes there need not occur
_VAR_USE = re.compile(r"var\(\s*(--[\w-]+)")
_VALUE = r"""(?:[^;"'()]|"[^"]*"|'[^']*'|\((?:[^()"']|"[^"]*"|'[^']*'|\([^()]*\))*\))*"""
_VAR_DECL = re.compile(rf"\s*(--[\w-]+)\s*:({_VALUE});?")


def _css_blocks(css: str) -> list[tuple[str, str | None]]:
    """The top-level ``(prelude, body)`` pairs of a stylesheet without comments (body None: ``@import x;``)."""
    out, i = [], 0
    while (j := css.find("{", i)) >= 0:
        semi = css.find(";", i)
        if 0 <= semi < j:
            out.append((css[i:semi + 1].strip(), None))
            i = semi + 1
            continue
        depth, k = 1, j + 1
        while depth and k < len(css):
            depth += {"{": 1, "}": -1}.get(css[k], 0)
            k += 1
        out.append((css[i:j].strip(), css[j + 1:k - 1]))
        i = k
    return out


def _prune_rules(css: str, classes: set[str]) -> list[tuple[str, str | None]]:
    """The rules of ``css`` with a selector whose classes (outside ``:not(...)`` and the like) all occur in
    ``classes`` (at-rules' blocks pruned the same way, emptied ones dropped); rules without a class selector
    (``:root``, ``pre``) are kept."""
    kept = []
    for prelude, body in _css_blocks(_COMMENT.sub("", css)):
        if body is not None and prelude.startswith(("@media", "@supports", "@layer")):
            inner = _prune_rules(body, classes)
            if inner:
                kept.append((prelude, "\n".join(f"{p}{{{b}}}" for p, b in inner)))
        elif body is None or prelude.startswith("@") or any(
                set(_SELECTOR_CLASS.findall(sel)) <= classes for sel in _PSEUDO_ARGS.sub("", prelude).split(",")):
            kept.append((prelude, body if body is None else body.strip()))
    return kept


def compact_styles(page: str) -> str:
    """``page`` with each ``<style>`` cut to what the page uses: the rules with a selector whose classes all occur
    in its ``class`` attributes, and of the ``:root`` custom properties those the kept rules and the page use
    (transitively). nbconvert's lab template inlines JupyterLab's whole stylesheet, about 260 KB a page, for a
    page that uses a few dozen of its rules; what a page shows is unchanged (checked by a screenshot of every
    page before and after). Classes a script adds after loading are not seen: keep such pages' styles whole."""
    outside = _STYLE.sub("", page)
    classes = {c for m in _CLASS_ATTR.finditer(outside) for c in (m.group(1) or m.group(2) or "").split()}
    sheets = [_prune_rules(m.group(2), classes) for m in _STYLE.finditer(page)]
    rules = [rule for sheet in sheets for rule in sheet]
    values: dict[str, list[str]] = {}
    for prelude, body in rules:
        if prelude == ":root" and body:
            for m in _VAR_DECL.finditer(body):
                values.setdefault(m.group(1), []).append(m.group(2))
    need = set(_VAR_USE.findall(outside))
    need |= {v for prelude, body in rules if prelude != ":root" and body for v in _VAR_USE.findall(body)}
    todo = list(need)
    while todo:
        for value in values.get(todo.pop(), ()):
            fresh = set(_VAR_USE.findall(value)) - need
            need |= fresh
            todo.extend(fresh)

    def text(sheet):
        out = []
        for prelude, body in sheet:
            if prelude == ":root" and body:
                body = ";".join(f"{m.group(1)}:{m.group(2).strip()}" for m in _VAR_DECL.finditer(body)
                                if m.group(1) in need)
                if not body:
                    continue
            out.append(prelude if body is None else f"{prelude}{{{body}}}")
        return "\n".join(out)

    it = iter(sheets)
    return _STYLE.sub(lambda m: m.group(1) + text(next(it)) + m.group(3), page)
