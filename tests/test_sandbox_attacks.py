"""Real attacks on the sandbox's second line (issue 14): syscalls, total memory, start-up, files, time.

One attack notebook runs through `SandboxedExecute` with a small total memory
(so the attacks cost the shared machine little); its cells print one JSON line
each (`PROBE {...}`), read by the tests. Every attack is done for real: a child
that makes its own user and mount namespace and mounts a tmpfs, SysV shared
memory created and detached, many processes each allocating, a memfd filled,
modules planted beside the notebook to run before the kernel answers, hard
links and FIFOs in the submission, a symlink swapped for the connection file,
and notebooks that spend their time budget.
"""
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from bngrade import sandbox_policy as policy  # noqa: E402
from bngrade.sandbox import SandboxedExecute  # noqa: E402
from bngrade.sandbox_cgroup import Cgroup, CgroupUnavailable  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.access("/usr/bin/bwrap", os.X_OK), reason="bubblewrap is not installed")]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop, host tmpfs and cgroups need root")
MiB = 1 << 20
TOTAL_MB = 384  # the attack notebook's whole sandbox (cgroup)


def _cgroup_works():
    try:
        Cgroup.make(64 * MiB, 8).remove()
        return True
    except CgroupUnavailable:
        return False


CGROUP = pytest.mark.skipif(not _cgroup_works(), reason="no cgroup can be made here (autograde says so at start)")


def _notebook(*sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _course(tmp, files=None):
    """course/submitted/alice/a and course/autograded/alice/a, each holding `files` ({name: text})."""
    sub, graded = tmp / "course" / "submitted" / "alice" / "a", tmp / "course" / "autograded" / "alice" / "a"
    for d in (sub, graded):
        d.mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
    return sub, graded


def _execute(work, nb, name="a", **traits):
    ex = SandboxedExecute(**{"timeout": 120, "scratch_dir": str(work.parents[3]), **traits})
    return ex.preprocess(nb, {"metadata": {"path": str(work), "name": name}})


def _probes(nb):
    found = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in (out.get("text") or "").splitlines():
                if line.startswith("PROBE "):
                    found.update(json.loads(line[6:]))
    return found


PROBE = """import ctypes, errno, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe(**kw):
    print('PROBE ' + json.dumps(kw), flush=True)
def sys_errno(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
def in_child(fn, timeout=60):
    '''Run fn() in a forked child; its return value (a JSON line) or how the child ended.'''
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = json.dumps(fn())
        except BaseException as e:
            out = json.dumps('raised ' + type(e).__name__ + ': ' + str(e))
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = b''
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    _, status = os.waitpid(pid, 0)
    os.close(r)
    if os.WIFSIGNALED(status):
        return 'killed by signal %d' % os.WTERMSIG(status)
    return json.loads(data) if data else 'no answer'
"""

# x86_64 numbers (the filter refuses other architectures outright)
SYSCALLS = {"unshare_user": (272, 0x10000000), "unshare_mount": (272, 0x00020000), "setns": (308, 0, 0),
            "mount": (165, 0, 0, 0, 0, 0), "umount2": (166, 0, 0), "pivot_root": (155, 0, 0), "chroot": (161, 0),
            "ptrace_attach_1": (101, 16, 1, 0, 0), "bpf": (321, 0, 0, 0), "perf_event_open": (298, 0, 0, -1, -1, 0),
            "userfaultfd": (323, 0), "io_uring_setup": (425, 1, 0), "keyctl": (250, 0, 0, 0, 0, 0),
            "add_key": (248, 0, 0, 0, 0, 0), "shmget": (29, 0, 1 << 20, 0o1600), "kexec_load": (246, 0, 0, 0, 0),
            "init_module": (175, 0, 0, 0), "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0),
            "clone3": (435, 0, 0), "fsopen": (430, 0, 0), "reboot": (169, 0, 0, 0, 0)}

ATTACKS = [PROBE, f"""
probe(syscalls={{name: sys_errno(*call) for name, call in {SYSCALLS!r}.items()}})
""", """
import threading, subprocess
t = threading.Thread(target=lambda: None); t.start(); t.join()
probe(threads_and_subprocess=subprocess.run(['/bin/echo', 'ok'], capture_output=True, text=True).stdout.strip())
fd9 = os.readlink('/proc/self/fd/9') if os.path.exists('/proc/self/fd/9') else None
probe(fd9=fd9 if fd9 and ('seccomp' in fd9 or 'bpf' in fd9) else 'clean')
""", """
def userns_and_tmpfs():  # the issue's attack: own user + mount namespace, then a tmpfs as big as the host's RAM
    CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        return 'unshare refused: ' + errno.errorcode[ctypes.get_errno()]
    os.makedirs('/tmp/big', exist_ok=True)
    if libc.mount(b'none', b'/tmp/big', b'tmpfs', 0, b'size=100%') != 0:
        return 'mount refused: ' + errno.errorcode[ctypes.get_errno()]
    return 'MOUNTED'
probe(userns_tmpfs=in_child(userns_and_tmpfs))
""", """
def sysv_shm():  # the issue's attack: create, attach, touch, detach a segment bigger than the address-space limit
    shmid = libc.shmget(0, ctypes.c_size_t(3 << 30), 0o1600)
    if shmid < 0:
        return 'shmget refused: ' + errno.errorcode[ctypes.get_errno()]
    return 'SEGMENT %d' % shmid
probe(sysv_shm=in_child(sysv_shm))
""", """
def hog(mb):  # each child touches `mb` MiB (the address-space limit allows it; the cgroup's total does not)
    def run():
        block = bytearray(b'\\x01') * (mb << 20)
        time.sleep(3)
        return 'HELD %d MiB' % (len(block) >> 20)
    return run
import concurrent.futures
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    probe(many_hogs=list(pool.map(lambda _: in_child(hog(200)), range(4))))
""", """
def memfd_fill():  # many memfds (each under the file-size limit): 768 MiB in all, in no file system
    fds, written = [], 0
    try:
        for _ in range(16):
            fds.append(os.memfd_create('fill'))
            written += os.write(fds[-1], b'\\x01' * (48 << 20))
    except OSError as e:
        return 'stopped at %d MiB: %s' % (written >> 20, errno.errorcode[e.errno])
    return 'WROTE %d MiB' % (written >> 20)
probe(memfd=in_child(memfd_fill))
""", """
def dev_shm_fill():  # files under the file-size limit, more than /dev/shm's size
    written = 0
    try:
        for i in range(8):
            with open('/dev/shm/fill%d' % i, 'wb') as f:
                written += f.write(b'\\x01' * (32 << 20))
    except OSError as e:
        return 'stopped at %d MiB: %s' % (written >> 20, errno.errorcode[e.errno])
    return 'WROTE %d MiB' % (written >> 20)
probe(dev_shm=in_child(dev_shm_fill))
""", """
probe(kernel_alive_after_attacks=True, numpy=__import__('numpy').__file__, own_module=__import__('helper').VALUE,
      planted=sorted(os.listdir(os.environ['BNGRADE_RESULTS'])), cwd=os.getcwd(), path_tail=sys.path[-1])
""", """
ipc = os.path.dirname(__import__('ipykernel').get_connection_file())
def try_(fn):
    try:
        fn()
        return 'DONE'
    except OSError as e:
        return errno.errorcode[e.errno]
cf = __import__('ipykernel').get_connection_file()
probe(ipc_write=try_(lambda: open(os.path.join(os.path.dirname(ipc), 'ipc', 'x'), 'wb').write(b'1' * (8 << 20))),
      conn_swap=try_(lambda: (os.remove(cf), os.symlink('/etc/shadow', cf))),
      conn_write=try_(lambda: open(cf, 'w').write('{}')))
"""]

# modules that would run before the kernel answers, were the work directory first on sys.path
PLANTED = {name: ("import os\nopen(os.environ.get('BNGRADE_RESULTS', '/sandbox/results') + '/PLANTED-" + name +
                  "', 'w').write('ran')\n")
           for name in ("zmq.py", "ipykernel_launcher.py", "numpy.py", "traitlets.py", "tornado.py", "json.py",
                        "sitecustomize.py", "usercustomize.py", "ipython_config.py", "ipython_kernel_config.py",
                        "jupyter_config.py", "IPython.py", "encodings.py", "asyncio.py")}
PLANTED["helper.py"] = "VALUE = 42\n"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    sub, graded = _course(tmp, PLANTED)
    nb, res = _execute(graded, _notebook(*ATTACKS), total_memory_mb=TOTAL_MB)
    return dict(probes=_probes(nb), res=res, tmp=tmp, nb=nb)


@ROOT_ONLY
def test_seccomp_refuses_namespaces_mounts_ptrace_bpf_io_uring_keys_shm(attacked):
    calls = attacked["probes"]["syscalls"]
    assert calls.pop("clone3") == 38  # ENOSYS: the C library falls back to clone, whose flags are checked
    assert calls == {name: 1 for name in SYSCALLS if name != "clone3"}  # EPERM for every one
    assert attacked["probes"]["threads_and_subprocess"] == "ok"  # ordinary work is unaffected
    assert attacked["probes"]["fd9"] == "clean"  # the filter's descriptor does not reach the kernel


def test_no_own_user_and_mount_namespace_no_sysv_segment(attacked):
    p = attacked["probes"]
    assert p["userns_tmpfs"].startswith("unshare refused"), p["userns_tmpfs"]
    assert p["sysv_shm"].startswith("shmget refused"), p["sysv_shm"]


@ROOT_ONLY
@CGROUP
def test_total_memory_is_bounded_across_processes_memfd_and_shm(attacked):
    p, ex = attacked["probes"], attacked["res"]["bngrade_execution"]
    held = [r for r in p["many_hogs"] if str(r).startswith("HELD")]
    assert len(held) * 200 < TOTAL_MB, p["many_hogs"]  # 4 x 200 MiB cannot all be held at once in 384 MiB
    assert any("killed by signal 9" in str(r) for r in p["many_hogs"])
    assert not str(p["memfd"]).startswith("WROTE"), p["memfd"]  # 1 GiB of memfd: stopped
    assert p["dev_shm"].startswith("stopped at") and "ENOSPC" in p["dev_shm"], p["dev_shm"]  # a sized tmpfs
    assert ex["memory_peak_mb"] <= TOTAL_MB + 1
    assert p["kernel_alive_after_attacks"] is True  # the OOM killer took the hogs, not the kernel


def test_nothing_beside_the_notebook_runs_before_the_kernel(attacked):
    p = attacked["probes"]
    assert p["planted"] == []  # not one planted module or config file ran, at start-up or since
    assert p["numpy"].startswith(policy.SITE)  # the real numpy, not numpy.py from the submission
    assert p["own_module"] == 42 and p["cwd"] == policy.WORK and p["path_tail"] == policy.WORK


@ROOT_ONLY
def test_no_byte_reaches_the_host_and_the_connection_file_cannot_be_swapped(attacked):
    p = attacked["probes"]
    assert p["ipc_write"] in ("EACCES", "ENOSPC", "EPERM"), p  # the IPC dir is the grader's once the kernel answers
    assert p["conn_swap"] in ("EACCES", "EPERM", "EROFS") and p["conn_write"] in ("EACCES", "EPERM", "EROFS"), p
    left = [d for d in os.listdir(attacked["tmp"]) if d.startswith("bngrade-run-")]
    assert left == []  # the run directory is gone
    with open("/proc/self/mountinfo") as f:
        assert str(attacked["tmp"]) not in f.read()  # and its IPC tmpfs unmounted


@ROOT_ONLY
@CGROUP
def test_the_cgroups_are_removed(attacked):
    from bngrade.sandbox_cgroup import CGROUP_FS, _own_groups

    for controller, (mounted, own) in _own_groups().items():
        parent = Path(CGROUP_FS) / mounted / own.lstrip("/")
        if controller in ("memory", "pids", "cpuacct") and parent.is_dir():
            assert not list(parent.glob(f"bngrade-{os.getpid()}-*")), parent


# ---------------------------------------------------------------- files: data, never a path to follow
def test_links_hard_links_and_fifos_never_reach_the_kernel(tmp_path):
    sub, graded = _course(tmp_path, {"ok.txt": "mine", "deep/ok2.txt": "mine too"})
    classmate = tmp_path / "classmate.ipynb"
    classmate.write_text("a classmate's notebook")
    os.link(classmate, sub / "stolen.txt")  # a hard link in submitted/: nbgrader's copy makes it a plain file
    (graded / "stolen.txt").write_text("a classmate's notebook")
    os.link(classmate, graded / "hard_in_autograded.txt")
    os.symlink("/etc/passwd", graded / "link.txt")
    os.mkfifo(graded / "fifo")
    nb, res = _execute(graded, _notebook("import os\nprint('PROBE ' + __import__('json').dumps({'files': sorted("
                                         "os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk('.') "
                                         "for f in fs)}))"))
    assert _probes(nb)["files"] == ["deep/ok2.txt", "ok.txt"]
    refused = res["bngrade_execution"]["not_given"]
    assert set(refused) == {"stolen.txt", "hard_in_autograded.txt", "link.txt", "fifo"}
    assert "hard link" in refused["stolen.txt"] and "symbolic link" in refused["link.txt"]


def test_a_symlinked_notebook_is_not_run_a_hard_linked_one_runs_for_what_it_holds(tmp_path):
    """A hard link is read as data (bngrade.submission_file): refusing it would also refuse the
    classmate whose file it names (who did nothing); it is a copy, and make autograde says so."""
    sub, graded = _course(tmp_path)
    classmate = tmp_path / "classmate.ipynb"
    classmate.write_text("{}")
    os.symlink(classmate, sub / "a.ipynb")
    nb, res = _execute(graded, _notebook("print('PROBE {\"ran\": true}')"))
    assert _probes(nb) == {} and res["bngrade_execution"]["refused"]
    assert nb.cells[0].outputs[-1]["ename"] == "NotRun" and "symbolic link" in nb.cells[0].outputs[-1]["evalue"]
    (sub / "a.ipynb").unlink()
    os.link(classmate, sub / "a.ipynb")
    nb, res = _execute(graded, _notebook("print('PROBE {\"ran\": true}')"))
    assert _probes(nb) == {"ran": True}


# ---------------------------------------------------------------- time: a budget from the reference solution
def test_the_time_budget_comes_from_the_reference_solution(tmp_path):
    sub, graded = _course(tmp_path)
    source = tmp_path / "course" / "source" / "a"
    source.mkdir(parents=True)
    nbformat.write(_notebook("x = 1"), source / "a.ipynb")
    ex = SandboxedExecute(time_budget_floor=30, time_budget_margin=10.0, budget_cache_dir=str(tmp_path / "cache"),
                          scratch_dir=str(tmp_path))
    budget = ex.time_budget({"metadata": {"path": str(graded), "name": "a"}})
    seconds = json.loads(next((tmp_path / "cache").glob("reference-*.json")).read_text())["seconds"]
    assert 0 < seconds < 120 and budget == int(min(900, max(30, 10 * seconds)))


def test_sleeping_cells_hold_a_worker_only_for_the_budget_and_are_not_retried(tmp_path):
    """The issue's attack, scaled down: cells that each sleep just under the cell limit, after the tests."""
    sub, graded = _course(tmp_path)
    test_cell = "open(__import__('os').environ['BNGRADE_RESULTS'] + '/test_a.json', 'w').write('1')"
    cells = [test_cell] + ["import time\ntime.sleep(2.5)"] * 16
    t0 = time.monotonic()
    nb, res = _execute(graded, _notebook(*cells), timeout=3, notebook_timeout=8, time_budget_margin=0)
    held = time.monotonic() - t0
    ex = res["bngrade_execution"]
    assert ex["timed_out"] and not ex["retried"] and "time budget" in ex["message"]
    assert res["bngrade_results"] == {"test_a.json": b"1"}  # the test it reached stands
    assert held < 8 + 60  # the budget, plus start and stop (not 16 x 2.5 s, not twice)
    assert nb.cells[-1].outputs[-1]["ename"] == "NotRun"


def test_a_cell_that_sleeps_past_its_timeout_is_interrupted_not_retried(tmp_path):
    sub, graded = _course(tmp_path)
    nb, res = _execute(graded, _notebook("import time\ntime.sleep(600)", "print('PROBE {\"next\": 1}')"), timeout=3)
    ex = res["bngrade_execution"]
    assert ex["timed_out"] and not ex["retried"] and not ex["starved"]
    assert _probes(nb) == {"next": 1}


def _starve_when_the_kernel_starts(uid, seconds):
    """Once the sandbox's kernel runs: pin it to CPU 0 beside two busy loops at nice -15 there, for `seconds`."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["uids", "cmdline"]):
            if p.info["uids"] and p.info["uids"].real == uid and "ipykernel_launcher" in " ".join(
                    p.info["cmdline"] or []):
                time.sleep(1)  # past kernel_info: the cell is running
                os.sched_setaffinity(p.pid, {0})
                # its own session, so that the whole process group goes when the test ends (killing only
                # `timeout` would leave the busy loop running, at nice -15, for good)
                # two hogs, each its own session (autogroup): the kernel gets about a third of its CPU
                return [subprocess.Popen(["taskset", "-c", "0", "nice", "-n", "-15", "timeout", str(seconds),
                                          "sh", "-c", "while :; do :; done"], start_new_session=True)
                        for _ in range(2)]
        time.sleep(0.05)
    return None


@ROOT_ONLY
@pytest.mark.parametrize("own_nice", [False, True])
def test_a_timeout_under_real_starvation_is_retried(tmp_path, own_nice):
    """A busy host process at a higher priority starves the kernel: its timeout is load, not the student.

    Unless the kernel lowered its own priority (os.nice(19)): then the waiting is its own doing, not retried.
    """
    import threading

    sub, graded = _course(tmp_path)
    hog = []
    watcher = threading.Thread(target=lambda: hog.append(
        _starve_when_the_kernel_starts(SandboxedExecute().sandbox_uid(), 10)))
    watcher.start()
    try:
        spin = ("import os\nos.nice(19)\n" if own_nice else "") + "n = 0\nwhile True:\n    n += 1"
        nb, res = _execute(graded, _notebook(spin), timeout=5, retry_on_timeout=True)
    finally:
        watcher.join()
        for h in (h for hogs in hog if hogs is not None for h in hogs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(h.pid, signal.SIGKILL)
            h.wait()
    ex = res["bngrade_execution"]
    assert hog and hog[0] is not None
    if own_nice:
        assert ex["timed_out"] and not ex["retried"] and not ex["starved"], ex
    else:
        assert ex["timed_out"] and ex["retried"] and "loaded" in ex["message"], ex


@ROOT_ONLY
@CGROUP
def test_what_a_killed_grader_left_is_swept(tmp_path):
    """A grader killed with SIGKILL leaves its (empty) cgroup and its IPC tmpfs: the next grader removes them."""
    from bngrade.sandbox_cgroup import CGROUP_FS, _own_groups, sweep_stale
    from bngrade.sandbox_files import private_tmpfs, sweep_stale_mounts

    dead = next(p for p in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{p}"))
    mounted, own = _own_groups()["memory"]
    group = Path(CGROUP_FS) / mounted / own.lstrip("/") / f"bngrade-{dead}-0"
    group.mkdir()
    ipc = tmp_path / f"bngrade-run-{dead}-x" / "ipc"
    ipc.mkdir(parents=True)
    assert private_tmpfs(str(ipc), 1 << 20, 0, 0) is None
    assert str(group) in sweep_stale() and str(ipc) in sweep_stale_mounts()
    assert not group.exists() and not ipc.parent.exists()


@pytest.mark.parametrize("wall, ran, waited, used, lowered, starved", [
    (5.0, 2.7, 2.3, 2.7, False, True),  # measured: a nice -15 hog on the kernel's CPU (autogroups split it ~half)
    (5.0, 2.6, 2.5, 2.6, True, False),  # the same, but the kernel lowered its own priority
    (5.0, 5.0, 10.0, 5.0, False, False),  # three of its own threads pinned to one CPU: its own competition
    (5.0, 2.0, 4.0, 9.0, False, False),  # its own processes, outside the kernel, hold the CPUs
    (5.0, 5.0, 0.0, 5.0, False, False),  # a spin on an idle machine
    (5.0, 3.3, 1.7, 3.3, False, False),  # a fair share of 2/3 (three sessions on two CPUs): ordinary load
    (5.0, 0.0, 0.0, 0.0, False, False),  # a sleep
])
def test_starvation_is_waiting_that_the_sandbox_did_not_cause(wall, ran, waited, used, lowered, starved):
    """The rule that decides a retry, on the numbers it sees (the real starvation test above measures them)."""
    from bngrade.sandbox_kernel import starved_by_others

    assert starved_by_others(wall, ran, waited, used, lowered) is starved
