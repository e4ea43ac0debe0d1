"""Grades to Canvas: an nbgrader export plugin writing Canvas's gradebook-import CSV.

    nbgrader export --exporter=bngrade.export_canvas.CanvasExportPlugin \\
        --CanvasExportPlugin.roster=roster.csv [--CanvasExportPlugin.canvas_to=canvas_grades.csv]

(`make export-grades ROSTER=roster.csv` runs it in the course.) It writes
nbgrader's own CSV first (grades.csv, or --to), unchanged, then the Canvas file.

The roster is the CSV Canvas exports from its Gradebook (Export > Export
Entire Gradebook). Canvas's import format (Canvas guide "How do I import
grades in the Gradebook?"): the columns `Student`, `ID`, `SIS User ID`,
`SIS Login ID`, `Section`, then one column per assignment, headed
`Name (Canvas assignment id)` to update an existing assignment or a bare name
to create one; an optional second row `Points Possible`; a student is matched
on ID, SIS User ID or SIS Login ID; an empty cell leaves that grade as it is.

Decisions:
- nbgrader's student id is matched against the roster's `match_column`
  (default `SIS Login ID`); a student of the gradebook the roster lacks is
  named in the log and left out (Canvas would refuse the file); a student of
  the roster without a submission gets an empty cell (`missing_as_zero`: 0).
- An assignment column: the roster's own header for it when it has one
  (`bn_forward (1234)`: Canvas updates that assignment), else nbgrader's name.
- The score is nbgrader's (after the late penalty), as in grades.csv.
- A roster cell that a spreadsheet would run as a formula (starting with
  = + - @) is written with a leading apostrophe in the Student and Section
  columns (never in the id columns Canvas matches on).
"""
import csv
import re
from pathlib import Path

from nbgrader.api import MissingEntry
from nbgrader.plugins.export import CsvExportPlugin
from traitlets import Bool, Unicode

CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
POINTS_ROW = "Points Possible"


def _safe_text(value):
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def read_roster(path):
    """(header, [row dicts]) of a Canvas gradebook export; its Points Possible row and test student dropped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in CANVAS_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path} is not a Canvas gradebook export: no column {', '.join(missing)} "
                             f"(its columns: {', '.join(header[:8])})")
        rows = [r for r in reader if r["Student"].strip() != POINTS_ROW and r["Student"].strip()
                and r["Student"].strip() != "Student, Test"]
    return header, rows


def canvas_rows(roster_rows, header, scores, max_scores, match_column="SIS Login ID", missing_as_zero=False):
    """The Canvas import table: [header, points row, student rows]; scores = {assignment: {student: score}}."""
    columns = []
    for name in scores:
        own = [h for h in header if re.fullmatch(re.escape(name) + r" \(\d+\)", h)]
        columns.append((name, own[0] if own else name))
    out = [CANVAS_COLUMNS + [col for _, col in columns],
           [POINTS_ROW, "", "", "", ""] + [f"{max_scores[name]:g}" for name, _ in columns]]
    for r in roster_rows:
        key = r[match_column].strip()
        row = [_safe_text(r["Student"]), r["ID"], r["SIS User ID"], r["SIS Login ID"], _safe_text(r["Section"])]
        for name, _ in columns:
            score = scores[name].get(key)
            row.append(f"{score:g}" if score is not None else ("0" if missing_as_zero else ""))
        out.append(row)
    return out


class CanvasExportPlugin(CsvExportPlugin):
    """nbgrader's grades.csv, then Canvas's gradebook-import CSV (see the module's docstring)."""

    roster = Unicode("", help="the CSV Canvas exports from its Gradebook (its students and ids)").tag(config=True)
    canvas_to = Unicode("canvas_grades.csv", help="where to write Canvas's import file").tag(config=True)
    match_column = Unicode("SIS Login ID", help="the roster column that holds nbgrader's student ids"
                           ).tag(config=True)
    missing_as_zero = Bool(False, help="0 (not an empty cell) for a student without a submission").tag(config=True)

    def export(self, gradebook):
        super().export(gradebook)  # nbgrader's own CSV, unchanged
        if not self.roster:
            raise ValueError("CanvasExportPlugin needs the roster Canvas exports: "
                             "--CanvasExportPlugin.roster=PATH (make export-grades ROSTER=PATH)")
        header, rows = read_roster(self.roster)
        if self.match_column not in header:
            raise ValueError(f"the roster has no column {self.match_column!r}")
        names = [a.name for a in gradebook.assignments if not self.assignment or a.name in self.assignment]
        scores, max_scores = {}, {}
        for name in names:
            assignment = gradebook.find_assignment(name)
            max_scores[name] = assignment.max_score
            scores[name] = {}
            for student in gradebook.students:
                if self.student and student.id not in self.student:
                    continue
                try:
                    scores[name][student.id] = gradebook.find_submission(name, student.id).score
                except MissingEntry:
                    pass
        on_roster = {r[self.match_column].strip() for r in rows}
        absent = sorted({s for by in scores.values() for s in by} - on_roster)
        if absent:
            self.log.warning("not on the Canvas roster (left out of %s): %s", self.canvas_to, ", ".join(absent))
        table = canvas_rows(rows, header, scores, max_scores, self.match_column, self.missing_as_zero)
        with open(Path(self.canvas_to), "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(table)
        self.log.info("Canvas gradebook import: %s (%d students, %d assignments)", self.canvas_to,
                      len(table) - 2, len(names))
