"""bnkit.grading and the source notebooks, without nbgrader (fast).

The end-to-end runs are in test_assignments.py.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnkit import fast, grading

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "assignments" / "source"
ASSIGNMENTS = ["bn_forward", "bn_backward_graph", "bn_backward_fast", "bn_spatial_layernorm"]


def _notebook(name):
    return json.loads((SOURCE / name / f"{name}.ipynb").read_text())


def _solutions(name):
    """The source solution cells, executed: {function name: function}."""
    ns = {"np": np}
    for cell in _notebook(name)["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if cell["cell_type"] == "code" and meta.get("solution"):
            exec(compile("".join(cell["source"]), f"<{name}:{meta['grade_id']}>", "exec"), ns)
    return ns


def _test_cells(name):
    for cell in _notebook(name)["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            yield meta["grade_id"], "".join(cell["source"])


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_source_notebooks_are_committed_clean_and_well_formed(name):
    nb = _notebook(name)
    ids = [c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"] if "nbgrader" in c["metadata"]]
    assert len(ids) == len(set(ids))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    tests = dict(_test_cells(name))
    assert tests
    for gid, src in tests.items():
        meta = next(c["metadata"]["nbgrader"] for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == gid)
        assert meta["locked"] and meta["points"] > 0
        assert "### BEGIN HIDDEN TESTS" in src and "from bnkit.grading import grade" in src
        # the test raises only from visible code after the hidden region
        assert "grade(" in src.split("### END HIDDEN TESTS")[1]
    setup = nb["cells"][1]
    assert setup["metadata"]["nbgrader"]["locked"] and "lockdown()" in "".join(setup["source"])
    chapters = re.findall(r"book/(\d\d_[a-z_]+)\.md", "".join(nb["cells"][0]["source"]))
    assert chapters and all((ROOT / "book" / f"{c}.md").exists() for c in chapters)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_source_solutions_pass_every_case_in_process(name, capsys):
    """Every test cell, visible and hidden cases, run against the source solution."""
    ns = _solutions(name)
    for gid, src in _test_cells(name):
        env = dict(ns)
        exec(src, env)  # the hidden region is plain code in the source
        out = capsys.readouterr().out
        assert "FAIL" not in out and out.count("ok ") >= 2, (gid, out)


def _train_case():
    return [("train_output", 0), ("train_output", 1871)]


def test_a_buggy_forward_fails_even_when_allclose_is_patched(monkeypatch):
    def buggy(x, gamma, beta, bn_param):  # eps outside the square root
        mu, var = x.mean(0), x.var(0)
        return gamma * (x - mu) / (np.sqrt(var) + 1e-5) + beta, None

    monkeypatch.setattr(np, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(np.testing, "assert_allclose", lambda *a, **k: None)
    with pytest.raises(AssertionError, match="checks failed"):
        grading.grade(_train_case(), forward=buggy)


def test_the_reference_itself_is_refused():
    with pytest.raises(grading.IntegrityError, match="not yours"):
        grading.grade(_train_case(), forward=fast.batchnorm_forward)

    def wrapper(x, gamma, beta, bn_param):
        return fast.batchnorm_forward(x, gamma, beta, bn_param)

    with pytest.raises(grading.IntegrityError, match="from fast.py"):
        grading.grade(_train_case(), forward=wrapper)


def test_torch_is_refused_when_reached():
    torch = pytest.importorskip("torch")

    def via_torch(x, gamma, beta, bn_param):
        t = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                                           torch.from_numpy(beta), training=True)
        return t.numpy(), None

    with pytest.raises(grading.IntegrityError, match="reference implementation"):
        grading.grade(_train_case(), forward=via_torch)


def test_starting_another_process_is_refused():
    def via_child(x, gamma, beta, bn_param):
        subprocess.run([sys.executable, "-c", "pass"])  # could run the reference out of the blocker's reach
        return x, None

    with pytest.raises(grading.IntegrityError, match="starts another process"):
        grading.grade(_train_case(), forward=via_child)


def test_forbidden_functions_are_traced_through_aliases_and_copies():
    ns = _solutions("bn_backward_fast")
    staged = ns["batchnorm_backward"]
    cases = [("backward_dx", 0)]
    grading.grade(cases, forward=ns["batchnorm_forward"], backward=ns["batchnorm_backward_alt"], forbid=[staged])

    def alt(dout, cache):
        return staged(dout, cache)

    with pytest.raises(grading.IntegrityError, match="calls batchnorm_backward"):
        grading.grade(cases, forward=ns["batchnorm_forward"], backward=alt, forbid=[staged])
    with pytest.raises(grading.IntegrityError, match="same code"):
        grading.grade(cases, forward=ns["batchnorm_forward"], backward=staged, forbid=[staged])


class Agreeable(np.ndarray):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value, why", [
    (np.zeros(3).view(Agreeable), "not a numpy.ndarray"),
    ([0.0, 1.0], "not a numpy.ndarray"),
    (np.zeros(3, dtype=object), "not floats"),
    (np.zeros(3, dtype=int), "not floats"),
])
def test_only_plain_float_arrays_leave_the_kernel(value, why):
    assert why in grading._pack(value)["bad"]


def test_packing_round_trips_bytes_exactly():
    a = np.random.RandomState(0).randn(4, 3).astype(np.float32)[:, ::2]
    b = grading._unpack(grading._pack(a))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_verdict_requires_exact_shapes_and_scales_errors_per_channel():
    want = np.array([[1e3, 1e-3], [2e3, -1e-3]])
    assert "expected exactly (2,)" in grading._compare("dgamma", np.zeros((1, 2)), np.zeros(2), 1e-6)
    wrong_small_channel = want.copy()
    wrong_small_channel[0, 1] *= 1.01  # invisible against the large channel's scale
    assert grading._compare("out", wrong_small_channel, want, 1e-6) is not None
    assert grading._compare("out", want * (1 + 1e-9), want, 1e-6) is None


def test_lockdown_blocks_the_references_but_not_the_gradient_checker():
    code = r'''
import bnkit.grading as g
g.lockdown()
import bnkit, sys
from bnkit.gradcheck import numerical_gradient, rel_error
assert not hasattr(bnkit, "fast") and not hasattr(bnkit, "BatchNorm")
for name in ("bnkit.fast", "bnkit.staged", "bnkit.norms", "bnkit.layer", "torch", "torch.nn"):
    try:
        __import__(name)
    except ImportError as e:
        assert "not available in this assignment" in str(e), e
    else:
        raise SystemExit(f"{name} was importable")
print("blocked")
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "blocked" in proc.stdout, proc.stderr


def _course_config():
    from traitlets.config.loader import PyFileConfigLoader
    return PyFileConfigLoader("nbgrader_config.py", path=str(ROOT / "assignments")).load_config()


def test_course_config_loads_with_its_safeguards():
    c = _course_config()  # nbgrader only logs a broken config and carries on without it
    assert c.OverwriteCells.add_missing_cells is True
    assert c.ExecutePreprocessor.timeout == c.Execute.timeout == 60
    names = [p.__name__ for p in c.Autograde.autograde_preprocessors]
    assert names.index("Execute") < names.index("FlagTampering") < names.index("SaveAutoGrades")
    names = [p.__name__ for p in c.GenerateFeedback.preprocessors]
    assert "ClearHiddenTests" in names and "ScrubHiddenTestsFromOutputs" in names


def test_tamper_flag_ignores_comments_and_the_source_solutions():
    flag = _course_config().Autograde.autograde_preprocessors[1]
    pattern, strip = flag.PATTERN, flag.preprocess.__globals__["_without_comments"]
    assert not pattern.search(strip("x = 1  # no lockdown here, no subprocess either\n"))
    for name in ASSIGNMENTS:
        for cell in _notebook(name)["cells"]:
            meta = cell["metadata"].get("nbgrader", {})
            if cell["cell_type"] == "code" and meta.get("solution"):
                assert not pattern.search("".join(cell["source"])), (name, meta["grade_id"])
    assert pattern.search("get_ipython().set_custom_exc((Exception,), None)")
    assert pattern.search("import bnkit.grading as g")
