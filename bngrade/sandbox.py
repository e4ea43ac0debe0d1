"""Run each submission's kernel inside bubblewrap: `SandboxedExecute`.

`SandboxedExecute` replaces nbgrader's `Execute` in the course config, so
plain `nbgrader autograde` (and the formgrader's button) run every student's
notebook in a fresh sandbox. The modules, one job each:

- sandbox_policy.py: WHAT the kernel sees and may do (mounts, environment,
  denied syscalls, limits, time budget), as one declaration to audit;
- sandbox_bwrap.py: bwrap's argv and the kernel's bootstrap;
- sandbox_seccomp.py: the seccomp filter, compiled at run time (libseccomp);
- sandbox_cgroup.py: one cgroup per sandbox (total memory, processes, CPU);
- sandbox_files.py: the submission copied by content, the results read by
  descriptor, the bounded IPC directory;
- sandbox_kernel.py: the kernel's lifecycle (its manager and client, its
  processes on the host, its end) and whether a timeout came from load;
- sandbox_harvest.py: the harvest of a run (results, the kernel's stderr,
  the cells that did not run);
- this file: the nbgrader preprocessor that drives them: one notebook run
  (cells, time budget, retry), the run directory, the sandbox's trial.

Decisions (the design leaves them to this module):
- The uid is `uid_base + pid % 20000` of the grading process, so two parallel
  graders do not share one RLIMIT_NPROC count.
- Results are read by the grader *from the live sandbox*, through
  `/proc/<init pid>/root/sandbox/results`, after every cell (so a kernel that
  dies later keeps what it wrote) and before the kernel is stopped.
- Output is capped while messages arrive (`max_output_bytes_per_cell`); past
  `flood_bytes_per_cell` the cell is interrupted. zmq's MAXMSGSIZE drops any
  single message larger than `max_message_bytes` before it is decoded.
- Time: a notebook may hold a worker for its time budget (the reference
  solution's measured time times `time_budget_margin`, within
  [`time_budget_floor`, `notebook_timeout`]). A cell that runs past its
  timeout is interrupted and the next cells run; past the budget the rest is
  marked not run, so only the tests not reached are lost. The notebook runs
  once more in a fresh sandbox only when the kernel did not start, or when a
  timeout came while the sandbox was starved of CPU by others (its kernel
  waited on the run queue for at least a quarter of the time, and the whole
  sandbox used under 0.6 of one CPU, so the waiting was not its own threads
  competing; a kernel that lowered its own priority does not count): load
  must not cost marks, and a student's own sleep or spin is never retried.
- The IPC sockets live in a host directory the kernel must write; as root it
  is a 4 MiB tmpfs mounted for the run (unmounted after), handed back to root
  once the kernel answers (before any student code runs). The connection file
  is in a separate directory the sandbox cannot write; every chown/chmod is
  made on a descriptor, never on a path the sandbox could have replaced.
- A file that is a symbolic link, a hard link, a FIFO, socket or device in
  the student's submitted/ directory (or in autograded/) is not given to the
  kernel; a notebook that is itself one is not run at all. The instructor is
  told in the log.
- Interrupts are sent as `interrupt_request` messages (a signal to bwrap's
  process group would not reach a kernel in its own session).
- Without a working bwrap or libseccomp, the first notebook raises
  `SandboxUnavailable` (a SystemExit). Without a cgroup, autograde says once,
  at its start, that the total memory and process count are not bounded.
  `unsafe_run_without_sandbox = True` runs plain nbgrader execution.
"""
import copy
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbgrader.preprocessors import Execute
from traitlets import Bool, Float, Integer, List, Unicode

from bngrade import sandbox_policy as policy
from bngrade.output_caps import OutputCaps
from bngrade.sandbox_bwrap import kernel_site_binds, sandbox_argv  # noqa: F401 (kernel_site_binds: re-exported)
from bngrade.sandbox_cgroup import Cgroup, CgroupUnavailable, sweep_stale
from bngrade.sandbox_files import (copy_given_files, listing, private_tmpfs, read_results,  # noqa: F401 (re-exported)
                                   run_dir_prefix, submission_refusals, sweep_stale_mounts, unmount)
from bngrade.sandbox_harvest import harvest, log_tail, mark_not_run
from bngrade.sandbox_kernel import (SandboxedKernelClient, SandboxedKernelManager,  # noqa: F401 (re-exported)
                                    close_ipc_dir, kernel_pid, load_sample, lowered_own_priority, sandbox_root,
                                    starved_by_others, wait_for_sandbox_end)
from bngrade.sandbox_seccomp import SeccompUnavailable, compile_filter

INSIDE_RESULTS = policy.RESULTS
MiB = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class SandboxUnavailable(SystemExit):
    """bubblewrap or libseccomp is missing, or a trial sandbox failed: autograde stops."""


class _RetryNotebook(Exception):
    """A timeout in a run that will be retried: stop this run now."""


class SandboxedExecute(OutputCaps, Execute):
    """nbgrader's Execute, with every kernel in a fresh bubblewrap sandbox (module docstring)."""

    bwrap_path = Unicode("/usr/bin/bwrap", help="bubblewrap's executable").tag(config=True)
    setpriv_path = Unicode("/usr/bin/setpriv", help="util-linux setpriv (drops root inside)").tag(config=True)
    unsafe_run_without_sandbox = Bool(
        False, help="UNSAFE: run student code with the grader's rights when bubblewrap is unavailable").tag(config=True)
    total_memory_mb = Integer(policy.LIMITS["total_memory_mb"],
                              help="the whole sandbox's memory (cgroup): processes, tmpfs, shm, memfd").tag(config=True)
    memory_limit_mb = Integer(policy.LIMITS["memory_limit_mb"],
                              help="address-space limit of every process in the sandbox").tag(config=True)
    max_processes = Integer(policy.LIMITS["max_processes"],
                            help="processes/threads of the sandbox (cgroup pids.max, RLIMIT_NPROC)").tag(config=True)
    max_file_mb = Integer(policy.LIMITS["max_file_mb"], help="largest file the kernel may write").tag(config=True)
    disk_limit_mb = Integer(policy.LIMITS["disk_limit_mb"],
                            help="size of the sandbox's writable tmpfs (HOME, work, results)").tag(config=True)
    tmp_limit_mb = Integer(policy.LIMITS["tmp_limit_mb"], help="size of the sandbox's private /tmp").tag(config=True)
    shm_limit_mb = Integer(policy.LIMITS["shm_limit_mb"], help="size of the sandbox's /dev/shm").tag(config=True)
    require_cgroup = Bool(False, help="refuse to grade where no cgroup can bound the sandbox's total memory").tag(
        config=True)
    uid_base = Integer(200000, help="the sandbox's uid is uid_base + (grader pid % 20000)").tag(config=True)
    notebook_timeout = Integer(policy.TIME_BUDGET["cap_s"],
                               help="most seconds a notebook may hold a worker (the budget's cap)").tag(config=True)
    time_budget_margin = Float(policy.TIME_BUDGET["margin"],
                               help="time budget = this x the reference solution's time (0: always the cap)").tag(
        config=True)
    time_budget_floor = Integer(policy.TIME_BUDGET["floor_s"], help="the time budget is never below this").tag(
        config=True)
    budget_cache_dir = Unicode("", help="where the reference solutions' times are kept (default ~/.cache/bngrade)").tag(
        config=True)
    retry_on_timeout = Bool(True, help="run a notebook once more when a timeout came from load").tag(config=True)
    interrupt_grace = Integer(20, help="seconds a timed-out cell has to stop after the interrupt").tag(config=True)
    max_output_bytes_per_cell = Integer(1 * MiB, help="output kept per cell; the rest dropped").tag(config=True)
    flood_bytes_per_cell = Integer(16 * MiB, help="output past which the cell is interrupted").tag(config=True)
    max_message_bytes = Integer(32 * MiB, help="a larger single kernel message is dropped").tag(config=True)
    max_result_file_bytes = Integer(8 * MiB).tag(config=True)
    max_result_total_bytes = Integer(32 * MiB).tag(config=True)
    kernel_packages = List(Unicode(), list(policy.KERNEL_PACKAGES),
                           help="distributions (with their requirements) visible in the sandbox").tag(config=True)
    scratch_dir = Unicode("", help="where the per-notebook run directories go (default: the temp dir)").tag(
        config=True)

    # Load must not cost marks: nbclient's defaults (4 s for trailing output, 60 s to start) are tight.
    iopub_timeout = Integer(60).tag(config=True)
    startup_timeout = Integer(120).tag(config=True)

    _will_retry = False
    _init_pid = None
    _cgroup = None
    _trials = {}  # per process, by (bwrap, setpriv): True, or why the trial sandbox failed
    _notes = set()  # things said once per process (no cgroup, no host tmpfs)
    _reference_times = {}  # per process, by the source notebook's sha256: seconds (None: not measurable)

    # ------------------------------------------------------------------ public entry
    def preprocess(self, nb, resources, retries=None):
        if self.unsafe_run_without_sandbox:
            self.log.warning("UNSAFE: c.SandboxedExecute.unsafe_run_without_sandbox is set: this student's code "
                             "runs with YOUR rights, unsandboxed (it can rewrite the gradebook and other grades)")
        else:
            self.check_sandbox()
        refused = self._notebook_refused(resources)
        if refused:
            msg = f"the submitted notebook is {refused}: it was not run (an instructor must look at it)"
            self.log.error("bngrade: %s: %s", resources.get("metadata", {}).get("path"), msg)
            self._mark_not_run(0, msg, nb)
            resources["bngrade_results"], resources["bngrade_result_problems"] = {}, {}
            resources["bngrade_execution"] = dict(sandboxed=not self.unsafe_run_without_sandbox, timed_out=False,
                                                  kernel_died=False, retried=False, message=msg, refused=True)
            return nb, resources
        budget = self.time_budget(resources)
        pristine = copy.deepcopy(nb)
        self._will_retry = self.retry_on_timeout
        report = self._run(nb, resources, budget)
        self._will_retry = False
        if report["retry"] and self.retry_on_timeout:
            self.log.warning("bngrade: %s; running the notebook once more in a fresh sandbox", report["message"])
            nb = copy.deepcopy(pristine)
            first = report["message"]
            report = self._run(nb, resources, budget)
            report["retried"] = True
            report["message"] = f"first run: {first}; second run: {report['message'] or 'completed'}"
        report.pop("retry")
        resources["bngrade_results"] = report.pop("results")
        resources["bngrade_result_problems"] = report.pop("problems")
        resources["bngrade_execution"] = report
        if report["timed_out"] or report["kernel_died"]:
            self.log.warning("bngrade: %s", report["message"])
        return nb, resources

    def check_sandbox(self):
        """Raise SandboxUnavailable unless a trial sandbox runs python (once per process)."""
        key = (self.bwrap_path, self.setpriv_path)
        if key not in self._trials:
            if os.geteuid() == 0:  # what graders killed with SIGKILL left behind (their sandboxes died with them)
                stale = sweep_stale() + sweep_stale_mounts()
                if stale:
                    self.log.info("bngrade: removed %d cgroups and IPC mounts of graders no longer running", len(stale))
            self._trials[key] = self._trial()
        if self._trials[key] is not True:
            msg = (f"bngrade refuses to autograde without a sandbox: {self._trials[key]}. Install bubblewrap "
                   "and libseccomp (`apt-get install -y bubblewrap libseccomp2`, or `make bwrap`), or, only if "
                   "every submission is trusted, set c.SandboxedExecute.unsafe_run_without_sandbox = True in "
                   "nbgrader_config.py.")
            self.log.error(msg)
            raise SandboxUnavailable(msg)

    def _trial(self):
        if not os.access(self.bwrap_path, os.X_OK):
            return f"bubblewrap not found at {self.bwrap_path}"
        run = self._new_run_dir()
        try:
            os.mkdir(os.path.join(run, "submission"))
            try:
                argv = self._argv(run, python_code="import numpy, ipykernel; print('bngrade-sandbox-ok')")
            except (SeccompUnavailable, CgroupUnavailable) as e:
                return str(e)
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"a trial sandbox could not run ({e})"
            if "bngrade-sandbox-ok" not in p.stdout:
                return f"a trial sandbox failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-600:]}"
            return True
        finally:
            self._end_run_dir(run)

    # ------------------------------------------------------------------ the sandbox
    def sandbox_uid(self):
        return self.uid_base + os.getpid() % 20000 if os.geteuid() == 0 else -1

    def limits(self):
        return {k: getattr(self, k) for k in policy.LIMITS if hasattr(self, k)} | {
            "open_files": policy.LIMITS["open_files"]}

    def _say_once(self, key, level, msg, *args):
        if key not in self._notes:
            self._notes.add(key)
            getattr(self.log, level)(msg, *args)

    def _argv(self, run, python_code=None):
        """The command for `run` (seccomp filter compiled into it, a new cgroup in self._cgroup)."""
        uid = self.sandbox_uid()
        seccomp_file = os.path.join(run, "seccomp.bpf")
        compile_filter(seccomp_file)
        self._cgroup = None
        try:
            self._cgroup = Cgroup.make(self.total_memory_mb * MiB, self.max_processes + 8)
            self._say_once("cgroup", "info", "bngrade: each sandbox runs in its own cgroup v%s: total memory %s MiB, "
                           "%s processes", self._cgroup.version, self.total_memory_mb, self.max_processes)
        except CgroupUnavailable as e:
            if self.require_cgroup:
                raise
            self._say_once("cgroup", "warning", "bngrade: NO CGROUP could be made for the sandboxes (%s): each "
                           "process is limited (address space, file size, process count), but the sandbox's TOTAL "
                           "memory (many processes, tmpfs, /dev/shm, memfd) is NOT bounded. See assignments/README.md, "
                           "'The sandbox'.", e)
        env = {"NBGRADER_EXECUTION": os.environ["NBGRADER_EXECUTION"]} if os.environ.get("NBGRADER_EXECUTION") else {}
        return sandbox_argv(bwrap=self.bwrap_path, setpriv=self.setpriv_path, run=run, uid=uid, limits=self.limits(),
                            seccomp_file=seccomp_file, packages=tuple(self.kernel_packages), extra_env=env,
                            cgroup_procs=self._cgroup.procs_files() if self._cgroup else (),
                            python_code=python_code)

    # ------------------------------------------------------------------ the run directory
    def _new_run_dir(self):
        """run/ (0711) with conn/ (the connection file: the sandbox reads, cannot write) and ipc/ (sockets)."""
        scratch = self.scratch_dir or None
        # zmq's ipc:// sockets live in run/ipc/, and a Unix socket's path holds at most 107 bytes: a long
        # scratch directory (a deep course path, pytest-xdist's temp dirs) would stop every kernel
        # ("File name too long"), so such runs go to the system's temp directory instead.
        if scratch and len(os.path.abspath(scratch)) + len(run_dir_prefix()) + 8 + len("/ipc/kernel-99-ctrl") > 107:
            self._say_once("scratch", "warning", "bngrade: scratch_dir %s is too long for the kernel's IPC "
                           "sockets; run directories go to %s", scratch, tempfile.gettempdir())
            scratch = None
        run = tempfile.mkdtemp(prefix=run_dir_prefix(), dir=scratch)
        os.chmod(run, 0o711)
        os.mkdir(os.path.join(run, "conn"), 0o711)
        ipc = os.path.join(run, "ipc")
        os.mkdir(ipc, 0o700)
        uid = self.sandbox_uid()
        if uid >= 0:
            why = private_tmpfs(ipc, policy.IPC_TMPFS_BYTES, uid, uid)
            if why is None:
                self._mounted = getattr(self, "_mounted", set()) | {ipc}
            else:
                self._say_once("ipc", "warning", "bngrade: the IPC directory cannot be a private tmpfs here (%s): "
                               "it is a host directory, writable by the kernel until it answers", why)
                fd = os.open(ipc, _DIR)
                try:
                    os.fchown(fd, uid, uid)
                finally:
                    os.close(fd)
        return run

    def _end_run_dir(self, run):
        ipc = os.path.join(run, "ipc")
        if ipc in getattr(self, "_mounted", set()):
            unmount(ipc)
            self._mounted.discard(ipc)
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None
        shutil.rmtree(run, ignore_errors=True)

    def _give_files(self, run, resources):
        """Copy the student's directory into run/submission: plain files only, by content."""
        source = (resources or {}).get("metadata", {}).get("path") or "."
        sub = os.path.join(run, "submission")
        refused, copied = copy_given_files(source, sub, max_files=policy.MAX_FILES_GIVEN,
                                           max_depth=policy.MAX_DEPTH_GIVEN, max_bytes=self.disk_limit_mb * MiB // 2)
        submitted = self._submitted_dir(source)
        if submitted is not None:
            for rel, why in submission_refusals(submitted, copied).items():
                os.unlink(os.path.join(sub, rel))  # our own copy, in a directory only root writes
                refused[rel] = why
        if refused:
            self.log.warning("bngrade: %s: not given to the kernel: %s", submitted or source,
                             listing(sorted(refused.items())))
        return refused

    @staticmethod
    def _submitted_dir(autograded):
        """course/submitted/<student>/<assignment> for course/autograded/<student>/<assignment>, else None."""
        parts = Path(os.path.abspath(autograded)).parts
        if len(parts) < 4 or parts[-3] != "autograded":
            return None
        return str(Path(*parts[:-3], "submitted", *parts[-2:]))

    def _notebook_refused(self, resources):
        """Why the submitted notebook itself may not run (a link, not a file), or None.

        A hard link runs: it was read for what it holds (`bngrade.submission_file`, which logs it), and
        refusing it would refuse the classmate whose file it also names."""
        meta = (resources or {}).get("metadata", {})
        submitted = self._submitted_dir(meta.get("path") or ".")
        if submitted is None or not meta.get("name"):
            return None
        name = meta["name"] + ".ipynb"
        return submission_refusals(submitted, [name], hard_links_ok=True).get(name)

    # ------------------------------------------------------------------ the time budget
    def time_budget(self, resources):
        """Seconds this notebook may hold a worker: margin x the reference solution's time, in [floor, cap]."""
        cap = self.notebook_timeout
        if self.time_budget_margin <= 0 or cap <= 0:
            return cap
        seconds = self._reference_seconds(resources)
        if seconds is None:
            return cap
        return int(min(cap, max(self.time_budget_floor, self.time_budget_margin * seconds)))

    def _reference_seconds(self, resources):
        meta = (resources or {}).get("metadata", {})
        parts = Path(os.path.abspath(meta.get("path") or ".")).parts
        if not meta.get("name") or len(parts) < 4 or parts[-3] != "autograded":
            return None
        source_dir = str(Path(*parts[:-3], "source", parts[-1]))
        try:
            fd = os.open(os.path.join(source_dir, meta["name"] + ".ipynb"), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(64 * MiB)
        except OSError:
            return None
        key = hashlib.sha256(data).hexdigest()
        if key in self._reference_times:
            return self._reference_times[key]
        cache = Path(self.budget_cache_dir or os.path.expanduser("~/.cache/bngrade")) / f"reference-{key[:40]}.json"
        try:
            seconds = float(json.loads(cache.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            seconds = self._measure_reference(data, source_dir, meta["name"])
            if seconds is not None:
                try:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(json.dumps({"seconds": seconds, "notebook": meta["name"]}))
                    os.replace(tmp, cache)
                except OSError:
                    pass
        self._reference_times[key] = seconds
        if seconds is not None:
            self.log.info("bngrade: the reference solution of %s ran in %.1f s: a submission may hold a worker "
                          "for %d s", meta["name"], seconds,
                          min(self.notebook_timeout, max(self.time_budget_floor, self.time_budget_margin * seconds)))
        return seconds

    def _measure_reference(self, data, source_dir, name):
        """Run the source notebook (the instructor's, solutions and hidden tests in it) in this sandbox, timed."""
        import nbformat

        try:
            nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        except Exception as e:  # not a notebook: the cap holds
            self.log.warning("bngrade: the source notebook %s could not be read to time it (%s)", name, e)
            return None
        will_retry, self._will_retry = self._will_retry, False
        try:
            report = self._run(nb, {"metadata": {"path": source_dir, "name": name}}, self.notebook_timeout)
        finally:
            self._will_retry = will_retry
        if report["timed_out"] or report["kernel_died"]:
            self.log.warning("bngrade: the reference solution of %s did not run cleanly (%s): the time budget is "
                             "the cap, %d s", name, report["message"], self.notebook_timeout)
            return None
        return report["seconds"]

    # ------------------------------------------------------------------ one run
    def _run(self, nb, resources, budget):
        report = dict(sandboxed=not self.unsafe_run_without_sandbox, timed_out=False, kernel_died=False,
                      retried=False, starved=False, message="", retry=False, results={}, problems={},
                      budget_s=budget)
        self._timed_out = self._starved_at_timeout = False
        run = self._new_run_dir()
        self._run_dir, self._kernel_log, self._kernel_pid, self._load0 = run, None, None, None
        iopub_timeout = self.iopub_timeout
        try:
            report["not_given"] = self._give_files(run, resources)
            if self.unsafe_run_without_sandbox:
                results_dir = os.path.join(run, "results")
                os.mkdir(results_dir)
                km = AsyncKernelManager(kernel_name="python3", config=self.config)
                self._results_at = lambda: ("/", results_dir)
                kwargs = dict(cwd=os.path.join(run, "submission"),
                              env={**os.environ, "BNGRADE_RESULTS": results_dir})
            else:
                uid = self.sandbox_uid()
                km = SandboxedKernelManager(config=self.config, transport="ipc", sandbox_argv=self._argv(run),
                                            sandbox_uid=uid)
                km.connection_file = os.path.join(run, "conn", "kernel.json")
                km.ip = os.path.join(run, "ipc", "kernel")
                km.max_message_bytes = self.max_message_bytes
                self._results_at = lambda: (self._sandbox_root(km), INSIDE_RESULTS)
                # the kernel's own stdout/stderr never reach the grader's terminal (a flood there would escape
                # the output caps); stderr goes to a file in the bounded IPC tmpfs, read back on our descriptor
                log_dir = os.path.join(run, "ipc") if os.path.join(run, "ipc") in getattr(self, "_mounted", ()) \
                    else run
                fd = os.open(os.path.join(log_dir, "kernel-stderr.log"),
                             os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                self._kernel_log = os.fdopen(fd, "w+b")
                kwargs = dict(cwd=run, stdout=subprocess.DEVNULL, stderr=self._kernel_log)
            NotebookClient.__init__(self, nb, km)  # as nbconvert's ExecutePreprocessor.preprocess does
            self.reset_execution_trackers()
            self._check_assign_resources(resources)
            run_sync(self._async_run)(report, kwargs, budget)
        finally:
            self.iopub_timeout = iopub_timeout
            if self._cgroup is not None:
                report["memory_peak_mb"] = round((self._cgroup.memory_peak() or 0) / MiB, 1)
                report["oom_kills"] = self._cgroup.oom_kills()
            if self._kernel_log is not None:
                self._kernel_log.close()
            self._end_run_dir(run)
            self.km = self.kc = None
        return report

    def _log_tail(self):
        return log_tail(self._kernel_log)

    def _sandbox_root(self, km):
        """/proc/<pid>/root of the sandbox's init (sandbox_kernel.sandbox_root), remembering init's pid."""
        root, init_pid = sandbox_root(km)
        if init_pid is not None:
            self._init_pid = init_pid
        return root

    def _find_kernel_pid(self):
        if self._init_pid is None and self.km is not None:
            self._sandbox_root(self.km)
        return kernel_pid(self._init_pid)

    def _load_sample(self):
        return load_sample(self._cgroup, self._kernel_pid)

    def _starved(self):
        """Was the sandbox starved of CPU by others since its kernel answered? (sandbox_kernel.starved_by_others)"""
        if self._load0 is None:
            return False
        (w0, c0, s0), (w1, c1, s1) = self._load0, self._load_sample()
        if s0 is None or s1 is None:
            return False
        wall = w1 - w0
        ran, waited = (s1[0] - s0[0]) / 1e9, (s1[1] - s0[1]) / 1e9
        used = c1 - c0 if c0 is not None and c1 is not None else ran  # without cpuacct: the kernel's threads
        lowered = lowered_own_priority(self._kernel_pid)
        starved = starved_by_others(wall, ran, waited, used, lowered)
        self.log.info("bngrade: CPU since the kernel answered: %.2f s wall, the kernel ran %.2f s and waited "
                      "%.2f s, the sandbox used %.2f s%s: %s", wall, ran, waited, used,
                      " (it lowered its own priority)" if lowered else "", "starved" if starved else "not starved")
        return starved

    def _harvest(self, report):
        root, relative = self._results_at()
        harvest(report, root, relative, self.max_result_file_bytes, self.max_result_total_bytes)

    async def _async_run(self, report, kwargs, budget):
        started = time.monotonic()
        self._deadline = started + budget if budget and budget > 0 else None
        try:
            try:
                await self.async_start_new_kernel(**kwargs)
                await self.async_start_new_kernel_client()
                info = await self.async_wait_for_reply(await ensure_async(self.kc.kernel_info()))
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                self._close_ipc_dir()
                self._kernel_pid = self._find_kernel_pid()
                self._load0 = self._load_sample()
            except Exception as e:  # under load a kernel may not come up in time: retry once
                report.update(timed_out=True, retry=True,
                              message=f"the sandboxed kernel did not start ({type(e).__name__}: {e}){self._log_tail()}")
                self._mark_not_run(0, "the kernel did not start")
                return
            for index, cell in enumerate(self.nb.cells):
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._timeout(report, f"the notebook ran past its time budget of {budget} s", index)
                    break
                try:
                    await self.async_execute_cell(cell, index, execution_count=self.code_cells_executed + 1)
                except DeadKernelError:
                    oom = self._cgroup.oom_kills() if self._cgroup is not None else 0
                    report.update(kernel_died=True, message=f"the kernel died while running cell {index}" + (
                        f" (out of memory: the sandbox's {self.total_memory_mb} MiB were spent)" if oom else ""))
                    self._mark_not_run(index, report["message"])
                    break
                except _RetryNotebook:
                    report.update(timed_out=True, retry=True, starved=True,
                                  message=f"cell {index} ran past its time limit while the machine was loaded")
                    self._mark_not_run(index, report["message"])
                    break
                except (CellTimeoutError, TimeoutError) as e:
                    why = str(e).split("\n")[1] if "\n" in str(e) else str(e)
                    self._timeout(report, f"cell {index} did not stop after a timeout interrupt ({why.strip()})",
                                  index)
                    break
                except Exception as e:  # e.g. a patched json.dumps: the kernel's messages no longer parse
                    self.log.warning("bngrade: cell %s: the kernel broke its messaging: %s: %s",
                                     index, type(e).__name__, e)
                    report.update(kernel_died=True,
                                  message=f"the kernel stopped answering in the Jupyter protocol while running "
                                          f"cell {index} (did the code replace json or the kernel's I/O?)")
                    self._mark_not_run(index, report["message"])
                    break
                finally:
                    self._harvest(report)
            if self._timed_out and not report["timed_out"]:
                starved = self._starved_at_timeout
                report.update(timed_out=True, retry=starved, starved=starved,
                              message="a cell ran past its time limit" + (" while the machine was loaded"
                                                                          if starved else ""))
        finally:
            self._harvest(report)
            await self._async_stop()
            report["seconds"] = round(time.monotonic() - started, 3)

    def _timeout(self, report, message, index):
        """The run stops at cell `index`: retried only if the sandbox was starved of CPU (load, not the student)."""
        starved = self._starved_at_timeout or self._starved()
        report.update(timed_out=True, retry=starved and self._will_retry, starved=starved,
                      message=message + (" while the machine was loaded" if starved else ""))
        self._mark_not_run(index, report["message"])

    async def _async_stop(self):
        km = self.km
        if km is None:
            return
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if km.has_kernel:
                await ensure_async(km.shutdown_kernel(now=True))
        except Exception as e:  # the kernel is killed below whatever happened here
            self.log.debug("bngrade: shutdown: %s", e)
        finally:
            proc = getattr(getattr(km, "provisioner", None), "process", None)
            if proc is not None and proc.poll() is None:
                proc.kill()  # --die-with-parent then takes down the sandbox's pid namespace
                proc.wait()
            await self._async_wait_for_sandbox_end()
            await ensure_async(km.cleanup_resources())

    async def _async_wait_for_sandbox_end(self):
        pid, self._init_pid = self._init_pid, None
        await wait_for_sandbox_end(pid, self._cgroup, self.sandbox_uid(), self.log)

    def _mark_not_run(self, start, why, nb=None):
        mark_not_run(nb or self.nb, start, why)

    # ------------------------------------------------------------------ nbclient hooks
    def _get_timeout(self, cell):
        timeout = super()._get_timeout(cell)
        if self._deadline is not None:
            left = max(1, int(self._deadline - time.monotonic()) + 1)
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    async def _async_handle_timeout(self, timeout, cell=None):
        self._timed_out = True
        self._starved_at_timeout = self._starved_at_timeout or self._starved()
        if self._will_retry and self._starved_at_timeout:  # load: the notebook runs again, waiting is time lost
            self.log.error("Timeout waiting for execute reply (%is), the machine loaded: retrying.", timeout)
            raise _RetryNotebook()
        # the student's own time (or the last run): interrupt, and wait a bounded time for a cell that ignores it
        self.iopub_timeout = min(self.iopub_timeout, self.interrupt_grace)
        return await super()._async_handle_timeout(timeout, cell)

    def _close_ipc_dir(self):
        """Once the kernel has made its sockets, its IPC directory becomes the grader's: no student code has run
        yet, and from now on it cannot create files there."""
        if self.unsafe_run_without_sandbox or os.geteuid() != 0:
            return
        close_ipc_dir(self._run_dir)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        self._cell_bytes, self._cell_dropped, self._flood_stopped = 0, 0, False
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

