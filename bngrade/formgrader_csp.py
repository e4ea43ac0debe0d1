"""The formgrader's submission page under a Content-Security-Policy, with MathJax served locally.

nbgrader's formgrader shows a student's notebook to the instructor inside its
own page (GET <server>/formgrader/submissions/<id>/). The student's markdown
and outputs there are sanitised by `bngrade.safe_html`; this is the second
wall, for the day a sanitiser misses something. A Jupyter server extension,
enabled in the instructor's server (hub/hub.py) and in the browser test:

- sends that page with a Content-Security-Policy whose scripts are only
  the formgrader's own: files from the server itself ('self'), and by hash
  the inline scripts that nbgrader's template writes *before* the notebook
  (its variables, its tooltips, the MathJax configuration) plus its two
  name-toggle onclick handlers ('unsafe-hashes'). Any script, handler or
  javascript: URL inside the notebook is refused. 'unsafe-eval' stays,
  because the formgrader's Backbone/underscore code compiles its own
  templates; a student's text is never evaluated by it.
- allows no load from anywhere but the server and data: URIs (no image,
  font, fetch or frame to another host), no <base>, no <object>, no form
  sent elsewhere;
- replaces the template's MathJax 2 from cdnjs with the project's MathJax 3
  (tex-svg.js, one file, fonts inside), served by this extension at
  <server>/bnkit/mathjax/tex-svg.js, so the page typesets offline.

The other formgrader pages show names and scores, not student content; they
get the same policy without hashes for a submission's scripts, so only
their own files run ('self' plus 'unsafe-inline', which those templates need).
"""
import base64
import hashlib
import re
import sys
from pathlib import Path

from .feedback import MATHJAX_BLOCK, MATHJAX_CANDIDATES, MATHJAX_CONFIG

MATHJAX_ROUTE = "bnkit/mathjax/"
FORMGRADE_MACROS = "formgrade/formgrade_macros.html.j2"  # nbgrader's template of the page's own scripts
SUBMISSION_PAGE = re.compile(r"formgrader/submissions/[^/]+/?$")
NOTEBOOK_START = 'id="notebook-container"'  # student content comes after this in the formgrade template
INLINE_SCRIPT = re.compile(r"<script(?:\s+type=\"text/javascript\")?\s*>(.*?)</script>", re.S | re.I)
TEMPLATE_HANDLERS = ("toggle_name(true);", "toggle_name(false);")  # formgrade_macros' name toggles
OTHER = ("default-src 'self'; img-src 'self' data:; font-src 'self' data:; style-src 'self' 'unsafe-inline'; "
         "connect-src 'self'; object-src 'none'; frame-src 'none'; base-uri 'self'; form-action 'self'; "
         "frame-ancestors 'self'")


def _shape(script):
    """A script's text with its string literals emptied: the template's scripts differ from page to
    page only in the ids they quote."""
    return re.sub(r'"[^"\n]*"', '""', re.sub(r"'[^'\n]*'", "''", script)).strip()


def template_script_shapes():
    """The shapes of the inline scripts nbgrader's formgrade template writes."""
    from nbgrader.server_extensions.formgrader import handlers
    macros = (Path(handlers.template_path) / FORMGRADE_MACROS).read_text(encoding="utf-8")
    return {_shape(re.sub(r"\{\{.*?\}\}", "", body)) for body in INLINE_SCRIPT.findall(macros)}


def _sha256(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def mathjax_file():
    """tex-svg.js: the hub's venv copy (hub/hub.py puts it in <prefix>/share/bnkit), else the repository's."""
    for path in (Path(sys.prefix) / "share" / "bnkit" / "tex-svg.js", *MATHJAX_CANDIDATES):
        if path.is_file():
            return path
    return None


def harden_submission_page(html, mathjax_url, shapes=None):
    """(html, csp) for a formgrade page: the CDN MathJax swapped for mathjax_url (None: no MathJax),
    and a policy under which only the template's own scripts run: by hash, the inline scripts that
    come before the notebook *and* have the shape of one the template writes (`shapes`, default
    `template_script_shapes()`), our MathJax configuration, and the two name toggles."""
    shapes = template_script_shapes() if shapes is None else shapes
    local = f"<script>{MATHJAX_CONFIG}</script>\n" + (f'<script src="{mathjax_url}"></script>\n' if mathjax_url else "")
    html = MATHJAX_BLOCK.sub(lambda m: local, html, count=1)
    head = html.split(NOTEBOOK_START, 1)[0] if NOTEBOOK_START in html else ""
    own = [body for body in INLINE_SCRIPT.findall(head) if _shape(body) in shapes]
    hashes = sorted({_sha256(body) for body in own} | {_sha256(MATHJAX_CONFIG)} |
                    {_sha256(h) for h in TEMPLATE_HANDLERS})
    csp = OTHER + "; script-src 'self' 'unsafe-eval' 'unsafe-hashes' " + " ".join(hashes)
    return html, csp


def other_page_policy():
    return OTHER + "; script-src 'self' 'unsafe-inline' 'unsafe-eval'"


def _jupyter_server_extension_points():
    return [{"module": "bngrade.formgrader_csp"}]


def _load_jupyter_server_extension(server_app):
    from jupyter_server.utils import url_path_join
    from tornado import web
    from tornado.web import OutputTransform

    web_app = server_app.web_app
    base_url = web_app.settings["base_url"]
    source = mathjax_file()
    mathjax_url = url_path_join(base_url, MATHJAX_ROUTE, "tex-svg.js") if source else None
    if source:
        route = url_path_join(base_url, MATHJAX_ROUTE, "(tex-svg\\.js)")
        web_app.add_handlers(".*$", [(route, web.StaticFileHandler, {"path": str(source.parent)})])
    else:
        server_app.log.warning("bngrade: no local MathJax (make mathjax): the formgrader shows LaTeX as text")
    formgrader = url_path_join(base_url, "formgrader")
    shapes = template_script_shapes()

    class FormgraderPolicy(OutputTransform):
        """Adds the policy to formgrader pages; rewrites a submission page, sent whole, as above."""

        def __init__(self, request):
            self.path = request.path
            self.on = request.path.startswith(formgrader)

        def transform_first_chunk(self, status_code, headers, chunk, finishing):
            if not self.on or not headers.get("Content-Type", "").startswith("text/html"):
                return status_code, headers, chunk
            if SUBMISSION_PAGE.search(self.path):
                if finishing:
                    html, csp = harden_submission_page(chunk.decode("utf-8"), mathjax_url, shapes)
                    chunk = html.encode("utf-8")
                    if "Content-Length" in headers:
                        headers["Content-Length"] = str(len(chunk))
                else:  # not sent whole: no script at all rather than an unchecked one
                    csp = OTHER + "; script-src 'none'"
            else:
                csp = other_page_policy()
            headers["Content-Security-Policy"] = csp
            return status_code, headers, chunk

        def transform_chunk(self, chunk, finishing):
            return chunk

    web_app.transforms.insert(0, FormgraderPolicy)  # before any compression sees the page
