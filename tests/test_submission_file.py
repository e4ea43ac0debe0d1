"""The submitted notebook is read as data (bngrade.submission_file): a regular file with one link,
never followed, at most 32 MiB, checked before a byte is read.

The unit tests try each shape of file; the last test grades them with real `nbgrader autograde`
beside the control students, and bounds the grader's memory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bngrade.submission_file import MAX_NOTEBOOK_MB, RefusedSubmission, check, read_checked

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))


def test_a_plain_notebook_is_read_and_a_hard_link_for_what_it_holds(tmp_path):
    p = tmp_path / "a.ipynb"
    p.write_text('{"cells": []}')
    assert read_checked(p) == b'{"cells": []}' and check(p) is None
    os.link(p, tmp_path / "b.ipynb")  # refusing it would refuse the classmate whose file it is too
    assert read_checked(tmp_path / "b.ipynb") == b'{"cells": []}'


@pytest.mark.parametrize("shape", ["symlink", "fifo", "directory", "device", "too big"])
def test_anything_else_is_refused_without_being_read(tmp_path, shape):
    other = tmp_path / "classmate.ipynb"
    other.write_text('{"cells": []}')
    p = tmp_path / "a.ipynb"
    if shape == "symlink":
        p.symlink_to(other)
    elif shape == "fifo":
        os.mkfifo(p)  # a read would block for ever: O_NONBLOCK, then fstat, refuse it
    elif shape == "directory":
        p.mkdir()
    elif shape == "device":
        p.symlink_to("/dev/zero")  # endless bytes; a symlink, so refused before it is opened
    else:
        with open(p, "wb") as f:
            f.truncate((MAX_NOTEBOOK_MB << 20) + 1)  # sparse: no disk, but its size is over the limit
    with pytest.raises(RefusedSubmission):
        read_checked(p)
    assert check(p)


@pytest.mark.slow
def test_nbgrader_grades_the_controls_and_refuses_the_rest(tmp_path):
    import course

    d = course.copy_course(tmp_path / "c")
    rc, log = course.nbgrader(d, "generate_assignment", "bn_forward", "--force", quiet=True)
    assert rc == 0, log
    controls = course.controls(d, "bn_forward")
    course.place(d, "bn_forward", controls)
    nb = json.loads(course.submission(d, "bn_forward"))
    answer = next(c for c in nb["cells"] if c["cell_type"] == "markdown"
                  and c["metadata"].get("nbgrader", {}).get("solution"))
    answer["source"] = "x" * (96 << 20)  # a 96 MiB written answer (the grader read 300 MiB into 1.04 GiB)
    course.place(d, "bn_forward", {"huge": json.dumps(nb)})
    given = d / "submitted" / "zzz_control_correct" / "bn_forward" / "bn_forward.ipynb"
    for student, make in (("linked", lambda p: p.symlink_to(given)), ("hardlinked", lambda p: os.link(given, p)),
                          ("fifo", os.mkfifo)):
        (d / "submitted" / student / "bn_forward").mkdir(parents=True)
        make(d / "submitted" / student / "bn_forward" / "bn_forward.ipynb")
    many_cells = json.loads(course.submission(d, "bn_forward"))
    many_cells["cells"] += [{"cell_type": "markdown", "metadata": {}, "source": "x"}] * 1000
    course.place(d, "bn_forward", {"manycells": json.dumps(many_cells)})  # 200,000 held a worker 6.7 min
    deep_json = course.submission(d, "bn_forward").replace('"metadata": {', '"metadata": {"x": ' + '[' * 100_000
                                                            + ']' * 100_000 + ', ', 1)
    course.place(d, "bn_forward", {"deepjson": deep_json})  # RecursionError in the grader and in the check
    # beside a correct notebook: a link to /dev/zero and a FIFO (left out), or too many / too large files
    for student in ("devzero", "many", "bigfiles", "deep"):
        course.place(d, "bn_forward", {student: course.submission(d, "bn_forward")})
    extra = d / "submitted" / "devzero" / "bn_forward"
    (extra / "data.bin").symlink_to("/dev/zero")  # nbgrader's shutil.copy would write zeros until the disk is full
    os.mkfifo(extra / "pipe")
    (extra / "\x1b[2J\n[AutogradeApp | INFO] all good").symlink_to("/dev/zero")  # a name that writes to the terminal
    for i in range(2001):
        (d / "submitted" / "many" / "bn_forward" / f"f{i}.txt").write_text("x")
    with open(d / "submitted" / "bigfiles" / "bn_forward" / "big.npy", "wb") as f:
        f.truncate(257 << 20)  # sparse here, but a copy would write it all
    (d / "submitted" / "deep" / "bn_forward" / "/".join(["d"] * 40)).mkdir(parents=True)  # 1900 levels: RecursionError
    # an honest accident: the one notebook saved under another name (nbgrader skips it, grades nothing); two such
    # notebooks are not guessed between
    for student, names in (("renamed", ["bn_forward (1).ipynb"]), ("two_renamed", ["a.ipynb", "b.ipynb"])):
        (d / "submitted" / student / "bn_forward").mkdir(parents=True)
        for name in names:
            (d / "submitted" / student / "bn_forward" / name).write_text(course.submission(d, "bn_forward"))
    problems = {}  # make autograde says so first
    for student, why in course.check_submissions(d, "bn_forward"):
        problems.setdefault(student, []).append(why)
    problems = {student: " | ".join(whys) for student, whys in problems.items()}
    refused = {"huge", "linked", "fifo", "many", "bigfiles", "manycells", "deep", "deepjson"}
    assert {s for s, why in problems.items() if "is not" in why} == refused, problems
    assert "2 names" in problems["hardlinked"] and "2 names" in problems["zzz_control_correct"], problems
    assert "data.bin (a symbolic link)" in problems["devzero"] and "is not" not in problems["devzero"], problems
    assert "its one notebook, bn_forward (1).ipynb, is graded as bn_forward.ipynb" in problems["renamed"], problems
    assert "nothing to grade" in problems["two_renamed"], problems
    # the grader's peak RSS, read by a fresh parent (this worker's own children's maxima would mix in)
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    run = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "nbgrader", "autograde", "bn_forward",
                          "--force"], cwd=d, env=course._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    rc, log = run.returncode, run.stdout
    peak_mib = int(log.rsplit("PEAK_KIB", 1)[1].split()[0]) / 1024
    assert rc != 0  # nbgrader reports the refused students as errors
    for student in refused:
        assert not list((d / "autograded" / student).rglob("*.ipynb")), student  # nothing graded
        assert f"for student '{student}'" in log
    assert "over the 32 MiB limit" in log and "a symlink" in log and "not a regular file" in log
    assert "more than 2000 files" in log and "over the 256 MiB limit" in log and "over the 1000 cell limit" in log
    assert "directories nested more than 16 deep" in log and "nested over the 64 level limit" in log
    for student in ("many", "bigfiles", "deep"):
        assert not list((d / "autograded" / student).rglob("*")), student
    assert sorted(p.name for p in (d / "autograded" / "devzero" / "bn_forward").iterdir()) == ["bn_forward.ipynb"]
    assert ("left out, not copied: '\\x1b[2J\\n[AutogradeApp | INFO] all good' (a symbolic link); "
            "data.bin (a symbolic link); pipe (not a regular file") in log
    assert "\x1b[2J" not in log and "\x1b[2J" not in problems["devzero"]  # named, quoted, never written raw
    scores = {student: sum(score or 0 for score, _ in grades.values())
              for student, grades in course.scores(d, "bn_forward").items()}
    assert scores["zzz_control_correct"] > scores["zzz_control_wrong"] == scores["aaa_control_wrong"] > 0, scores
    assert scores["hardlinked"] == scores["zzz_control_correct"]  # a copy, graded as one (and reported above)
    assert scores["devzero"] == scores["zzz_control_correct"]  # what was left out cost nothing
    assert scores["renamed"] == scores["zzz_control_correct"] and not scores["two_renamed"], scores
    assert "bn_forward (1).ipynb is graded as bn_forward.ipynb" in log
    assert not refused & {s for s, v in scores.items() if v}, scores
    print(f"autograde of the class: peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 1024, peak_mib


@pytest.mark.slow
def test_nbgrader_submit_leaves_out_a_link_to_dev_zero(tmp_path):
    """A student's own `nbgrader submit` through the hub's exchange (bngrade.exchange): nbgrader's
    copytree would follow data.bin -> /dev/zero and fill the shared disk; the notebook arrives,
    the link and a FIFO do not; a folder nested too deep is not submitted, with a message. (The
    bound below is on start-up and the copy, not a timing.)"""
    exchange, home = tmp_path / "exchange", tmp_path / "home"
    (exchange / "bnkit" / "inbound").mkdir(parents=True)
    (exchange / "bnkit" / "outbound" / "bn_forward").mkdir(parents=True)
    folder = home / "bn_forward"
    folder.mkdir(parents=True)
    (folder / "bn_forward.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                         "nbformat_minor": 5}))
    (folder / "data.bin").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe")
    run = subprocess.run([sys.executable, "-m", "nbgrader", "submit", "bn_forward", f"--Exchange.root={exchange}",
                          "--CourseDirectory.course_id=bnkit",
                          "--ExchangeFactory.submit=bngrade.exchange.SafeExchangeSubmit"],
                         cwd=home, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg")))
    assert run.returncode == 0, run.stdout + run.stderr
    submitted, = (exchange / "bnkit" / "inbound").iterdir()
    assert sorted(p.name for p in submitted.iterdir()) == ["bn_forward.ipynb", "submission_secret.txt", "timestamp.txt"]
    assert "left out of the submission" in run.stdout + run.stderr and "data.bin" in run.stdout + run.stderr
    # a folder nested deeper than the grader takes is not submitted, and the student is told why
    (folder / "/".join(["d"] * 20)).mkdir(parents=True)
    run = subprocess.run(run.args, cwd=home, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg")))
    assert run.returncode != 0 and "nested more than 16 deep" in run.stdout + run.stderr, run.stdout + run.stderr
    assert len(list((exchange / "bnkit" / "inbound").iterdir())) == 1
