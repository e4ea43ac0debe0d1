"""Fail closed: nbgrader's own, unsandboxed kernel refuses to start for autograde.

nbgrader loads `nbgrader_config.py` and, when it raises (a missing import, a
syntax error, a broken bngrade), logs the error and carries on with its
defaults: the plain `Execute` preprocessor, which runs each student's code
with the grader's rights. So the course also ships `nbgrader_config.json`,
which nbgrader loads from the same directory independently of the .py
(data, nothing to import until a kernel is wanted):

    {"Execute": {"kernel_manager_class": "bngrade.sandbox_guard.RefuseUnsandboxedAutograde"}}

The sandboxed executor (`SandboxedExecute`) never uses that class: it builds
its own kernel manager, bubblewrap in front. Whatever else reaches a kernel
through nbclient while nbgrader autogrades (`NBGRADER_EXECUTION=autograde`)
gets this class, which raises before any kernel starts: every student fails
loudly, no notebook is graded, nothing is written to the gradebook. If this
module itself cannot be imported the class cannot be made either: closed too.
`nbgrader validate` and other commands keep a normal kernel.
"""
import os

from jupyter_client.manager import AsyncKernelManager

MESSAGE = ("bngrade refuses to autograde: the sandbox is not in force. nbgrader was about to run this student's "
           "code in its own, unsandboxed kernel, which happens when nbgrader_config.py failed to load (see the "
           "'Exception while loading config file' error above: a missing import, a syntax error, a broken "
           "bngrade) or when it no longer lists SandboxedExecute in c.Autograde.autograde_preprocessors. "
           "Fix the config and grade again; no student was graded.")


class SandboxNotInForce(Exception):
    """Autograde was about to start an unsandboxed kernel. (Not a RuntimeError: nbgrader retries those.)"""


class RefuseUnsandboxedAutograde(AsyncKernelManager):
    """jupyter_client's kernel manager, except that it will not exist while nbgrader autogrades."""

    def __init__(self, *args, **kwargs):
        if os.environ.get("NBGRADER_EXECUTION") == "autograde":
            raise SandboxNotInForce(MESSAGE)
        super().__init__(*args, **kwargs)
