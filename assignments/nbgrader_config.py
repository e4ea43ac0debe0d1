"""nbgrader configuration of the bnkit course. Run nbgrader from this directory.

See README.md here for the instructor workflow, and `bngrade` (the package
beside this directory) for how a submission is graded:

- every student's kernel runs in a bubblewrap sandbox (`SandboxedExecute`,
  the block marked "sandbox" below), where bnkit's reference, torch and the
  course are not visible; the test cells only record what the student's
  functions return;
- `ScoreOutsideKernel` then decides each test cell's score in this process
  (bnkit as the reference, partial credit per case) and writes the lines the
  student sees, before `SaveAutoGrades` stores the grades.
"""
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests, GetGrades,
                                    IgnorePattern, LimitOutput, SaveAutoGrades)

from bngrade.preprocessors import ScoreOutsideKernel, ScrubHiddenTestsFromOutputs
from bngrade.sandbox import SandboxedExecute

c = get_config()  # noqa: F821 (provided by traitlets when this file is loaded)

c.CourseDirectory.course_id = "bnkit"
c.CourseDirectory.root = "."

# Each notebook runs in seconds; a stuck or very slow cell is interrupted,
# records CellTimeoutError and grading moves on to the next student.
c.ExecutePreprocessor.timeout = 60
c.Execute.timeout = 60

# A deleted or retyped test cell comes back from the source (by grade id and checksum).
c.OverwriteCells.add_missing_cells = True

# The score of every test cell is decided after execution, outside the kernel,
# and before SaveAutoGrades reads it (from the cell's outputs: ScoreOutsideKernel
# leaves only its lines and an execute_result holding the partial score).
c.Autograde.autograde_preprocessors = [
    SandboxedExecute, ScoreOutsideKernel, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
    SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
]

# Feedback: the autograded notebooks hold the hidden tests; take them out of
# the outputs and of the source before rendering (nbgrader's default keeps them).
c.GenerateFeedback.preprocessors = [GetGrades, ScrubHiddenTestsFromOutputs, ClearHiddenTests,
                                    CSSHTMLHeaderPreprocessor]

# --- sandbox ---
# (owner: SANDBOX; bngrade/sandbox.py)

# --- integrity ---
# (owner: INTEGRITY; bngrade/integrity.py, bngrade/integrity_preprocessors.py)
# A duplicated grade id (a copy-pasted cell): grade the last copy, tell the
# instructor. nbgrader's own DeduplicateIds leaves metadata that
# CheckCellMetadata then rejects, so the student was not graded at all.
# Suspicious code is reported in reports/<assignment>/<student>/<notebook>.txt
# and the log, after the verdict and before SaveAutoGrades; it never changes a
# score (the sandbox and the verdict outside the kernel are the defence).
from nbgrader.preprocessors import ClearOutput, OverwriteCells, OverwriteKernelspec  # noqa: E402

from bngrade.integrity_preprocessors import KeepLastDuplicate, ReportSuspiciousCode  # noqa: E402

c.Autograde.sanitize_preprocessors = [ClearOutput, KeepLastDuplicate, OverwriteKernelspec, OverwriteCells,
                                      CheckCellMetadata]
_pre = [p for p in c.Autograde.autograde_preprocessors if getattr(p, "__name__", "") != "FlagTampering"]
if ReportSuspiciousCode not in _pre:  # right after the executor (and the verdict, where there is one)
    _after = max(i for i, p in enumerate(_pre) if getattr(p, "__name__", "") in ("Execute", "SandboxedExecute",
                                                                                   "ScoreOutsideKernel"))
    _pre.insert(_after + 1, ReportSuspiciousCode)
c.Autograde.autograde_preprocessors = _pre
c.ReportSuspiciousCode.report_dir = "reports"
