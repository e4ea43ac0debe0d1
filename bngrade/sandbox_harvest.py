"""The harvest of a sandboxed run: results, the kernel's own words, the cells that did not run.

Everything here reads data the sandbox wrote as data: the result files
through `sandbox_files.read_results` (bounded, regular files only, read
under the sandbox's /proc/<pid>/root), the kernel's stderr through the
grader's own descriptor, never a path the sandbox could have replaced.
"""
import os

from nbformat.v4 import new_output

from bngrade.sandbox_files import read_results


def harvest(report, root, relative, max_file_bytes, max_total_bytes):
    """Read the results under `root`/`relative` into report["results"] / report["problems"]."""
    if root is None:
        return
    results, problems = read_results(root, relative, max_file_bytes, max_total_bytes)
    if "" in problems and report["results"]:
        return  # the sandbox is gone: keep what was read after the previous cell
    report["results"], report["problems"] = results, problems


def log_tail(kernel_log, nbytes=800):
    """'; the kernel said: ...' from the end of the kernel's stderr file (our descriptor), or ''."""
    if kernel_log is None:
        return ""
    try:
        fd = kernel_log.fileno()
        size = os.fstat(fd).st_size
        tail = os.pread(fd, nbytes, max(0, size - nbytes)).decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
    return f"; the kernel said: {tail}" if tail else ""


def mark_not_run(nb, start, why):
    """An error output on every code cell from `start` on: it did not run (to completion)."""
    for cell in nb.cells[start:]:
        if cell.cell_type == "code" and cell.source.strip():
            cell.setdefault("outputs", [])
            cell.outputs.append(new_output("error", ename="NotRun", evalue=why,
                                           traceback=[f"NotRun: {why}; this cell did not run to the end"]))
