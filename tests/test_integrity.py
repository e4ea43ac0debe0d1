"""bngrade.integrity without nbgrader: the suspicious-code report, the
closed-form call graph (cheats and honest variants), duplicated grade ids."""
import json
import textwrap
from pathlib import Path

import pytest

from bngrade.integrity import closed_form_problem, keep_last_copies, suspicious_code, suspicious_notebook

ROOT = Path(__file__).resolve().parents[1]

STAGED = '''
def batchnorm_backward(dout, cache):
    """Gate by gate."""
    xc, std, inv_std, xhat, gamma, N = (cache[k] for k in ("xc", "std", "inv_std", "xhat", "gamma", "N"))
    dbeta = dout.sum(axis=0)
    dgamma = (xhat * dout).sum(axis=0)
    dxhat = gamma * dout
    dinv_std = (xc * dxhat).sum(axis=0)
    dxc = inv_std * dxhat
    dstd = -dinv_std / std ** 2
    dvar = 0.5 * dstd / std
    dsq = np.ones_like(xc) * dvar / N
    dxc = dxc + 2 * xc * dsq
    dmu = -dxc.sum(axis=0)
    dx = dxc + np.ones_like(xc) * dmu / N
    return dx, dgamma, dbeta
'''

ALT = '''
def batchnorm_backward_alt(dout, cache):
    """Closed form; unlike batchnorm_backward it has no intermediates."""
    # batchnorm_backward(dout, cache) would be the slow way
    xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dx = (gamma * inv_std / N) * (N * dout - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta
'''


def cells(*parts):
    return [textwrap.dedent(p) for p in parts]


# ---- the closed form: cheats, each must be caught --------------------------------------------------

CHEATS = {
    "direct call": [STAGED, "def batchnorm_backward_alt(dout, cache):\n    return batchnorm_backward(dout, cache)\n"],
    "alias": [STAGED, "batchnorm_backward_alt = batchnorm_backward\n"],
    "alias through a chain": [STAGED, "f = batchnorm_backward\ng = f\nbatchnorm_backward_alt = g\n"],
    "local alias": [STAGED, "def batchnorm_backward_alt(dout, cache):\n    f = batchnorm_backward\n"
                            "    return f(dout, cache)\n"],
    "default argument": [STAGED, "def batchnorm_backward_alt(dout, cache, _impl=batchnorm_backward):\n"
                                 "    return _impl(dout, cache)\n"],
    "lambda": [STAGED, "batchnorm_backward_alt = lambda dout, cache: batchnorm_backward(dout, cache)\n"],
    "lambda default": [STAGED, "batchnorm_backward_alt = lambda d, c, f=batchnorm_backward: f(d, c)\n"],
    "partial": [STAGED, "import functools\nbatchnorm_backward_alt = functools.partial(batchnorm_backward)\n"],
    "decorator": [STAGED, "@lambda f: batchnorm_backward\ndef batchnorm_backward_alt(dout, cache):\n    pass\n"],
    "callable class": [STAGED, "class Alt:\n    def __call__(self, d, c):\n        return batchnorm_backward(d, c)\n\n"
                               "batchnorm_backward_alt = Alt()\n"],
    "through a helper": [STAGED, "def _h(d, c):\n    return batchnorm_backward(d, c)\n\n"
                                 "def batchnorm_backward_alt(dout, cache):\n    return _h(dout, cache)\n"],
    "renamed copy": [STAGED, STAGED.replace("def batchnorm_backward(", "def _my_backward(") +
                     "\n\ndef batchnorm_backward_alt(dout, cache):\n    return _my_backward(dout, cache)\n"],
    "renamed copy with renamed locals": [
        STAGED, STAGED.replace("def batchnorm_backward(", "def other(").replace("dxc", "g_centred")
        .replace("dout", "upstream").replace('"""Gate by gate."""', '"""Different words."""') +
        "\nbatchnorm_backward_alt = lambda d, c: other(d, c)\n"],
    "the same code as its own": [STAGED, STAGED.replace("def batchnorm_backward(", "def batchnorm_backward_alt(")],
    "getattr with a literal name": [STAGED, "import __main__\ndef batchnorm_backward_alt(dout, cache):\n"
                                            "    return getattr(__main__, 'batchnorm_backward')(dout, cache)\n"],
    "globals with a literal name": [STAGED, "def batchnorm_backward_alt(dout, cache):\n"
                                            "    return globals()['batchnorm_backward'](dout, cache)\n"],
    "__main__ attribute": [STAGED, "import __main__\ndef batchnorm_backward_alt(dout, cache):\n"
                                   "    return __main__.batchnorm_backward(dout, cache)\n"],
    "assigned through globals()": [STAGED, "globals()['batchnorm_backward_alt'] = batchnorm_backward\n"],
    "tuple assignment": [STAGED, "batchnorm_backward_alt, unused = batchnorm_backward, None\n"],
    "defined in an if": [STAGED, "if True:\n    def batchnorm_backward_alt(dout, cache):\n"
                                 "        return batchnorm_backward(dout, cache)\n"],
    "shared helper doing the work": [
        STAGED.replace("def batchnorm_backward(", "def _work("),
        "def batchnorm_backward(dout, cache):\n    return _work(dout, cache)\n",
        "def batchnorm_backward_alt(dout, cache):\n    return _work(dout, cache)\n"],
    "redefined later to cheat": [STAGED, ALT, "def batchnorm_backward_alt(dout, cache):\n"
                                              "    return batchnorm_backward(dout, cache)\n"],
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_closed_form_cheats_are_caught(name):
    problem = closed_form_problem(cells(*CHEATS[name]))
    assert problem is not None, name
    assert "batchnorm_backward_alt" in problem


def test_the_message_names_the_route():
    assert "calls batchnorm_backward" in closed_form_problem(cells(*CHEATS["direct call"]))
    assert "under another name" in closed_form_problem(cells(*CHEATS["alias"]))
    assert "_h -> batchnorm_backward" in closed_form_problem(cells(*CHEATS["through a helper"]))
    assert "renamed copy" in closed_form_problem(cells(*CHEATS["renamed copy"]))
    assert "share _work" in closed_form_problem(cells(*CHEATS["shared helper doing the work"]))


# ---- honest closed forms: never a problem -------------------------------------------------------

UNPACK = '''
def _unpack(cache):
    return cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
'''

HONEST = {
    "the solution": [STAGED, ALT],
    "words in docstrings, comments and strings": [STAGED, ALT + "\nprint('batchnorm_backward is slower')\n"],
    "a shared helper that unpacks the cache": [
        UNPACK, STAGED,
        "def batchnorm_backward_alt(dout, cache):\n    xhat, gamma, inv_std, N = _unpack(cache)\n"
        "    dbeta = dout.sum(axis=0)\n    dgamma = (dout * xhat).sum(axis=0)\n"
        "    return gamma * inv_std * (dout - (dbeta + xhat * dgamma) / N), dgamma, dbeta\n"],
    "a shared helper for dgamma and dbeta": [
        "def param_grads(dout, xhat):\n    return (dout * xhat).sum(axis=0), dout.sum(axis=0)\n", STAGED,
        "def batchnorm_backward_alt(dout, cache):\n    xhat, gamma, inv_std, N = (cache[k] for k in "
        "('xhat', 'gamma', 'inv_std', 'N'))\n    dgamma, dbeta = param_grads(dout, xhat)\n"
        "    return gamma * inv_std / N * (N * dout - dbeta - xhat * dgamma), dgamma, dbeta\n"],
    "the staged backward calls the closed form": [
        ALT, "def batchnorm_backward(dout, cache):\n    return batchnorm_backward_alt(dout, cache)\n"],
    "a local variable named like the staged backward": [
        STAGED, "def batchnorm_backward_alt(dout, cache):\n    batchnorm_backward = cache['xhat']\n"
                "    return batchnorm_backward * dout, dout.sum(0), dout.sum(0)\n"],
    "a cheat overwritten by an honest version": [STAGED, CHEATS["direct call"][1], ALT],
    "calls the forward": [STAGED, "def batchnorm_forward(x):\n    return x\n",
                          ALT.replace("    return dx,", "    batchnorm_forward(dx)\n    return dx,")],
    "x.mean is not a top-level mean": [
        "def mean(a):\n    return a.sum(0) / len(a) * 1.0 - 0 + 0\n", STAGED.replace("dout.sum(axis=0)", "mean(dout)"),
        ALT.replace("dout.sum(axis=0)", "dout.mean(axis=0) * N")],
    "no closed form yet": [STAGED],
    "a cell that does not parse": [STAGED, "def broken(:\n", ALT],
    "IPython magics and shell lines": [STAGED, "%timeit 1 + 1\n!echo hi\n" + ALT],
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_closed_forms_pass(name):
    assert closed_form_problem(cells(*HONEST[name])) is None


def test_dynamic_tricks_are_reported_not_judged():
    built = [STAGED, "def batchnorm_backward_alt(dout, cache):\n"
                     "    return eval('batchnorm' + '_backward')(dout, cache)\n"]
    assert closed_form_problem(built) is None  # beyond static analysis...
    found = " ".join(what for _, what in suspicious_code(built[1]))
    assert "eval" in found  # ...so the instructor is told


# ---- the suspicious-code report --------------------------------------------------------------------

def _whats(source):
    return [what for _, what in suspicious_code(textwrap.dedent(source))]


def test_words_never_count():
    source = '''
    def batchnorm_forward(x, gamma, beta, bn_param):
        """Unlike inspect.getsource or subprocess.run, this uses numpy. sys.modules, ctypes, eval."""
        # importlib, gc.get_objects(), __globals__, os.system("rm"), open("/etc/passwd", "w")
        print("inspect", "subprocess", "sys.modules", "torch", "bnkit.fast")
        import logging, sys
        logging.warning("a warning is fine")
        print("to stderr", file=sys.stderr)
        msg = "__import__('os').system('x')"
        return x, msg
    '''
    assert _whats(source) == []


@pytest.mark.parametrize("source, expected", [
    ("import torch", "imports torch"),
    ("from bnkit.fast import batchnorm_forward", "bnkit's reference"),
    ("from bnkit import fast", "bnkit's reference"),
    ("import bnkit.norms", "bnkit's reference"),
    ("import bngrade.harness\nbngrade.harness.run_cases = print", "imports bngrade.harness"),
    ("import bngrade.harness\nbngrade.harness.run_cases = print", "assigns to bngrade.harness.run_cases"),
    ("import json\njson.dumps = lambda *a, **k: '{}'", "assigns to json.dumps"),
    ("np.allclose = lambda *a, **k: True", "assigns to np.allclose"),
    ("get_ipython().input_transformers_post.append(lambda lines: lines)", "input_transformers_post"),
    ("ip = get_ipython()", "get_ipython()"),
    ("get_ipython().set_custom_exc((Exception,), print)", "set_custom_exc"),
    ("!pip install torch", "shell command"),
    ("%run other.py", "magic %run"),
    ("%%writefile bngrade/harness.py\nprint('forged')", "magic %writefile"),
    ("import threading", "threads"),
    ("import ctypes", "ctypes"),
    ("import importlib.util", "importlib"),
    ("import subprocess", "subprocess"),
    ("import os\nos.system('ls')", "os.system"),
    ("import os\nos.popen('ls')", "os.popen"),
    ("import os\nos.execv('/bin/sh', [])", "os.execv"),
    ("import os\nx = os.environ['BNGRADE_RESULTS']", "os.environ"),
    ("import sys\nsys.modules['numpy']", "sys.modules"),
    ("import sys\nsys.meta_path.pop(0)", "sys.meta_path"),
    ("import sys\nsys.path.insert(0, '.')", "sys.path"),
    ("import sys\nf = sys._getframe(1)", "sys._getframe"),
    ("def f():\n    return f.__globals__", "__globals__"),
    ("def f(g):\n    return g.__code__", "__code__"),
    ("().__class__.__bases__[0].__subclasses__()", "__subclasses__"),
    ("import gc", "garbage collector"),
    ("import inspect", "inspect"),
    ("def f(frame):\n    return frame.f_back", "stack frames"),
    ("eval('1 + 1')", "calls eval"),
    ("exec('x = 1')", "calls exec"),
    ("globals()['grade'] = print", "globals()"),
    ("__import__('os')", "__import__"),
    ("getattr(np, 'al' + 'lclose')", "computed name"),
    ("open('results.json', 'w').write('{}')", "for writing"),
    ("open('/work/bnkit/fast.py').read()", "outside the working directory"),
    ("open('../gradebook.db', 'rb')", "outside the working directory"),
    ("from pathlib import Path\nPath('bngrade/__init__.py').write_text('')", "changes files"),
    ("import shutil", "shutil"),
    ("from . import x", "relative import"),
    ("import socket", "sockets"),
])
def test_suspicious_constructs_are_reported(source, expected):
    found = _whats(source)
    assert any(expected in what for what in found), (source, found)


def test_quiet_magics_and_plain_numpy_are_not_reported():
    assert _whats("%timeit np.ones(3).sum()\nx = np.ones(3)\nx[0] = 2\nx.flags.writeable = False\n") == []


def test_findings_carry_cell_and_line():
    nb = {"cells": [
        {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "setup", "locked": True}},
         "source": "import numpy as np\nimport sys\n"},
        {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "batchnorm_forward", "solution": True}},
         "source": "x = 1\nnp.mean = len\n"},
        {"cell_type": "code", "metadata": {}, "source": ["y = 2\n", "import ctypes\n"]},
        {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "test_x", "grade": True, "locked": True}},
         "source": "import ctypes\n"},
    ]}
    lines = suspicious_notebook(nb)
    assert lines == ["batchnorm_forward, line 2: assigns to np.mean (changes a module others use)",
                     "cell 3, line 2: imports ctypes: raw memory and C calls (ctypes)"]


def test_the_course_notebooks_report_nothing():
    """The source solutions are honest: a report on them would be noise (and a false alarm)."""
    for path in sorted((ROOT / "assignments" / "source").glob("*/*.ipynb")):
        nb = json.loads(path.read_text())
        assert suspicious_notebook(nb) == [], path
        assert closed_form_problem(nb) is None, path


# ---- duplicated grade ids ---------------------------------------------------------------------------

def test_keep_last_copies_grades_the_last_and_says_so():
    def cell(gid, source):
        return {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": gid, "solution": True, "grade": False,
                                                                "locked": False, "schema_version": 3}},
                "source": source}
    nb = {"cells": [cell("f", "v1"), {"cell_type": "markdown", "metadata": {}, "source": "x"}, cell("g", "g"),
                    cell("f", "v2"), cell("f", "v3")]}
    notes = keep_last_copies(nb)
    assert [("nbgrader" in c["metadata"]) for c in nb["cells"]] == [False, False, True, False, True]
    assert nb["cells"][4]["source"] == "v3"
    assert notes == ["grade id 'f' appears in 3 cells (cells 1, 4, 5): graded the last copy (cell 5); "
                     "the others ran as ordinary cells"]
    assert keep_last_copies(nb) == []


# ---- issue 14: the code review (evidence, ranked; never a score) ------------------------------------

from bngrade.integrity import (CallGraph, analyse, analyse_within_budget,  # noqa: E402
                               closed_form_evidence, evidence_lines)

ROUTES = {  # route: (cells, a text the evidence must contain, its rank word)
    "the forward's cache": ([STAGED, "def batchnorm_forward(x, g, b, p):\n    return x, {'impl': batchnorm_backward}\n",
                             "def batchnorm_backward_alt(dout, cache):\n    return cache['impl'](dout, cache)\n"],
                            "reads from a container", "worth a look"),
    "a function attribute": ([STAGED, "batchnorm_forward.impl = batchnorm_backward\n"
                              "def batchnorm_backward_alt(d, c):\n    return batchnorm_forward.impl(d, c)\n"],
                             "calls an attribute of a function", "worth a look"),
    "a list filled by append": ([STAGED, "fs = []\nfs.append(batchnorm_backward)\n"
                                 "def batchnorm_backward_alt(d, c):\n    return fs[0](d, c)\n"],
                                "passed as a value to fs.append", "worth a look"),
    "a registering decorator": (["R = {}\ndef reg(f):\n    R[f.__name__] = f\n    return f\n\n@reg\n" + STAGED.strip(),
                                 "def batchnorm_backward_alt(d, c):\n    return R['batchnorm_backward'](d, c)\n"],
                                "batchnorm_backward is decorated", "worth a look"),
    "a for loop": ([STAGED, "for batchnorm_backward_alt in [batchnorm_backward]:\n    pass\n"],
                   "for loop's target", "strong"),
    "a walrus": ([STAGED, "print((batchnorm_backward_alt := batchnorm_backward))\n"], "walrus", "strong"),
    "an except clause": ([STAGED, "try:\n    raise ValueError\nexcept ValueError as batchnorm_backward_alt:\n"
                          "    pass\n"], "except clause", "strong"),
    "a global in a function": ([STAGED, ALT, "def _later():\n    global batchnorm_backward_alt\n"
                                "    batchnorm_backward_alt = batchnorm_backward\n_later()\n"],
                               "`global` declaration", "strong"),
    "a pre_run_cell hook": ([STAGED, ALT, "def _swap(*a):\n"
                             "    globals()['batchnorm_backward_alt'] = batchnorm_backward\n"
                             "get_ipython().events.register('pre_run_cell', _swap)\n"], "pre_run_cell hook", "strong"),
    "a direct call (the call graph)": ([STAGED, "def batchnorm_backward_alt(d, c):\n"
                                                "    return batchnorm_backward(d, c)\n"],
                                       "call graph: batchnorm_backward_alt calls batchnorm_backward", "strong"),
    "a complex-step backward": (["def batchnorm_forward(x, g, b, p):\n    return x * g + b, (x, g, b)\n",
                                 "def batchnorm_backward(dout, cache):\n    x, g, b = cache\n"
                                 "    return batchnorm_forward(x + 1e-30j * dout, g, b, {})[0].imag / 1e-30, 0, 0\n"],
                                "reaches the forward batchnorm_forward", "worth a look"),
}


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_route_is_in_the_ranked_evidence_with_its_line(name):
    source, text, rank = ROUTES[name]
    lines = evidence_lines(closed_form_evidence(cells(*source)))
    hits = [line for line in lines if text in line]
    assert hits, (name, lines)
    assert hits[0].startswith(f"[{rank}]") and ", line " in hits[0], hits[0]
    ranks = [line.split("]")[0] for line in lines]
    assert ranks == sorted(ranks, key=["[strong", "[worth a look", "[note"].index)  # strongest first


def test_the_course_solutions_give_no_evidence():
    for path in sorted((ROOT / "assignments" / "source").glob("*/*.ipynb")):
        assert closed_form_evidence(json.loads(path.read_text())) == [], path


def test_the_evidence_quotes_the_line_and_names_the_cell():
    nb = {"cells": [{"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "batchnorm_backward_alt",
                                                                    "solution": True}},
                     "source": STAGED + "\nfor batchnorm_backward_alt in [batchnorm_backward]:\n    pass\n"}]}
    line = next(x for x in evidence_lines(closed_form_evidence(nb)) if "for loop" in x)
    assert "batchnorm_backward_alt, line " in line and "`for batchnorm_backward_alt in [batchnorm_backward]:`" in line


def test_reachability_is_linear_and_iterative():
    """A 12,000-function chain: the path is rebuilt from parent pointers (the old copied paths were quadratic)."""
    chain = "def f0(d, c):\n    return batchnorm_backward(d, c)\n" + "".join(
        f"def f{i}(d, c):\n    return f{i - 1}(d, c)\n" for i in range(1, 12000))
    graph = CallGraph([STAGED, chain])
    seen, paths = graph.reach(graph.final["f11999"])
    path = paths[id(graph.final["batchnorm_backward"])]
    assert len(seen) == 12001 and len(path) == 12001 and path[0].name == "f11999"


def test_the_analysis_has_a_budget_and_says_when_it_is_exceeded():
    chain = "".join(f"def f{i}(d, c):\n    return f{i - 1}(d, c)\n" for i in range(1, 12000))
    dead = "if False:\n" + "".join(f"    x{i} = np.sum(x{i - 1} * 2 + 1) - y{i} / z\n" for i in range(13500))
    for source in (chain, dead):
        nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": source}]}
        for answer in (analyse(nb), analyse_within_budget(nb)):
            assert answer["budget"].startswith("analysis budget exceeded"), answer
            assert answer["evidence"] == answer["suspicious"] == []
    deep = {"cells": [{"cell_type": "code", "metadata": {}, "source": "x = " + "+".join(["1"] * 30000) + "\n"}]}
    assert analyse_within_budget(deep)["budget"]  # a crash of the child (RecursionError) is reported, not raised
    honest = {"cells": [{"cell_type": "code", "metadata": {}, "source": STAGED + ALT}]}
    assert analyse_within_budget(honest) == {"suspicious": [], "evidence": [], "budget": None}


# ---- issue 14: damaged notebooks are restored; the instructor's note never reaches feedback ----------

def _source_cells():
    def c(name, cell_type, source, locked=True, grade=False, solution=False, points=None):
        return dict(name=name, cell_type=cell_type, source=source, locked=locked, grade=grade, solution=solution,
                    points=points)
    return [c("setup", "code", "import numpy as np\n"), c("f", "code", "def f():\n    raise NotImplementedError()\n",
                                                          locked=False, solution=True),
            c("tests_md", "markdown", "## Tests"), c("test_f", "code", "assert f() == 1\n", grade=True, points=2),
            c("answer", "markdown", "YOUR ANSWER HERE", locked=False, grade=True, solution=True, points=1)]


def _student(*names, extra=()):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    nb = new_notebook()
    for s in _source_cells():
        if s["name"] in names:
            cell = (new_code_cell if s["cell_type"] == "code" else new_markdown_cell)(
                "def f():\n    return 1\n" if s["name"] == "f" else s["source"])
            cell.metadata["nbgrader"] = {"grade_id": s["name"], "grade": s["grade"], "solution": s["solution"],
                                         "locked": s["locked"]}
            nb.cells.append(cell)
    nb.cells += [new_markdown_cell(t) if kind == "md" else new_code_cell(t) for kind, t in extra]
    return nbformat.from_dict(nb)


def _ids(nb):
    return [c.metadata.get("nbgrader", {}).get("grade_id", c.cell_type) for c in nb.cells]


def test_a_deleted_first_test_cell_and_setup_come_back_in_place():
    from bngrade.integrity_preprocessors import restore_missing_cells
    nb = _student("f", "tests_md", "answer")
    notes = restore_missing_cells(nb, _source_cells())
    assert _ids(nb) == ["setup", "f", "tests_md", "test_f", "answer"]
    assert nb.cells[3].source == "assert f() == 1\n" and nb.cells[3].metadata.nbgrader["points"] == 2
    assert notes == ["locked cell 'setup' was deleted: restored from the source and graded",
                     "test cell 'test_f' was deleted: restored from the source and graded"]
    assert restore_missing_cells(nb, _source_cells()) == []  # idempotent


def test_a_deleted_answer_cell_takes_what_the_student_typed_in_its_place():
    from bngrade.integrity_preprocessors import restore_missing_cells
    nb = _student("setup", "f", "tests_md", "test_f", extra=[("md", "My answer: because.")])
    notes = restore_missing_cells(nb, _source_cells())
    assert _ids(nb) == ["setup", "f", "tests_md", "test_f", "answer"]
    assert nb.cells[-1].source == "My answer: because." and nb.cells[-1].metadata.nbgrader["solution"]
    assert "answer cell 'answer' was deleted: restored, holding the 1 cell(s)" in notes[0]
    moved = _student("setup", "tests_md", "test_f", "answer", extra=[("code", "def f():\n    return 1\n")])
    restore_missing_cells(moved, _source_cells())  # the solution retyped after the tests: it comes back in place
    assert _ids(moved) == ["setup", "f", "tests_md", "test_f", "answer"] and "return 1" in moved.cells[1].source
    lost = _student("setup", "tests_md", "test_f", "answer")
    notes = restore_missing_cells(lost, _source_cells())  # nothing to adopt: empty, never the stub
    assert lost.cells[1].source == "" and "restored EMPTY" in notes[0]


def test_the_instructors_note_is_escaped_and_never_in_feedback():
    from nbformat.v4 import new_markdown_cell
    from bngrade.integrity_preprocessors import DropInstructorNotes, instructor_cell
    cell = instructor_cell(["[strong] cell 3, line 1: `<img src=x onerror=alert(1)>`: evil"], "Integrity report")
    assert "<img" not in cell.source and "&lt;img src=x onerror=alert(1)&gt;" in cell.source
    nb = _student("setup", "f")
    nb.cells.insert(1, cell)
    nb.cells.append(new_markdown_cell("ordinary text"))
    nb, _ = DropInstructorNotes().preprocess(nb, {})
    assert _ids(nb) == ["setup", "f", "markdown"]
