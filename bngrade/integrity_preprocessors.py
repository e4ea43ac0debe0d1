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
import os

from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

from bngrade.integrity import closed_form_problem, keep_last_copies, suspicious_notebook

NOTES_KEY = "bngrade_integrity_notes"  # notebook metadata: the sanitize step's notes for the report


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


def report_lines(nb, resources):
    """What the instructor should look at in this notebook's run, one line each ([] for nothing)."""
    lines = [f"duplicated cells: {n}" for n in nb.metadata.get(NOTES_KEY, [])]
    lines += [f"suspicious: {n}" for n in suspicious_notebook(nb)]
    problem = closed_form_problem(nb)
    if problem:
        lines.append(f"closed form: {problem}")
    for name, why in sorted((resources.get("bngrade_result_problems") or {}).items()):
        lines.append(f"result file {name!r} not read: {why}")
    execution = resources.get("bngrade_execution") or {}
    if execution and not execution.get("sandboxed", True):
        lines.append("run: graded WITHOUT the sandbox (the unsafe opt-out was set)")
    for key, what in (("timed_out", "timed out"), ("kernel_died", "the kernel died"), ("retried", "retried once")):
        if execution.get(key):
            lines.append(f"run: {what}" + (f" ({execution['message']})" if execution.get("message") else ""))
    return lines


class ReportSuspiciousCode(NbGraderPreprocessor):
    """Write the integrity report of one notebook; never changes a score."""

    report_dir = Unicode("reports", help="Where the reports go, relative to the course root "
                                         "(or absolute).").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        student, assignment = info.get("student", "unknown"), info.get("assignment", "unknown")
        notebook = info.get("notebook", "notebook")
        lines = report_lines(nb, resources)
        nb.metadata.pop(NOTES_KEY, None)
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
