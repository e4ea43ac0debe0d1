"""A thin helper around nbgrader for the bnkit course; it hides nothing.

Every step is an ordinary nbgrader command, printed before it runs, executed
in a course directory (this one by default). Subcommands:

    python assignments/course.py demo [--dest DIR]
        the whole cycle on sample submissions in a scratch copy of the course:
        generate -> place submissions -> autograde -> feedback -> export CSV,
        then the grade table
    python assignments/course.py samples ASSIGNMENT [--dest DIR]
        write the catalogue's sample submissions into DIR/submitted/
    python assignments/course.py autograde ASSIGNMENT [--dir DIR]
        nbgrader autograde with a progress line per student
    python assignments/course.py table ASSIGNMENT [--dir DIR]
        the grade table from gradebook.db
    python assignments/course.py reports ASSIGNMENT [--dir DIR]
        the integrity reports with something to look at (reports/ASSIGNMENT/)

Sample submissions come from `catalogue.py`: the source solution with a
documented change (a bug, an equivalent rewrite, a cheat or damage).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import catalogue  # noqa: E402
from bngrade import COURSE_CONFIG, sandbox_files, submission_file  # noqa: E402
from bngrade.autograde import gradebook_scores as scores, table  # noqa: E402,F401 (one grade table)

ASSIGNMENTS = ["bn_forward", "bn_backward_graph", "bn_backward_fast", "bn_spatial_layernorm"]
MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n", re.M)


def _env():
    """nbgrader needs its companions (alembic, jupyter) on PATH: use this Python's."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("NBGRADER_EXECUTION", None)
    return env


def nbgrader(course, *args, progress=False, quiet=False):
    """Run `nbgrader ARGS` in `course`; return (returncode, log text).

    With progress=True, print one line per student as nbgrader reaches it.
    """
    cmd = [sys.executable, "-m", "nbgrader", *args]
    if not quiet:
        print("$ nbgrader " + " ".join(args), flush=True)
    proc = subprocess.Popen(cmd, cwd=course, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, seen, t0 = [], 0, time.time()
    total = len(list((Path(course) / "submitted").glob(f"*/{args[1]}"))) if len(args) > 1 else 0
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"Sanitizing .*/submitted/([^/]+)/", line)
        if progress and m:
            seen += 1
            print(f"  [{seen}/{total}] {m.group(1)}  ({time.time() - t0:.0f} s)", flush=True)
    proc.wait()
    return proc.returncode, "".join(lines)


def copy_course(dest):
    """A scratch copy of the course: config, sources, catalogue (no generated files)."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in COURSE_CONFIG:  # the .json is the guard: without the sandbox, autograde refuses
        shutil.copy(HERE / name, dest)
    shutil.copytree(HERE / "source", dest / "source")
    return dest


def _cells_by_id(nb):
    return {c["metadata"].get("nbgrader", {}).get("grade_id"): c for c in nb["cells"]}


def _source(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def submission(course, assignment, variant=None):
    """A student's notebook (JSON text): the released notebook filled with the
    source solutions (markers removed), then changed as `variant` says.

    variant None: the source solution; "blank": the released notebook untouched.
    """
    course = Path(course)
    release = json.loads((course / "release" / assignment / f"{assignment}.ipynb").read_text())
    if variant == "blank":
        return json.dumps(release, indent=1)
    source = _cells_by_id(json.loads((course / "source" / assignment / f"{assignment}.ipynb").read_text()))
    cells = _cells_by_id(release)
    for gid, cell in cells.items():
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("solution") and cell["cell_type"] == "code":
            cell["source"] = MARKERS.sub("", _source(source[gid]))
        elif meta.get("solution"):  # written answers
            cell["source"] = _source(source[gid])
    filled = {gid: _source(cell) for gid, cell in cells.items()}  # before the variant's changes
    if variant is not None:
        for gid, edits in variant.edits.items():
            text = _source(cells[gid])
            for old, new in edits:
                if old not in text:
                    raise ValueError(f"catalogue {variant.name}: {old!r} not found in cell {gid}")
                text = text.replace(old, new)
            cells[gid]["source"] = text
        for gid, text in variant.cells.items():
            cells[gid]["source"] = text.strip("\n") + "\n"
        if getattr(variant, "append", ""):  # a cell the student added at the end, after the tests
            release["cells"].append({"cell_type": "code", "execution_count": None, "id": "added-by-student",
                                     "metadata": {}, "outputs": [], "source": variant.append})
        if variant.mutation:
            return mutate(release, variant.mutation, filled)
    return json.dumps(release, indent=1)


def mutate(nb, mutation, filled=None):
    """Damage or tamper with a notebook as a student might; return JSON text.

    `filled`: {grade id: source} of the notebook before the variant's edits
    (for the duplicate_* mutations: a copy-pasted cell, edited in one copy).
    """
    kind, _, gid = mutation.partition(":")
    cells = nb["cells"]
    index = {c["metadata"].get("nbgrader", {}).get("grade_id"): i for i, c in enumerate(cells)}
    if kind == "edit":  # the test cell's code replaced
        cells[index[gid]]["source"] = "pass  # no tests here\n"
    elif kind == "delete":
        del cells[index[gid]]
    elif kind == "retype":  # deleted, then a look-alike typed in a new cell
        i = index[gid]
        cells[i] = {"cell_type": "code", "execution_count": None, "id": "retyped", "metadata": {},
                    "outputs": [], "source": "print('all tests passed')  # " + gid + "\n"}
    elif kind == "retype_answer":  # the answer cell deleted, its text retyped in a new plain cell in its place
        i = index[gid]
        cells[i] = {"cell_type": cells[i]["cell_type"], "id": "retyped-answer", "metadata": {},
                    "source": "My answer, typed again: " + _source(cells[i])}
        if cells[i]["cell_type"] == "code":
            cells[i].update(outputs=[], execution_count=None)
    elif kind == "retype_at_end":  # the answer cell deleted, the same code typed again in a new cell at the end
        cell = cells.pop(index[gid])
        cells.append({"cell_type": "code", "execution_count": None, "id": "retyped-at-end", "metadata": {},
                      "outputs": [], "source": _source(cell)})
    elif kind == "strip_metadata":
        for c in cells:
            c["metadata"].pop("nbgrader", None)
    elif kind in ("duplicate_edited_first", "duplicate_edited_last"):
        # the cell copy-pasted (Jupyter gives the copy a new cell id, the same nbgrader metadata);
        # the variant's edits stay in the first or in the last copy, the other copy is as before them
        i = index[gid]
        twin = json.loads(json.dumps(cells[i]))
        twin["id"] = f"{cells[i].get('id', gid)}-pasted"[:64]
        twin["source"] = (filled or {}).get(gid, _source(cells[i]))
        cells.insert(i if kind == "duplicate_edited_last" else i + 1, twin)
    elif kind == "invalid_json":
        return json.dumps(nb, indent=1)[:5000]
    elif kind == "alt_via_copy":  # the staged backward, renamed, called by the "closed form"
        staged = _source(cells[index["batchnorm_backward"]])
        copy = staged.replace("def batchnorm_backward(", "def _my_backward(")
        cells[index["batchnorm_backward_alt"]]["source"] = (
            copy + "\n\ndef batchnorm_backward_alt(dout, cache):\n    return _my_backward(dout, cache)\n")
    else:
        raise ValueError(f"unknown mutation {mutation!r}")
    return json.dumps(nb, indent=1)


def place(course, assignment, notebooks):
    """Write {student: notebook JSON text} into submitted/<student>/<assignment>/."""
    for student, text in notebooks.items():
        d = Path(course) / "submitted" / student / assignment
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{assignment}.ipynb").write_text(text)


def graded_course(base, assignment, picks=(), extra=None, copies=()):
    """The graded-course fixture of the parallel and scale tests: a course graded by plain serial nbgrader.

    base/serial gets `assignment` generated and these submissions: "solution" (the source solution),
    the catalogue variants named in `picks` (under their names) and `extra(course)`'s
    {student: notebook JSON}; each name in `copies` is a copy of base/serial made before it is graded
    (for the other paths to grade the same class). Returns (course, {student: notebook}, autograde log).
    """
    d = copy_course(Path(base) / "serial")
    rc, log = nbgrader(d, "generate_assignment", assignment, "--force", quiet=True)
    assert rc == 0, log
    by_name = {v.name: v for v in catalogue.VARIANTS}
    notebooks = {"solution": submission(d, assignment)}
    notebooks.update({name: submission(d, assignment, by_name[name]) for name in picks})
    notebooks.update(extra(d) if extra else {})
    place(d, assignment, notebooks)
    for name in copies:
        shutil.copytree(d, Path(base) / name, symlinks=True)
    _, log = nbgrader(d, "autograde", assignment, "--force", quiet=True)
    return d, notebooks, log


def controls(course, assignment):
    """The control students of a run (catalogue.CONTROLS): {student: notebook JSON text}."""
    bug = next(v for v in catalogue.VARIANTS if v.name == catalogue.CONTROL_BUG[assignment])
    made = {"solution": submission(course, assignment), "bug": submission(course, assignment, bug)}
    return {student: made[what] for student, what in catalogue.CONTROLS.items()}


def samples(course, assignment, variants=None, with_controls=False):
    """The source solution, the blank notebook and the catalogue's variants (and the control students)."""
    notebooks = {"solution": submission(course, assignment), "blank": submission(course, assignment, "blank")}
    for v in catalogue.VARIANTS if variants is None else variants:
        if v.assignment == assignment:
            notebooks[v.name] = submission(course, assignment, v)
    if with_controls:
        notebooks.update(controls(course, assignment))
    place(course, assignment, notebooks)
    return notebooks


def check_submissions(course, assignment):
    """Problems nbgrader would fail on, one clear line per student: [(student, problem)].

    nbgrader reports such notebooks with a bare traceback (JSONDecodeError,
    KeyError) and moves on to the next student; this says what is wrong.
    """
    course = Path(course)
    release = json.loads((course / "release" / assignment / f"{assignment}.ipynb").read_text())
    wanted = [c["metadata"]["nbgrader"]["grade_id"] for c in release["cells"]
              if c["metadata"].get("nbgrader", {}).get("solution") or c["metadata"].get("nbgrader", {}).get("grade")]
    problems = []
    for folder in sorted(course.glob(f"submitted/*/{assignment}")):
        if not (folder / f"{assignment}.ipynb").exists():
            renamed = submission_file.renamed_notebook(folder, [f"{assignment}.ipynb"])
            problems.append((folder.parts[-2], f"no {assignment}.ipynb: " + (
                f"its one notebook, {sandbox_files.shown(renamed[0])}, is graded as {assignment}.ipynb (a copy is "
                "placed beside it)" if renamed else "nothing to grade (no notebook, or several of other names)")))
    for path in sorted(course.glob(f"submitted/*/{assignment}/{assignment}.ipynb")):
        student = path.parts[-3]
        skip, refuse = submission_file.unsafe_entries(path.parent)
        if refuse:
            problems.append((student, f"the submission is not graded, nothing copied: {refuse}"))
            continue
        if skip:
            problems.append((student, "left out, not copied: " + sandbox_files.listing(skip, limit=len(skip))))
        refused = submission_file.check(path)
        if refused:  # what autograde's exporter would refuse, before reading it
            problems.append((student, f"the notebook is {refused}"))
            continue
        links = path.lstat().st_nlink
        if links > 1:  # graded for what it holds, but the same file as somewhere else: whose?
            problems.append((student, f"the notebook file has {links} names (a hard link): it is graded, "
                                      "but it is the very file of another name; look for the other"))
        try:
            nb = json.loads(path.read_text())
            all_ids = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb["cells"]]
            ids = set(all_ids)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            problems.append((student, f"the notebook is not valid notebook JSON ({e}); "
                                      "ask for a fresh copy of the released notebook with the answers pasted in"))
            continue
        twice = sorted({g for g in all_ids if g and all_ids.count(g) > 1})
        if twice:
            problems.append((student, "cells copy-pasted (the same grade id twice): " + ", ".join(twice) +
                                      "; the last copy of each is graded"))
        missing = [g for g in wanted if g not in ids]
        if len(missing) == len(wanted):
            problems.append((student, "every nbgrader cell lost its metadata (opened in another tool?); nbgrader "
                                      "cannot match the answers: ask for the answers in a fresh released notebook"))
        elif missing:
            problems.append((student, "cells missing or without nbgrader metadata: " + ", ".join(missing) +
                                      " (test cells are restored from the source; answers are lost)"))
    return problems


def reports(course, assignment):
    """{student: report text} of the integrity reports that have something to look at."""
    out = {}
    for path in sorted((Path(course) / "reports" / assignment).glob("*/*.txt")):
        text = path.read_text()
        if not text.rstrip().endswith("nothing to report"):
            out[path.parent.name] = out.get(path.parent.name, "") + text
    return out


def demo(dest):
    """The whole instructor cycle on a handful of sample submissions."""
    course = copy_course(dest)
    assignment = "bn_forward"
    picks = [v for v in catalogue.VARIANTS if v.name in
             ("eps_outside_sqrt", "biased_running_var", "eval_uses_batch_stats", "one_pass_variance",
              "cheat_import_bnkit", "invalid_json")]
    steps = [
        ("generate the student version (solutions and hidden tests removed)",
         ["generate_assignment", assignment, "--force"]),
    ]
    for what, args in steps:
        print(f"\n== {what}")
        rc, log = nbgrader(course, *args)
        if rc:
            print(log)
            raise SystemExit(rc)
    print("\n== release: hand out release/bn_forward/ (or `nbgrader release_assignment` with an exchange)")
    print("== collect: place submissions in submitted/<student>/bn_forward/ (or `nbgrader collect`)")
    samples(course, assignment, picks)
    for student in sorted(os.listdir(course / "submitted")):
        print("   ", student)
    print("\n== check the submissions before grading")
    for student, problem in check_submissions(course, assignment):
        print(f"   {student}: {problem}")
    print("\n== autograde (one kernel per student; a stuck cell times out, a broken notebook is reported)")
    rc, log = nbgrader(course, "autograde", assignment, "--force", progress=True)
    for line in log.splitlines():
        if "ERROR" in line and "There was an error processing" in line:
            print("   ", line.strip())
    print("\n== feedback (HTML per student, hidden tests removed)")
    nbgrader(course, "generate_feedback", assignment, "--force")
    print("\n== export grades as CSV")
    nbgrader(course, "export")
    print(f"\n{(course / 'grades.csv').read_text()}")
    print("== grade table (? = a written answer waiting for manual grading in formgrader; total = graded so far)\n")
    print(table(course, assignment))
    print(f"\nEverything is in {course}: release/, submitted/, autograded/, feedback/, gradebook.db, grades.csv")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--dest", default="/tmp/bnkit-grade-demo")
    s = sub.add_parser("samples")
    s.add_argument("assignment", choices=ASSIGNMENTS)
    s.add_argument("--dest", default=str(HERE))
    for name in ("autograde", "table", "reports"):
        a = sub.add_parser(name)
        a.add_argument("assignment", choices=ASSIGNMENTS)
        a.add_argument("--dir", default=str(HERE))
    args = p.parse_args(argv)
    if args.cmd == "demo":
        demo(args.dest)
    elif args.cmd == "samples":
        samples(args.dest, args.assignment)
    elif args.cmd == "autograde":
        for student, problem in check_submissions(args.dir, args.assignment):
            print(f"warning: {student}: {problem}")
        rc, _ = nbgrader(args.dir, "autograde", args.assignment, "--force", progress=True)
        print(table(args.dir, args.assignment))
        return rc
    elif args.cmd == "table":
        print(table(args.dir, args.assignment))
    elif args.cmd == "reports":
        found = reports(args.dir, args.assignment)
        print("".join(found.values()) if found else f"no report for {args.assignment} has anything to look at")
    return 0


if __name__ == "__main__":
    sys.exit(main())
