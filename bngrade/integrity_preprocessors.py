"""nbgrader preprocessors for `bngrade.integrity` (grader side; needs nbgrader).

Kept apart from `bngrade.integrity`, which is plain Python, so the static
checks import anywhere (a student's environment has no nbgrader).

* `KeepLastDuplicate` replaces nbgrader's `DeduplicateIds` in
  `Autograde.sanitize_preprocessors`. nbgrader 0.9.6's version keeps the
  last copy of a duplicated grade id too, but sets the other copies'
  metadata to `{}`, which `CheckCellMetadata` then rejects as an outdated
  schema ("Notebook failed to validate"): the student is not graded and the
  CSV says 0. Here the earlier copies lose their nbgrader metadata entirely
  (they run as ordinary cells, as in the student's Jupyter), the last copy
  is graded, and the instructor is told (log warning, report file).
* `ReportSuspiciousCode` runs after execution and the verdict, before
  `SaveAutoGrades`, and changes no score. It writes one plain-text report
  per student and notebook, `<course>/reports/<assignment>/<student>/<notebook>.txt`
  (rewritten on every autograde, so a regrade leaves no stale lines), and
  logs a warning naming the file when there is something to look at: the
  suspicious constructs in the student's cells, duplicated grade ids, the
  closed-form problem, result files the grader could not read and what the
  sandbox said about the run.
* `FeedbackShowsOnlyGraderOutputs` (in `GenerateFeedback.preprocessors`):
  the feedback keeps only the outputs the grader wrote, so hidden cases a
  student's code printed never reach it.
"""
import ast
import html
import os

from nbformat.v4 import new_code_cell, new_markdown_cell
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer, Unicode

from bngrade.integrity import analyse_within_budget, keep_last_copies

NOTES_KEY = "bngrade_integrity_notes"  # notebook metadata: the sanitize step's notes for the report
# The first line of a markdown cell the grader writes for the instructor (never in feedback). A marker in
# the source, not metadata: autograde's ClearMetadataPreprocessor keeps only nbgrader's cell metadata. A
# student's own cell starting with it is removed before the grader's is put in (it could only pose as one).
INSTRUCTOR_ONLY = "<!-- bngrade: instructor only -->"
MAX_CELL_LINES = 60


def _is_instructor_note(cell):
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    return cell.get("cell_type") == "markdown" and "nbgrader" not in (cell.get("metadata") or {}) \
        and source.lstrip().startswith(INSTRUCTOR_ONLY)


RESTORED_KEY = "bngrade_restored_cells"  # notebook metadata: what RestoreMissingCells put back, for the report


def _grade_id(cell):
    return (cell.get("metadata") or {}).get("nbgrader", {}).get("grade_id")


def _defined_names(source):
    """Top-level def/class names of a cell (none when it does not parse)."""
    from bngrade.integrity import parse_cell
    tree = parse_cell(source) if len(source) < 100_000 else None
    return {n.name for n in (tree.body if tree else []) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def restore_missing_cells(nb, source_cells):
    """Put back every cell of the source notebook that the student deleted; return lines for the instructor.

    `source_cells`: the source notebook's nbgrader cells in order, as dicts
    {name, cell_type, source, locked, grade, solution, points} (from the
    gradebook). A missing cell goes back right after the nearest earlier
    source cell still in the notebook (at the top when there is none).
    Locked and test cells come back as the source defines them. A deleted
    answer cell comes back holding what the student typed in its place: the
    plain cells of its type (no nbgrader metadata) between its neighbours,
    moved into it; with none there, it comes back empty (never the released
    stub, which could overwrite a function the student defined elsewhere),
    and the lines say where the student's other plain cells are.
    """
    notes = []
    for k, src in enumerate(source_cells):
        where = {_grade_id(c): i for i, c in enumerate(nb.cells) if _grade_id(c)}
        if src["name"] in where:
            continue
        anchor = next((where[s["name"]] for s in reversed(source_cells[:k]) if s["name"] in where), -1)
        later = [where[s["name"]] for s in source_cells[k + 1:] if s["name"] in where and where[s["name"]] > anchor]
        end = min(later) if later else len(nb.cells)
        meta = {"grade": bool(src["grade"]), "grade_id": src["name"], "locked": bool(src["locked"]),
                "schema_version": 3, "solution": bool(src["solution"]), "task": False}
        if src["grade"]:
            meta["points"] = src["points"]
        adopted = []
        if src["solution"]:
            gap = [i for i in range(anchor + 1, end)
                   if nb.cells[i].cell_type == src["cell_type"] and "nbgrader" not in nb.cells[i].metadata]
            if not gap and src["cell_type"] == "code":  # retyped elsewhere: the plain cells defining its names
                names = _defined_names(src["source"])
                gap = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "nbgrader" not in c.metadata
                       and names & _defined_names(c.source)]
                anchor -= sum(1 for i in gap if i <= anchor)
            adopted = [nb.cells[i] for i in gap]
            text = "\n\n".join(c.source for c in adopted)
            for i in reversed(gap):
                del nb.cells[i]
        else:
            text = src["source"]
        cell = (new_code_cell if src["cell_type"] == "code" else new_markdown_cell)(text)
        cell.metadata["nbgrader"] = meta
        if nb.get("nbformat_minor", 0) >= 5:
            cell["id"] = ("restored-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in src["name"]))[:64]
        else:
            cell.pop("id", None)
        nb.cells.insert(anchor + 1, cell)
        kind = "test cell" if src["grade"] and not src["solution"] else (
            "answer cell" if src["solution"] else "locked cell")
        if not src["solution"]:
            notes.append(f"{kind} {src['name']!r} was deleted: restored from the source and graded")
        elif adopted:
            notes.append(f"{kind} {src['name']!r} was deleted: restored, holding the {len(adopted)} cell(s) "
                         "without nbgrader metadata the student typed in its place (or that define its "
                         "functions), moved there")
        else:
            others = [i + 1 for i, c in enumerate(nb.cells) if "nbgrader" not in c.metadata
                      and c.cell_type == src["cell_type"]]
            notes.append(f"{kind} {src['name']!r} was deleted: restored EMPTY; the student's own "
                         f"{src['cell_type']} cells (no nbgrader metadata) are cells {others[:10] or 'none'}: "
                         "the answer may be there")
    return notes


class RestoreMissingCells(NbGraderPreprocessor):
    """Sanitize step, before OverwriteCells: put back the source's cells a student deleted, tell the instructor.

    Replaces nbgrader 0.9.6's `OverwriteCells.add_missing_cells`, which puts
    back only grade cells and, when the cell before a deleted one in the
    source is not a grade or solution cell (e.g. the locked "## Tests"
    heading before the first test), raises KeyError: that student is not
    graded at all (0/0). See `restore_missing_cells` for the rule.
    """

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        nb.metadata.pop(RESTORED_KEY, None)
        if not info.get("db_url"):
            return nb, resources
        from nbgrader.api import Gradebook, MissingEntry
        with Gradebook(info["db_url"]) as gb:
            try:
                notebook = gb.find_notebook(info["notebook"], info["assignment"])
            except MissingEntry:
                return nb, resources
            grades = {c.name: c.max_score for c in notebook.grade_cells}
            solutions = {c.name for c in notebook.solution_cells}
            source = [{"name": c.name, "cell_type": c.cell_type, "source": c.source, "locked": c.locked,
                       "grade": c.name in grades, "solution": c.name in solutions, "points": grades.get(c.name)}
                      for c in notebook.source_cells]  # in the source's order
        notes = restore_missing_cells(nb, source)
        for note in notes:
            self.log.warning("%s (student %s): %s", info.get("notebook", "?"), info.get("student", "?"), note)
        if notes:
            nb.metadata[RESTORED_KEY] = notes
        return nb, resources


class KeepLastDuplicate(NbGraderPreprocessor):
    """Grade the last copy of a duplicated grade id and tell the instructor."""

    def preprocess(self, nb, resources):
        notes = keep_last_copies(nb)
        info = resources.get("nbgrader", {})
        for note in notes:
            self.log.warning("%s (student %s): %s", info.get("notebook", "?"), info.get("student", "?"), note)
        if notes:
            nb.metadata[NOTES_KEY] = notes
        else:
            nb.metadata.pop(NOTES_KEY, None)
        return nb, resources


def report_lines(nb, resources, analysis=None):
    """What the instructor should look at in this notebook's run, one line each ([] for nothing).

    `analysis`: `bngrade.integrity.analyse`'s answer (computed within its
    budget when not given). The code-review evidence comes ranked, strongest
    first; none of it has changed a score.
    """
    analysis = analysis if analysis is not None else analyse_within_budget(nb)
    lines = [f"duplicated cells: {n}" for n in nb.metadata.get(NOTES_KEY, [])]
    lines += [f"damaged notebook: {n}" for n in nb.metadata.get(RESTORED_KEY, [])]
    lines += [f"code review: {n}" for n in analysis.get("evidence", [])]
    lines += [f"suspicious: {n}" for n in analysis.get("suspicious", [])]
    if analysis.get("budget"):
        lines.append(f"analysis: {analysis['budget']}")
    for name, why in sorted((resources.get("bngrade_result_problems") or {}).items()):
        lines.append(f"result file {name!r} not read: {why}")
    execution = resources.get("bngrade_execution") or {}
    if execution and not execution.get("sandboxed", True):
        lines.append("run: graded WITHOUT the sandbox (the unsafe opt-out was set)")
    for key, what in (("timed_out", "timed out"), ("kernel_died", "the kernel died"), ("retried", "retried once")):
        if execution.get(key):
            lines.append(f"run: {what}" + (f" ({execution['message']})" if execution.get("message") else ""))
    return lines


def _manual_cells(nb):
    meta = [(i, c.metadata.get("nbgrader", {})) for i, c in enumerate(nb.cells)]
    return [i for i, m in meta if m.get("grade") and m.get("solution")]


def instructor_cell(lines, header):
    """A markdown cell for the formgrader (escaped: it quotes the student's code), marked instructor-only."""
    shown = [html.escape(line[:400], quote=True) for line in lines[:MAX_CELL_LINES]]
    if len(lines) > MAX_CELL_LINES:
        shown.append(f"... {len(lines) - MAX_CELL_LINES} more lines in the report file")
    return new_markdown_cell(
        f"{INSTRUCTOR_ONLY}\n**{html.escape(header)}** (from the grader, for the instructor; not in the "
        "student's feedback; it changed no score)\n\n<pre>" + "\n".join(shown) + "</pre>")


class ReportSuspiciousCode(NbGraderPreprocessor):
    """Write the integrity report of one notebook, and show its code review in the formgrader.

    Never changes a score. The report goes to `<report_dir>/<assignment>/<student>/<notebook>.txt`;
    the code-review evidence (and the rest of the report) also goes into the
    autograded notebook, as one markdown cell just above the first cell graded
    by hand (the derivation, where there is one), so the instructor sees it
    where they grade; `DropInstructorNotes` takes it out of the feedback.
    The analysis of the code runs in a child process bounded in time and memory.
    """

    report_dir = Unicode("reports", help="Where the reports go, relative to the course root "
                                         "(or absolute).").tag(config=True)
    analysis_timeout = Integer(60, help="seconds the code analysis may take (a child process)").tag(config=True)
    analysis_memory_mb = Integer(1024, help="address space of the analysis process, MiB").tag(config=True)
    analysis_max_code_bytes = Integer(256 * 1024, help="code cells larger than this are not analysed "
                                                      "(reported)").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        student, assignment = info.get("student", "unknown"), info.get("assignment", "unknown")
        notebook = info.get("notebook", "notebook")
        analysis = analyse_within_budget(nb, timeout=self.analysis_timeout, memory_mb=self.analysis_memory_mb,
                                         max_code_bytes=self.analysis_max_code_bytes)
        lines = report_lines(nb, resources, analysis)
        nb.metadata.pop(NOTES_KEY, None)
        nb.metadata.pop(RESTORED_KEY, None)
        nb.cells = [c for c in nb.cells if not _is_instructor_note(c)]
        root = CourseDirectory(config=self.config).root
        folder = os.path.join(root, self.report_dir, assignment, student)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{notebook}.txt")
        head = f"{assignment} / {student} / {notebook}: "
        body = (head + f"{len(lines)} thing(s) to look at (scores are not changed by this report)\n"
                + "".join(f"- {line}\n" for line in lines)) if lines else head + "nothing to report\n"
        with open(path, "w") as f:
            f.write(body)
        if lines:
            self.log.warning("Integrity report for %s/%s: %d thing(s) to look at, see %s",
                             student, notebook, len(lines), path)
            manual = _manual_cells(nb)
            at = manual[0] if manual else 0
            cell = instructor_cell(lines, f"Integrity report, {len(lines)} thing(s) to look at, "
                                                       "code review strongest first")
            if nb.get("nbformat_minor", 0) < 5:
                cell.pop("id", None)
            nb.cells.insert(at, cell)
        return nb, resources


class DropInstructorNotes(NbGraderPreprocessor):
    """Feedback: remove the cells the grader wrote for the instructor (`INSTRUCTOR_ONLY`)."""

    def preprocess(self, nb, resources):
        nb.cells = [c for c in nb.cells if not _is_instructor_note(c)]
        return nb, resources


class FeedbackShowsOnlyGraderOutputs(NbGraderPreprocessor):
    """Feedback: drop the outputs of every code cell but the test cells.

    The kernel ran the test cells with their hidden cases (nbgrader restores
    them), so a student's own cell, or a locked cell whose `print` the student
    patched, could print the hidden case list (checks and seeds) into the
    notebook; the feedback would then carry it out. The test cells' outputs
    are written by the grader (`ScoreOutsideKernel`), so they stay; the
    student has the other outputs in their own Jupyter.
    """

    def preprocess_cell(self, cell, resources, index):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and not (meta.get("grade") and not meta.get("solution")):
            cell.outputs = []
            cell.execution_count = None
        return cell, resources
