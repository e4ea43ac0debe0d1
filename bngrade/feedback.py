"""Feedback pages: self-contained, under a Content-Security-Policy, honest about what is not graded yet.

- `SafeFeedbackExporter` (GenerateFeedback's exporter in the course config)
  renders nbgrader's feedback template, with student HTML sanitised by
  `bngrade.safe_html` (the course config's HTMLExporter filters), then makes
  the page one self-contained file, as nbgrader's exchange copies only the
  .html: MathJax is inlined from the project's npm copy
  (`node_modules/mathjax/es5/tex-svg.js`, made by `make mathjax`; its fonts
  are inside it), never loaded from a CDN, and a Content-Security-Policy meta
  tag allows only those two scripts (by hash): no other script, inline or
  external, and no network load at all.
- `MarkNotGradedYet` (after GetGrades) finds the cells a person still has to
  grade; the exporter shows them as "not graded yet" instead of nbgrader's
  "0.0 / 2.0".
"""
import base64
import hashlib
import os
import re
from pathlib import Path

from nbconvert.exporters import HTMLExporter
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

REPO = Path(__file__).resolve().parents[1]
MATHJAX_CANDIDATES = (REPO / "node_modules" / "mathjax" / "es5" / "tex-svg.js",
                      REPO / "book" / "_extra" / "mathjax" / "tex-svg.js")
# Student TeX gets base, ams, newcommand and configmacros only: no autoload or \require, so no \href, \style,
# \class or \cssId (MathJax's html extension: a link, or a position: fixed box over the page), and no fetch.
MATHJAX_CONFIG = """window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, packages: {'[-]': ['autoload', 'require']}},
  svg: {fontCache: 'global'},
  options: {enableMenu: false}
};"""
NOT_GRADED = "bngrade_not_graded"  # resources key: {grade_id: points} of the cells not graded yet


def mathjax_source():
    """The local MathJax (tex-svg.js) as text, or None if `make mathjax` has not been run."""
    for path in MATHJAX_CANDIDATES:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def _sha256(script):
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


MATHJAX_BLOCK = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)


def make_self_contained(html, mathjax=None):
    """Feedback HTML with nbconvert's CDN MathJax replaced by the local copy, inline, under a strict CSP."""
    scripts = [MATHJAX_CONFIG] + ([mathjax] if mathjax else [])
    hashes = " ".join(_sha256(s) for s in scripts)
    csp = ("default-src 'none'; " f"script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
           "font-src data:; base-uri 'none'; form-action 'none'; frame-src 'none'; object-src 'none'")
    inline = "".join(f"<script>{s}</script>\n" for s in scripts)
    html = MATHJAX_BLOCK.sub(lambda m: inline, html, count=1)
    if inline not in html:  # the template had no MathJax block: put the scripts in the head anyway
        html = html.replace("</head>", inline + "</head>", 1)
    meta = f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
    return re.sub(r"<head[^>]*>", lambda m: m.group(0) + "\n" + meta, html, count=1)


class SafeFeedbackExporter(HTMLExporter):
    """nbgrader's feedback HTML, self-contained and under a Content-Security-Policy (module docstring)."""

    mathjax_path = Unicode("", help="MathJax's tex-svg.js to inline (default: the project's npm copy)").tag(
        config=True)

    def from_notebook_node(self, nb, resources=None, **kw):
        html, resources = super().from_notebook_node(nb, resources, **kw)
        source = None
        if self.mathjax_path and os.path.isfile(self.mathjax_path):
            source = Path(self.mathjax_path).read_text(encoding="utf-8")
        else:
            source = mathjax_source()
        if source is None:
            self.log.warning("bngrade: no local MathJax (run `make mathjax`): feedback shows LaTeX as text")
        elif "</script" in source.lower():
            raise ValueError("the MathJax file contains '</script' and cannot be inlined")
        html = show_not_graded_yet(html, (resources or {}).get(NOT_GRADED) or {})
        return make_self_contained(html, source), resources


class MarkNotGradedYet(NbGraderPreprocessor):
    """Record the graded cells that still need a person's grade (after GetGrades, which reads the same book)."""

    def preprocess(self, nb, resources):
        from nbgrader.api import Gradebook, MissingEntry

        info = resources.get("nbgrader", {})
        pending = {}
        with Gradebook(info["db_url"]) as gb:
            for cell in nb.cells:
                meta = cell.metadata.get("nbgrader", {})
                if not meta.get("grade"):
                    continue
                try:
                    grade = gb.find_grade(meta["grade_id"], info["notebook"], info["assignment"], info["student"])
                except MissingEntry:
                    continue
                if grade.needs_manual_grade and grade.manual_score is None:
                    pending[meta["grade_id"]] = float(grade.max_score or 0)
        resources[NOT_GRADED] = pending
        return nb, resources


def show_not_graded_yet(html, pending):
    """nbgrader's "Score: 0.0 / 2.0" for each cell in `pending` ({grade id: points}) says "not graded yet"."""
    for grade_id, points in pending.items():
        gid = re.escape(grade_id)
        html = re.sub(rf'(<a href="#{gid}">[^<]*</a>) \(Score: [0-9.]+ / [0-9.]+\)',
                      rf"\1 (not graded yet, {points:g} points)", html)
        html = re.sub(rf'(<a name="{gid}"></a>\s*<div class="panel-heading">(?:(?!</div>).)*?'
                      rf'<span class="pull-right">\s*)Score: [0-9.]+ / [0-9.]+',
                      rf"\1Not graded yet ({points:g} points)", html, flags=re.S)
    if pending:
        total = sum(pending.values())
        html = re.sub(r"(<h4>[^<]*\(Score: [0-9.]+ / [0-9.]+)\)",
                      rf"\1; {total:g} of these points are not graded yet)", html, count=1)
    return html
