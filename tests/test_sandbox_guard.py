"""A broken nbgrader_config.py must not silently disable the sandbox (bngrade/sandbox_guard.py).

Real `nbgrader autograde` runs from a scratch course (bn_forward, one correct
student whose notebook also leaves a witness file on the host if it ever
runs outside the sandbox): first with the course's config as it is (graded,
sandboxed: the guard costs nothing), then with the same config broken in two
ways nbgrader would otherwise shrug off (a missing import; a pipeline that
names nbgrader's plain Execute). Each broken run must refuse loudly, grade
no notebook and run no student code.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))
import course  # noqa: E402

from bngrade.autograde import gradebook_scores  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.access("/usr/bin/bwrap", os.X_OK), reason="bubblewrap is not installed")]
A = "bn_forward"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    d = course.copy_course(tmp / "course")
    shutil.copy(ROOT / "assignments" / "nbgrader_config.json", d)
    rc, log = course.nbgrader(d, "generate_assignment", A, "--force", quiet=True)
    assert rc == 0, log
    witness = tmp / "witness"
    nb = json.loads(course.submission(d, A))
    # outside the sandbox this writes on the host; inside, the host path is not there to write
    nb["cells"].insert(0, {"cell_type": "code", "execution_count": None, "id": "witness", "metadata": {},
                           "outputs": [], "source": f"try:\n    open({str(witness)!r}, 'w').write('ran')\n"
                                                    "except OSError:\n    pass\n"})
    course.place(d, A, {"alice": json.dumps(nb)})
    return tmp, d, witness


def _copy(base, name, edit=None):
    tmp, d, witness = base
    dest = tmp / name
    shutil.copytree(d, dest, symlinks=True)
    if edit is not None:
        config = dest / "nbgrader_config.py"
        config.write_text(edit(config.read_text()))
    return dest


def test_the_intact_config_grades_in_the_sandbox(base):
    d = _copy(base, "intact")
    rc, log = course.nbgrader(d, "autograde", A, "--force", quiet=True)
    assert rc == 0, log
    assert gradebook_scores(d, A)["alice"]["test_train_output"] == [3.0, 3.0]
    assert not base[2].exists()  # the witness cell ran, in the sandbox


@pytest.mark.parametrize("breakage", [
    pytest.param(lambda text: "import bngrade.no_such_module  # a typo in an import\n" + text, id="missing-import"),
    pytest.param(lambda text: text + "\nfrom nbgrader.preprocessors import Execute\n"
                              "c.Autograde.autograde_preprocessors = [Execute if p is SandboxedExecute else p\n"
                              "                                       for p in c.Autograde.autograde_preprocessors]\n",
                 id="plain-execute"),
])
def test_a_broken_config_refuses_to_grade(base, breakage, request):
    d = _copy(base, f"broken-{request.node.callspec.id}", breakage)
    rc, log = course.nbgrader(d, "autograde", A, "--force", quiet=True)
    assert rc != 0
    assert "the sandbox is not in force" in log and "no student was graded" in log
    assert "There was an error processing assignment 'bn_forward' for student 'alice'" in log
    assert not list(d.glob(f"autograded/*/{A}/*.ipynb"))  # nbgrader removed what it had started
    # nbgrader records the submission when it sanitizes it, but no grade holds a score
    assert all(score is None for score, _ in gradebook_scores(d, A).get("alice", {}).values())
    assert not base[2].exists()  # no student code ran on the host
