"""bngrade's harness and verdict (fast, no nbgrader run), and one nbgrader round trip (slow).

The catalogue-wide runs are in test_assignments.py.
"""
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbgrader.utils import determine_grade

from bngrade import harness, verdict
from bngrade.preprocessors import ScoreOutsideKernel, ScrubHiddenTestsFromOutputs

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "assignments" / "source"
ASSIGNMENTS = ["bn_forward", "bn_backward_graph", "bn_backward_fast", "bn_spatial_layernorm"]
MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n", re.M)


def _notebook(name):
    return nbformat.read(SOURCE / name / f"{name}.ipynb", as_version=4)


def _meta(cell):
    return cell.metadata.get("nbgrader", {})


def _cells(name):
    return {_meta(c).get("grade_id"): c for c in _notebook(name).cells}


def _test_cells(name):
    return [c for c in _notebook(name).cells if _meta(c).get("grade") and c.cell_type == "code"
            and not _meta(c).get("solution")]


def _functions(name, edits=()):
    """The source solution cells, with `edits` [(old, new)] applied, executed: {name: function}."""
    ns = {"np": np}
    for cell in _notebook(name).cells:
        if cell.cell_type == "code" and _meta(cell).get("solution"):
            src = MARKERS.sub("", cell.source)
            for old, new in edits:
                src = src.replace(old, new)
            exec(compile(src, f"<{name}:{_meta(cell)['grade_id']}>", "exec"), ns)
    return ns


def _record(spec, funcs, tmp_path, monkeypatch):
    """Run a test cell's cases through the harness as the sandbox would: the results file's bytes."""
    monkeypatch.setenv(harness.RESULTS_ENV, str(tmp_path))
    harness.run_cases(spec.grade_id, spec.cases, **{role: funcs[f] for role, f in spec.roles.items()})
    return (tmp_path / f"{spec.grade_id}.json").read_bytes()


def _score(name, grade_id, tmp_path, monkeypatch, edits=(), funcs=None, exposed=None):
    """exposed=False: the visible cases' lines as a cell run before any hidden case would show them."""
    cell = next(c for c in _test_cells(name) if _meta(c)["grade_id"] == grade_id)
    spec = verdict.parse_test_cell(cell.source)
    data = _record(spec, funcs or _functions(name, edits), tmp_path, monkeypatch)
    return verdict.score_cell(grade_id, spec.cases, _meta(cell)["points"], data=data, visible=spec.visible,
                              exposed=exposed)


# ---------------------------------------------------------------- the notebooks

@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_source_notebooks_are_converted_clean_and_well_formed(name):
    nb = _notebook(name)
    ids = [_meta(c)["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids))
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        assert "bnkit.grading" not in cell.source and "lockdown" not in cell.source
    tests = _test_cells(name)
    assert len(tests) >= 2
    for cell in tests:
        spec = verdict.parse_test_cell(cell.source)
        assert spec.grade_id == _meta(cell)["grade_id"] and _meta(cell)["locked"] and _meta(cell)["points"] > 0
        assert spec.visible and set(spec.cases) - spec.visible, "visible and hidden cases"
        assert "from bngrade.harness import run_cases" in cell.source
    intro = nb.cells[0].source
    assert "/book/assignments.html" in intro and "split equally over its cases" in intro  # the set-up page
    chapters = re.findall(r"book/(\d\d_[a-z_]+)\.html", intro)
    assert chapters and all((ROOT / "book" / f"{c}.md").exists() for c in chapters)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_source_solutions_pass_every_case(name, tmp_path, monkeypatch):
    for cell in _test_cells(name):
        result = _score(name, _meta(cell)["grade_id"], tmp_path, monkeypatch)
        assert result.score == result.points and result.passed == result.total >= 2, result.lines


def test_the_library_is_the_maths():
    assert not (ROOT / "bnkit" / "grading.py").exists()
    code = ("import sys, bngrade.harness, bngrade.cases; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('bnkit', 'torch')]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    for path in [*ROOT.glob("bnkit/**/*.py"), *ROOT.glob("bngrade/*.py"), *SOURCE.glob("*/*.ipynb"),
                 ROOT / "assignments" / "nbgrader_config.py"]:
        assert "bnkit.grading" not in path.read_text(), path


# ---------------------------------------------------------------- partial credit, lines, hints

FWD = "bn_forward"
ONLY_TEST = [('elif mode in ("test", "eval"):', 'elif mode == "test":')]
BIASED = [("momentum * var * N / (N - 1)", "momentum * var")]
CS231N = [("(1 - momentum) * running_mean + momentum * mu", "momentum * running_mean + (1 - momentum) * mu"),
          ("(1 - momentum) * running_var + momentum * var", "momentum * running_var + (1 - momentum) * var")]


def test_partial_credit_is_split_over_the_cases(tmp_path, monkeypatch):
    result = _score(FWD, "test_eval", tmp_path, monkeypatch, ONLY_TEST)
    assert (result.passed, result.total, result.score, result.points) == (2, 4, 1.0, 2.0)
    assert result.lines[0] == "test_eval: 2 of 4 cases passed, 1 of 2 points"
    assert sum(line.startswith("PASS") for line in result.lines) == 2
    assert sum(line.startswith("FAIL") for line in result.lines) == 2


def test_one_line_per_case_with_parameters_never_the_seed(tmp_path, monkeypatch):
    result = _score(FWD, "test_running_stats", tmp_path, monkeypatch, BIASED, exposed=False)
    case_lines = [line for line in result.lines if line.startswith(("PASS", "FAIL"))]
    assert len(case_lines) == 4 and all(line.startswith("FAIL") for line in case_lines)
    assert sum("(hidden)" in line for line in case_lines) == 3
    text = "\n".join(result.lines)
    assert "momentum 0.3" in text and "momentum 0.05, eps 0.001" in text and "default momentum" in text
    assert "running_var after step 1: relative error" in text
    for seed in ("777", "4242", "31"):
        assert seed not in text
    assert max(len(line) for line in result.lines) <= verdict.WIDTH


@pytest.mark.parametrize("grade_id, edits, hint", [
    ("test_running_stats", CS231N, verdict.HINT_MOMENTUM),
    ("test_running_stats", BIASED, verdict.HINT_BIASED),
    ("test_eval", ONLY_TEST, verdict.HINT_EVAL_RAISED),
    ("test_eval", [('if mode == "train":', 'if mode in ("train", "eval"):')], verdict.HINT_EVAL_AS_TRAIN),
    ("test_running_stats", [("mu = x.mean(axis=0)", "mu = x.mean(axis=0, keepdims=True)"),
                            ("var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).mean(axis=0, keepdims=True)")],
     "hint: return shape (3,), not (1, 3)"),
    ("test_running_stats", [('    bn_param["running_mean"] = running_mean\n    bn_param["running_var"] = running_var\n',
                             "")], verdict.HINT_NOT_STORED),
])
def test_each_porting_mistake_gets_its_hint_once(grade_id, edits, hint, tmp_path, monkeypatch):
    result = _score(FWD, grade_id, tmp_path, monkeypatch, edits)
    text = " ".join(line.strip() for line in result.lines)
    assert result.score < result.points
    assert text.count(hint[:40]) == 1, result.lines
    others = {verdict.HINT_MOMENTUM, verdict.HINT_BIASED, verdict.HINT_EVAL_RAISED, verdict.HINT_EVAL_AS_TRAIN,
              verdict.HINT_NOT_STORED} - {hint}
    assert not any(h[:40] in text for h in others)


def test_a_correct_notebook_gets_no_hint_and_dparams_shape_hint_in_backward(tmp_path, monkeypatch):
    result = _score("bn_backward_graph", "test_backward_dparams", tmp_path, monkeypatch,
                    [("dbeta = dout.sum(axis=0)", "dbeta = dout.sum(axis=0, keepdims=True)")])
    assert result.score == 0 and any("hint: return shape (" in line for line in result.lines)
    assert not any("hint" in line for line in _score(FWD, "test_eval", tmp_path, monkeypatch).lines)


def test_a_raising_function_shows_the_exception_and_only_the_students_frames(tmp_path, monkeypatch):
    result = _score(FWD, "test_train_output", tmp_path, monkeypatch, [("mu = x.mean(axis=0)", "mu = x.mean(axis=2)")],
                    exposed=False)
    text = "\n".join(result.lines)
    assert "AxisError" in text and "in batchnorm_forward" in text and result.score == 0
    assert "bngrade" not in text and "harness" not in text and "numpy" not in text.replace("numpy.", "")


def test_whatever_the_function_prints_or_warns_decides_nothing(tmp_path, monkeypatch, capsys):
    noisy = [("    mode = bn_param.get(", "    import logging, sys, warnings\n    print('debug', file=sys.stderr)\n"
              "    logging.warning('look')\n    warnings.warn('careful')\n    mode = bn_param.get(")]
    result = _score(FWD, "test_train_output", tmp_path, monkeypatch, noisy)
    assert result.score == result.points


# ---------------------------------------------------------------- untrusted results

CASES = [("train_output", 0), ("train_output", 1871)]


def _good_payload(tmp_path, monkeypatch, funcs=None):
    spec = verdict.TestCell("test_x", CASES, {CASES[0]}, {"forward": "batchnorm_forward"})
    return json.loads(_record(spec, funcs or _functions(FWD), tmp_path, monkeypatch))


def _verdict(payload=None, data=None, **kw):
    """The visible case's line as a cell run before any hidden case shows it (exposed=False), unless told."""
    data = json.dumps(payload).encode() if payload is not None else data
    return verdict.score_cell("test_x", CASES, 3, data=data, visible={CASES[0]}, **{"exposed": False, **kw})


def test_results_written_by_the_harness_score_full_marks(tmp_path, monkeypatch):
    assert _verdict(_good_payload(tmp_path, monkeypatch)).score == 3


@pytest.mark.parametrize("damage, why", [
    (lambda p: None, "no results were recorded"),
    (lambda p: b"{not json", "not valid JSON"),
    (lambda p: b" " * (verdict.MAX_RESULT_BYTES + 1), "too large"),
    (lambda p: dict(p, format="mine"), "not in bngrade's format"),
    (lambda p: dict(p, grade_id="test_other"), "belongs to another test cell"),
    (lambda p: dict(p, cases={"a": 1}), "no list of cases"),
])
def test_missing_malformed_or_oversized_files_score_zero_with_a_reason(damage, why, tmp_path, monkeypatch):
    damaged = damage(_good_payload(tmp_path, monkeypatch))
    result = _verdict(damaged) if isinstance(damaged, dict) else _verdict(data=damaged)
    assert result.score == 0 and why in "\n".join(result.lines), result.lines


def test_a_problem_reported_by_the_sandbox_scores_zero():
    result = _verdict(data=None, problem="larger than 8388608 bytes")
    assert result.score == 0 and "could not be read: larger than" in "\n".join(result.lines)


def _set_output(payload, index, **packed):
    payload["cases"][index]["outputs"]["out"] = packed
    return payload


@pytest.mark.parametrize("forge, why", [
    (lambda p: _set_output(p, 0, dtype="|O", shape=[20, 7], data=""), "not floats"),
    (lambda p: _set_output(p, 0, **dict(p["cases"][0]["outputs"]["out"], data="AAAA")), "does not match its shape"),
    (lambda p: _set_output(p, 0, **dict(p["cases"][0]["outputs"]["out"], shape=[10 ** 9, 10 ** 9])), "shape"),
    (lambda p: _set_output(p, 0, **dict(p["cases"][0]["outputs"]["out"], data="!!notbase64")), "malformed"),
    (lambda p: _set_output(p, 0, bad="x" * 5000), "..."),
])
def test_forged_arrays_are_refused_per_case(forge, why, tmp_path, monkeypatch):
    result = _verdict(forge(_good_payload(tmp_path, monkeypatch)))
    assert result.passed == 1 and result.score == 1.5 and why in "\n".join(result.lines), result.lines
    assert max(len(line) for line in result.lines) <= verdict.WIDTH


def test_a_forged_result_for_a_case_never_run_is_ignored(tmp_path, monkeypatch):
    payload = _good_payload(tmp_path, monkeypatch)
    payload["cases"][1]["seed"] = 5  # the hidden case's record relabelled as one the cell never asked for
    result = _verdict(payload)
    assert result.passed == 1 and "no result" in "\n".join(result.lines)
    payload["cases"] = payload["cases"][:1] * 2  # the same record twice: counted once
    assert _verdict(payload).passed == 1


def test_a_wrong_forward_scores_zero_whatever_the_kernel_patched(tmp_path, monkeypatch):
    def identity(x, gamma, beta, bn_param):
        return x.copy(), None

    monkeypatch.setattr(np, "allclose", lambda *a, **k: True)  # the kernel's numpy; the verdict does not ask it
    monkeypatch.setattr(np, "array_equal", lambda *a, **k: True)
    assert _verdict(_good_payload(tmp_path, monkeypatch, {"batchnorm_forward": identity})).score == 0


class Agreeable(np.ndarray):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value, why", [
    (np.zeros(3).view(Agreeable), "Agreeable"),
    ([0.0, 1.0], "not an ndarray of floats: builtins.list"),
    (None, "not an ndarray of floats: None"),
    (np.zeros(3, dtype=int), "dtype int64"),
])
def test_only_plain_float_arrays_are_recorded(value, why):
    bad = harness.pack(value)["bad"]
    assert bad.startswith("not an ndarray of floats: ") and why in bad


def test_packing_round_trips_bytes_exactly():
    a = np.random.RandomState(0).randn(4, 3).astype(np.float32)[:, ::2]
    b, why = verdict._unpack(harness.pack(a), a.shape)
    assert why is None and b.dtype == a.dtype and np.array_equal(a, b)


def test_errors_are_scaled_per_channel():
    want = np.array([[1e3, 1e-3], [2e3, -1e-3]])
    wrong = want.copy()
    wrong[0, 1] *= 1.01  # invisible against the large channel's scale
    assert verdict.relative_error(wrong, want, axis=1) > 1e-3
    assert verdict.relative_error(want * (1 + 1e-9), want, axis=1) < 1e-6


def test_without_results_dir_the_harness_prints_the_verdict_at_home(monkeypatch, capsys):
    monkeypatch.delenv(harness.RESULTS_ENV, raising=False)
    funcs = _functions(FWD, [('elif mode in ("test", "eval"):', 'elif mode == "test":')])
    harness.run_cases("test_eval", [("eval_output", 2), ("eval_output", 12)], forward=funcs["batchnorm_forward"])
    out = capsys.readouterr().out
    assert "test_eval: 1 of 2 cases passed" in out and "FAIL  eval mode, mode='eval'" in out and "PASS" in out


def test_at_home_a_student_using_the_reference_is_told_it_is_not_there_when_graded(monkeypatch, capsys):
    from bnkit import fast
    monkeypatch.delenv(harness.RESULTS_ENV, raising=False)

    def wrapper(x, gamma, beta, bn_param):
        return fast.batchnorm_forward(x, gamma, beta, bn_param)

    harness.run_cases("test_x", [("train_output", 0)], forward=wrapper)
    assert "note: your code uses bnkit.fast" in capsys.readouterr().out


# ---------------------------------------------------------------- the nbgrader preprocessors

def _autograded_like(name, edits=(), kernel_outputs=()):
    """The source notebook with the solutions (edited) in place, as after execution: (nb, resources)."""
    nb = _notebook(name)
    for cell in nb.cells:
        if cell.cell_type == "code" and _meta(cell).get("solution"):
            src = MARKERS.sub("", cell.source)
            for old, new in edits:
                src = src.replace(old, new)
            cell.source = src
        if _meta(cell).get("grade") and cell.cell_type == "code" and not _meta(cell).get("solution"):
            cell.outputs = [nbformat.from_dict(o) for o in kernel_outputs]
    return nb


def _results_for(nb, name, tmp_path, monkeypatch):
    ns = {"np": np}
    for cell in nb.cells:
        if cell.cell_type == "code" and _meta(cell).get("solution"):
            exec(cell.source, ns)
    results = {}
    for cell in _test_cells(name):
        spec = verdict.parse_test_cell(cell.source)
        results[spec.grade_id + ".json"] = _record(spec, ns, tmp_path, monkeypatch)
    return results


def test_score_outside_kernel_replaces_the_outputs_and_sets_partial_credit(tmp_path, monkeypatch):
    stderr = {"output_type": "stream", "name": "stderr", "text": "a warning from the student\n"}
    error = {"output_type": "error", "ename": "AssertionError", "evalue": "forged", "traceback": []}
    nb = _autograded_like(FWD, ONLY_TEST, [stderr, error])
    resources = {"bngrade_results": _results_for(nb, FWD, tmp_path, monkeypatch), "bngrade_result_problems": {}}
    nb, resources = ScoreOutsideKernel().preprocess(nb, resources)
    grades = {_meta(c)["grade_id"]: determine_grade(c) for c in nb.cells
              if _meta(c).get("grade") and c.cell_type == "code"}
    assert grades == {"test_train_output": (3.0, 3.0), "test_running_stats": (2.0, 2.0), "test_eval": (1.0, 2.0)}
    cell = next(c for c in nb.cells if _meta(c).get("grade_id") == "test_eval")
    assert [o.output_type for o in cell.outputs] == ["stream", "execute_result"]
    assert "forged" not in json.dumps(cell.outputs) and "2 of 4 cases passed" in cell.outputs[0].text


def test_score_outside_kernel_without_results_scores_zero_and_says_why():
    timeout = {"output_type": "error", "ename": "CellTimeoutError", "evalue": "Timeout waiting", "traceback": []}
    nb = _autograded_like(FWD, kernel_outputs=[timeout])
    nb, _ = ScoreOutsideKernel().preprocess(nb, {"bngrade_results": {}, "bngrade_execution": {"timed_out": True}})
    for cell in nb.cells:
        if _meta(cell).get("grade") and cell.cell_type == "code":
            assert determine_grade(cell)[0] == 0
            assert "ran out of time" in cell.outputs[0].text and "CellTimeoutError" in cell.outputs[0].text


def test_a_students_import_of_the_reference_is_explained_when_results_are_missing():
    nb = _autograded_like(FWD, kernel_outputs=[{"output_type": "error", "ename": "NameError", "traceback": [],
                                                "evalue": "name 'batchnorm_forward' is not defined"}])
    solution = next(c for c in nb.cells if _meta(c).get("grade_id") == "batchnorm_forward")
    solution.outputs = [nbformat.from_dict({"output_type": "error", "ename": "ModuleNotFoundError", "traceback": [],
                                            "evalue": "No module named 'bnkit.fast'"})]
    nb, _ = ScoreOutsideKernel().preprocess(nb, {"bngrade_results": {}})
    cell = next(c for c in nb.cells if _meta(c).get("grade_id") == "test_eval")
    text = " ".join(cell.outputs[0].text.split())
    assert "one of your cells stopped with ModuleNotFoundError: No module named 'bnkit.fast'" in text
    assert "not available when your notebook is graded" in text and "NameError" in text
    assert determine_grade(cell)[0] == 0


def test_a_grader_failure_on_one_cell_zeroes_that_cell_only(tmp_path, monkeypatch):
    nb = _autograded_like(FWD)
    results = _results_for(nb, FWD, tmp_path, monkeypatch)
    real = verdict.score_cell

    def broken(grade_id, *a, **k):
        if grade_id == "test_eval":
            raise RuntimeError("a bug in the grader")
        return real(grade_id, *a, **k)

    monkeypatch.setattr(verdict, "score_cell", broken)
    nb, _ = ScoreOutsideKernel().preprocess(nb, {"bngrade_results": results})
    grades = {_meta(c)["grade_id"]: determine_grade(c)[0] for c in nb.cells
              if _meta(c).get("grade") and c.cell_type == "code"}
    assert grades == {"test_train_output": 3, "test_running_stats": 2, "test_eval": 0}


def test_the_shape_of_the_code_never_changes_a_score(tmp_path, monkeypatch):
    """A closed form that calls the staged backward is correct numbers: full marks (issue 14).

    Whether it is the closed form the assignment asks for is a code review
    (bngrade.integrity.closed_form_evidence, in the report and the formgrader).
    """
    name = "bn_backward_fast"
    staged_call = ("def batchnorm_backward_alt(dout, cache):\n", "def batchnorm_backward_alt(dout, cache):\n"
                   "    return batchnorm_backward(dout, cache)\n")
    for nb in (_autograded_like(name, [staged_call]), _autograded_like(name)):
        nb, _ = ScoreOutsideKernel().preprocess(nb, {"bngrade_results": _results_for(nb, name, tmp_path, monkeypatch)})
        assert all(determine_grade(c)[0] == c.metadata.nbgrader["points"] for c in nb.cells
                   if _meta(c).get("grade") and c.cell_type == "code" and not _meta(c).get("solution"))


def test_a_failed_case_at_scale_zeroes_the_cell_and_says_why():
    from bngrade import verdict
    from bngrade.cases import CHECKS
    assert CHECKS["backward_dx_large"].gate and not CHECKS["backward_dx"].gate
    cases = [("backward_dx", 0), ("backward_dx_large", 1)]
    payload = {"format": "bngrade-results/1", "grade_id": "t", "cases": [
        {"check": "backward_dx", "seed": 0, "error": None, "warnings": [], "outputs": {
            "dx": _pack(verdict.reference_funcs("backward_dx"), "backward_dx", 0)}}]}
    result = verdict.score_cell("t", cases, 3, data=json.dumps(payload).encode(), visible={cases[0]})
    assert result.score == 0 and result.passed == 1  # the small case passed, the gate did not run
    text = " ".join(" ".join(result.lines).split())
    assert "PASS" in text and "(hidden) dx at scale" in text and "O(N*D)" in text and "differentiates" in text


def _pack(funcs, check, seed):
    from bngrade.cases import CHECKS, inputs
    from bngrade.harness import pack
    return pack(CHECKS[check].drive(funcs, inputs(check, seed))["dx"])


def test_feedback_scrubber_removes_lines_quoting_hidden_tests():
    cell = next(c for c in _test_cells(FWD) if _meta(c)["grade_id"] == "test_eval")
    hidden = re.search(r"### BEGIN HIDDEN TESTS\n(.*)\n### END", cell.source).group(1)
    cell.outputs = [nbformat.from_dict({"output_type": "error", "ename": "E", "evalue": "v",
                                        "traceback": [f"----> 4 {hidden}\nkept"]})]
    cell, _ = ScrubHiddenTestsFromOutputs().preprocess_cell(cell, {}, 0)
    assert cell.outputs[0].traceback == ["kept"]


# ---------------------------------------------------------------- one real nbgrader round trip

@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """bn_forward through plain nbgrader autograde with the course config (the sandbox included)."""
    sys.path.insert(0, str(ROOT / "assignments"))
    import course
    d = course.copy_course(tmp_path_factory.mktemp("grading") / "course")
    rc, log = course.nbgrader(d, "generate_assignment", FWD, "--force", quiet=True)
    assert rc == 0, log
    fwd = "batchnorm_forward"
    stderr_noise = ("    mode = bn_param.get(", "    import logging, sys\n    print('debug', file=sys.stderr)\n"
                    "    logging.warning('look')\n    mode = bn_param.get(")
    forge = ('import json as _j, os as _o\n'
             '_d = _o.environ.get("BNGRADE_RESULTS", ".")\n'
             'for _g in ("test_train_output", "test_running_stats", "test_eval"):\n'
             '    with open(_o.path.join(_d, _g + ".json"), "w") as _f:\n'
             '        _j.dump({"format": "bngrade-results/1", "grade_id": _g, "cases": []}, _f)\n\n\n')
    students = {
        "solution": None,
        "blank": "blank",
        "only_test": ONLY_TEST,
        "noisy_correct": [stderr_noise],
        "identity_forger": None,
        "axis_error": [("mu = x.mean(axis=0)", "mu = x.mean(axis=2)")],  # raises inside numpy
    }
    notebooks = {}
    for student, edits in students.items():
        if edits == "blank" or edits is None:
            notebooks[student] = course.submission(d, FWD, edits)
            continue
        nb = json.loads(course.submission(d, FWD))
        cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == fwd)
        src = "".join(cell["source"])
        for old, new in edits:
            assert old in src
            src = src.replace(old, new)
        cell["source"] = src
        notebooks[student] = json.dumps(nb)
    nb = json.loads(course.submission(d, FWD))
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == fwd)
    cell["source"] = forge + "def batchnorm_forward(x, gamma, beta, bn_param):\n    return x.copy(), None\n"
    test_cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_eval")
    test_cell["source"] = "print('all tests passed')\n"  # an edited test cell: restored from the gradebook
    notebooks["identity_forger"] = json.dumps(nb)
    course.place(d, FWD, notebooks)
    rc, log = course.nbgrader(d, "autograde", FWD, "--force", quiet=True)
    first = course.scores(d, FWD)
    rc2, log2 = course.nbgrader(d, "autograde", FWD, "--force", quiet=True)
    fb_rc, fb_log = course.nbgrader(d, "generate_feedback", FWD, "--force", quiet=True)
    return dict(dir=d, rc=rc, log=log, first=first, second=course.scores(d, FWD), rc2=rc2, fb_rc=fb_rc,
                fb_log=fb_log)


def _tests(row):
    return {g: s for g, (s, _) in row.items() if g.startswith("test_")}


@pytest.mark.slow
def test_round_trip_scores_with_partial_credit(round_trip):
    assert round_trip["rc"] == 0, round_trip["log"][-3000:]
    first = round_trip["first"]
    assert _tests(first["solution"]) == {"test_train_output": 3, "test_running_stats": 2, "test_eval": 2}
    assert _tests(first["noisy_correct"]) == _tests(first["solution"])  # stderr and logging cost nothing
    assert _tests(first["blank"]) == {"test_train_output": 0, "test_running_stats": 0, "test_eval": 0}
    assert _tests(first["only_test"]) == {"test_train_output": 3, "test_running_stats": 2, "test_eval": 1}
    assert _tests(first["axis_error"]) == {"test_train_output": 0, "test_running_stats": 0, "test_eval": 2}
    # results planted by the student's own cells are overwritten by the test cells (and judged outside)
    assert set(_tests(first["identity_forger"]).values()) == {0}, first["identity_forger"]


@pytest.mark.slow
def test_round_trip_regrade_is_idempotent(round_trip):
    assert round_trip["rc2"] == 0 and round_trip["second"] == round_trip["first"]


@pytest.mark.slow
def test_round_trip_feedback_shows_lines_and_no_hidden_source(round_trip):
    d = round_trip["dir"]
    assert round_trip["fb_rc"] == 0, round_trip["fb_log"][-3000:]
    source = _notebook(FWD)
    regions = [r for c in source.cells for r in re.findall(r"### BEGIN HIDDEN TESTS(.*?)### END", c.source, re.S)]
    hidden = [line.strip() for region in regions for line in region.split("\n") if line.strip()]
    page = (d / "feedback" / "only_test" / FWD / f"{FWD}.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert "test_eval: 2 of 4 cases passed, 1 of 2 points" in text
    assert "hint: mode 'eval' must work exactly like 'test'" in text
    assert "HIDDEN TESTS" not in text and all(line not in text for line in hidden)
    nb = json.loads((d / "autograded" / "identity_forger" / FWD / f"{FWD}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_eval")
    assert "run_cases(" in "".join(cell["source"])  # the edited test cell came back from the gradebook
    nb = json.loads((d / "autograded" / "axis_error" / FWD / f"{FWD}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_train_output")
    text = "".join(cell["outputs"][0]["text"])
    # its frames and message are withheld: the test cell's hidden cases were in the kernel (verdict.py)
    assert "AxisError" in text and "mu = x.mean(axis=2)" not in text, text
    assert "numpy/" not in text and "bngrade" not in text and "harness" not in text, text


# ---------------------------------------------------------------- the catalogue, in process

def _catalogue():
    sys.path.insert(0, str(ROOT / "assignments"))
    import catalogue
    return [v for v in catalogue.VARIANTS if v.kind in ("buggy", "correct") and not v.mutation]


def _variant_functions(v):
    ns = {"np": np}
    for cell in _notebook(v.assignment).cells:
        gid = _meta(cell).get("grade_id")
        if cell.cell_type == "code" and _meta(cell).get("solution"):
            src = MARKERS.sub("", cell.source)
            for old, new in v.edits.get(gid, ()):
                assert old in src, (v.name, old)
                src = src.replace(old, new)
            src = v.cells.get(gid, src)
            exec(compile(src, f"<{v.name}:{gid}>", "exec"), ns)
    return ns


@pytest.mark.parametrize("v", _catalogue(), ids=lambda v: v.name)
def test_catalogue_bugs_lose_points_exactly_where_specified_and_correct_variants_get_full_marks(v, tmp_path,
                                                                                                monkeypatch):
    funcs = _variant_functions(v)
    lost = set()
    for cell in _test_cells(v.assignment):
        result = _score(v.assignment, _meta(cell)["grade_id"], tmp_path, monkeypatch, funcs=funcs)
        if result.score < result.points:
            lost.add(result.grade_id)
    assert lost == set(v.lose), f"{v.name} ({v.why}): lost {sorted(lost)}, expected {sorted(v.lose)}"


def test_course_config_scores_outside_the_kernel_before_grades_are_saved():
    from traitlets.config.loader import PyFileConfigLoader
    c = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT / "assignments")).load_config()
    names = [p.__name__ for p in c.Autograde.autograde_preprocessors]
    assert names.index("SandboxedExecute") < names.index("ScoreOutsideKernel") < names.index("SaveAutoGrades")
    assert "Execute" not in names and "FlagTampering" not in names
    # deleted cells come back through RestoreMissingCells (nbgrader's add_missing_cells raised KeyError)
    assert c.OverwriteCells.add_missing_cells is False
    sanitize = [p.__name__ for p in c.Autograde.sanitize_preprocessors]
    assert sanitize.index("RestoreMissingCells") < sanitize.index("OverwriteCells")
    names = [p.__name__ for p in c.GenerateFeedback.preprocessors]
    assert "ClearHiddenTests" in names and "ScrubHiddenTestsFromOutputs" in names


# ---------------------------------------------------------------- hidden cases never reach feedback

LEAK = "LEAKED-1871-40417"


@pytest.mark.parametrize("edits, shown", [
    ([("    mode = bn_param.get(", f"    raise ValueError({LEAK!r})\n    mode = bn_param.get(")],
     "failed: your code raised ValueError"),
    ([("    mode = bn_param.get(", f"    import warnings\n    warnings.warn({LEAK!r})\n"
       "    return x[:1] * 1871.40417, None\n    mode = bn_param.get(")], "failed: out: wrong shape"),
    ([("    mode = bn_param.get(", "    return x * 1871.40417, {}\n    mode = bn_param.get(")],
     "failed: out: wrong values"),
])
def test_once_the_kernel_holds_hidden_cases_no_student_text_reaches_a_visible_line(edits, shown, tmp_path,
                                                                                    monkeypatch):
    """A visible case of a cell that lists hidden cases ran when the kernel could read them (In[], the caller's
    frame): its message, warning, frames, shape and error value are withheld; type and category remain."""
    exposed = _score(FWD, "test_train_output", tmp_path, monkeypatch, edits)
    text = "\n".join(exposed.lines)
    flat = text.replace("\n      ", " ")
    assert shown in flat and ("raised" not in shown or "not shown once the hidden tests are in the kernel" in flat)
    for leak in (LEAK, "1871", "40417", "(1, 7)", "relative error", "line "):
        assert leak not in text, (leak, text)
    before = "\n".join(_score(FWD, "test_train_output", tmp_path, monkeypatch, edits, exposed=False).lines)
    before = before.replace("\n      ", " ")
    assert (LEAK in before) or ("relative error" in before) or ("(1, 7)" in before)  # the check is not vacuous


def test_a_later_test_cell_without_hidden_cases_is_still_exposed(tmp_path, monkeypatch):
    """ScoreOutsideKernel: exposure runs on from the first test cell that lists hidden cases."""
    raising = _functions(FWD, [("    mode = bn_param.get(", f"    raise ValueError({LEAK!r})\n"
                                                            "    mode = bn_param.get(")])

    def graded_text(drop_earlier_tests):
        nb = _notebook(FWD)
        tests = [c for c in nb.cells if c in _test_cells_of(nb)]
        last = tests[-1]
        last.source = "\n".join(line for line in last.source.split("\n")
                                if "cases +=" not in line and "HIDDEN TESTS" not in line)
        if drop_earlier_tests:
            nb.cells = [c for c in nb.cells if c not in tests[:-1]]
        spec = verdict.parse_test_cell(last.source)
        results = {spec.grade_id + ".json": _record(spec, raising, tmp_path, monkeypatch)}
        ScoreOutsideKernel().preprocess(nb, {"bngrade_results": results, "bngrade_execution": {}})
        return "".join(o.get("text", "") for o in last.outputs)

    assert LEAK not in graded_text(drop_earlier_tests=False)  # earlier cells listed hidden cases
    assert LEAK in graded_text(drop_earlier_tests=True)  # none before it: the visible message is shown


def _test_cells_of(nb):
    return [c for c in nb.cells if _meta(c).get("grade") and c.cell_type == "code" and not _meta(c).get("solution")]
