"""The nbgrader course, end to end, through real nbgrader runs.

For each assignment, in a scratch copy of the course: generate the student
version, place the source solution, the blank released notebook and every
catalogue entry (assignments/catalogue.py) as students, autograde them all
in ONE run, generate feedback, export the grades. Then check every student's
score against the catalogue, the integrity cases, the feedback HTML and the
idempotence of a re-run. Counts and timings go to
test-artifacts/assignments-summary.json.
"""
import html
import json
import re
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
TIMEOUT = 10  # per cell, seconds: the infinite-loop submission costs this once
ASSIGNMENTS = course.ASSIGNMENTS
BY_NAME = {v.name: v for v in catalogue.VARIANTS}


def _grade_assignment(base, assignment):
    """generate -> place submissions -> autograde -> feedback -> export, one course copy."""
    d = course.copy_course(base / assignment)
    rc, gen_log = course.nbgrader(d, "generate_assignment", assignment, "--force", quiet=True)
    assert rc == 0, gen_log
    notebooks = course.samples(d, assignment)
    t0 = time.time()
    rc, log = course.nbgrader(d, "autograde", assignment, "--force", f"--Execute.timeout={TIMEOUT}",
                              f"--ExecutePreprocessor.timeout={TIMEOUT}", quiet=True)
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
    """Grade ids of the autograded tests of the source solution's row."""
    return {g for g, (_, mx) in graded[assignment]["scores"]["solution"].items() if g.startswith("test_")}


def _row(graded, assignment, student):
    tests = _autograded_tests(assignment, graded)
    row = graded[assignment]["scores"].get(student, {})
    return {t: row.get(t, (None, None)) for t in tests}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_course_config_loads(graded, assignment):
    for log in (graded[assignment]["log"], graded[assignment]["gen_log"], graded[assignment]["feedback_log"]):
        assert "Exception while loading config file" not in log


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_solution_scores_full_marks(graded, assignment):
    row = _row(graded, assignment, "solution")
    assert len(row) >= 2 and all(score == mx for score, mx in row.values()), row


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_notebook_scores_zero_everywhere(graded, assignment):
    row = _row(graded, assignment, "blank")
    assert all(score == 0 for score, _ in row.values()), row


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_only_the_damaged_notebooks_fail_and_every_student_is_graded(graded, assignment):
    run = graded[assignment]
    failed = set(re.findall(r"There was an error processing assignment '[^']+' for student '([^']+)'", run["log"]))
    assert failed == {v.name for v in catalogue.VARIANTS if v.assignment == assignment and v.lose is None}
    assert len(run["scores"]) == run["n"]  # the run went on past them: every student has a row


@pytest.mark.parametrize("name", [v.name for v in catalogue.VARIANTS])
def test_catalogue_entry_scores_as_specified(graded, name):
    v = BY_NAME[name]
    row = _row(graded, v.assignment, name)
    if v.lose is None:  # cannot be graded: zero everywhere, a per-student failure, the run goes on
        assert all(score in (0, None) for score, _ in row.values()), row
        assert f"There was an error processing assignment '{v.assignment}' for student '{name}'" in graded[v.assignment]["log"]
        assert name in graded[v.assignment]["problems"]
        return
    lost = {t for t, (score, mx) in row.items() if score != mx}
    assert lost == set(v.lose), f"{name} ({v.why}): lost points on {sorted(lost)}, expected {sorted(v.lose)}; {row}"
    for t in v.lose:
        assert row[t][0] == 0


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_hidden_tests_are_not_released(graded, assignment):
    release = (graded[assignment]["dir"] / "release" / assignment / f"{assignment}.ipynb").read_text()
    assert "HIDDEN TESTS" not in release and "BEGIN SOLUTION" not in release
    for line in _hidden_lines(graded[assignment]["dir"], assignment):
        assert line not in release


def _hidden_lines(d, assignment):
    nb = json.loads((d / "source" / assignment / f"{assignment}.ipynb").read_text())
    lines = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        for region in re.findall(r"### BEGIN HIDDEN TESTS(.*?)### END HIDDEN TESTS", src, re.S):
            lines += [line.strip() for line in region.split("\n") if line.strip()]
    assert lines, "every assignment has hidden tests"
    return lines


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_html_has_no_hidden_test_source(graded, assignment):
    d = graded[assignment]["dir"]
    assert graded[assignment]["feedback_rc"] == 0, graded[assignment]["feedback_log"][-3000:]
    pages = sorted(d.glob(f"feedback/*/{assignment}/{assignment}.html"))
    assert len(pages) >= graded[assignment]["n"] - 2  # all but the two ungradable notebooks
    hidden = _hidden_lines(d, assignment)
    failing_tracebacks = 0
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        failing_tracebacks += "Traceback (most recent call last)" in text
        assert "HIDDEN TESTS" not in text, page
        for line in hidden:
            assert line not in text, (page, line)
    assert failing_tracebacks > 0  # the check covered tracebacks, which quote the lines around a failure


def test_timeout_interrupts_one_cell_and_grading_goes_on(graded):
    assert f"Timeout waiting for execute reply ({TIMEOUT}s)" in graded["bn_forward"]["log"]
    row = _row(graded, "bn_forward", "infinite_loop")
    assert row["test_eval"][0] == 0 and row["test_train_output"][0] == 3  # the cells after it still ran


def test_ungradable_notebooks_get_clear_per_student_messages(graded):
    problems = graded["bn_forward"]["problems"]
    assert "not valid notebook JSON" in problems["invalid_json"]
    assert "lost its metadata" in problems["metadata_stripped"]
    # and the run went on: students after them in nbgrader's order were graded
    assert _row(graded, "bn_forward", "wrong_axis")["test_eval"][0] == 2


def test_integrity_messages_name_the_cheat(graded):
    d = graded["bn_forward"]["dir"]

    def outputs(student, gid):
        nb = json.loads((d / "autograded" / student / "bn_forward" / "bn_forward.ipynb").read_text())
        cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == gid)
        return re.sub(r"\x1b\[[0-9;]*m", "", json.dumps(cell["outputs"]))

    assert "not yours" in outputs("cheat_unblock_and_assign", "test_train_output")
    gc = outputs("cheat_gc_finds_reference", "test_train_output")
    assert "not yours" in gc or "name 'batchnorm_forward' is not defined" in gc
    assert "from fast.py, a reference implementation" in outputs("cheat_unblock_and_wrap", "test_train_output")
    assert "not available in this assignment" in outputs("cheat_import_bnkit", "test_eval")
    assert "not a numpy.ndarray" in outputs("cheat_eq_always_true", "test_train_output")
    assert "set_custom_exc" in outputs("cheat_swallow_errors", "test_running_stats")
    fast = graded["bn_backward_fast"]["dir"]
    nb = json.loads((fast / "autograded" / "alt_calls_staged" / "bn_backward_fast" / "bn_backward_fast.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_alt_dx")
    assert "calls batchnorm_backward, which this part must not use" in json.dumps(cell["outputs"])


def test_export_writes_one_csv_row_per_student(graded):
    csv = (graded["bn_forward"]["dir"] / "grades.csv").read_text().splitlines()
    assert graded["bn_forward"]["export_rc"] == 0
    assert csv[0].startswith("assignment,duedate,timestamp,student_id")
    assert len(csv) - 1 == len(graded["bn_forward"]["scores"])


def test_autograde_rerun_is_idempotent(graded):
    d, a = graded["bn_backward_fast"]["dir"], "bn_backward_fast"

    def grade_rows():
        import sqlite3
        with sqlite3.connect(d / "gradebook.db") as db:
            return [db.execute(f"select count(*) from {t}").fetchone()[0]
                    for t in ("grade", "submitted_assignment", "submitted_notebook", "student")]

    before_rows, before = grade_rows(), course.scores(d, a)
    rc, log = course.nbgrader(d, "autograde", a, "--force", quiet=True)
    assert rc == 0, log[-3000:]
    assert course.scores(d, a) == before
    assert grade_rows() == before_rows


def test_record_summary(graded):
    """Counts and timings for the issue's closing note (also printed with -s)."""
    kinds = {}
    for v in catalogue.VARIANTS:
        row = _row(graded, v.assignment, v.name)
        full = all(score == mx for score, mx in row.values())
        lost = {t for t, (score, mx) in row.items() if score != mx}
        k = kinds.setdefault(v.kind, {"tried": 0, "as_specified": 0})
        k["tried"] += 1
        k["as_specified"] += (full if v.kind == "correct" else
                              (v.lose is None and not any(s for s, _ in row.values())) or lost == set(v.lose or ()))
    submissions = sum(graded[a]["n"] for a in ASSIGNMENTS)
    autograde_seconds = sum(graded[a]["seconds"] for a in ASSIGNMENTS)
    summary = {
        "buggy": {"tried": kinds["buggy"]["tried"], "caught_on_the_right_tests": kinds["buggy"]["as_specified"]},
        "correct_variants": {"tried": kinds["correct"]["tried"], "full_marks": kinds["correct"]["as_specified"]},
        "integrity": {"tried": kinds["integrity"]["tried"], "as_specified": kinds["integrity"]["as_specified"]},
        "submissions_graded": submissions,
        "autograde_seconds_total": round(autograde_seconds, 1),
        "seconds_per_graded_submission": round(autograde_seconds / submissions, 2),
        "note": "two assignments autograde at a time on this machine; per-submission time is per nbgrader run",
        "wall_seconds_whole_fixture": round(graded["_wall"], 1),
        "wall_seconds_per_submission_effective": round(graded["_wall"] / submissions, 2),
    }
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "assignments-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    assert summary["buggy"]["caught_on_the_right_tests"] == summary["buggy"]["tried"]
    assert summary["correct_variants"]["full_marks"] == summary["correct_variants"]["tried"]
