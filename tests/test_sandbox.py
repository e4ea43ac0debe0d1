"""The sandbox (bngrade/sandbox.py), each property checked from inside a real bubblewrap kernel.

One probe notebook runs through `SandboxedExecute` beside a fake course
(gradebook.db, nbgrader_config.py, source/) in a temporary directory; each
probe cell prints one JSON line that the tests read. Separate short
notebooks cover the output flood, a timeout, a dying kernel and the unsafe
opt-out (the attacks of issue 14 are in test_sandbox_attacks.py). Refusal
without bubblewrap is checked here directly and, through plain `nbgrader autograde`, in test_autograde_parallel.py.
"""
import json
import logging
import os
import socket
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from bngrade.sandbox import SandboxedExecute, SandboxUnavailable, read_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.access("/usr/bin/bwrap", os.X_OK), reason="bubblewrap is not installed")]
MiB = 1 << 20


def _notebook(*sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _execute(tmp, nb, **traits):
    """Run nb in a sandbox whose work directory is a copy of tmp/course/autograded/alice/a."""
    work = tmp / "course" / "autograded" / "alice" / "a"
    work.mkdir(parents=True, exist_ok=True)
    (work / "data.txt").write_text("the student's own file\n")
    ex = SandboxedExecute(**{"timeout": 120, **traits})
    return ex.preprocess(nb, {"metadata": {"path": str(work)}})


def _probe_lines(nb):
    """{probe name: value} from the JSON lines the probe cells printed."""
    found = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("PROBE "):
                    found.update(json.loads(line[6:]))
    return found


WRITE_RESULT = "open(__import__('os').environ['BNGRADE_RESULTS'] + '/t.json', 'w').write('1')"
PROBE = "import json, os, sys, socket, importlib.util\ndef probe(**kw):\n    print('PROBE ' + json.dumps(kw))\n"


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sandbox")
    course = tmp / "course"
    (course / "source" / "a").mkdir(parents=True)
    (course / "source" / "a" / "a.ipynb").write_text("HIDDEN TESTS")
    (course / "gradebook.db").write_text("gradebook")
    (course / "nbgrader_config.py").write_text("c = get_config()\n")
    # a submission holding a link to the gradebook: nbgrader's copy into autograded/ follows it
    (course / "submitted" / "alice" / "a").mkdir(parents=True)
    os.symlink(course / "gradebook.db", course / "submitted" / "alice" / "a" / "leak.txt")
    (course / "autograded" / "alice" / "a").mkdir(parents=True)
    (course / "autograded" / "alice" / "a" / "leak.txt").write_text("gradebook")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    paths = {"course": str(course), "repo": str(ROOT), "gradebook": str(course / "gradebook.db"),
             "venv": sys.prefix, "fast": str(ROOT / "bnkit" / "fast.py")}
    cells = [PROBE, f"paths = {paths!r}\nprobe(visible={{k: os.path.exists(v) for k, v in paths.items()}})", """
probe(spec={m: importlib.util.find_spec(m) is not None for m in ('torch', 'triton', 'nbgrader', 'bngrade.verdict')})
""", """
try:
    import bnkit.fast
    probe(fast=True)
except ImportError:
    probe(fast=False)
""", """
import numpy as np
from bnkit.gradcheck import numerical_gradient, rel_error
import bngrade.harness, bngrade.cases
probe(gradcheck=float(rel_error(numerical_gradient(lambda v: (v ** 2).sum(), np.ones(3)), 2 * np.ones(3))))
""", """
probe(cwd=os.getcwd(), listing=sorted(os.listdir('.')), home=os.environ['HOME'],
      results=os.environ.get('BNGRADE_RESULTS'), jpy='JPY_PARENT_PID' in os.environ)
""", """
def can_write(p):
    try:
        open(p, 'w').write('x')
        return True
    except OSError:
        return False
ipc = os.path.dirname(__import__('ipykernel').get_connection_file())
probe(writes={p: can_write(p) for p in ('/x', '/usr/x', '/etc/x', '/opt/bngrade/site/bngrade/x', '/submission/x',
                                        ipc + '/x', 'mine.txt', os.path.expanduser('~/mine.txt'), '/tmp/mine.txt')})
""", f"""
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=5)
    probe(net=True)
except OSError as e:
    probe(net=str(e))
""", """
probe(pid=os.getpid(), pids=sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
st = dict(line.split(':', 1) for line in open('/proc/self/status'))
probe(uid=os.getuid(), cap_eff=st['CapEff'].strip())
""", """
try:
    b = bytearray(3 * 2 ** 30)
    probe(memory='allocated')
except MemoryError:
    probe(memory='MemoryError')
""", """
try:
    with open('big.bin', 'wb') as f:
        f.write(b'0' * (100 << 20))
    probe(fsize='written')
except OSError as e:
    probe(fsize=e.errno)
""", """
import time
n = 0
try:
    for _ in range(300):
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        n += 1
except OSError:
    pass
probe(forks=n)
""", """
r = os.environ['BNGRADE_RESULTS']
open(r + '/test_a.json', 'w').write('{"ok": 1}')
os.symlink('/etc/passwd', r + '/test_link.json')
open(r + '/test_big.json', 'wb').write(b'1' * (9 << 20))
"""]
    nb, resources = _execute(tmp, _notebook(*cells), max_processes=64, max_file_mb=64, memory_limit_mb=2048)
    listener.close()
    return dict(probes=_probe_lines(nb), resources=resources, nb=nb,
                uid=SandboxedExecute().sandbox_uid())


def test_the_course_repository_and_venv_are_not_visible(probed):
    assert probed["probes"]["visible"] == {"course": False, "repo": False, "gradebook": False, "venv": False,
                                           "fast": False}


def test_torch_triton_nbgrader_and_the_reference_cannot_be_imported(probed):
    assert probed["probes"]["spec"] == {"torch": False, "triton": False, "nbgrader": False, "bngrade.verdict": False}
    assert probed["probes"]["fast"] is False


def test_gradcheck_and_the_harness_work_inside(probed):
    assert probed["probes"]["gradcheck"] < 1e-7


def test_private_work_directory_home_and_results(probed):
    p = probed["probes"]
    assert p["listing"] == ["data.txt"]  # a copy of that student's files: no link's target, nothing else
    assert p["cwd"] != p["results"] and p["home"] != p["cwd"]
    assert p["jpy"] is False


def test_nothing_outside_the_private_directories_is_writable(probed):
    writes = probed["probes"]["writes"]
    assert {k for k, v in writes.items() if v} == {"mine.txt", os.path.join("/sandbox/home", "mine.txt"),
                                                    "/tmp/mine.txt"}, writes


def test_no_network(probed):
    assert probed["probes"]["net"] is not True  # a port open on the host's loopback is out of reach


def test_own_pid_namespace_unprivileged_uid(probed):
    p = probed["probes"]
    assert p["pid"] < 10 and max(p["pids"]) < 200
    if os.geteuid() == 0:
        assert p["uid"] == probed["uid"] and p["uid"] != 0
        assert int(p["cap_eff"], 16) == 0


def test_memory_file_size_and_process_limits_hold(probed):
    p = probed["probes"]
    assert p["memory"] == "MemoryError"
    assert p["fsize"] == 27  # EFBIG
    if os.geteuid() == 0:
        assert 0 < p["forks"] < 64


def test_results_read_outside_refusing_links_and_oversized_files(probed):
    res = probed["resources"]
    assert res["bngrade_results"] == {"test_a.json": b'{"ok": 1}'}
    problems = res["bngrade_result_problems"]
    assert "symbolic link" in problems["test_link.json"] and "limit" in problems["test_big.json"]
    assert res["bngrade_execution"]["sandboxed"] is True
    assert not res["bngrade_execution"]["timed_out"] and not res["bngrade_execution"]["kernel_died"]


def test_everything_is_killed_when_the_notebook_ends(probed):
    psutil = pytest.importorskip("psutil")
    if os.geteuid() != 0:
        pytest.skip("the sandbox uid is the user's own when not root")
    left = [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == probed["uid"]]
    assert left == []  # the forked sleepers (600 s) went with the sandbox


def test_output_flood_is_capped_and_interrupted(tmp_path):
    nb, res = _execute(tmp_path, _notebook("import sys\nwhile True:\n    sys.stdout.write('flood' * 4000 + '\\n')",
                                           "print('next cell ran')"), flood_bytes_per_cell=8 * MiB)
    kept = sum(len(json.dumps(o)) for o in nb.cells[0].outputs)
    assert kept < 2 * MiB
    assert any(o.get("ename") == "KeyboardInterrupt" for o in nb.cells[0].outputs)
    assert "next cell ran" in nb.cells[1].outputs[0]["text"]


def test_a_timeout_of_the_students_own_is_interrupted_not_retried(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    nb, res = _execute(tmp_path, _notebook(WRITE_RESULT,
                                           "import time\ntime.sleep(600)", "print('after the timeout')"), timeout=3)
    ex = res["bngrade_execution"]
    assert ex["timed_out"] and not ex["retried"] and not ex["starved"]  # a sleep is the student's own time
    assert res["bngrade_results"] == {"t.json": b"1"}
    assert "after the timeout" in nb.cells[2].outputs[0]["text"]  # the next cells still run after the interrupt


def test_a_dying_kernel_keeps_the_results_written_before(tmp_path):
    nb, res = _execute(tmp_path, _notebook(WRITE_RESULT,
                                           "import os\nos._exit(1)", "print('never')"))
    assert res["bngrade_execution"]["kernel_died"] and res["bngrade_results"] == {"t.json": b"1"}
    assert nb.cells[2].outputs[-1]["ename"] == "NotRun"


def test_refuses_without_bubblewrap(tmp_path):
    ex = SandboxedExecute(bwrap_path=str(tmp_path / "no-bwrap"))
    with pytest.raises(SandboxUnavailable, match="unsafe_run_without_sandbox"):
        ex.preprocess(_notebook("print(1)"), {"metadata": {"path": str(tmp_path)}})


def test_unsafe_opt_out_runs_and_says_so(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    nb, res = _execute(tmp_path, _notebook(WRITE_RESULT),
                       unsafe_run_without_sandbox=True, bwrap_path=str(tmp_path / "no-bwrap"))
    assert res["bngrade_execution"]["sandboxed"] is False and res["bngrade_results"] == {"t.json": b"1"}
    assert "UNSAFE" in caplog.text


def test_read_results_never_follows_a_planted_directory_link(tmp_path):
    (tmp_path / "root" / "sandbox").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "x.json").write_text("secret")
    os.symlink(tmp_path / "secret", tmp_path / "root" / "sandbox" / "results")
    results, problems = read_results(str(tmp_path / "root"), "/sandbox/results", 100, 1000)
    assert results == {} and "could not be read" in problems[""]
