"""A student's set-up, two ways, each followed to the letter.

1. The book's (the "Do the assignments" page): one `pip install` of the
   project's wheel that the built site offers, with its student extra, in a
   fresh venv, from the built site's files only; then every downloaded
   student notebook, untouched, must Run All to the end (demo cells say what
   is missing; test cells say FAIL ... NotImplementedError), and bn_forward,
   filled with the solution and with a bug, must PASS and FAIL.
2. The repository's student quick-start (assignments/README.md), described
   below.

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


def test_the_released_notebook_links_the_book_set_up_page(student):
    """By an absolute address: a downloaded notebook has no repository around it."""
    assert "book/assignments.html" in student["release"] and "README.md" not in student["release"]


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


# ---- The book's path: the "Do the assignments" page, from the built site's files only.

BOOK_ASSIGNMENTS = ("bn_forward", "bn_backward_graph", "bn_backward_fast", "bn_spatial_layernorm")


def _book_install_command(html):
    """The `pip install ...` line the built "Do the assignments" page shows."""
    import html as html_lib

    page = html_lib.unescape(re.sub(r"<[^>]+>", "", (html / "book" / "assignments.html").read_text()))
    commands = re.findall(r'^pip install "bnkit\[student\] @ (\S+)"$', page, re.M)
    assert len(commands) == 1, "the Do the assignments page shows no (or several) install commands"
    return commands[0]


@pytest.fixture(scope="module")
def from_the_book(tmp_path_factory):
    import yaml

    sys.path.insert(0, str(Path(__file__).parent))
    import _book

    build = _book.build_book()
    assert build.returncode == 0, build.log[-3000:]
    html = build.html
    url = _book_install_command(html)
    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner, name = repo.rstrip("/").split("/")[-2:]
    site = f"https://{owner}.github.io/{name}/"
    assert url.startswith(site), (url, site)  # the published book, derived from repository.url
    wheel = html / url[len(site):]
    assert wheel.is_file(), f"the page installs {url}, which the built site does not hold"

    base = tmp_path_factory.mktemp("from-the-book")
    home = base / "home"
    home.mkdir()
    env = _student_env(home)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    # the page's command, with the published address replaced by the built file (no network to the site here)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"bnkit[student] @ {wheel.as_uri()}"],
                          cwd=base, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], env=env, capture_output=True)

    work = base / "work"
    work.mkdir()

    def run_all(name, text, allow_errors):
        path = work / f"{name}.ipynb"
        path.write_text(text)
        args = [str(venv / "bin" / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
                "--ExecutePreprocessor.timeout=600", "--output", f"{name}.out.ipynb", str(path)]
        proc = subprocess.run(args + (["--allow-errors"] if allow_errors else []), cwd=work, env=env,
                              capture_output=True, text=True)
        return proc, (json.loads((work / f"{name}.out.ipynb").read_text()) if proc.returncode == 0 else None)

    # Run All on each downloaded notebook as released: every cell must run (no --allow-errors)
    blank = {}
    for a in BOOK_ASSIGNMENTS:
        downloaded = html / "downloads" / "assignments" / a / f"{a}.ipynb"
        assert downloaded.is_file(), downloaded
        blank[a] = run_all(f"{a}.blank", downloaded.read_text(), allow_errors=False)

    # bn_forward with the solution and with a bug filled into the downloaded notebook
    course_copy = course.copy_course(base / "course")
    release = course_copy / "release" / ASSIGNMENT
    release.mkdir(parents=True, exist_ok=True)
    shutil.copy2(html / "downloads" / "assignments" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", release)
    bug = next(v for v in catalogue.VARIANTS if v.name == "eps_outside_sqrt")
    results = {}
    for name, text in (("solution", course.submission(course_copy, ASSIGNMENT)),
                       ("bug", course.submission(course_copy, ASSIGNMENT, bug))):
        proc, nb = run_all(name, text, allow_errors=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[name] = _outputs_by_test(nb)
    return {"blank": blank, "results": results, "torch_rc": no_torch.returncode, "html": html}


def test_book_install_needs_no_torch(from_the_book):
    assert from_the_book["torch_rc"] != 0


@pytest.mark.parametrize("assignment", BOOK_ASSIGNMENTS)
def test_run_all_reaches_every_test_cell_of_the_released_notebook(from_the_book, assignment):
    """Nothing written yet: every cell runs to the end; the demo cells say what
    is missing, and every Test cell says FAIL ... NotImplementedError."""
    proc, nb = from_the_book["blank"][assignment]
    assert proc.returncode == 0, f"Run All stopped in {assignment}:\n{proc.stderr[-4000:]}"
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, (assignment, cell["source"][:200], errors)
        meta = cell["metadata"].get("nbgrader", {})
        text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
        if meta.get("grade"):
            assert re.search(r"^FAIL\b", text, re.M) and "NotImplementedError" in text, (meta["grade_id"], text)
        elif meta.get("grade_id") in ("try_it", "gradcheck", "speed"):
            assert "not written yet" in text.lower(), (meta["grade_id"], text)


def test_book_visible_tests_pass_for_the_solution_and_fail_for_the_bug(from_the_book):
    solution, bug = from_the_book["results"]["solution"], from_the_book["results"]["bug"]
    assert set(solution) == set(TESTS)
    for gid, text in solution.items():
        assert re.search(r"^PASS\b", text, re.M) and not re.search(r"^FAIL\b", text, re.M), (gid, text)
    assert re.search(r"^FAIL\b", bug["test_train_output"], re.M), bug["test_train_output"]
    for gid in ("test_running_stats", "test_eval"):
        assert re.search(r"^PASS\b", bug[gid], re.M) and not re.search(r"^FAIL\b", bug[gid], re.M), (gid, bug[gid])


def test_the_downloaded_notebooks_link_the_published_book_by_its_real_titles(from_the_book):
    """Absolute links (a downloaded notebook has no repository around it), to
    pages the built book has, named by the titles those pages carry."""
    import html as html_lib

    import yaml

    repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner, name = repo.rstrip("/").split("/")[-2:]
    site = f"https://{owner}.github.io/{name}/"
    html = from_the_book["html"]
    for a in BOOK_ASSIGNMENTS:
        intro = "".join(json.loads((html / "downloads" / "assignments" / a / f"{a}.ipynb").read_text())
                        ["cells"][0]["source"])
        assert "README.md" not in intro and "](../" not in intro, intro
        links = re.findall(r"\[\*([^*\]]+)\*\]\((\S+?)\)", intro)
        assert any(u.endswith("book/assignments.html") for _, u in links), (a, links)
        for title, url in links:
            assert url.startswith(site), (a, url)
            page = html / url[len(site):]
            assert page.is_file(), (a, url)
            headings = {html_lib.unescape(re.sub(r"<a class=\"headerlink\".*?</a>|<[^>]+>", "", h)).strip()
                        for h in re.findall(r"<h1>(.*?)</h1>", page.read_text(), re.S)}
            assert title in headings, (a, title, url, headings)
