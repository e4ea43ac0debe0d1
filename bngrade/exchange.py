"""The student's `nbgrader submit`, copying data only.

nbgrader's exchange copies a student's assignment folder into the shared
inbound directory with shutil.copytree, which follows symbolic links: a link
named data.bin pointing at /dev/zero, in a student's folder, makes their own
submit write zeros into the exchange until the host's disk is full (its size
check skips links; its per-file size check reads /dev/zero's size, 0).

`SafeExchangeSubmit` (the hub's student config: `ExchangeFactory.submit`)
leaves out symbolic links, FIFOs, sockets and devices, says so in the
submit's output, and copies the rest as nbgrader does (ignore globs,
include globs, size limits, permissions). A folder nested deeper than the
grader accepts (`submission_file.MAX_DEPTH`) is not submitted, with a message.
"""
from nbgrader.exchange.default.submit import ExchangeSubmit

from .submission_file import leaving_out, unsafe_entries


class SafeExchangeSubmit(ExchangeSubmit):
    def do_copy(self, src, dest, log=None):
        skip, refuse = unsafe_entries(src, max_entries=10 ** 9, max_total_mb=10 ** 9)  # size: nbgrader's own limits
        if refuse:  # nesting the grader would refuse: say so now, while the student can still fix it
            self.fail(f"{src} is not submitted: {refuse}; the grader would not grade it")
        with leaving_out(self.coursedir, skip, self.log, "left out of the submission (not regular files)"):
            return super().do_copy(src, dest, log)
