"""Run each submission's kernel inside bubblewrap: `SandboxedExecute`.

`SandboxedExecute` replaces nbgrader's `Execute` in the course config, so
plain `nbgrader autograde` (and the formgrader's button) run every student's
notebook in a fresh sandbox. What the kernel sees:

- a root built from nothing (bwrap's tmpfs, remounted read-only) with only
  /usr, /etc and the merged-/usr links bound read-only; /work, /root, /home,
  /tmp, /opt of the host (the course, the repository, the venv) do not exist;
- the interpreter's own tree (`sys.base_prefix`) read-only, its site-packages
  hidden under an empty tmpfs;
- `/opt/bngrade/site`: read-only binds of exactly the distributions that
  numpy and ipykernel need (resolved from their metadata at run time), the
  kernel-side `bngrade` modules (`__init__`, `harness`, `cases`) and a
  minimal `bnkit` holding only `gradcheck.py`; torch, triton, nbgrader and
  bnkit's reference are never bound (checked, see `FORBIDDEN`);
- `/sandbox`: one size-capped tmpfs holding HOME (`/sandbox/home`), the work
  directory (`/sandbox/work`, a copy of that student's autograded directory,
  made inside by the bootstrap) and `$BNGRADE_RESULTS` (`/sandbox/results`);
  a size-capped private /tmp; nothing the kernel writes reaches the host disk;
- the IPC sockets and connection file in a private directory bound at the
  same path as on the host (zmq over `ipc://`, no network namespace needed);
- namespaces: pid, net, ipc, uts (`--unshare-*`), `--new-session`,
  `--die-with-parent`; as root, `setpriv` drops to an unprivileged uid with
  no capabilities (so RLIMIT_NPROC holds), and the bootstrap sets rlimits on
  address space (`memory_limit_mb`), processes, file size, open files, core.

Decisions (the design leaves them to this module):
- The uid is `uid_base + pid % 20000` of the grading process, so two parallel
  graders do not share one RLIMIT_NPROC count (a fork bomb in one slot cannot
  starve the other's threads).
- Results are read by the grader *from the live sandbox*, through
  `/proc/<init pid>/root/sandbox/results`, after every cell (so a kernel that
  dies later keeps what it wrote) and before the kernel is stopped. Every path
  component is opened with O_NOFOLLOW relative to the previous one, so a
  symlink planted by the student cannot redirect the grader's reads.
- Output is capped while messages arrive (`max_output_bytes_per_cell`); past
  `flood_bytes_per_cell` the cell is interrupted. zmq's MAXMSGSIZE drops any
  single message larger than `max_message_bytes` before it is decoded, so the
  grader's memory stays bounded whatever the kernel sends.
- A notebook that timed out (a cell, the notebook limit, or the kernel never
  answered) runs once more in a fresh sandbox; `bngrade_execution` says so.
  The first run stops at its first timeout (it is redone anyway); in the
  last run a timed-out cell is interrupted and the next cells still run.
- The IPC directory is a host directory the kernel must write its sockets
  into; as soon as the kernel answers (before any student code runs) it is
  handed back to root, so the kernel cannot put files on the host disk.
  A kernel that dies is not retried: its cells after the death get an error.
- A file that is a symbolic link in the student's submitted/ directory is
  not given to the kernel: nbgrader's copy into autograded/ follows links, so
  a link to the gradebook would otherwise arrive as the gradebook's content.
- Interrupts are sent as `interrupt_request` messages (a signal to bwrap's
  process group would not reach a kernel in its own session).
- Without a working bwrap, the first notebook raises `SandboxUnavailable`
  (a SystemExit), which stops nbgrader with the message instead of failing
  each student. `unsafe_run_without_sandbox = True` runs plain nbgrader
  execution (BNGRADE_RESULTS still set, the results read the same way) and
  says so on every notebook.
"""
import asyncio
import copy
import errno
import functools
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path

import zmq
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import channel_socket_types
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async, run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from traitlets import Bool, DottedObjectName, Integer, List, Type, Unicode

from bngrade.output_caps import OutputCaps

INSIDE_SITE = "/opt/bngrade/site"
INSIDE_ROOT = "/sandbox"
INSIDE_RESULTS = INSIDE_ROOT + "/results"
INSIDE_SUBMISSION = "/submission"
KERNEL_MODULES = ("__init__.py", "harness.py", "cases.py")  # bngrade's kernel side
FORBIDDEN = {"torch", "triton", "bnkit", "bngrade", "nbgrader", "jupyter_book", "sphinx"}
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
MiB = 1 << 20

# Runs first inside the sandbox, as the unprivileged uid: limits, private
# directories, a copy of the student's files, then the ordinary ipykernel.
BOOTSTRAP = r"""
import os, resource, shutil, sys
lim = dict(zip(("as", "nproc", "fsize", "nofile"), map(int, os.environ.pop("BNGRADE_LIMITS").split(","))))
for name, value in (("AS", lim["as"]), ("NPROC", lim["nproc"]), ("FSIZE", lim["fsize"]),
                    ("NOFILE", lim["nofile"]), ("CORE", 0)):
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
os.umask(0o077)
for d in ("home", "work", "results"):
    os.makedirs("/sandbox/" + d, exist_ok=True)
try:
    shutil.copytree("/submission", "/sandbox/work", symlinks=True, dirs_exist_ok=True)
except (OSError, shutil.Error) as e:
    print("bngrade sandbox: could not copy every file of the submission:", e, file=sys.stderr)
os.chdir("/sandbox/work")
sys.argv = ["ipykernel_launcher"] + sys.argv[1:]
from ipykernel import iostream, kernelapp
_write = iostream.OutStream.write
def write(self, text, _write=_write):  # no stream message over ~1 MiB (the grader drops any over 32 MiB)
    if not isinstance(text, str):
        return _write(self, text)
    for i in range(0, max(len(text), 1), 1 << 18):
        _write(self, text[i:i + (1 << 18)])
        with self._buffer_lock:
            pending = sum(b.tell() for b in self._buffers.values())
        if pending > 1 << 20:
            self.flush()
    return len(text)
iostream.OutStream.write = write
kernelapp.launch_new_instance()
"""


class SandboxUnavailable(SystemExit):
    """bubblewrap is missing or a trial sandbox failed: autograde stops."""


class _RetryNotebook(Exception):
    """A timeout in a run that will be retried: stop this run now."""


def _requirements_closure(roots):
    """The installed distributions `roots` need, recursively (markers evaluated, no extras)."""
    from packaging.requirements import Requirement

    seen, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _top_level_entries(dist):
    """The site-packages entries (package dirs, modules, .dist-info) of a distribution."""
    base = Path(dist.locate_file(""))
    names = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
            continue
        names.add(parts[0])
    return base, sorted(names)


@functools.lru_cache(maxsize=8)
def kernel_site_binds(packages=("ipykernel", "numpy")):
    """[(host path, name)] for the site directory inside the sandbox."""
    binds = {}
    for key, dist in sorted(_requirements_closure(packages).items()):
        base, names = _top_level_entries(dist)
        for name in names:
            stem = name.split(".")[0].split("-")[0].lower()
            if stem in FORBIDDEN:
                raise RuntimeError(f"the sandbox would expose {name} (needed by {key}); refusing")
            path = base / name
            if path.exists() and name not in binds:
                binds[name] = str(path)
    return sorted((path, name) for name, path in binds.items())


def _bind_chain(path, seen):
    """bwrap arguments that make `path` visible read-only, links kept as links."""
    args = []
    if path in seen or not os.path.lexists(path):
        return args
    seen.add(path)
    if os.path.islink(path):
        target = os.readlink(path)
        args += ["--symlink", target, path]
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        args += _bind_chain(resolved, seen)
    else:
        args += ["--ro-bind", path, path]
    return args


def _parents(path, made):
    """`--perms 0755 --dir` for each missing ancestor of `path` (bwrap would make them 0700)."""
    args = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        d = str(Path(*parts[:i]))
        if d not in made:
            made.add(d)
            args += ["--perms", "0755", "--dir", d]
    return args


def _under(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class SandboxedKernelClient(AsyncKernelClient):
    """A client whose sockets refuse any single message over `max_message_bytes`."""

    max_message_bytes = Integer(32 * MiB).tag(config=True)

    def _create_connected_socket(self, channel, identity=None):
        sock = self.context.socket(channel_socket_types[channel])
        sock.linger = 1000
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        if identity:
            sock.identity = identity
        sock.connect(self._make_url(channel))
        return sock


class SandboxedKernelManager(AsyncKernelManager):
    """Starts `sandbox_argv + [connection file]` instead of the kernel spec's argv."""

    sandbox_argv = List(Unicode())
    sandbox_uid = Integer(-1)
    max_message_bytes = Integer(32 * MiB)
    client_class = DottedObjectName("bngrade.sandbox.SandboxedKernelClient")
    client_factory = Type(SandboxedKernelClient, klass=AsyncKernelClient)

    def client(self, **kwargs):
        kc = super().client(**kwargs)
        kc.max_message_bytes = self.max_message_bytes  # the sockets are made later, by start_channels
        return kc

    def format_kernel_cmd(self, extra_arguments=None):
        if self.sandbox_uid >= 0:  # the kernel reads it as the unprivileged uid
            os.chown(self.connection_file, self.sandbox_uid, self.sandbox_uid)
        return list(self.sandbox_argv) + ["-f", self.connection_file] + list(extra_arguments or [])

    async def interrupt_kernel(self):
        if self.has_kernel:
            msg = self.session.msg("interrupt_request", content={})
            self._connect_control_socket()
            self.session.send(self._control_socket, msg)


def read_results(root_fd_path, relative, max_file_bytes, max_total_bytes):
    """({name: bytes}, {name: why}) from the directory `relative` under `root_fd_path`.

    Every component is opened with O_NOFOLLOW from the previous one: a planted
    symlink is refused, never followed. Only regular files are read, each up to
    `max_file_bytes`, all together up to `max_total_bytes`.
    """
    results, problems, total = {}, {}, 0
    fds = []
    try:
        fd = os.open(root_fd_path, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        for part in [p for p in relative.split("/") if p]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            fds.append(fd)
        names = sorted(os.listdir(fd))
    except OSError as e:
        return results, {"": f"the results directory could not be read ({os.strerror(e.errno)})"}
    try:
        for name in names[:1000]:
            try:
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            except OSError as e:
                why = "a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno)
                problems[name] = f"not read: {why}"
                continue
            try:
                st = os.fstat(f)
                if not stat.S_ISREG(st.st_mode):
                    problems[name] = "not read: not a regular file"
                elif st.st_size > max_file_bytes:
                    problems[name] = f"not read: {st.st_size} bytes, over the {max_file_bytes} byte limit"
                elif total + st.st_size > max_total_bytes:
                    problems[name] = f"not read: the results together exceed {max_total_bytes} bytes"
                else:
                    data = os.read(f, max_file_bytes + 1)
                    while len(data) <= max_file_bytes:
                        more = os.read(f, max_file_bytes + 1 - len(data))
                        if not more:
                            break
                        data += more
                    if len(data) > max_file_bytes:
                        problems[name] = f"not read: over the {max_file_bytes} byte limit"
                    else:
                        results[name] = data
                        total += len(data)
            finally:
                os.close(f)
        if len(names) > 1000:
            problems["..."] = f"{len(names) - 1000} more files not read"
    finally:
        for f in fds:
            os.close(f)
    return results, problems


class SandboxedExecute(OutputCaps, Execute):
    """nbgrader's Execute, with every kernel in a fresh bubblewrap sandbox (module docstring)."""

    bwrap_path = Unicode("/usr/bin/bwrap", help="bubblewrap's executable").tag(config=True)
    setpriv_path = Unicode("/usr/bin/setpriv", help="util-linux setpriv (drops root inside)").tag(config=True)
    unsafe_run_without_sandbox = Bool(
        False, help="UNSAFE: run student code with the grader's rights when bubblewrap is unavailable").tag(config=True)
    memory_limit_mb = Integer(2048, help="address-space limit of every process in the sandbox").tag(config=True)
    max_processes = Integer(64, help="processes/threads of the sandbox's uid").tag(config=True)
    max_file_mb = Integer(64, help="largest file the kernel may write").tag(config=True)
    disk_limit_mb = Integer(256, help="size of the sandbox's writable tmpfs (HOME, work, results)").tag(config=True)
    tmp_limit_mb = Integer(64, help="size of the sandbox's private /tmp").tag(config=True)
    uid_base = Integer(200000, help="the sandbox's uid is uid_base + (grader pid % 20000)").tag(config=True)
    notebook_timeout = Integer(900, help="seconds for a whole notebook (cells after it do not run)").tag(config=True)
    retry_on_timeout = Bool(True, help="run a timed-out notebook once more before the timeout counts").tag(config=True)
    interrupt_grace = Integer(20, help="seconds a timed-out cell has to stop after the interrupt").tag(config=True)
    max_output_bytes_per_cell = Integer(1 * MiB, help="output kept per cell; the rest dropped").tag(config=True)
    flood_bytes_per_cell = Integer(16 * MiB, help="output past which the cell is interrupted").tag(config=True)
    max_message_bytes = Integer(32 * MiB, help="a larger single kernel message is dropped").tag(config=True)
    max_result_file_bytes = Integer(8 * MiB).tag(config=True)
    max_result_total_bytes = Integer(32 * MiB).tag(config=True)
    kernel_packages = List(Unicode(), ["ipykernel", "numpy"],
                           help="distributions (with their requirements) visible in the sandbox").tag(config=True)
    scratch_dir = Unicode("", help="where the per-notebook run directories go (default: the temp dir)").tag(
        config=True)

    # Load must not cost marks: nbclient's defaults (4 s for trailing output, 60 s to start) are tight.
    iopub_timeout = Integer(60).tag(config=True)
    startup_timeout = Integer(120).tag(config=True)

    _will_retry = False
    _init_pid = None
    _trials = {}  # per process, by (bwrap, setpriv): True, or why the trial sandbox failed

    # ------------------------------------------------------------------ public entry
    def preprocess(self, nb, resources, retries=None):
        if self.unsafe_run_without_sandbox:
            self.log.warning("UNSAFE: c.SandboxedExecute.unsafe_run_without_sandbox is set: this student's code "
                             "runs with YOUR rights, unsandboxed (it can rewrite the gradebook and other grades)")
        else:
            self.check_sandbox()
        pristine = copy.deepcopy(nb)
        self._will_retry = self.retry_on_timeout
        report = self._run(nb, resources)
        self._will_retry = False
        if report["retry"] and self.retry_on_timeout:
            self.log.warning("bngrade: %s; running the notebook once more in a fresh sandbox", report["message"])
            nb = copy.deepcopy(pristine)
            first = report["message"]
            report = self._run(nb, resources)
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
            self._trials[key] = self._trial()
        if self._trials[key] is not True:
            msg = (f"bngrade refuses to autograde without a sandbox: {self._trials[key]}. Install bubblewrap "
                   "(`apt-get install -y bubblewrap`, or `make bwrap`), or, only if every submission is trusted, "
                   "set c.SandboxedExecute.unsafe_run_without_sandbox = True in nbgrader_config.py.")
            self.log.error(msg)
            raise SandboxUnavailable(msg)

    def _trial(self):
        if not os.access(self.bwrap_path, os.X_OK):
            return f"bubblewrap not found at {self.bwrap_path}"
        run = tempfile.mkdtemp(prefix="bngrade-trial-", dir=self.scratch_dir or None)
        try:
            os.mkdir(os.path.join(run, "submission"))
            os.mkdir(os.path.join(run, "ipc"))
            argv, _ = self.sandbox_argv(run, python_code="import numpy, ipykernel; print('bngrade-sandbox-ok')")
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"a trial sandbox could not run ({e})"
            if "bngrade-sandbox-ok" not in p.stdout:
                return f"a trial sandbox failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-600:]}"
            return True
        finally:
            shutil.rmtree(run, ignore_errors=True)

    # ------------------------------------------------------------------ the sandbox
    def sandbox_uid(self):
        return self.uid_base + os.getpid() % 20000 if os.geteuid() == 0 else -1

    def sandbox_argv(self, run, python_code=None):
        """(argv up to the kernel's own arguments, uid) for the run directory `run`."""
        uid = self.sandbox_uid()
        base = os.path.realpath(sys.base_prefix)
        python = os.path.realpath(os.path.join(base, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"))
        if not os.path.exists(python):
            python = os.path.realpath(sys.executable)
        args = [self.bwrap_path, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if uid < 0:
            args.append("--unshare-user")  # not root: a user namespace gives the mounts (no NPROC guarantee)
        seen = set()
        for d in SYSTEM_DIRS:
            args += _bind_chain(d, seen)
        made = set(SYSTEM_DIRS) | {"/tmp", "/proc", "/dev", INSIDE_ROOT}
        if not _under(base, SYSTEM_DIRS):
            args += _parents(base, made) + ["--ro-bind", base, base]
        hidden = {sysconfig.get_paths(vars={"base": base, "platbase": base})[k] for k in ("purelib", "platlib")}
        for h in sorted(hidden):
            if os.path.isdir(h):
                args += ["--tmpfs", h]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", str(self.tmp_limit_mb * MiB), "--tmpfs", "/tmp",
                 "--perms", "0777", "--size", str(self.disk_limit_mb * MiB), "--tmpfs", INSIDE_ROOT]
        args += _parents(INSIDE_SITE + "/x", made) + _parents(os.path.join(run, "ipc"), made)
        for path, name in kernel_site_binds(tuple(self.kernel_packages)):
            args += ["--ro-bind", path, f"{INSIDE_SITE}/{name}"]
        stage = self._stage_kernel_modules(run)
        args += ["--ro-bind", stage + "/bngrade", INSIDE_SITE + "/bngrade",
                 "--ro-bind", stage + "/bnkit", INSIDE_SITE + "/bnkit",
                 "--ro-bind", os.path.join(run, "submission"), INSIDE_SUBMISSION,
                 "--bind", os.path.join(run, "ipc"), os.path.join(run, "ipc"),
                 "--remount-ro", "/", "--chdir", INSIDE_ROOT, "--clearenv"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": INSIDE_ROOT + "/home", "LANG": "C.UTF-8",
               "PYTHONPATH": INSIDE_SITE, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
               "BNGRADE_RESULTS": INSIDE_RESULTS, "TMPDIR": "/tmp", "MPLBACKEND": "agg",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "BNGRADE_LIMITS": ",".join(str(v) for v in (self.memory_limit_mb * MiB, self.max_processes,
                                                           self.max_file_mb * MiB, 256))}
        if os.environ.get("NBGRADER_EXECUTION"):
            env["NBGRADER_EXECUTION"] = os.environ["NBGRADER_EXECUTION"]  # nbgrader's documented behaviour
        for k, v in env.items():
            args += ["--setenv", k, v]
        args.append("--")
        if uid >= 0:
            args += [self.setpriv_path, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                     "--bounding-set=-all", "--no-new-privs", "--"]
        if python_code is not None:  # the trial: the same sandbox, limits set, then a short script
            code = BOOTSTRAP.split("os.chdir")[0] + python_code
            return args + [python, "-s", "-c", code], uid
        return args + [python, "-s", "-c", BOOTSTRAP], uid

    def _stage_kernel_modules(self, run):
        """The kernel-side bngrade modules and a gradcheck-only bnkit, copied into `run/stage`."""
        import bnkit.gradcheck

        here = Path(__file__).resolve().parent
        stage = Path(run) / "stage"
        (stage / "bngrade").mkdir(parents=True, exist_ok=True)
        (stage / "bnkit").mkdir(exist_ok=True)
        for name in KERNEL_MODULES:
            if (here / name).exists():
                shutil.copy(here / name, stage / "bngrade" / name)
        shutil.copy(bnkit.gradcheck.__file__, stage / "bnkit" / "gradcheck.py")
        (stage / "bnkit" / "__init__.py").write_text(
            '"""bnkit inside the grading sandbox: only gradcheck (the reference is not here)."""\n'
            "from .gradcheck import numerical_gradient, rel_error  # noqa: F401\n")
        for p in [stage, *stage.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        return str(stage)

    # ------------------------------------------------------------------ one run
    def _new_run_dir(self, resources):
        run = tempfile.mkdtemp(prefix="bngrade-run-", dir=self.scratch_dir or None)
        os.chmod(run, 0o711)
        source = (resources or {}).get("metadata", {}).get("path") or "."
        sub = os.path.join(run, "submission")
        linked = self._linked_in_submission(source)

        def ignore(directory, names):
            rel = os.path.relpath(directory, source)
            return {n for n in names if n == ".ipynb_checkpoints" or os.path.normpath(os.path.join(rel, n)) in linked}

        shutil.copytree(source, sub, symlinks=True, ignore=ignore)
        for p in [Path(sub), *Path(sub).rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
        ipc = os.path.join(run, "ipc")
        os.mkdir(ipc, 0o700)
        return run, ipc

    def _linked_in_submission(self, autograded):
        """Relative paths that are symbolic links in the student's submitted directory.

        nbgrader copies a submission's files into autograded/ with shutil.copy,
        which follows links: a link to the gradebook would arrive as its content.
        Those files are left out of the sandbox (and the instructor is told).
        """
        parts = Path(os.path.abspath(autograded)).parts
        if len(parts) < 4 or parts[-3] != "autograded":
            return set()
        submitted = Path(*parts[:-3], "submitted", *parts[-2:])
        linked = set()
        for dirpath, dirnames, filenames in os.walk(submitted):
            for n in dirnames + filenames:
                if os.path.islink(os.path.join(dirpath, n)):
                    linked.add(os.path.normpath(os.path.relpath(os.path.join(dirpath, n), submitted)))
        if linked:
            self.log.warning("bngrade: %s: symbolic links in the submission are not given to the kernel: %s",
                             submitted, ", ".join(sorted(linked)))
        return linked

    def _run(self, nb, resources):
        report = dict(sandboxed=not self.unsafe_run_without_sandbox, timed_out=False, kernel_died=False,
                      retried=False, message="", retry=False, results={}, problems={})
        self._timed_out = False
        run, ipc = self._new_run_dir(resources)
        self._run_dir, self._kernel_log = run, None
        iopub_timeout = self.iopub_timeout
        try:
            if self.unsafe_run_without_sandbox:
                results_dir = os.path.join(run, "results")
                os.mkdir(results_dir)
                km = AsyncKernelManager(kernel_name="python3", config=self.config)
                self._results_at = lambda: ("/", results_dir)
                kwargs = dict(cwd=os.path.join(run, "submission"),
                              env={**os.environ, "BNGRADE_RESULTS": results_dir})
            else:
                argv, uid = self.sandbox_argv(run)
                if uid >= 0:
                    os.chown(ipc, uid, uid)
                km = SandboxedKernelManager(config=self.config, transport="ipc", sandbox_argv=argv,
                                            sandbox_uid=uid)
                km.connection_file = os.path.join(ipc, "kernel.json")
                km.ip = os.path.join(ipc, "kernel")
                km.max_message_bytes = self.max_message_bytes
                self._results_at = lambda: (self._sandbox_root(km), INSIDE_RESULTS)
                # the kernel's own stdout/stderr never reach the grader's terminal (a flood there would
                # escape the output caps); stderr goes to a file capped by RLIMIT_FSIZE, quoted on failure
                self._kernel_log = open(os.path.join(run, "kernel-stderr.log"), "wb")
                kwargs = dict(cwd=run, stdout=subprocess.DEVNULL, stderr=self._kernel_log)
            NotebookClient.__init__(self, nb, km)  # as nbconvert's ExecutePreprocessor.preprocess does
            self.reset_execution_trackers()
            self._check_assign_resources(resources)
            run_sync(self._async_run)(report, kwargs)
        finally:
            self.iopub_timeout = iopub_timeout
            if self._kernel_log is not None:
                self._kernel_log.close()
            shutil.rmtree(run, ignore_errors=True)
            self.km = self.kc = None
        return report

    def _log_tail(self):
        try:
            with open(os.path.join(self._run_dir, "kernel-stderr.log"), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 800))
                tail = f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"; the kernel said: {tail}" if tail else ""

    def _sandbox_root(self, km):
        """/proc/<pid>/root of the sandbox's init (the child of the host-side bwrap)."""
        proc = getattr(getattr(km, "provisioner", None), "process", None)
        if proc is None:
            return None
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        if not children:
            return None
        root = f"/proc/{children[0]}/root"
        try:  # a recycled pid would show the host's root: never read from there
            here, there = os.stat("/"), os.stat(root)
        except OSError:
            return None
        if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
            return None
        self._init_pid = int(children[0])
        return root

    def _harvest(self, report):
        root, relative = self._results_at()
        if root is None:
            return
        results, problems = read_results(root, relative, self.max_result_file_bytes, self.max_result_total_bytes)
        if "" in problems and report["results"]:
            return  # the sandbox is gone: keep what was read after the previous cell
        report["results"], report["problems"] = results, problems

    async def _async_run(self, report, kwargs):
        started = time.monotonic()
        self._deadline = started + self.notebook_timeout if self.notebook_timeout > 0 else None
        try:
            try:
                await self.async_start_new_kernel(**kwargs)
                await self.async_start_new_kernel_client()
                info = await self.async_wait_for_reply(await ensure_async(self.kc.kernel_info()))
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                self._close_ipc_dir()
            except Exception as e:  # under load a kernel may not come up in time: retry once
                report.update(timed_out=True, retry=True,
                              message=f"the sandboxed kernel did not start ({type(e).__name__}: {e}){self._log_tail()}")
                self._mark_not_run(0, "the kernel did not start")
                return
            for index, cell in enumerate(self.nb.cells):
                if self._deadline is not None and time.monotonic() > self._deadline:
                    report.update(timed_out=True, retry=True,
                                  message=f"the notebook ran past its {self.notebook_timeout} s limit")
                    self._mark_not_run(index, report["message"])
                    break
                try:
                    await self.async_execute_cell(cell, index, execution_count=self.code_cells_executed + 1)
                except DeadKernelError:
                    report.update(kernel_died=True, message=f"the kernel died while running cell {index}")
                    self._mark_not_run(index, report["message"])
                    break
                except _RetryNotebook:
                    report.update(timed_out=True, retry=True, message=f"cell {index} ran past its time limit")
                    self._mark_not_run(index, report["message"])
                    break
                except (CellTimeoutError, TimeoutError) as e:
                    why = str(e).split("\n")[1] if "\n" in str(e) else str(e)
                    report.update(timed_out=True, retry=True,
                                  message=f"cell {index} did not stop after a timeout interrupt ({why.strip()})")
                    self._mark_not_run(index, report["message"])
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
                report.update(timed_out=True, retry=True, message="a cell ran past its time limit")
        finally:
            self._harvest(report)
            await self._async_stop()
            report["seconds"] = round(time.monotonic() - started, 3)

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
        """Return once every process of the sandbox is gone (the pid namespace's init exits last)."""
        pid, self._init_pid = self._init_pid, None
        deadline = time.monotonic() + 60
        while pid is not None and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            await asyncio.sleep(0.05)
        uid = self.sandbox_uid()
        if uid > 0:  # belt and braces: nothing of this grader's sandbox uid may outlive the notebook
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        if os.stat(f"/proc/{entry}").st_uid == uid:
                            os.kill(int(entry), 9)
                            self.log.warning("bngrade: killed a leftover sandbox process %s", entry)
                    except OSError:
                        pass

    def _mark_not_run(self, start, why):
        """An error output on every code cell from `start` on: it did not run (to completion)."""
        for cell in self.nb.cells[start:]:
            if cell.cell_type == "code" and cell.source.strip():
                cell.setdefault("outputs", [])
                cell.outputs.append(new_output("error", ename="NotRun", evalue=why,
                                               traceback=[f"NotRun: {why}; this cell did not run to the end"]))

    # ------------------------------------------------------------------ nbclient hooks
    def _get_timeout(self, cell):
        timeout = super()._get_timeout(cell)
        if self._deadline is not None:
            left = max(1, int(self._deadline - time.monotonic()) + 1)
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    async def _async_handle_timeout(self, timeout, cell=None):
        self._timed_out = True
        if self._will_retry:  # the notebook runs again anyway: waiting for this run is time lost
            self.log.error("Timeout waiting for execute reply (%is).", timeout)
            raise _RetryNotebook()
        # the last run: interrupt, and wait a bounded time for a cell that ignores the interrupt
        self.iopub_timeout = min(self.iopub_timeout, self.interrupt_grace)
        return await super()._async_handle_timeout(timeout, cell)

    def _close_ipc_dir(self):
        """Once the kernel has made its sockets, its IPC directory (a host directory) becomes the grader's:
        no student code has run yet, and from now on it cannot create files on the host disk."""
        ipc = os.path.join(self._run_dir, "ipc")
        if self.unsafe_run_without_sandbox or os.geteuid() != 0:
            return
        for path in (ipc, os.path.join(ipc, "kernel.json")):
            os.chown(path, 0, 0)
        os.chmod(ipc, 0o755)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        self._cell_bytes, self._cell_dropped, self._flood_stopped = 0, 0, False
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

