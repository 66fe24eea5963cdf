"""One self-contained HTML page from a results folder (``phaselens report RESULTS -o report.html``).

The page holds every result's summary, figures and table, and the run's provenance (model, task, format,
seed, phaselens version, date), all asked of the result itself (:class:`~phaselens.Result`'s
``summary()``, ``figures()``, ``table()``; a class's ``overview()`` draws several of its results together).
Plotly's JavaScript is embedded once in the page's head, so the page works offline.

A small script at the end of the page records how many figures rendered (a non-empty SVG each)
and every JavaScript error into the hidden element ``#phaselens-check`` (``data-status`` is
``"ok"`` or ``"failed"``), so a headless browser can check the page.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import ReportWarning, ResultsError
from .files import check_writable, write_atomic
from .page import Section
from .results import Result, ResultEntry, read_results
from .study.report import is_study, study_sections
from .study.store import INDEX
from .version import __version__


MAX_ROWS = 80
#: provenance values longer than this many characters wrap (the others stay on one line)
LONG = 32


def _entries(results: Any) -> list[ResultEntry]:
    if isinstance(results, (str, os.PathLike)):

        if is_study(results) and not [p for p in Path(results).glob("*.json") if p.name != INDEX]:
            return []  # a study whose jobs all failed: its index (with the errors) is still reported
        return read_results(results)
    if isinstance(results, dict):
        return [ResultEntry(k, type(v).__name__, v, v.provenance()) for k, v in results.items()]
    if isinstance(results, (list, tuple)) and all(isinstance(e, ResultEntry) for e in results):
        return list(results)
    raise ResultsError("results must be a results folder, a {name: result} dict, or a list of ResultEntry")


# ----------------------------------------------------------------------------- sections
def _result_section(e: ResultEntry) -> Section:
    """The result's own summary, figures and table (every result kind answers these itself)."""
    sec = Section(f"{e.name} ({e.kind})", _anchor(e.name))
    r = e.result
    for what, fn in (("summary", lambda: setattr(sec, "note", str(r.summary()))),
                     ("figure", lambda: setattr(sec, "figures", list(r.figures()))),
                     ("table", lambda: (lambda t: t is not None and len(t) and sec.tables.append(("table", t)))(r.table()))):
        try:
            fn()
        except Exception as ex:  # noqa: BLE001 - shown on the page and warned
            sec.errors.append(_err(what, e, ex))
    return sec


def _claims_section(table: Any, name: str = "claims") -> Section:
    """A claims table (:class:`~phaselens.verdicts.Claims`): one row per claim, the verdict first, with the columns
    of ``analyses/claims.csv`` and the minimum detectable effect of undetermined verdicts."""
    from .verdicts import COLUMNS, Claims

    if isinstance(table, (str, os.PathLike)):
        from .results import load_result

        table = load_result(table)
    if isinstance(table, (list, tuple)):
        from .verdicts import claims as make_claims

        table = make_claims(table)
    if not isinstance(table, Claims):
        raise ResultsError(f"claims= takes a Claims table (pl.claims(...)), a list of Claim, or its saved file; got "
                           f"{type(table).__name__}")
    df = table.to_pandas()
    cols = ["verdict"] + [c for c in COLUMNS if c != "verdict"] + ["predicted", "level", "mde", "effect"]
    v = table.verdicts
    sec = Section(f"Claims: {name}", _anchor(f"claims-{name}"))
    sec.note = (f"{len(v)} claim(s): {v.count('agree')} agree, {v.count('disagree')} disagree, "
                f"{v.count('undetermined')} undetermined (Holm-corrected per paper at alpha = {table.alpha:g}; the "
                "interval is at each claim's Holm level; mde: the smallest effect the design detects with 80% power).")
    sec.tables.append(("claims", df[[c for c in cols if c in df.columns]]))
    return sec


def _err(what: str, e: ResultEntry, ex: Exception) -> str:
    msg = f"could not make the {what} of {e.name} ({e.kind}): {type(ex).__name__}: {ex}"
    warnings.warn(msg, ReportWarning, stacklevel=3)
    return msg


def _comparison_sections(entries: list[ResultEntry]) -> list[Section]:
    """Per result class with two or more results in the folder, the class's own overview figures
    (every trace on one block axis, every CKA matrix on one colour scale, ...)."""
    by_cls: dict[type, dict[str, Any]] = {}
    for e in entries:
        by_cls.setdefault(_overview_owner(type(e.result)), {})[e.name] = e.result
    out = []
    for cls, group in by_cls.items():
        if len(group) < 2:
            continue
        kinds = "/".join(sorted({type(r).__name__ for r in group.values()}))
        sec = Section(f"All {len(group)} {kinds} results side by side", f"compare-{cls.__name__.lower().strip('_')}")
        try:
            sec.figures = list(cls.overview(group))
        except Exception as ex:  # noqa: BLE001
            sec.errors.append(_err("comparison figure", ResultEntry(sec.title, cls.__name__, None), ex))
        if sec.figures or sec.errors:
            out.append(sec)
    return out


def _overview_owner(cls: type) -> type:
    """The class whose ``overview`` draws ``cls``: the first base defining it (traces and transitions share one)."""
    for base in cls.__mro__:
        if "overview" in vars(base):
            return cls if base is Result else base
    return cls


def _study_sections(results: Any, entries: list[ResultEntry]) -> list[Section]:
    """A study folder's cross-job figures and index (:mod:`phaselens.study.report`), first on the page."""
    return study_sections(results, entries) if is_study(results) else []


# ----------------------------------------------------------------------------- HTML
def section_anchor(name: str) -> str:
    """The HTML id of the report section of the result entry named ``name`` (``report.html#<id>`` links to it)."""
    return "r-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


_anchor = section_anchor


def _provenance_table(entries: list[ResultEntry]) -> str:
    cols = ["model", "task", "format", "seed", "n_items", "command"]
    extra = sorted({k for e in entries for k in e.provenance} - set(cols))
    head = ["result", "kind", *cols, *extra, "phaselens", "created"]
    rows = []
    for e in entries:
        p = e.provenance
        texts = [e.name, e.kind, *(_cell(p.get(k)) for k in (*cols, *extra)), e.phaselens or "?", e.created or "?"]
        cells = [f'<a href="#{_anchor(e.name)}">{html.escape(e.name)}</a>', *(html.escape(t) for t in texts[1:])]
        # short values stay on one line; a long one (a path, a note) wraps inside a column of its own width
        rows.append("<tr>" + "".join(f"<td class='long'>{c}</td>" if len(t) > LONG else f"<td>{c}</td>"
                                     for c, t in zip(cells, texts)) + "</tr>")
    return ('<div class="provwrap"><table class="prov"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _df_html(df: Any) -> str:
    from pandas.api.types import is_float_dtype

    n = len(df)
    shown = df.head(MAX_ROWS)
    fmt = {c: (lambda v: f"{v:.4g}") for c in shown.columns if is_float_dtype(shown[c].dtype)}
    body = shown.to_html(index=False, border=0, classes="data", formatters=fmt, na_rep="–", escape=True)
    more = f"<p class='muted'>first {MAX_ROWS} of {n} rows</p>" if n > MAX_ROWS else ""
    return body + more


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:1.6em;margin:.2em 0}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em;font-size:1.25em}
.muted{color:#666;font-size:.9em}.note{background:#f1f7f1;border-left:4px solid #2ca02c;padding:8px 12px;margin:8px 0}
.error{background:#fdeeee;border-left:4px solid #d62728;padding:8px 12px;margin:8px 0;white-space:pre-wrap}
figure{margin:18px 0}figcaption{color:#555;font-size:.9em;margin:2px 0 0 4px}
table{border-collapse:collapse;font-size:.82em;margin:6px 0}td,th{padding:3px 8px;text-align:right;border-bottom:1px solid #eee}
th{background:#f3f3f3;position:sticky;top:0}tr:nth-child(even) td{background:#fbfbfb}
table.prov td,table.prov th{text-align:left;white-space:nowrap}
table.prov td.long{white-space:normal;overflow-wrap:anywhere;min-width:16em}
.provwrap{max-width:100%;overflow-x:auto}figure{max-width:100%;overflow-x:auto}details{margin:8px 0}summary{cursor:pointer;color:#1f77b4}
.tablewrap{max-height:460px;overflow:auto;border:1px solid #eee}nav ul{columns:2;font-size:.92em}
"""

ERRORS_JS = """window.__phaselensErrors=[];window.addEventListener('error',function(e){window.__phaselensErrors.push(
String(e.message||e.type)+(e.filename?' @'+e.filename+':'+e.lineno:''));});
window.addEventListener('unhandledrejection',function(e){window.__phaselensErrors.push('unhandled rejection: '+String(e.reason));});"""

CHECK_JS = """(function(){function check(){var plots=document.querySelectorAll('.js-plotly-plot');var ok=0,empty=[];
plots.forEach(function(p){var svg=p.querySelector('svg.main-svg');var drawn=svg&&svg.getBoundingClientRect().width>0&&
p.querySelectorAll('.main-svg .trace, .main-svg .hm, .main-svg image, .main-svg .point').length>0;if(drawn){ok++}else{empty.push(p.id)}});
var el=document.getElementById('phaselens-check');var expected=+el.getAttribute('data-expected');
var errs=window.__phaselensErrors||[];var right=document.querySelector('main').getBoundingClientRect().right;var wide=[];
document.querySelectorAll('main > *, section > *').forEach(function(x){var r=x.getBoundingClientRect();
var spill=getComputedStyle(x).overflowX==='visible'&&x.scrollWidth>x.clientWidth+1;
if(r.width>0&&(r.right>right+1||spill)){wide.push((x.id||x.className||x.tagName.toLowerCase())+':'+Math.round(Math.max(r.right-right,x.scrollWidth-x.clientWidth))+'px')}});
var res={expected:expected,figures:plots.length,rendered:ok,empty:empty,errors:errs,overflow:wide};
el.textContent=JSON.stringify(res);el.setAttribute('data-status',(ok===expected&&plots.length===expected&&errs.length===0&&wide.length===0)?'ok':'failed');}
if(document.readyState==='complete'){setTimeout(check,50)}else{window.addEventListener('load',function(){setTimeout(check,50)})}})();"""


def report_html(results: Any, *, title: str | None = None, claims: Any = None) -> str:
    """The report page as a string (see :func:`build_report`)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs




    entries = _entries(results)
    if not entries and not is_study(results):  # a study whose jobs all failed still shows its index and errors
        raise ResultsError(f"no results to report in {results!r}: save some with phaselens.save_result(result, DIR) "
                           "or a command's --out DIR, then run phaselens report DIR")
    claim_secs = [_claims_section(claims)] if claims is not None else []
    claim_secs += [_claims_section(e.result, e.name) for e in entries if e.kind == "Claims"]
    sections = (claim_secs + _study_sections(results, entries) + _comparison_sections(entries)
                + [_result_section(e) for e in entries if e.kind != "Claims"])
    models = sorted({str(e.provenance.get("model")) for e in entries if e.provenance.get("model")})
    tasks = sorted({str(e.provenance.get("task")) for e in entries if e.provenance.get("task")})
    title = title or "phaselens report" + (f": {', '.join(models[:3])}" if models else "") + (f" on {', '.join(tasks[:3])}" if tasks else "")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<script>{ERRORS_JS}</script><style>{CSS}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>made by phaselens {html.escape(__version__)} on {now}; {len(entries)} result(s). Hover any "
        "figure for exact values; the legend toggles curves.</p>",
        "<h2 id='provenance'>Provenance</h2>", _provenance_table(entries),
        "<nav><ul>" + "".join(f"<li><a href='#{s.anchor}'>{html.escape(s.title)}</a></li>" for s in sections) + "</ul></nav>",
    ]
    n_fig = 0
    for s in sections:
        parts.append(f"<section><h2 id='{s.anchor}'>{html.escape(s.title)}</h2>")
        if s.note:
            parts.append(f"<div class='note'>{html.escape(s.note)}</div>")
        for msg in s.errors:
            parts.append(f"<div class='error'>{html.escape(msg)}</div>")
        for cap, fig in s.figures:
            n_fig += 1
            div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{n_fig}",
                              config={"displaylogo": False, "responsive": True})
            parts.append(f"<figure>{div}" + (f"<figcaption>{html.escape(cap)}</figcaption>" if cap else "") + "</figure>")
        for cap, df in s.tables:
            parts.append(f"<details{' open' if len(df) <= 40 else ''}><summary>{html.escape(cap)}: {len(df)} rows</summary>"
                         f"<div class='tablewrap'>{_df_html(df)}</div></details>")
        parts.append("</section>")
    parts.append(f"<div id='phaselens-check' hidden data-expected='{n_fig}' data-status='pending'></div>")
    parts.append(f"<script>{CHECK_JS}</script></main></body></html>")
    return "\n".join(parts)


def build_report(results: Any, path: str | os.PathLike = "report.html", *, title: str | None = None,
                 claims: Any = None) -> Path:
    """Write ONE self-contained HTML page for ``results`` and return its path.

    Args:
        results: a results folder (written by ``--out DIR`` or :func:`phaselens.save_result`), a
            ``{name: result}`` dict, or a list of :class:`~phaselens.results.ResultEntry`.
        path: the HTML file to write (written atomically).
        title: the page title (default: names the models and tasks).
        claims: a claims table (``pl.claims(...)``, a list of ``pl.Claim``, or a saved Claims file) shown first,
            one row per claim with its verdict; Claims results inside ``results`` are shown the same way.
    """
    path = Path(path)
    check_writable(path, "file", what="path", error=ResultsError, parents=True)  # before the page is built
    page = report_html(results, title=title, claims=claims)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    return path
