"""bngrade: the grading of the bnkit nbgrader course (`assignments/`).

bnkit is the maths; this package grades students' numpy batch norm with it.
A student's notebook runs in a sandbox where bnkit's reference, torch and
the course are not visible; verdicts are decided outside, by the grader.

    test cell (kernel, sandboxed)            grader process (nbgrader autograde)
    -----------------------------            -----------------------------------
    from bngrade.harness import run_cases    bngrade.sandbox.SandboxedExecute:
    cases = [("train_output", 0)]              runs the notebook in bubblewrap, collects
    run_cases("test_train_output", cases,      $BNGRADE_RESULTS/<grade_id>.json
              forward=batchnorm_forward)     bngrade.preprocessors.ScoreOutsideKernel:
      -> runs the student's functions on       trusted case list from the gradebook's source,
         seeded inputs (bngrade.cases),        bnkit's reference (bngrade.verdict), partial
         writes raw float arrays as bytes      credit per case, one feedback line per case,
                                               the score as the cell's execute_result
                                             bngrade.integrity: static checks (suspicious
                                               code report, duplicated grade ids, the closed
                                               form must not reach the staged backward)

Modules: `cases` (checks: inputs, drivers, descriptions; numpy only),
`harness` (kernel side; numpy and `cases` only), `verdict` (reference,
comparison, score, feedback lines, hints), `preprocessors` (nbgrader:
ScoreOutsideKernel, the feedback scrubber), `integrity`, `sandbox`,
`autograde` (parallel runs with progress; the per-student unit).

Without `BNGRADE_RESULTS` (a student's own Jupyter), `run_cases` computes
the verdict locally and prints it, so the visible tests answer at home.

This file imports nothing: the sandbox exposes only `cases` and `harness`.
"""

# A course's config: every copy of a course (scratch, pack, hub) takes both files; the .json is
# the guard that makes autograde refuse to run unsandboxed when the .py fails (`sandbox_guard`).
COURSE_CONFIG = ("nbgrader_config.py", "nbgrader_config.json")
