"""The student quick-start (assignments/README.md), followed to the letter.

The commands are read from the README's first ```bash block under
"## Student quick-start", so the instructions and this test cannot drift.
They run in a copy of the repository (the files git tracks or would track,
as a fresh clone has them) with a fresh venv; then the released bn_forward
notebook, once with the source solution filled in and once with a bug, is
executed by that venv's Jupyter, as a student's Run All would. The visible
tests must answer at home: PASS lines for the solution, FAIL lines for the
bug, on the right test cell, with no grader needed.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))
import catalogue  # noqa: E402
import course  # noqa: E402

pytestmark = pytest.mark.slow
README = ROOT / "assignments" / "README.md"
ASSIGNMENT = "bn_forward"
TESTS = ("test_train_output", "test_running_stats", "test_eval")


def quickstart_commands(text):
    """The shell commands of the quick-start's first bash block (comments and blank lines dropped)."""
    section = text.split("## Student quick-start", 1)
    assert len(section) == 2, "assignments/README.md has no '## Student quick-start' section"
    block = re.search(r"```bash\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert block, "the student quick-start has no ```bash block"
    commands = [line.strip() for line in block.group(1).splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands
    return commands


def test_quickstart_block_is_parsed():
    commands = quickstart_commands(README.read_text())
    assert any("venv" in c for c in commands) and any("pip install" in c for c in commands)
    assert not any("torch" in c for c in commands)  # a student does not need torch


def _repository_copy(dest):
    """The files of a fresh clone: tracked, plus untracked ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _student_env(home):
    """A student's shell: none of the project's .venv, no PYTHONPATH, no grading variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER", "NBGRADER", "BNGRADE", "CONDA"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)) and ".venv" not in p)
    env["HOME"] = str(home)
    cache = Path(os.environ.get("HOME", "/root")) / ".cache" / "pip"
    if cache.is_dir():  # the wheels make venv fetched: a second download of the same pins is not needed
        env["PIP_CACHE_DIR"] = str(cache)
    return env


def _outputs_by_test(nb):
    out = {}
    for cell in nb["cells"]:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in TESTS:
            text = []
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream":
                    text.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
                elif o.get("output_type") == "error":
                    text.append(f"{o.get('ename')}: {o.get('evalue')}")
                elif "data" in o:
                    value = o["data"].get("text/plain", "")
                    text.append("".join(value) if isinstance(value, list) else value)
            out[gid] = "\n".join(text)
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    base = tmp_path_factory.mktemp("student")
    clone = _repository_copy(base / "bnkit")
    home = base / "home"
    home.mkdir()
    env = _student_env(home)
    log = []
    for command in quickstart_commands((clone / "assignments" / "README.md").read_text()):
        proc = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True)
        log.append(f"$ {command}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        assert proc.returncode == 0, "\n".join(log)
    venv_bin = next(p.parent for p in clone.glob("*/bin/jupyter") if p.parent.parent.name != ".venv")

    # the instructor's side: the released notebook, made with the project's own nbgrader
    d = course.copy_course(base / "course")
    rc, gen_log = course.nbgrader(d, "generate_assignment", ASSIGNMENT, "--force", quiet=True)
    assert rc == 0, gen_log
    bug = next(v for v in catalogue.VARIANTS if v.name == "eps_outside_sqrt")
    work = base / "work"
    work.mkdir()
    results = {}
    for name, text in (("solution", course.submission(d, ASSIGNMENT)), ("bug", course.submission(d, ASSIGNMENT, bug))):
        path = work / f"{name}.ipynb"
        path.write_text(text)
        # Run All as Jupyter does it; a failing test cell must not stop the others
        proc = subprocess.run([str(venv_bin / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
                               "--allow-errors", "--ExecutePreprocessor.timeout=600", "--output",
                               f"{name}.out.ipynb", str(path)], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[name] = _outputs_by_test(json.loads((work / f"{name}.out.ipynb").read_text()))
    no_torch = subprocess.run([str(venv_bin / "python"), "-c", "import torch"], env=env, capture_output=True)
    release = (d / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text()
    return {"results": results, "venv_bin": venv_bin, "torch_rc": no_torch.returncode, "release": release}


def test_the_released_notebook_links_the_quickstart(student):
    assert "README.md#student-quick-start" in student["release"]


def test_quickstart_venv_has_no_torch(student):
    assert student["torch_rc"] != 0  # the visible tests answered without it


def test_visible_tests_pass_for_the_solution(student):
    outputs = student["results"]["solution"]
    assert set(outputs) == set(TESTS)
    for gid, text in outputs.items():
        assert re.search(r"^PASS\b", text, re.M), (gid, text)
        assert not re.search(r"^FAIL\b", text, re.M), (gid, text)
        assert "Traceback" not in text and "Error:" not in text, (gid, text)


def test_visible_tests_fail_for_the_bug_on_the_right_cell(student):
    outputs = student["results"]["bug"]
    assert re.search(r"^FAIL\b", outputs["test_train_output"], re.M), outputs["test_train_output"]
    for gid in ("test_running_stats", "test_eval"):  # eps outside the sqrt changes only the training output
        assert re.search(r"^PASS\b", outputs[gid], re.M) and not re.search(r"^FAIL\b", outputs[gid], re.M), \
            (gid, outputs[gid])


def test_only_the_visible_cases_run_at_home(student):
    """The source has one visible and three hidden train_output cases: at home, one line."""
    for outputs in student["results"].values():
        assert len(re.findall(r"^(PASS|FAIL)\b", outputs["test_train_output"], re.M)) == 1, outputs
