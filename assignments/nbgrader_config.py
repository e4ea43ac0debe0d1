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

from bngrade.feedback import MarkNotGradedYet
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
# Written answers a person has not graded yet say so (not "0.0 / 2").
c.GenerateFeedback.preprocessors = [GetGrades, MarkNotGradedYet, ScrubHiddenTestsFromOutputs, ClearHiddenTests,
                                    CSSHTMLHeaderPreprocessor]

# --- student HTML ---
# (owner: CHANNELS; bngrade/safe_html.py, bngrade/feedback.py)
# Whatever a student wrote is inert wherever a person reads it. nbgrader's
# feedback and the formgrader's submission page both render with nbconvert's
# HTMLExporter and this config: every markdown string and every HTML, markdown
# or SVG output goes through nh3 (no script, handler, iframe, form, external
# load); JavaScript and widget outputs are dropped. Feedback pages are one
# self-contained file: local MathJax inlined, and a Content-Security-Policy
# that allows no other script and no network load.
c.HTMLExporter.sanitize_html = True
c.HTMLExporter.filters = {"markdown2html": "bngrade.safe_html.markdown2html",
                          "clean_html": "bngrade.safe_html.clean_html"}
c.GenerateFeedback.exporter_class = "bngrade.feedback.SafeFeedbackExporter"

# --- sandbox ---
# (owner: SANDBOX; bngrade/sandbox.py)
# Every kernel runs in bubblewrap; without a working bwrap autograde stops
# with a message. The limits below cost only the student who hits them. A
# notebook that times out runs once more (load must not cost marks).
c.SandboxedExecute.memory_limit_mb = 2048   # address space of every process in the sandbox
c.SandboxedExecute.max_processes = 64       # processes + threads (a fork bomb stops here)
c.SandboxedExecute.disk_limit_mb = 256      # HOME + work dir + results, a tmpfs: nothing reaches the disk
c.SandboxedExecute.notebook_timeout = 900   # seconds for a whole notebook, besides the per-cell timeout
c.SandboxedExecute.retry_on_timeout = True
c.SandboxedExecute.max_output_bytes_per_cell = 1 << 20
# Only for trusted work, never for a class of strangers (the student's code
# then runs with your rights and can rewrite the gradebook):
# c.SandboxedExecute.unsafe_run_without_sandbox = True

# --- integrity ---
# (owner: INTEGRITY; bngrade/integrity.py, bngrade/integrity_preprocessors.py)
# A duplicated grade id (a copy-pasted cell): grade the last copy, tell the
# instructor. nbgrader's own DeduplicateIds leaves the other copies with empty
# nbgrader metadata, which a later sanitizer trips on (KeyError: 'grade_id'),
# so the student was not graded at all.
# Suspicious code is reported in reports/<assignment>/<student>/<notebook>.txt
# and the log, after the verdict and before SaveAutoGrades; it never changes a
# score (the sandbox and the verdict outside the kernel are the defence).
from nbgrader.preprocessors import ClearOutput, OverwriteCells, OverwriteKernelspec  # noqa: E402

from bngrade.integrity_preprocessors import (FeedbackShowsOnlyGraderOutputs, KeepLastDuplicate,  # noqa: E402
                                             ReportSuspiciousCode)

c.Autograde.sanitize_preprocessors = [ClearOutput, KeepLastDuplicate, OverwriteKernelspec, OverwriteCells,
                                      CheckCellMetadata]
_pre = [p for p in c.Autograde.autograde_preprocessors if getattr(p, "__name__", "") != "FlagTampering"]
if ReportSuspiciousCode not in _pre:  # right after the executor (and the verdict, where there is one)
    _after = max(i for i, p in enumerate(_pre) if getattr(p, "__name__", "") in ("Execute", "SandboxedExecute",
                                                                                   "ScoreOutsideKernel"))
    _pre.insert(_after + 1, ReportSuspiciousCode)
c.Autograde.autograde_preprocessors = _pre
c.ReportSuspiciousCode.report_dir = "reports"
# Feedback keeps only the outputs the grader wrote (the test cells'): a student's cell could print
# the hidden cases, which the kernel had to run.
if FeedbackShowsOnlyGraderOutputs not in c.GenerateFeedback.preprocessors:
    c.GenerateFeedback.preprocessors = [FeedbackShowsOnlyGraderOutputs] + list(c.GenerateFeedback.preprocessors)
