"""Parallel autograde (bngrade/autograde.py) against plain serial `nbgrader autograde`.

One scratch course (bn_forward; a correct, a wrong, two hostile and one
invalid notebook) is copied twice: one copy is graded by `nbgrader autograde`,
the other by `python -m bngrade.autograde run --jobs 2`; the gradebooks must
hold the same grades and the same students must fail. A third copy checks
that nbgrader refuses to run at all when bubblewrap is missing.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))
import course  # noqa: E402

from bngrade.autograde import gradebook_scores  # noqa: E402

pytestmark = pytest.mark.slow
A = "bn_forward"
PICKS = ("eps_outside_sqrt", "hostile_kill_parent", "hostile_gradebook_rewrite", "invalid_json")
FAILED = re.compile(r"There was an error processing assignment '[^']+' for student '([^']+)'")


@pytest.fixture(scope="module")
def courses(tmp_path_factory):
    base = tmp_path_factory.mktemp("parallel")
    _, notebooks, serial_log = course.graded_course(base, A, PICKS, copies=("parallel", "refuse", "batch"))
    par = subprocess.run([sys.executable, "-m", "bngrade.autograde", "run", A, "--course", str(base / "parallel"),
                          "--jobs", "2"], capture_output=True, text=True, cwd=ROOT)
    return dict(base=base, serial_log=serial_log, parallel=par, students=set(notebooks))


def test_parallel_grades_equal_serial_grades(courses):
    serial = gradebook_scores(courses["base"] / "serial", A)
    parallel = gradebook_scores(courses["base"] / "parallel", A)
    assert set(serial) == courses["students"]
    assert parallel == serial
    assert serial["solution"]["test_train_output"] == [3.0, 3.0]  # the check is not vacuous
    assert serial["eps_outside_sqrt"]["test_train_output"][0] < 3


def test_the_same_students_fail_and_the_run_goes_on(courses):
    par = courses["parallel"]
    assert set(FAILED.findall(courses["serial_log"])) == {"invalid_json"}
    assert set(FAILED.findall(par.stdout + par.stderr)) == {"invalid_json"}
    assert par.returncode != 0  # nbgrader's status: one student failed
    for student in courses["students"] - {"invalid_json"}:
        assert (courses["base"] / "parallel" / "autograded" / student / A / f"{A}.ipynb").exists()


def test_progress_and_table_are_shown(courses):
    out = courses["parallel"].stdout + courses["parallel"].stderr
    assert "autograde bn_forward" in out and "5/5" in out  # tqdm's bar
    assert re.search(r"solution\s+7/7", out)  # a per-student status line


def test_autograde_refuses_to_run_without_bubblewrap(courses):
    d = courses["base"] / "refuse"
    rc, log = course.nbgrader(d, "autograde", A, "--force", "--SandboxedExecute.bwrap_path=/nonexistent/bwrap",
                              quiet=True)
    assert rc != 0
    assert "refuses to autograde without a sandbox" in log and "unsafe_run_without_sandbox" in log
    started = list(d.glob(f"autograded/*/{A}/{A}.ipynb"))
    assert len(started) <= 1  # nbgrader stopped at the first student (whose copy it had made)
    for path in started:  # and nothing was executed
        nb = json.loads(path.read_text())
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    assert all(score in (0, None) for row in gradebook_scores(d, A).values() for score, _ in row.values())


def test_the_standalone_unit_and_merge_give_the_same_grades(courses):
    """The batch-runner path: `one` for some students (anywhere), then `merge` into the course."""
    d, results = courses["base"] / "batch", courses["base"] / "batch-results"
    cli = [sys.executable, "-m", "bngrade.autograde"]
    one = subprocess.run(cli + ["one", A, "solution", "eps_outside_sqrt", "--course", str(d), "--out", str(results)],
                         capture_output=True, text=True, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-2000:]
    assert json.loads((results / "solution" / A / "result.json").read_text())["ok"]
    merged = subprocess.run(cli + ["merge", A, "--course", str(d), "--results", str(results)],
                            capture_output=True, text=True, cwd=ROOT)
    assert merged.returncode == 0, merged.stdout[-3000:] + merged.stderr[-2000:]
    serial = gradebook_scores(courses["base"] / "serial", A)
    batch = gradebook_scores(d, A)
    graded = ("solution", "eps_outside_sqrt")
    assert {s: batch[s] for s in graded} == {s: serial[s] for s in graded}
