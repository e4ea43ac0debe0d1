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
