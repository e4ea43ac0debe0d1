"""The machinery that turns sandbox_policy into a command line: bwrap's argv and the kernel's bootstrap.

`sandbox_argv` returns the full command that starts one sandboxed kernel:

    sh (opens the seccomp filter at fd 9, joins the cgroup)  ->  bwrap ... --seccomp 9
      -> setpriv (unprivileged uid, no capabilities, no_new_privs)  ->  python -I -B -c BOOTSTRAP

The bootstrap runs first inside, as the unprivileged uid: rlimits, the
private directories, a copy of the submission into the work directory, then
IPython is initialised *in a read-only start directory* (its config and
startup files are looked up in the working directory too), and only then does
the kernel move to the work directory, appended *last* to sys.path. So no
file of the student's is imported or executed before the kernel answers.
"""
import functools
import os
import re
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from bngrade import sandbox_policy as policy

MiB = 1 << 20
TRIAL_MARK = "# ---- the kernel"

BOOTSTRAP = r"""
import os, resource, shutil, sys
sys.path.insert(0, "@SITE@")  # python -I: neither PYTHONPATH nor the working directory is on sys.path
lim = dict(zip(("as", "nproc", "fsize", "nofile"), map(int, os.environ.pop("BNGRADE_LIMITS").split(","))))
for name, value in (("AS", lim["as"]), ("NPROC", lim["nproc"]), ("FSIZE", lim["fsize"]),
                    ("NOFILE", lim["nofile"]), ("CORE", 0)):
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
os.umask(0o077)
for d in ("@HOME@", "@WORK@", "@RESULTS@"):
    os.makedirs(d, exist_ok=True)
try:  # only regular files and directories are in @SUBMISSION@ (copied by content on the host)
    shutil.copytree("@SUBMISSION@", "@WORK@", symlinks=True, dirs_exist_ok=True)
except (OSError, shutil.Error) as e:
    print("bngrade sandbox: could not copy every file of the submission:", e, file=sys.stderr)
# ---- the kernel
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
app = kernelapp.IPKernelApp.instance()
app.initialize()  # IPython reads config and startup files here: the cwd is still the read-only start directory
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
os.chdir("@WORK@")
sys.path.append("@WORK@")  # the student's own modules import, but never ahead of the kernel's
app.start()
"""
for _k, _v in dict(SITE=policy.SITE, HOME=policy.HOME, WORK=policy.WORK, RESULTS=policy.RESULTS,
                   SUBMISSION=policy.SUBMISSION).items():
    BOOTSTRAP = BOOTSTRAP.replace(f"@{_k}@", _v)

# sh: open the seccomp filter at fd 9 (bwrap reads and closes it), join each cgroup, then become bwrap
LAUNCHER = ('exec 9< "$1" || exit 111; n=$2; shift 2; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 111; '
            'shift; n=$((n - 1)); done; exec "$@"')


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
def kernel_site_binds(packages=policy.KERNEL_PACKAGES):
    """[(host path, name)] for the site directory inside the sandbox."""
    binds = {}
    for key, dist in sorted(_requirements_closure(packages).items()):
        base, names = _top_level_entries(dist)
        for name in names:
            stem = name.split(".")[0].split("-")[0].lower()
            if stem in policy.FORBIDDEN:
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


def stage_kernel_modules(run):
    """The kernel-side bngrade modules and a gradcheck-only bnkit, copied into `run/stage`."""
    import bnkit.gradcheck

    here = Path(__file__).resolve().parent
    stage = Path(run) / "stage"
    (stage / "bngrade").mkdir(parents=True, exist_ok=True)
    (stage / "bnkit").mkdir(exist_ok=True)
    for name in policy.KERNEL_MODULES:
        if (here / name).exists():
            shutil.copy(here / name, stage / "bngrade" / name)
    shutil.copy(bnkit.gradcheck.__file__, stage / "bnkit" / "gradcheck.py")
    (stage / "bnkit" / "__init__.py").write_text(
        '"""bnkit inside the grading sandbox: only gradcheck (the reference is not here)."""\n'
        "from .gradcheck import numerical_gradient, rel_error  # noqa: F401\n")
    for p in [stage, *stage.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return str(stage)


def sandbox_argv(*, bwrap, setpriv, run, uid, limits, seccomp_file, cgroup_procs=(), packages=policy.KERNEL_PACKAGES,
                 extra_env=None, python_code=None):
    """The whole command for the run directory `run` (holding submission/, ipc/, conn/), up to the kernel's `-f`.

    `limits`: sandbox_policy.LIMITS's keys (the executor's traits). `python_code`: a trial, the same
    sandbox running a short script after the bootstrap's set-up instead of the kernel.
    """
    base = os.path.realpath(sys.base_prefix)
    python = os.path.realpath(os.path.join(base, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"))
    if not os.path.exists(python):
        python = os.path.realpath(sys.executable)
    args = [bwrap] + [f"--unshare-{ns}" + ("-try" if ns == "cgroup" else "") for ns in policy.NAMESPACES]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if uid < 0:  # not root: a user namespace gives the mounts (RLIMIT_NPROC then does not hold: the cgroup does)
        args += ["--unshare-user", "--disable-userns"]
    seen = set()
    for d in policy.SYSTEM_DIRS:
        args += _bind_chain(d, seen)
    made = set(policy.SYSTEM_DIRS) | {"/tmp", "/proc", "/dev", policy.ROOT}
    if not _under(base, policy.SYSTEM_DIRS):
        args += _parents(base, made) + ["--ro-bind", base, base]
    hidden = {sysconfig.get_paths(vars={"base": base, "platbase": base})[k] for k in ("purelib", "platlib")}
    for h in sorted(hidden):
        if os.path.isdir(h):
            args += ["--tmpfs", h]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for path, trait in policy.TMPFS.items():
        args += ["--perms", "1777" if path != policy.ROOT else "0777", "--size", str(limits[trait] * MiB),
                 "--tmpfs", path]
    ipc, conn = os.path.join(run, "ipc"), os.path.join(run, "conn")
    args += _parents(policy.SITE + "/x", made) + _parents(ipc, made)
    for path, name in kernel_site_binds(tuple(packages)):
        args += ["--ro-bind", path, f"{policy.SITE}/{name}"]
    stage = stage_kernel_modules(run)
    args += ["--ro-bind", stage + "/bngrade", policy.SITE + "/bngrade",
             "--ro-bind", stage + "/bnkit", policy.SITE + "/bnkit",
             "--ro-bind", os.path.join(run, "submission"), policy.SUBMISSION,
             "--bind", ipc, ipc, "--ro-bind", conn, conn,
             "--remount-ro", "/", "--chdir", policy.START_DIR, "--clearenv"]
    if seccomp_file:
        args += ["--seccomp", "9"]
    env = dict(policy.ENV, BNGRADE_LIMITS=",".join(str(v) for v in (
        limits["memory_limit_mb"] * MiB, limits["max_processes"], limits["max_file_mb"] * MiB, limits["open_files"])))
    env.update(extra_env or {})
    for k, v in env.items():
        args += ["--setenv", k, v]
    args.append("--")
    if uid >= 0 and policy.DROP_TO_UID:
        args += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs", "--"]
    code = BOOTSTRAP if python_code is None else BOOTSTRAP.split(TRIAL_MARK)[0] + python_code
    args += [python, *policy.PYTHON_FLAGS, "-c", code]
    if seccomp_file or cgroup_procs:
        args = ["/bin/sh", "-c", LAUNCHER, "bngrade-launch", seccomp_file or "/dev/null",
                str(len(cgroup_procs)), *cgroup_procs, *args]
    return args
