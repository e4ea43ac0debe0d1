"""The course on a real JupyterHub (make hub), driven in Debian's Chromium: the whole nbgrader cycle.

One hub (hub/hub.py, as `make hub` runs it) with its own accounts
(`bnkt-instructor`, `bnkt-student1..3`), port and state directory, removed at
the end (accounts, homes, processes). Each step's screenshot goes to
test-artifacts/hub/. Needs root (accounts, PAM) and /usr/bin/chromium.

- test_course_cycle_in_the_browser: two students log in through the login
  page, fetch bn_forward from the Assignments tab, write the function (one
  right; one with a bug and an `import importlib` the grader's code review
  reports), run the visible tests, validate, submit; the instructor collects,
  autogrades with the formgrader's button (7 / 9, 5 / 9), grades both written
  answers by hand (the integrity report is on student2's page, whose answer
  hides an onerror image, a script and a javascript: link: none runs there or
  in the feedback), generates and
  releases feedback, downloads the grades CSV (9 and 6); each student fetches
  their feedback, opens it from the Assignments tab and reads their own score
  (test cells 7 / 7 and 5 / 7), not the other's.
- test_autograde_button_runs_the_sandbox: a submission that looks for the
  course directory, autograded by the button, found nothing (the formgrader
  page and the autograded notebook show it; hostname `sandbox`).
- test_permissions: what a student's uid and a student's browser session
  cannot reach.

Runs in `make test` as root with /usr/bin/bwrap and /usr/bin/chromium (CI);
skipped with the reason otherwise, or with BNKIT_HUB_TEST=0. The module's
hub is removed at the end, also when a test fails; a run killed half-way is
cleaned up by the next one's first step (`hub.py clean`).
"""
import csv
import io
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError

CHROMIUM = "/usr/bin/chromium"


def _why_not_here():
    """Why this machine cannot run the hub (None when it can): the hub makes Unix accounts and spawns per uid."""
    if os.environ.get("BNKIT_HUB_TEST") == "0":
        return "turned off by BNKIT_HUB_TEST=0"
    if os.geteuid() != 0:
        return "the hub needs root (useradd, PAM reads /etc/shadow, a server per uid): run make test as root"
    if not os.access("/usr/bin/bwrap", os.X_OK):
        return "/usr/bin/bwrap missing (make test installs bubblewrap as root)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} missing (make test installs chromium as root)"
    if not (os.access("/usr/bin/python3", os.X_OK) and (shutil.which("npm") or shutil.which("apt-get"))):
        return "the hub's venv needs Debian's /usr/bin/python3 and npm (or apt-get to install them)"
    return None


# One xdist worker runs this whole module (make test's --dist loadfile), about 4 minutes on an idle machine.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not_here() is not None, reason=str(_why_not_here()))]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hub"))
from client import HubUser  # noqa: E402

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = REPO / "test-artifacts" / "hub"
LONG = 600_000  # ms: waits for real events (a spawn, a kernel, an autograde) on a loaded machine
PREFIX = "bnkt-"
ROOT = Path("/srv/bnkit-hub-test")
# Debugging the test itself: HUB_TEST_ATTACH=1 with HUB_ROOT/HUB_PORT/HUB_USER_PREFIX of a hub started by
# `hub.py start --detach` runs against it and leaves it running.
ATTACH = os.environ.get("HUB_TEST_ATTACH") == "1"
if ATTACH:
    PREFIX, ROOT = os.environ["HUB_USER_PREFIX"], Path(os.environ["HUB_ROOT"])


def _free_base_port():
    for base in range(18000, 19000, 10):
        ok = True
        for p in (base, base + 1, base + 2):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free ports")


class Hub:
    def __init__(self):
        self.port = int(os.environ["HUB_PORT"]) if ATTACH else _free_base_port()
        self.env = {**os.environ, "HUB_ROOT": str(ROOT), "HUB_PORT": str(self.port),
                    "HUB_USER_PREFIX": PREFIX, "HUB_STUDENTS": "3",
                    "HUB_VENV": os.environ.get("HUB_VENV", "/opt/bnkit-hub/venv")}
        self.url = f"http://127.0.0.1:{self.port}/"
        self.instructor = PREFIX + "instructor"
        self.students = [f"{PREFIX}student{i}" for i in (1, 2, 3)]

    def cli(self, *args, timeout=3600):
        return subprocess.run([sys.executable, str(REPO / "hub" / "hub.py"), *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    @property
    def passwords(self):
        return json.loads((ROOT / "state" / "users.json").read_text())

    @property
    def course(self):
        return Path(pwd.getpwnam(self.instructor).pw_dir) / "bnkit"

    def log_tail(self):
        try:
            return (ROOT / "state" / "hub.log").read_text()[-6000:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def hub():
    h = Hub()
    if ATTACH:
        yield h
        return
    h.cli("clean", timeout=600)  # a previous run killed half-way
    for name in [h.instructor, *h.students]:  # its accounts, if it died before writing its state (bnkt-: ours)
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        subprocess.run(["userdel", "--remove", name], capture_output=True)
    r = h.cli("start", "--detach")
    if r.returncode != 0:
        out = r.stdout + r.stderr + h.log_tail()
        h.cli("clean", timeout=600)
        pytest.fail(f"hub.py start failed:\n{out[-6000:]}")
    print(r.stdout)
    uids = [pwd.getpwnam(u).pw_uid for u in [h.instructor, *h.students]]
    yield h
    r = h.cli("clean", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in [h.instructor, *h.students]:
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
    left = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _uid(p) in uids]
    assert not left, f"processes of the hub's users left running: {left}"
    assert not ROOT.exists()


def _uid(p):
    try:
        return p.stat().st_uid
    except OSError:
        return None


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def login(browser, hub, name, tag):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(LONG)
    page = ctx.new_page()
    page.goto(hub.url + "hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", hub.passwords[name])
    shot(page, f"{tag}-01-login")
    page.click("#login_submit")
    page.wait_for_url(re.compile(rf".*/user/{re.escape(name)}/lab.*"), timeout=LONG)
    page.wait_for_selector("#jp-main-dock-panel", timeout=LONG)
    return ctx, page


# -------------------------------------------------------------------- the students' notebooks
def _solution_source():
    import nbformat

    nb = nbformat.read(REPO / "assignments" / "source" / "bn_forward" / "bn_forward.ipynb", 4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "batchnorm_forward")
    return "\n".join(line for line in cell.source.splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


CORRECT = _solution_source()
# catalogue's biased_running_var: running_var updated with the biased variance (test_running_stats fails)
# and an import the grader's code review reports (evidence for the instructor; it costs no marks)
BUGGY = "import importlib  # left over from debugging\n" + CORRECT.replace("momentum * var * N / (N - 1)",
                                                                            "momentum * var")
assert "momentum * var * N" not in BUGGY


def open_assignments(page):
    page.get_by_role("menuitem", name="Nbgrader").click()
    page.get_by_text("Assignment List", exact=True).click()
    page.wait_for_selector("#released_assignments_list", state="attached")


def expand_fetched(page):
    """Open the downloaded bn_forward's list of notebooks (a collapsed panel) and return it."""
    panel = page.locator("#nbgrader-bnkit-bn_forward")
    if "show" not in (panel.get_attribute("class") or "") and not panel.is_visible():
        page.locator("#fetched_assignments_list a.assignment-notebooks-link", has_text="bn_forward").click()
    panel.locator(".nested_list_item").first.wait_for()
    return panel


ANSWER = ("In training the batch's own mean and variance normalise it; at test time a single "
          "example has no batch, so the running averages are used instead.")
# student2 also hides active content in the answer: it must stay inert in the instructor's formgrader
# and in the feedback (bngrade.safe_html), read through the hub like any page
HOSTILE_ANSWER = ANSWER + (' <img src="x" onerror="window.pwned = 1"> <script>window.pwned = 2</script>'
                           ' <a href="javascript:window.pwned = 3">more</a>')


def student_works(page, name, code, tag, expect_fail, answer=ANSWER):
    open_assignments(page)
    row = page.locator("#released_assignments_list .list_item", has_text="bn_forward")
    row.wait_for()
    shot(page, f"{tag}-02-assignments")
    row.get_by_role("button", name="Fetch").click()
    page.locator("#fetched_assignments_list a.assignment-notebooks-link", has_text="bn_forward").wait_for()
    # open the notebook from the Assignments tab
    notebooks = expand_fetched(page)
    notebooks.locator(".nested_list_item a").first.click()
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=LONG)
    cell = page.locator(".jp-NotebookPanel .jp-CodeCell", has_text="raise NotImplementedError").first
    cell.scroll_into_view_if_needed()
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(code)
    # the written answer (a markdown cell: double-click to edit)
    answer_cell = page.locator(".jp-NotebookPanel .jp-MarkdownCell", has_text="YOUR ANSWER HERE").first
    answer_cell.scroll_into_view_if_needed()
    answer_cell.dblclick()
    answer_cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(answer)
    shot(page, f"{tag}-03-edited")
    # run everything (the visible tests run on the student's own server), then save
    page.get_by_role("menuitem", name="Run").click()
    page.get_by_text("Run All Cells", exact=True).click()
    test_cell = page.locator(".jp-CodeCell", has_text="# Test (2 points): running_mean").first
    test_cell.locator(".jp-OutputArea-output").first.wait_for(timeout=LONG)
    out = test_cell.locator(".jp-OutputArea").inner_text()
    test_cell.scroll_into_view_if_needed()
    shot(page, f"{tag}-04-visible-tests")
    assert ("FAIL" in out) == expect_fail, out
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-current.jp-mod-dirty')", timeout=LONG)
    # validate and submit from the Assignments tab
    open_assignments(page)
    expand_fetched(page).locator("button", has_text="Validate").first.click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=LONG)
    verdict = dialog.inner_text()
    shot(page, f"{tag}-05-validate")
    if not expect_fail:
        assert "Success" in verdict, verdict
    dialog.get_by_role("button").last.click()
    page.locator("#fetched_assignments_list .list_item", has_text="bn_forward").first.get_by_role(
        "button", name="Submit").click()
    page.locator("#submitted_assignments_list .list_item", has_text="bn_forward").first.wait_for(timeout=LONG)
    shot(page, f"{tag}-06-submitted")


def open_submission(page, fg, student):
    """The manual-grading view of one student's bn_forward, from the formgrader's list of submissions.

    The list renders each row twice (a hidden anonymous link and the named one), so the named link's
    address is followed rather than clicked while hidden.
    """
    page.goto(fg + "/gradebook/bn_forward/bn_forward")
    link = page.locator("a.name-shown", has_text=student).first
    link.wait_for(state="attached")
    page.goto(hub_origin(page) + link.get_attribute("href"))
    page.wait_for_selector("input.score", state="attached")


def hub_origin(page):
    return re.match(r"https?://[^/]+", page.url).group(0)


def grade_written_answer(page, points):
    score = page.locator("input.score#train_eval_answer")
    score.wait_for()
    score.scroll_into_view_if_needed()
    score.fill(str(points))
    score.press("Tab")
    page.wait_for_function(f"() => document.getElementById('train_eval_answer').value === '{points}'")


def assert_inert(page, where):
    """No student script ran on this page, and the answer's handlers and script are gone from it."""
    assert "running averages are used instead" in page.locator("body").inner_text(), where  # the answer is shown
    page.wait_for_timeout(500)  # an onerror fires once the broken image fails to load
    ran = page.evaluate("() => window.pwned")
    left = page.evaluate("() => [...document.querySelectorAll('[onerror], a[href^=\"javascript:\"]')].length"
                         " + [...document.scripts].filter(s => s.textContent.includes('pwned')).length")
    assert ran is None and left == 0, (where, ran, left)


def close_modal(page):
    modal = page.locator("#success-modal, #error-modal").first  # nbgrader's utils.js createModal
    modal.wait_for(timeout=LONG)
    text = modal.inner_text()
    modal.locator("button.btn-primary", has_text="OK").first.click()
    modal.wait_for(state="hidden", timeout=LONG)
    return text


# -------------------------------------------------------------------- the tests
def test_course_cycle_in_the_browser(hub, browser):
    s1, s2 = hub.students[0], hub.students[1]
    ctx1, p1 = login(browser, hub, s1, "student1")
    student_works(p1, s1, CORRECT, "student1", expect_fail=False)
    ctx2, p2 = login(browser, hub, s2, "student2")
    student_works(p2, s2, BUGGY, "student2", expect_fail=True, answer=HOSTILE_ANSWER)

    # --- the instructor, in the formgrader
    ctxi, pi = login(browser, hub, hub.instructor, "instructor")
    fg = hub.url + f"user/{hub.instructor}/formgrader"
    pi.goto(fg + "/manage_assignments")
    row = pi.locator("tr", has_text="bn_forward").first
    row.wait_for()
    shot(pi, "instructor-02-formgrader")
    row.locator(".collect a").click()
    assert "Successfully collected" in close_modal(pi)
    pi.goto(fg + "/manage_submissions/bn_forward")
    for student in (s1, s2):
        r = pi.locator("tr", has_text=student).first
        r.wait_for()
        r.locator(".autograde a").click()
        text = close_modal(pi)
        assert "Successfully autograded" in text, text
    pi.reload()
    pi.locator("tr", has_text=s1).first.wait_for()
    shot(pi, "instructor-03-autograded")
    row1 = pi.locator("tr", has_text=s1).first.inner_text()
    row2 = pi.locator("tr", has_text=s2).first.inner_text()
    assert "7 / 9" in row1, row1
    assert "5 / 9" in row2, row2

    # manual grading of the written answers: student1's (2 of 2), then student2's (1 of 2) where the
    # grader's integrity report for student2 (the importlib import) is on the same page
    open_submission(pi, fg, s1)
    assert "Integrity report" not in pi.locator("body").inner_text()  # nothing to report for student1
    grade_written_answer(pi, 2)
    shot(pi, "instructor-04-manual-grade-student1")
    open_submission(pi, fg, s2)
    report = pi.get_by_text("Integrity report").first
    report.wait_for()
    body = pi.locator("body").inner_text()
    evidence = body[body.index("Integrity report"):][:1500]
    assert "importlib" in evidence and "not in the student's feedback" in evidence, evidence
    report.scroll_into_view_if_needed()
    shot(pi, "instructor-05-integrity-evidence-student2")
    assert_inert(pi, "student2's submission in the formgrader")
    # the page's second wall (bngrade.formgrader_csp): a policy with no inline script but the
    # template's own, and MathJax from the server, not a CDN; grading below proves the page still works
    policy = ctxi.request.get(pi.url).headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split("script-src", 1)[1], policy
    assert pi.evaluate("() => [...document.scripts].map(s => s.src).filter(u => u.includes('cdnjs')).length") == 0
    assert pi.evaluate("() => !!document.querySelector('script[src*=\"bnkit/mathjax/tex-svg.js\"]')")
    grade_written_answer(pi, 1)
    shot(pi, "instructor-06-manual-grade-student2")
    # the manual scores are saved: the formgrader's own totals
    pi.goto(fg + "/manage_submissions/bn_forward")
    for name, total in ((s1, "9 / 9"), (s2, "6 / 9")):
        pi.wait_for_function(f"() => [...document.querySelectorAll('tr')].some(r => r.innerText.includes('{name}') "
                             f"&& r.innerText.includes('{total}'))", timeout=LONG)

    # feedback for everyone, then released
    pi.goto(fg + "/manage_assignments")
    row = pi.locator("tr", has_text="bn_forward").first
    row.wait_for()
    row.locator(".generate-feedback a").click()
    assert "Success" in close_modal(pi)
    row.locator(".release-feedback a").click()
    assert "Success" in close_modal(pi)
    shot(pi, "instructor-07-feedback-released")

    # the grades CSV, downloaded in the instructor's browser (a file download, as a click on the link gives)
    csv_url = hub.url + f"user/{hub.instructor}/bnkit/grades.csv"
    r = pi.request.get(csv_url)
    assert r.status == 200 and "student_id" in r.text(), (r.status, r.text()[:500])
    dpage = ctxi.new_page()
    with dpage.expect_download(timeout=LONG) as dl:
        try:
            dpage.goto(csv_url)
        except PlaywrightError as e:  # Chromium aborts the navigation when the answer is a download
            if "Download is starting" not in str(e) and "net::ERR_ABORTED" not in str(e):
                raise
    path = dl.value.path()
    dpage.close()
    rows = [r for r in csv.DictReader(io.StringIO(Path(path).read_text())) if r["assignment"] == "bn_forward"]
    (SHOTS / "grades.csv").write_text(Path(path).read_text())
    scores = {r["student_id"]: float(r["score"]) for r in rows}
    assert scores[s1] == 9.0 and scores[s2] == 6.0, scores

    # --- each student fetches their feedback and reads their own score
    for ctx, page, name, other, auto, total in ((ctx1, p1, s1, s2, 7.0, 9.0), (ctx2, p2, s2, s1, 5.0, 6.0)):
        open_assignments(page)
        sub = page.locator("#submitted_assignments_list .list_item", has_text="bn_forward").first
        sub.get_by_role("button", name="Fetch Feedback").click()
        page.get_by_text("(view feedback)").first.wait_for(timeout=LONG)
        shot(page, f"{'student1' if name == s1 else 'student2'}-07-feedback-fetched")
        page.get_by_text("(view feedback)").first.click()  # the file browser goes to the feedback folder
        page.locator(".jp-DirListing-item", has_text="bn_forward.html").first.wait_for(timeout=LONG)
        shot(page, f"{'student1' if name == s1 else 'student2'}-08-feedback-folder")
        listing = page.request.get(hub.url + f"user/{name}/assignments?course_id=bnkit").json()
        folder = next(x["local_feedback_path"] for a in listing["value"] for x in [a, *a.get("submissions", [])]
                      if x.get("local_feedback_path"))
        fb = ctx.new_page()  # the feedback page, opened in a tab of the student's own browser
        fb.goto(hub.url + f"user/{name}/files/{folder}/bn_forward.html")
        body = fb.locator("body").inner_text()
        shot(fb, f"{'student1' if name == s1 else 'student2'}-09-feedback")
        tests = [(float(a), float(b)) for a, b in re.findall(r"Test cell \(Score: ([\d.]+) / ([\d.]+)\)", body)]
        assert len(tests) == 3 and sum(b for _, b in tests) == 7.0, body[:2000]
        assert sum(a for a, _ in tests) == auto, (name, tests)  # 7/7 for the correct one, less for the bug
        assert f"(Score: {total} / 9.0)" in body, body[:2000]
        assert "PASS" in body and "BEGIN HIDDEN TESTS" not in body
        assert other not in body
        if name == s2:
            assert_inert(fb, "student2's feedback")
        # and the other student's feedback is out of reach of this session
        r = page.request.get(hub.url + f"user/{other}/files/{folder}/bn_forward.html")
        assert r.status in (403, 404) or "Score:" not in r.text(), r.status
    for ctx in (ctx1, ctx2, ctxi):
        ctx.close()


PROBE = '''
import os, socket
COURSE = {course!r}
print("PROBE course-exists:", os.path.exists(COURSE))
print("PROBE gradebook-exists:", os.path.exists(COURSE + "/gradebook.db"))
print("PROBE home-exists:", os.path.exists("/home"))
print("PROBE hostname:", socket.gethostname())
'''


def _as_user(name, argv, **kw):
    pw = pwd.getpwnam(name)
    return subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
                           *argv], capture_output=True, text=True, cwd="/", timeout=600,
                          env={"HOME": pw.pw_dir, "PATH": "/usr/bin:/bin"}, **kw)


def test_autograde_button_runs_the_sandbox(hub, browser):
    """A submission probing for the course dir, autograded by the formgrader's button, finds nothing."""
    probe = PROBE.format(course=str(hub.course))
    # the probe is a real test: run as the instructor outside any sandbox, it finds the course
    outside = _as_user(hub.instructor, [hub.env["HUB_VENV"] + "/bin/python", "-c", probe])
    assert "PROBE course-exists: True" in outside.stdout, outside.stdout + outside.stderr
    assert "PROBE gradebook-exists: True" in outside.stdout

    s3 = hub.students[2]
    student = HubUser(hub.url, s3, hub.passwords[s3]).login()
    student.action("fetch", "bn_forward")
    nb = student.get_notebook("bn_forward/bn_forward.ipynb")
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "batchnorm_forward")
    cell["source"] = CORRECT + "\n" + probe
    student.put_notebook("bn_forward/bn_forward.ipynb", nb)
    student.action("submit", "bn_forward")

    ctx, pi = login(browser, hub, hub.instructor, "sandbox-instructor")
    fg = hub.url + f"user/{hub.instructor}/formgrader"
    pi.goto(fg + "/manage_assignments")
    row = pi.locator("tr", has_text="bn_forward").first
    row.wait_for()
    row.locator(".collect a").click()
    assert "Successfully collected" in close_modal(pi)
    pi.goto(fg + "/manage_submissions/bn_forward")
    r = pi.locator("tr", has_text=s3).first
    r.wait_for()
    r.locator(".autograde a").click()
    text = close_modal(pi)
    assert "Successfully autograded" in text, text
    # what the formgrader shows of that submission: the probe's own output
    open_submission(pi, fg, s3)
    pi.get_by_text("PROBE course-exists").first.wait_for(timeout=LONG)
    body = pi.locator("body").inner_text()
    pi.get_by_text("PROBE course-exists").first.scroll_into_view_if_needed()
    shot(pi, "sandbox-probe-in-formgrader")
    assert "PROBE course-exists: False" in body and "PROBE gradebook-exists: False" in body, body[:3000]
    assert "PROBE hostname: sandbox" in body
    # the autograded notebook records it
    graded = json.loads((hub.course / "autograded" / s3 / "bn_forward" / "bn_forward.ipynb").read_text())
    outs = "".join("".join(o.get("text", "")) for c in graded["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))  # a stream's text is a string or a list of lines
    assert "PROBE course-exists: False" in outs and "PROBE hostname: sandbox" in outs, outs[:2000]
    # and it still scores 7/7: the sandbox took nothing from an honest function
    csv_text = pi.request.get(hub.url + f"user/{hub.instructor}/bnkit/grades.csv").text()
    row3 = next(r for r in csv.DictReader(io.StringIO(csv_text))
                if r["student_id"] == s3 and r["assignment"] == "bn_forward")
    assert float(row3["score"]) == 7.0, row3
    ctx.close()
    student.stop_server()


def test_permissions(hub):
    """Files and URLs a student cannot reach (as their own uid and through their own session)."""
    s1, s2 = hub.students[0], hub.students[1]
    course = hub.course
    inbound = ROOT / "exchange" / "bnkit" / "inbound"
    denied = {
        "another student's home": ["ls", pwd.getpwnam(s2).pw_dir],
        "the course directory": ["ls", str(course)],
        "the gradebook": ["cat", str(course / "gradebook.db")],
        "the exchange's inbound submissions": ["ls", str(inbound)],
        "the instructor's notebooks in the clone": ["cat", str(REPO / "assignments" / "source" / "bn_forward" /
                                                               "bn_forward.ipynb")],
        "the hub's state (cookie secret, passwords)": ["cat", str(ROOT / "state" / "cookie_secret")],
    }
    for what, argv in denied.items():
        r = _as_user(s1, argv)
        assert r.returncode != 0 and "Permission denied" in r.stderr, f"{what}: {r.stdout[:300]} {r.stderr}"
    # ...while the released assignment is readable (the check above is not a broken setpriv)
    r = _as_user(s1, ["ls", str(ROOT / "exchange" / "bnkit" / "outbound" / "bn_forward")])
    assert r.returncode == 0 and "bn_forward.ipynb" in r.stdout, r.stderr
    # no secret on any command line; none in the repository
    token_env = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    for p in token_env:
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        assert b"auth-token" not in cmd and b"cookie_secret=" not in cmd
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout
    assert "cookie_secret" not in tracked and "jupyterhub.sqlite" not in tracked

    # a student's session: not the instructor's formgrader, not their own (the extension is off)
    student = HubUser(hub.url, s1, hub.passwords[s1]).login()
    for url in (f"user/{hub.instructor}/formgrader", f"user/{hub.instructor}/formgrader/api/assignments",
                f"user/{hub.instructor}/bnkit/grades.csv"):
        r = student.s.get(hub.url + url, allow_redirects=True, timeout=600)
        assert r.status_code in (403, 404) or "/hub/" in r.url, (url, r.status_code, r.url)
        assert "Manage Assignments" not in r.text and "student_id" not in r.text
    r = student.s.get(hub.url + f"user/{s1}/formgrader", timeout=600)
    assert r.status_code == 404, r.status_code
    r = student.s.get(hub.url + f"user/{s1}/formgrader/api/assignments", timeout=600)
    assert r.status_code == 404, r.status_code
    student.stop_server()
