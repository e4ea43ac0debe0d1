"""nbgrader configuration of the bnkit course. Run nbgrader from this directory.

See README.md here for the instructor workflow, and `bngrade` (the package
beside this directory) for how a submission is graded:

- every student's kernel runs in a bubblewrap sandbox (`SandboxedExecute`,
  the block marked "sandbox" below), where bnkit's reference, torch and the
  course are not visible; the test cells only record what the student's
  functions return;
- if this file fails to load (nbgrader then logs the error and carries on with
  its defaults: no sandbox), `nbgrader_config.json` beside it, which nbgrader
  loads on its own, makes every unsandboxed kernel refuse to start during
  autograde (`bngrade/sandbox_guard.py`): grading stops, loudly. Copy both;
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

# An edited test cell comes back from the source (by grade id and checksum); a deleted one is put
# back by RestoreMissingCells (the "integrity" block below).

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
# (owner: SANDBOX; bngrade/sandbox*.py; what the kernel sees and may do: bngrade/sandbox_policy.py)
# Every kernel runs in bubblewrap under a seccomp filter, in its own cgroup; without a working bwrap or
# libseccomp autograde stops with a message, and without a cgroup it says so when it starts. The limits
# below cost only the student who hits them.
c.SandboxedExecute.total_memory_mb = 2560   # the whole sandbox (cgroup): processes, tmpfs, /dev/shm, memfd
c.SandboxedExecute.memory_limit_mb = 2048   # address space of each process (one huge array: MemoryError)
c.SandboxedExecute.max_processes = 64       # processes + threads (cgroup pids.max; a fork bomb stops here)
c.SandboxedExecute.disk_limit_mb = 256      # HOME + work dir + results, a tmpfs: nothing reaches the disk
# Time: a notebook may hold a worker for 10x its reference solution's time (measured once, in the sandbox),
# at least 120 s, at most notebook_timeout. A timeout is retried once only when load starved the sandbox.
c.SandboxedExecute.time_budget_margin = 10.0
c.SandboxedExecute.time_budget_floor = 120
c.SandboxedExecute.notebook_timeout = 900
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
# Suspicious code and the ranked code review of the backwards (does the closed
# form reuse the staged backward? does a backward differentiate the forward?)
# are reported in reports/<assignment>/<student>/<notebook>.txt, the log and a
# markdown cell of the autograded notebook (formgrader; not in feedback), after
# the verdict and before SaveAutoGrades; they never change a score (the
# sandbox, the verdict outside the kernel and the cases at scale are the defence).
from nbgrader.preprocessors import ClearOutput, OverwriteCells, OverwriteKernelspec  # noqa: E402

from bngrade.integrity_preprocessors import (DropInstructorNotes, FeedbackShowsOnlyGraderOutputs,  # noqa: E402
                                             KeepLastDuplicate, ReportSuspiciousCode, RestoreMissingCells)

# A deleted cell of the source (test, locked or answer cell) comes back before OverwriteCells, and the
# report says so: nbgrader's own add_missing_cells raised KeyError when the cell before the deleted one
# was not a grade cell (e.g. the first test after the "## Tests" heading), and that student got 0/0.
c.OverwriteCells.add_missing_cells = False
# The submitted notebook is read as data (bngrade.submission_file): a regular file, never followed, at most
# 32 MiB and 1000 cells, checked before it is parsed; a refused one is that student's error, no grade. The
# exporter also keeps links, FIFOs and devices out of nbgrader's copy of the submission's other files.
c.Autograde.exporter_class = "bngrade.submission_file.CheckedNotebookExporter"
c.Autograde.sanitize_preprocessors = [ClearOutput, KeepLastDuplicate, RestoreMissingCells, OverwriteKernelspec,
                                      OverwriteCells, CheckCellMetadata]
_pre = [p for p in c.Autograde.autograde_preprocessors if getattr(p, "__name__", "") != "FlagTampering"]
if ReportSuspiciousCode not in _pre:  # right after the executor (and the verdict, where there is one)
    _after = max(i for i, p in enumerate(_pre) if getattr(p, "__name__", "") in ("Execute", "SandboxedExecute",
                                                                                   "ScoreOutsideKernel"))
    _pre.insert(_after + 1, ReportSuspiciousCode)
c.Autograde.autograde_preprocessors = _pre
c.ReportSuspiciousCode.report_dir = "reports"
# The code analysis (suspicious constructs, the ranked code review of the backwards) runs in a child
# process with these limits; past them the report says "analysis budget exceeded". No score depends on it.
c.ReportSuspiciousCode.analysis_timeout = 60
c.ReportSuspiciousCode.analysis_memory_mb = 1024
c.ReportSuspiciousCode.analysis_max_code_bytes = 256 * 1024
# Feedback keeps only the outputs the grader wrote (the test cells'): a student's cell could print
# the hidden cases, which the kernel had to run.
if FeedbackShowsOnlyGraderOutputs not in c.GenerateFeedback.preprocessors:
    c.GenerateFeedback.preprocessors = [FeedbackShowsOnlyGraderOutputs] + list(c.GenerateFeedback.preprocessors)
# ... and not the code review the grader wrote into the autograded notebook for the instructor (formgrader).
if DropInstructorNotes not in c.GenerateFeedback.preprocessors:
    c.GenerateFeedback.preprocessors = [DropInstructorNotes] + list(c.GenerateFeedback.preprocessors)
