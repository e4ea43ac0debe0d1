"""Student HTML is inert wherever a person reads it: proved in Chromium.

One student of bn_forward (a scratch course, plain `nbgrader autograde` and
`generate_feedback` with the course's config) hides script in every shape a
page could run it: in the written answer's markdown (raw HTML with event
handlers, svg onload, javascript: links, an iframe srcdoc, a form, a
<script>, an external image, CSS, attachments of SVG and HTML) and in the
outputs of a cell (display(HTML(...)), raw text/html, SVG with onload and
<script>, application/javascript, text/markdown). Each payload, if it ran,
would change document.title, set a global and request a URL we watch.

Then Debian's Chromium (Playwright, headless) loads
- the feedback page, from disk, offline: no payload runs, no request leaves
  the page, and the local MathJax (inlined) typesets the answer's LaTeX;
- the formgrader's page of that submission, from a real `jupyter server`
  with nbgrader's formgrader extension (127.0.0.1, token auth): no payload
  runs there either.
The written answer, not graded yet, says so in the feedback (not 0.0 / 2).
"""
import json
import os
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FWD = "bn_forward"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian's chromium is not installed"),
              pytest.mark.skipif(not os.access("/usr/bin/bwrap", os.X_OK), reason="bubblewrap is not installed")]
SINK = "http://127.0.0.1:9/pwned-"  # a payload that runs requests SINK + its name


def js(kind):
    return (f"document.title='PWNED-{kind}';window.pwned=(window.pwned||[]).concat(['{kind}']);"
            f"fetch('{SINK}{kind}').catch(function(){{}});console.log('PWNED-{kind}')")


# Math a student writes in an answer: MathJax's html extension would draw this link over the whole page.
MATH_OVERLAY = r"$\style{position:fixed;top:0;left:0}{\href{https://example.invalid/login}{\text{overlay}}}$"
MATH_ESCAPES = """[...document.querySelectorAll('mjx-container *')].filter(e =>
  e.tagName.toLowerCase() === 'a' || ['fixed', 'sticky'].includes(getComputedStyle(e).position)).length"""


SVG_DOC = (f'<svg xmlns="http://www.w3.org/2000/svg" width="20" height="20" onload="{js("svg-attr")}">'
           f'<script>{js("svg-script")}</script><circle cx="10" cy="10" r="8"/></svg>')
ANSWER = f"""Batch statistics at test time would make
$\\hat{{x}} = \\frac{{x - \\mu}}{{\\sqrt{{\\sigma^2 + \\epsilon}}}}$ depend on the other examples of the batch.

<img src="x" onerror="{js('md-img')}">
<svg onload="{js('md-svg')}"></svg>
<a id="jslink" href="javascript:{js('md-link')}">a link</a> and [another](javascript:{js('md-mdlink')})
<iframe srcdoc="<script>{js('md-iframe')}</script>"></iframe>
<script>{js('md-script')}</script>
<form action="{SINK}form"><input name="a"><button id="formbutton">go</button></form>
<img src="{SINK}external.png">
<details open ontoggle="{js('md-toggle')}"><summary>s</summary>d</details>
<style>body {{ background: url({SINK}css) }}</style>
<div style="background-image: url({SINK}style-attr)">styled</div>
<div class="affix navbar-fixed-top"><a href="https://example.invalid/login"><img alt="overlay" width="2000"
height="2000" src="data:image/gif;base64,R0lGODlhAQABAAAAACw="></a></div>
{MATH_OVERLAY}

![an svg attachment](attachment:evil.svg) ![an html attachment](attachment:evil.html)
"""
OUTPUT_PAYLOADS = [
    ("html", f'<img src="x" onerror="{js("out-html-img")}">'),
    ("raw", {"text/html": f"<script>{js('out-html-script')}</script><b>bold</b>"}),
    ("raw", {"image/svg+xml": SVG_DOC}),
    ("raw", {"application/javascript": js("out-js")}),
    ("raw", {"text/markdown": f'<img src="x" onerror="{js("out-md")}"> and [l](javascript:{js("out-md-link")})'}),
]
OUTPUTS = "from IPython.display import display, HTML\n" + "".join(
    f"display(HTML({v!r}))\n" if how == "html" else f"display({v!r}, raw=True)\n" for how, v in OUTPUT_PAYLOADS
) + (  # an image whose metadata names a file: nbconvert's templates would load that path, same-origin
    "display({'image/png': 'iVBORw0KGgo=', 'text/plain': 'an image'}, raw=True,\n"
    "        metadata={'filenames': {'image/png': '/pwned-filenames.png'}})\n"
) + "print('outputs displayed')\n"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "assignments"))
    import course
    d = course.copy_course(tmp_path_factory.mktemp("inert") / "course")
    rc, log = course.nbgrader(d, "generate_assignment", FWD, "--force", quiet=True)
    assert rc == 0, log
    nb = json.loads(course.submission(d, FWD))
    answer = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "train_eval_answer")
    answer["source"] = ANSWER
    answer["attachments"] = {"evil.svg": {"image/svg+xml": __import__("base64").b64encode(SVG_DOC.encode()).decode()},
                             "evil.html": {"text/html": __import__("base64").b64encode(
                                 f"<script>{js('att-html')}</script>".encode()).decode()}}
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "student-outputs", "metadata": {},
                        "outputs": [], "source": OUTPUTS})
    course.place(d, FWD, {"mallory": json.dumps(nb)})
    rc, log = course.nbgrader(d, "autograde", FWD, "--force", quiet=True)
    assert rc == 0, log[-3000:]
    rc, log = course.nbgrader(d, "generate_feedback", FWD, "--force", quiet=True)
    assert rc == 0, log[-3000:]
    graded = json.loads((d / "autograded" / "mallory" / FWD / f"{FWD}.ipynb").read_text())
    shown = [o for c in graded["cells"] if c.get("id") == "student-outputs" for o in c.get("outputs", [])]
    assert any("outputs displayed" in "".join(o.get("text", "")) for o in shown), shown  # the payloads are there
    return d


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


# The student's link-wrapped image, classed as the formgrader's Bootstrap `affix` (position: fixed): the
# elements around the image of that alt that the page's CSS pins over the view (null: no such image).
PINNED = """(alt) => {
  const img = document.querySelector('img[alt="' + alt + '"]');
  if (!img) return null;
  const pinned = [];
  for (let e = img; e; e = e.parentElement) {
    const p = getComputedStyle(e).position;
    if (p === 'fixed' || p === 'sticky') pinned.push(e.tagName + '.' + e.className + ': ' + p);
  }
  return pinned;
}"""


def _visit(browser, url, settle_s=3, click=True, route=None):
    """Load url (through route(route) if given: Playwright's page.route for that url); return the
    requests seen, console lines, title, window.pwned, page text, MathJax count, whether the
    formgrader's own inline scripts ran (its globals), and what pins the student's overlay."""
    page = browser.new_page()
    if route:
        page.route(url, route)
    requests, console = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: console.append(m.text))
    page.goto(url, wait_until="load", timeout=180_000)
    for selector in ("#jslink", "#formbutton") if click else ():  # a reader clicking the student's link, button
        if page.query_selector(selector):
            page.click(selector, timeout=10_000, no_wait_after=True)
    page.wait_for_timeout(settle_s * 1000)
    result = dict(requests=requests, console=console, title=page.title(), pwned=page.evaluate("window.pwned || null"),
                  text=page.inner_text("body"),
                  mathjax=page.evaluate("document.querySelectorAll('mjx-container').length"),
                  own_scripts=page.evaluate("typeof toggle_name === 'function' && typeof submission_id === 'string'"),
                  pinned={alt: page.evaluate(PINNED, alt) for alt in ("overlay", "planted-overlay")},
                  math_escapes=page.evaluate(MATH_ESCAPES))
    page.close()
    return result


def _assert_inert(seen):
    assert seen["pwned"] is None, seen["pwned"]
    assert "PWNED" not in seen["title"], seen["title"]
    assert not [u for u in seen["requests"] if "pwned" in u], seen["requests"]
    assert not [line for line in seen["console"] if "PWNED" in line], seen["console"]
    assert seen["pinned"]["overlay"] == [], seen["pinned"]  # shown, not laid over the page by the page's CSS
    assert seen["math_escapes"] == 0  # the answer's \style / \href math drew no link and no pinned box


def test_feedback_page_runs_no_student_script_and_typesets_math_offline(course_dir, browser):
    page = course_dir / "feedback" / "mallory" / FWD / f"{FWD}.html"
    html = page.read_text()
    assert "<script src" not in html and "Content-Security-Policy" in html  # MathJax inline, nothing loaded
    seen = _visit(browser, page.as_uri())
    _assert_inert(seen)
    assert [u for u in seen["requests"] if not u.startswith(("file:", "data:"))] == [], seen["requests"]
    assert seen["mathjax"] > 0, "the local MathJax did not typeset the answer"
    assert "depend on the other examples" in seen["text"]  # the student's answer is shown, as text


def test_feedback_says_written_answers_are_not_graded_yet(course_dir):
    html = (course_dir / "feedback" / "mallory" / FWD / f"{FWD}.html").read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "Written response (not graded yet, 2 points)" in text, text[:2000]
    assert "Not graded yet (2 points)" in text
    assert "Written response (Score: 0.0 / 2.0)" not in text


@pytest.fixture(scope="module")
def formgrader(course_dir, tmp_path_factory):
    """A real jupyter server with nbgrader's formgrader on 127.0.0.1, token auth; yields (base url, token)."""
    port, token = _free_port(), secrets.token_hex(16)
    conf = tmp_path_factory.mktemp("jupyter-config")
    (conf / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"nbgrader.server_extensions.formgrader": True,
                                               "bngrade.formgrader_csp": True}}}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(conf), PATH=str(Path(sys.executable).parent) + os.pathsep +
               os.environ.get("PATH", ""))
    env.pop("NBGRADER_EXECUTION", None)
    log = open(tmp_path_factory.mktemp("server-log") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={course_dir}"],
                            cwd=course_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a start-up bound on a loaded machine, not a timing
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=10)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("jupyter server did not start:\n" + Path(log.name).read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _submission_url(course_dir, formgrader):
    base, token = formgrader
    with sqlite3.connect(course_dir / "gradebook.db") as db:
        (submission_id,), = db.execute("SELECT id FROM submitted_notebook").fetchall()
    return f"{base}/formgrader/submissions/{submission_id}/?token={token}"


def test_formgrader_submission_page_runs_no_student_script(course_dir, formgrader, browser):
    url = _submission_url(course_dir, formgrader)
    seen = _visit(browser, url)
    _assert_inert(seen)
    assert "depend on the other examples" in seen["text"], seen["text"][:2000]  # the submission is shown
    assert "outputs displayed" in seen["text"]  # and its outputs, sanitised
    # bngrade.formgrader_csp: a policy, MathJax from the server itself, and the page's own scripts all ran
    csp = urllib.request.urlopen(url, timeout=60).headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src", 1)[1], csp
    assert [u for u in seen["requests"] if not u.startswith((formgrader[0], "data:"))] == [], seen["requests"]
    assert seen["mathjax"] > 0, "the local MathJax did not typeset the answer"
    assert seen["own_scripts"], "the formgrader's own inline scripts did not run"
    assert not [line for line in seen["console"] if "Content Security Policy" in line], seen["console"]


def test_the_formgraders_policy_alone_stops_a_script_past_the_sanitiser(course_dir, formgrader, browser):
    """The second wall: the formgrader's page as served, with script planted inside the notebook
    (as if nh3 had missed it) and served under the same policy, still runs none of it."""
    url = _submission_url(course_dir, formgrader)
    with urllib.request.urlopen(url, timeout=60) as r:
        html, csp = r.read().decode(), r.headers["Content-Security-Policy"]
    planted = (f"<script>{js('csp-script')}</script><img src=x onerror=\"{js('csp-img')}\">"
               f"<a id=jslink href=\"javascript:{js('csp-link')}\">l</a>"
               f"<button id=formbutton onclick=\"{js('csp-click')}\">b</button>"
               '<div class="affix"><img alt="planted-overlay" src="data:image/gif;base64,R0lGODlhAQABAAAAACw="></div>')
    start = html.index('id="notebook-container"')
    html = html[:start] + html[start:].replace("</div>", "</div>" + planted, 1)
    seen = _visit(browser, url, route=lambda route: route.fulfill(
        status=200, body=html, headers={"Content-Type": "text/html", "Content-Security-Policy": csp}))
    _assert_inert(seen)
    assert seen["own_scripts"] and seen["mathjax"] > 0  # while the page's own scripts and MathJax run
    assert seen["pinned"]["planted-overlay"], seen["pinned"]  # the page's CSS pins what the sanitiser strips


def test_the_payloads_do_run_in_an_unsanitised_page(course_dir, browser, tmp_path):
    """The detector works: nbconvert's own HTML of the same notebook, unsanitised, runs the payloads."""
    from nbconvert import HTMLExporter
    html, _ = HTMLExporter().from_filename(str(course_dir / "autograded" / "mallory" / FWD / f"{FWD}.ipynb"))
    page = tmp_path / "unsafe.html"
    page.write_text(html)
    seen = _visit(browser, page.as_uri(), settle_s=2, click=False)  # (the form's button would navigate away)
    assert seen["pwned"] and "md-img" in seen["pwned"] and "out-html-img" in seen["pwned"], seen["pwned"]


@pytest.mark.parametrize("config", ["mathjax_default", "bngrade"])
def test_student_tex_draws_no_link_or_pinned_box(browser, tmp_path, config):
    """The same math under MathJax's own configuration (extensions autoloaded, here from the npm copy on
    disk) gives a pinned link: the detector works. Under the configuration feedback pages and the
    formgrader use (bngrade.feedback.MATHJAX_CONFIG: no autoload, no \\require) it gives none."""
    from bngrade.feedback import MATHJAX_CONFIG
    tex_svg = ROOT / "node_modules" / "mathjax" / "es5" / "tex-svg.js"
    if not tex_svg.is_file():
        pytest.skip("make mathjax has not been run")
    setup = MATHJAX_CONFIG if config == "bngrade" else "window.MathJax = {tex: {inlineMath: [['$', '$']]}};"
    page_file = tmp_path / "math.html"
    page_file.write_text(f"<html><head><script>{setup}</script><script src='{tex_svg.as_uri()}'></script></head>"
                         f"<body><p>answer: {MATH_OVERLAY}</p></body></html>")
    page = browser.new_page()
    page.goto(page_file.as_uri(), wait_until="load", timeout=180_000)
    page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
    page.evaluate("MathJax.startup.promise")
    typeset, escapes = page.evaluate("document.querySelectorAll('mjx-container').length"), page.evaluate(MATH_ESCAPES)
    page.close()
    assert typeset == 1
    if config == "bngrade":
        assert escapes == 0, escapes
    else:
        assert escapes > 0, "MathJax's own configuration drew no link: the check would prove nothing"
