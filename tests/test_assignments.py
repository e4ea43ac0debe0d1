"""The nbgrader course, end to end, through plain `nbgrader autograde` with the course's config.

For each assignment, in a scratch copy of the course: generate the student
version, place the source solution, the blank released notebook, every
catalogue entry (assignments/catalogue.py, the hostile cases of
catalogue_hostile.py included) and the control students (catalogue.CONTROLS:
a correct and a wrong one, first and last in nbgrader's order), autograde
them all in ONE run (so the sandbox and the verdict outside the kernel are
what plain nbgrader uses), generate feedback, export the grades. Then check
each student's grades against what the catalogue says, the feedback lines
and hints, the instructor's integrity reports, that the controls did not
move, that hidden tests never reach the feedback, and that a regrade is
idempotent. Counts and timings go to test-artifacts/assignments-summary.json.

Timeouts are the course's own (generous: a loaded machine must not cost a
correct submission its marks); nothing here measures speed.
"""
import ast
import html
import json
import re
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))
import catalogue  # noqa: E402
import course  # noqa: E402

pytestmark = pytest.mark.slow
ASSIGNMENTS = course.ASSIGNMENTS
BY_NAME = {v.name: v for v in catalogue.VARIANTS}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ERROR_FOR = r"There was an error processing assignment '[^']+' for student '([^']+)'"


def _grade_assignment(base, assignment):
    """generate -> place submissions -> autograde -> feedback -> export, one course copy."""
    d = course.copy_course(base / assignment)
    rc, gen_log = course.nbgrader(d, "generate_assignment", assignment, "--force", quiet=True)
    assert rc == 0, gen_log
    notebooks = course.samples(d, assignment, with_controls=True)
    t0 = time.time()
    rc, log = course.nbgrader(d, "autograde", assignment, "--force", quiet=True)
    seconds = time.time() - t0
    fb_rc, fb_log = course.nbgrader(d, "generate_feedback", assignment, "--force", quiet=True)
    ex_rc, ex_log = course.nbgrader(d, "export", quiet=True)
    return dict(dir=d, log=log, gen_log=gen_log, rc=rc, seconds=seconds, n=len(notebooks),
                scores=course.scores(d, assignment), problems=dict(course.check_submissions(d, assignment)),
                feedback_rc=fb_rc, feedback_log=fb_log, export_rc=ex_rc, export_log=ex_log)


@pytest.fixture(scope="session")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("course")
    t0 = time.time()
    with ThreadPoolExecutor(2) as pool:  # two nbgrader runs at a time, one gradebook each
        runs = dict(zip(ASSIGNMENTS, pool.map(lambda a: _grade_assignment(base, a), ASSIGNMENTS)))
    runs["_wall"] = time.time() - t0
    return runs


def _autograded_tests(assignment, graded):
    """Grade ids of the autograded tests (from the source solution's row)."""
    return {g for g in graded[assignment]["scores"]["solution"] if g.startswith("test_")}


def _row(graded, assignment, student):
    tests = _autograded_tests(assignment, graded)
    row = graded[assignment]["scores"].get(student, {})
    return {t: row.get(t, (None, None)) for t in tests}


def _cell_text(graded, assignment, student, gid):
    """What the student sees in a test cell's output (the autograded notebook)."""
    path = graded[assignment]["dir"] / "autograded" / student / assignment / f"{assignment}.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == gid)
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
        elif out.get("output_type") == "error":
            parts.append("\n".join(out.get("traceback", [])) + f"\n{out.get('ename')}: {out.get('evalue')}")
        else:
            value = out.get("data", {}).get("text/plain", "")
            parts.append("".join(value) if isinstance(value, list) else value)
    return ANSI.sub("", "\n".join(parts))


def _report(graded, assignment, student):
    path = graded[assignment]["dir"] / "reports" / assignment / student / f"{assignment}.txt"
    return path.read_text() if path.exists() else None


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_course_config_loads_and_the_run_is_sandboxed(graded, assignment):
    run = graded[assignment]
    for log in (run["log"], run["gen_log"], run["feedback_log"]):
        assert "Exception while loading config file" not in log
    assert "WITHOUT the sandbox" not in run["log"] and "unsafe" not in run["log"].lower()


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_solution_scores_full_marks(graded, assignment):
    row = _row(graded, assignment, "solution")
    assert len(row) >= 2 and all(score == mx for score, mx in row.values()), row


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_notebook_scores_zero_everywhere(graded, assignment):
    row = _row(graded, assignment, "blank")
    assert all(score == 0 for score, _ in row.values()), row


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_control_students_grades_do_not_move(graded, assignment):
    """A correct and a wrong control, graded first and last in the same run as every hostile case."""
    correct = _row(graded, assignment, "zzz_control_correct")
    assert correct == _row(graded, assignment, "solution")
    assert all(score == mx for score, mx in correct.values()), correct
    bug = catalogue.CONTROL_BUG[assignment]
    first, last = _row(graded, assignment, "aaa_control_wrong"), _row(graded, assignment, "zzz_control_wrong")
    assert first == last == _row(graded, assignment, bug), (first, last)
    assert {t for t, (score, mx) in last.items() if score != mx} == set(BY_NAME[bug].lose)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_only_the_damaged_notebooks_fail_and_every_student_is_graded(graded, assignment):
    run = graded[assignment]
    failed = set(re.findall(ERROR_FOR, run["log"]))
    assert failed == {v.name for v in catalogue.VARIANTS if v.assignment == assignment and v.lose is None}
    assert len(run["scores"]) == run["n"]  # the run went on past them: every student has a row


@pytest.mark.parametrize("name", [v.name for v in catalogue.VARIANTS])
def test_catalogue_entry_scores_as_specified(graded, name):
    v = BY_NAME[name]
    row = _row(graded, v.assignment, name)
    if v.lose is None:  # cannot be graded: zero everywhere, a per-student failure, the run goes on
        assert all(score in (0, None) for score, _ in row.values()), row
        assert f"There was an error processing assignment '{v.assignment}' for student '{name}'" \
            in graded[v.assignment]["log"]
        assert name in graded[v.assignment]["problems"]
        return
    lost = {t for t, (score, mx) in row.items() if score != mx}
    assert lost == set(v.lose), f"{name} ({v.why}): lost points on {sorted(lost)}, expected {sorted(v.lose)}; {row}"
    for t, want in v.expect.items():
        assert row[t][0] == pytest.approx(want), f"{name}: {t} scored {row[t][0]}, expected {want}; {row}"
    for t in v.partial:
        assert 0 < row[t][0] < row[t][1], f"{name}: {t} should get partial credit; {row}"


@pytest.mark.parametrize("name", [v.name for v in catalogue.VARIANTS if v.feedback])
def test_catalogue_entry_feedback_says_what_is_wrong(graded, name):
    v = BY_NAME[name]
    for gid, texts in v.feedback.items():
        text = _cell_text(graded, v.assignment, name, gid)
        for want in texts:
            assert want in text, f"{name}: {gid} should say {want!r}; it says:\n{text}"


@pytest.mark.parametrize("name", [v.name for v in catalogue.VARIANTS if v.report is not None])
def test_catalogue_entry_is_reported_to_the_instructor_as_specified(graded, name):
    v = BY_NAME[name]
    report = _report(graded, v.assignment, name)
    assert report is not None, f"{name}: no integrity report was written"
    if not v.report:
        assert report.rstrip().endswith("nothing to report"), report
    for want in v.report:
        assert want in report, f"{name}: the report should mention {want!r}:\n{report}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_graded_student_has_a_report_and_honest_ones_are_quiet(graded, assignment):
    run = graded[assignment]
    ungradable = {v.name for v in catalogue.VARIANTS if v.assignment == assignment and v.lose is None}
    for student in set(run["scores"]) - ungradable:
        assert _report(graded, assignment, student) is not None, student
    for student in ("solution", "blank", "zzz_control_correct", "zzz_control_wrong"):
        assert _report(graded, assignment, student).rstrip().endswith("nothing to report")
    flagged = course.reports(run["dir"], assignment)
    assert "solution" not in flagged and set(flagged) <= set(run["scores"])


GRADER_FRAMES = re.compile(r"(harness|verdict|cases|preprocessors|sandbox|integrity)\.py|site-packages|"
                           r"Traceback \(most recent call last\)")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_lines_never_show_grader_internals(graded, assignment):
    """No frame or file of the grader's (an ImportError may still name the sandbox's minimal bnkit)."""
    run = graded[assignment]
    ungradable = {v.name for v in catalogue.VARIANTS if v.assignment == assignment and v.lose is None}
    errors = 0
    for student in set(run["scores"]) - ungradable:
        for gid in _autograded_tests(assignment, graded):
            text = _cell_text(graded, assignment, student, gid)
            errors += "Error" in text
            assert not GRADER_FRAMES.search(text), (student, gid, text)
    assert errors > 0  # the check saw students whose code raised


def _hidden_lines(d, assignment):
    nb = json.loads((d / "source" / assignment / f"{assignment}.ipynb").read_text())
    lines = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        for region in re.findall(r"### BEGIN HIDDEN TESTS(.*?)### END HIDDEN TESTS", src, re.S):
            lines += [line.strip() for line in region.split("\n") if line.strip()]
    assert lines, "every assignment has hidden tests"
    return lines


def _hidden_cases(d, assignment):
    """The (check, seed) pairs listed only in the hidden regions of the source."""
    pairs = []
    for line in _hidden_lines(d, assignment):
        if "+=" in line:
            pairs += ast.literal_eval(line.split("+=", 1)[1].strip())
    assert pairs
    return pairs


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_hidden_tests_are_not_released(graded, assignment):
    release = (graded[assignment]["dir"] / "release" / assignment / f"{assignment}.ipynb").read_text()
    assert "HIDDEN TESTS" not in release and "BEGIN SOLUTION" not in release
    for line in _hidden_lines(graded[assignment]["dir"], assignment):
        assert line not in release


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_html_has_no_hidden_test_source(graded, assignment):
    d = graded[assignment]["dir"]
    assert graded[assignment]["feedback_rc"] == 0, graded[assignment]["feedback_log"][-3000:]
    pages = sorted(d.glob(f"feedback/*/{assignment}/{assignment}.html"))
    ungradable = sum(1 for v in catalogue.VARIANTS if v.assignment == assignment and v.lose is None)
    assert len(pages) >= graded[assignment]["n"] - ungradable
    hidden = _hidden_lines(d, assignment)
    # a student's cell may print the case list the kernel ran (catalogue: attack_leak_hidden_cases)
    hidden += [f"({check!r}, {seed})" for check, seed in _hidden_cases(d, assignment)]
    failing = 0
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        failing += bool(re.search(r"^\s*FAIL\b", text, re.M))
        assert "HIDDEN TESTS" not in text, page
        for line in hidden:
            assert line not in text, (page, line)
    assert failing > 0  # the check covered pages with failing cases, whose lines are the longest


def test_the_code_review_is_in_the_formgrader_above_the_derivation_and_never_in_feedback(graded):
    """Issue 14: the ranked evidence sits where the instructor grades the derivation; the student never sees it."""
    from bngrade.integrity_preprocessors import INSTRUCTOR_ONLY
    d, a = graded["bn_backward_fast"]["dir"], "bn_backward_fast"
    for student in ("alt_calls_staged", "skill_route_pre_run_cell_hook", "skill_jvp_along_dout"):
        nb = json.loads((d / "autograded" / student / a / f"{a}.ipynb").read_text())
        sources = ["".join(c["source"]) for c in nb["cells"]]
        notes = [i for i, src in enumerate(sources) if src.lstrip().startswith(INSTRUCTOR_ONLY)]
        assert len(notes) == 1, student
        after = nb["cells"][notes[0] + 1]["metadata"].get("nbgrader", {})
        assert after.get("grade_id") == "derivation", student
        assert "code review: [strong]" in sources[notes[0]] or "code review: [worth a look]" in sources[notes[0]]
        page = (d / "feedback" / student / a / f"{a}.html").read_text()
        assert "Integrity report" not in page and "code review" not in page and INSTRUCTOR_ONLY not in page
    solution = json.loads((d / "autograded" / "solution" / a / f"{a}.ipynb").read_text())
    assert not any("".join(c["source"]).lstrip().startswith(INSTRUCTOR_ONLY) for c in solution["cells"])


def test_the_cases_at_scale_give_the_same_verdict_on_a_loaded_machine(tmp_path):
    """Issue 14: honest loops pass and a numerical derivative cannot finish, with two `yes > /dev/null` running.

    One nbgrader run of bn_spatial_layernorm (the course's config and timeout) with the controls, while two
    busy loops compete for the CPU. The verdicts must be the catalogue's, which the unloaded runs check too.
    """
    import subprocess
    names = ("layernorm_backward_loops", "skill_vectorised_differences")
    a = "bn_spatial_layernorm"
    d = course.copy_course(tmp_path / a)
    rc, log = course.nbgrader(d, "generate_assignment", a, "--force", quiet=True)
    assert rc == 0, log
    course.samples(d, a, [BY_NAME[n] for n in names], with_controls=True)
    busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]  # the load, while grading
    try:
        rc, log = course.nbgrader(d, "autograde", a, "--force", quiet=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    scores = course.scores(d, a)
    tests = {t for t in scores["solution"] if t.startswith("test_")}
    for student in ("solution", "zzz_control_correct", "layernorm_backward_loops"):
        assert all(scores[student][t][0] == scores[student][t][1] for t in tests), (student, scores[student])
    cheat = scores["skill_vectorised_differences"]
    assert {t for t in tests if cheat[t][0] != cheat[t][1]} == set(BY_NAME["skill_vectorised_differences"].lose), cheat


def test_a_stuck_cell_costs_only_that_test(graded):
    row = _row(graded, "bn_forward", "infinite_loop")
    assert row["test_eval"][0] == 0 and row["test_train_output"][0] == 3  # the other cells still ran


def test_ungradable_notebooks_get_clear_per_student_messages(graded):
    problems = graded["bn_forward"]["problems"]
    assert "not valid notebook JSON" in problems["invalid_json"]
    assert "lost its metadata" in problems["metadata_stripped"]
    assert "last copy of each is graded" in problems["duplicated_cell_last_correct"]


def test_export_writes_one_csv_row_per_student(graded):
    csv = (graded["bn_forward"]["dir"] / "grades.csv").read_text().splitlines()
    assert graded["bn_forward"]["export_rc"] == 0
    assert csv[0].startswith("assignment,duedate,timestamp,student_id")
    assert len(csv) - 1 == len(graded["bn_forward"]["scores"])


def test_autograde_rerun_is_idempotent(graded):
    d, a = graded["bn_backward_fast"]["dir"], "bn_backward_fast"

    def grade_rows():
        with sqlite3.connect(d / "gradebook.db") as db:
            return [db.execute(f"select count(*) from {t}").fetchone()[0]
                    for t in ("grade", "submitted_assignment", "submitted_notebook", "student")]

    def report_texts():
        return {p.relative_to(d): p.read_text() for p in sorted((d / "reports" / a).glob("*/*.txt"))}

    before_rows, before, reports_before = grade_rows(), course.scores(d, a), report_texts()
    # Regrade the alt_* entries (residuals with code-review reports among them) and the controls: the
    # skill_* entries that run out the 60 s cell timeout by design would add two minutes and prove nothing more.
    rc, log = course.nbgrader(d, "autograde", a, "--force", "--student=[az]*", quiet=True)
    assert rc == 0, log[-3000:]
    regraded = set(re.findall(r"Autograding \S+/autograded/([^/]+)/", log))
    assert regraded == {p.name for p in (d / "submitted").glob("[az]*")} and len(regraded) >= 22, regraded
    assert course.scores(d, a) == before
    assert grade_rows() == before_rows
    assert report_texts() == reports_before


def test_record_summary(graded):
    """Counts and timings for the issue's closing note (also printed with -s)."""
    kinds = {}
    for v in catalogue.VARIANTS:
        row = _row(graded, v.assignment, v.name)
        lost = {t for t, (score, mx) in row.items() if score != mx}
        ok = (v.lose is None and not any(s for s, _ in row.values())) or \
            (v.lose is not None and lost == set(v.lose)
             and all(row[t][0] == pytest.approx(s) for t, s in v.expect.items())
             and all(0 < row[t][0] < row[t][1] for t in v.partial))
        k = kinds.setdefault(v.kind, {"tried": 0, "as_specified": 0})
        k["tried"] += 1
        k["as_specified"] += bool(ok)
    submissions = sum(graded[a]["n"] for a in ASSIGNMENTS)
    autograde_seconds = sum(graded[a]["seconds"] for a in ASSIGNMENTS)
    issue8 = {v.name for v in catalogue.ISSUE8}
    summary = {
        "by_kind": kinds,
        "issue8_cases": len(issue8),
        "hostile_cases": len(catalogue.HOSTILE),
        "control_students_per_run": len(catalogue.CONTROLS),
        "submissions_graded": submissions,
        "autograde_seconds_total": round(autograde_seconds, 1),
        "seconds_per_graded_submission": round(autograde_seconds / submissions, 2),
        "note": "two assignments autograde at a time (one sandboxed kernel each); per-submission time is "
                "per nbgrader run, serial within it; not a benchmark",
        "wall_seconds_whole_fixture": round(graded["_wall"], 1),
        "reports_with_findings": {a: sorted(course.reports(graded[a]["dir"], a)) for a in ASSIGNMENTS},
    }
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "assignments-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    assert summary["issue8_cases"] >= 20
    for kind, k in kinds.items():
        assert k["as_specified"] == k["tried"], (kind, k)


# ---------------------------------------------------------------- kernel messages and HTML (issue 14)
MiB = 1 << 20
SCRIPT = re.compile(r"<script>.*?</script>", re.S)
STYLE = re.compile(r"<style[^>]*>.*?</style>", re.S)  # the page's own CSS (bootstrap names javascript: links)
# in a tag (a student's code is shown escaped, as text: that is fine)
ACTIVE = re.compile(r"<(script|iframe|object|embed|form)\b|<[^>]*\son[a-z]+\s*=|<[^>]*javascript:", re.I)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_autograded_notebook_is_at_most_2_mib_above_the_released_one(graded, assignment):
    d = graded[assignment]["dir"]
    released = (d / "release" / assignment / f"{assignment}.ipynb").stat().st_size
    sizes = {p.parts[-3]: p.stat().st_size for p in d.glob(f"autograded/*/{assignment}/{assignment}.ipynb")}
    assert sizes and max(sizes.values()) <= released + 2 * MiB, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_pages_hold_no_student_script_and_load_nothing(graded, assignment):
    """Only the two inline scripts the CSP names (MathJax's config and MathJax); no handler, frame or form."""
    pages = sorted(graded[assignment]["dir"].glob(f"feedback/*/{assignment}/{assignment}.html"))
    assert pages
    for page in pages:
        html = page.read_text()
        assert "Content-Security-Policy" in html and "<script src" not in html, page
        assert len(SCRIPT.findall(html)) <= 2, page
        rest = STYLE.sub("", SCRIPT.sub("", html))
        found = ACTIVE.search(rest)
        assert not found, (page, rest[max(0, found.start() - 200):found.end() + 200])
