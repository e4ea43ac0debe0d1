"""nbgrader preprocessors of the course: the score outside the kernel, and the feedback scrubber.

`ScoreOutsideKernel` runs in the grader's process after the sandboxed
execution (`bngrade.sandbox.SandboxedExecute`) and before `SaveAutoGrades`.
For each autograded test cell it

1. takes the trusted source of the cell from the gradebook (what
   `generate_assignment` saved, hidden tests included; the notebook's own
   copy, which `OverwriteCells` restored from it, only when no gradebook is
   at hand) and parses its case list (`bngrade.verdict.parse_test_cell`);
2. reads that cell's raw results from `resources["bngrade_results"]`
   (`{file name: bytes}`, filled by the sandbox from `$BNGRADE_RESULTS`);
3. scores it with `bngrade.verdict.score_cell` (bnkit as the reference,
   partial credit per case, a backward's case at scale as a gate). What the
   code looks like (does the closed form reuse the staged backward?) never
   changes a score: `bngrade.integrity_preprocessors` puts that evidence in
   the instructor's report and in the autograded notebook, for a person;
4. replaces the cell's outputs with the verdict's lines (stdout) and an
   `execute_result` holding the score, which nbgrader's `determine_grade`
   reads as partial credit. Whatever the kernel printed, raised or sent to
   stderr in that cell is dropped: it decides nothing.

A test cell whose trusted source does not call `run_cases` is left to
nbgrader's usual rule.
"""
import re

from nbformat.v4 import new_output
from nbgrader.preprocessors.base import NbGraderPreprocessor

from bngrade import verdict

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _is_test_cell(cell):
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and meta.get("grade") and not meta.get("solution")


def _first_error(cells):
    """(ename, evalue) of the first error output in `cells`, or None."""
    for cell in cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return (verdict._clean(out.get("ename"), 40),
                        verdict._clean(ANSI.sub("", str(out.get("evalue", ""))), 160))
    return None


def _kernel_context(cell, execution, earlier=None):
    """One line on why results may be missing: the kernel's own error in the cell, a timeout,
    the first error of the student's own cells (e.g. an import of bnkit's reference, not there when graded).

    `earlier` is the first error of a student's cell that ran before any test cell (its message is shown).
    An error in a test cell, or in a cell after one, ran once the hidden cases had been read: only its
    type is shown, and only if it is a built-in or numpy one (see verdict._error_lines).
    """
    parts = []
    if earlier:
        parts.append(f"one of your cells stopped with {earlier[0]}: {earlier[1]}")
        if earlier[0] in ("ImportError", "ModuleNotFoundError") and ("bnkit" in earlier[1] or "torch" in earlier[1]):
            parts.append(verdict.HINT_REFERENCE[len("hint: "):].rstrip("."))
    if execution.get("timed_out"):
        parts.append("the notebook ran out of time")
    if execution.get("kernel_died"):
        parts.append("the kernel died")
    own = _first_error([cell])
    if own:
        kind = own[0] if own[0] in verdict._KNOWN_ERRORS else "an exception of your own"
        parts.append(f"the test cell stopped with {kind}")
    return ("Why results are missing: " + "; ".join(parts) + ".") if parts else None


def _cells_before_tests(nb):
    """The student's code cells before the first test cell (nothing hidden has run yet there)."""
    before = []
    for cell in nb.cells:
        if _is_test_cell(cell):
            break
        if cell.cell_type == "code":
            before.append(cell)
    return before


class ScoreOutsideKernel(NbGraderPreprocessor):
    """Decide every test cell's score in the grader process (see the module docstring)."""

    def _trusted_sources(self, resources):
        info = resources.get("nbgrader", {})
        if not info.get("db_url"):
            return {}
        from nbgrader.api import Gradebook, MissingEntry
        sources = {}
        with Gradebook(info["db_url"]) as gb:
            try:
                notebook = gb.find_notebook(info["notebook"], info["assignment"])
            except MissingEntry:
                return {}
            for cell in notebook.source_cells:
                sources[cell.name] = cell.source
        return sources

    def preprocess(self, nb, resources):
        results = resources.get("bngrade_results")
        problems = resources.get("bngrade_result_problems", {}) or {}
        execution = resources.get("bngrade_execution", {}) or {}
        if results is None:
            self.log.error("bngrade: no results from the kernel (autograde without bngrade.sandbox's "
                           "SandboxedExecute?): every run_cases test scores zero")
            results = {}
        trusted = self._trusted_sources(resources)
        earlier = _first_error(_cells_before_tests(nb))
        exposed = False  # has the kernel been given a hidden case yet? (verdict: then no student text is shown)
        for cell in nb.cells:
            if not _is_test_cell(cell):
                continue
            grade_id = cell.metadata.nbgrader.get("grade_id")
            if trusted and grade_id not in trusted:  # not a cell of the source notebook: no marks from the kernel
                cell.outputs = [new_output("error", ename="NotATestCell", traceback=[], evalue=(
                    f"cell {grade_id!r} is not a test cell of this assignment; it scores nothing"))]
                continue
            source = trusted.get(grade_id, cell.source)
            exposed = exposed or "### BEGIN HIDDEN TESTS" in source
            spec = verdict.parse_test_cell(source)
            if spec is None:
                continue
            if spec.grade_id != grade_id:
                raise ValueError(f"test cell {grade_id}: run_cases is called with {spec.grade_id!r}")
            name = grade_id + ".json"
            try:
                result = verdict.score_cell(
                    grade_id, spec.cases, cell.metadata.nbgrader["points"], data=results.get(name),
                    problem=problems.get(name), visible=spec.visible,
                    context=_kernel_context(cell, execution, earlier),
                    exposed=exposed or any(c not in spec.visible for c in spec.cases))
            except Exception:  # a grader bug: this cell scores zero, loudly; the other cells and students go on
                self.log.exception("bngrade: could not score %s; it scores zero", grade_id)
                cell.outputs = [new_output("error", ename="GraderError", traceback=[], evalue=(
                    f"the grader could not score {grade_id}; your instructor has been told"))]
                continue
            self.log.info("bngrade: %s %g/%g (%d of %d cases)", grade_id, result.score, result.points,
                          result.passed, result.total)
            cell.outputs = [
                new_output("stream", name="stdout", text="\n".join(result.lines) + "\n"),
                new_output("execute_result", execution_count=cell.get("execution_count"), data={
                    "text/plain": repr(result.score),
                    "text/html": f"<pre>score: {result.score:g} of {result.points:g} points</pre>"}),
            ]
        return nb, resources


class ScrubHiddenTestsFromOutputs(NbGraderPreprocessor):
    """Remove every line that quotes a hidden test from a cell's outputs (feedback).

    A traceback shows the lines around the one that raised, hidden ones
    included; ClearHiddenTests only cleans the source.
    """

    REGION = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", re.S)

    def _scrub(self, text, hidden):
        lines = text.split("\n")
        return "\n".join(line for line in lines if not any(h in ANSI.sub("", line) for h in hidden))

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        hidden = [line.strip() for region in self.REGION.findall(cell.source)
                  for line in region.split("\n") if len(line.strip()) >= 6]
        if not hidden:
            return cell, resources
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                out.traceback = [self._scrub(t, hidden) for t in out.traceback]
                out.evalue = self._scrub(out.evalue, hidden)
            elif out.output_type == "stream":
                out.text = self._scrub(out.text, hidden)
            elif "data" in out:
                for mime, value in out.data.items():
                    if isinstance(value, str):
                        out.data[mime] = self._scrub(value, hidden)
        return cell, resources
