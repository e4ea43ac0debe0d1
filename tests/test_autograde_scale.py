"""Grading past one process: Dask, the array-job unit, and a run killed then resumed.

One scratch course (bn_forward; the source solution, the blank notebook, two
buggy variants, a hostile one, an attack and an invalid notebook from the
catalogue) is graded once by plain serial `nbgrader autograde`; every other
path must leave the same grades in the gradebook:

- a Dask LocalCluster with 2 worker processes (`run(engine="dask")`);
- the same with one worker killed (SIGKILL) while it grades: Dask retries its
  student on a worker that is alive;
- the array-job unit (`python -m bngrade manifest / unit --index I / merge`);
- `python -m bngrade.autograde run` killed (SIGKILL, its whole process group)
  once some students have results, then started again: only the students
  without a result are graded the second time.

The serially graded course also feeds the Canvas export (nbgrader export with
bngrade.export_canvas against a roster laid out as Canvas exports it) and the
class report (bngrade.report, opened in Chromium: the gradebook's numbers,
the planted near-copy pair copy_a/copy_b first, nothing a student wrote runs).

No short timeouts: each wait is for an event, bounded only by a generous limit.
"""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))
import catalogue  # noqa: E402
import course  # noqa: E402

from bngrade import autograde  # noqa: E402
from bngrade.autograde import gradebook_scores  # noqa: E402

pytestmark = pytest.mark.slow
A = "bn_forward"
PICKS = ("eps_outside_sqrt", "cs231n_default_momentum", "hostile_kill_parent", "invalid_json")
# a planted near-copy: copy_b is copy_a (the catalogue's loop_over_features) with its names changed
RENAMES = (("col", "column"), ("rm", "run_mean"), ("rv", "run_var"), ("mean", "mu"))
LONG = 1800  # seconds: only a hung run gets near it


def _planted(d):
    """The blank notebook, the planted near-copy pair copy_a/copy_b, and a name and code that would be
    markup if not escaped."""
    loop = {v.name: v for v in catalogue.VARIANTS}["loop_over_features"]
    renamed = {}
    for gid, text in loop.cells.items():
        for old, new in RENAMES:
            text = re.sub(rf"\b{old}\b", new, text)
        renamed[gid] = "# my own work\n" + text.replace("out = np.empty_like(x)", "out = np.empty_like(x)  # result")
    blank = course.submission(d, A, "blank")
    return {"blank": blank, "copy_a": course.submission(d, A, loop),
            "copy_b": course.submission(d, A, dataclasses.replace(loop, name="copy_b", cells=renamed)),
            "x<i>": blank.replace("raise NotImplementedError()",
                                  "raise NotImplementedError()  # </pre><script>window.pwned = 1</script>")}


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    base = tmp_path_factory.mktemp("scale")
    d, notebooks, _ = course.graded_course(base, A, PICKS, extra=_planted, copies=("dask", "dask_killed", "array",
                                                                                   "resume"))
    serial = gradebook_scores(d, A)
    assert set(serial) == set(notebooks)
    assert serial["solution"]["test_train_output"] == [3.0, 3.0]  # the comparisons are not vacuous
    assert serial["eps_outside_sqrt"]["test_train_output"][0] < 3
    return dict(base=base, serial=serial, students=sorted(notebooks))


def _cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           host="127.0.0.1", silence_logs=40)
    return cluster, Client(cluster)


def test_dask_local_cluster_gives_the_serial_grades(classes):
    d = classes["base"] / "dask"
    cluster, client = _cluster()
    try:
        rc, results, log = autograde.run(d, A, engine="dask", client=client, quiet=True)
        where = client.run(os.getpid)
    finally:
        client.close()
        cluster.close()
    assert len(where) == 2  # two worker processes, not this one
    assert os.getpid() not in where.values()
    assert gradebook_scores(d, A) == classes["serial"]
    assert "invalid_json" in log and rc != 0  # the invalid notebook fails as in nbgrader, the others are graded
    assert all(results[s].get("ok") for s in classes["students"] if s != "invalid_json")
    assert (d / "autograded" / "solution" / A / f"{A}.ipynb").exists()


def test_dask_worker_killed_mid_run_is_retried_elsewhere(classes):
    d = classes["base"] / "dask_killed"
    cluster, client = _cluster()
    killed = {}

    def kill_a_busy_worker():
        pids = client.run(os.getpid)
        deadline = time.monotonic() + LONG
        while time.monotonic() < deadline and not killed:
            busy = {w: list(keys) for w, keys in client.processing().items() if keys}
            if busy:
                time.sleep(2)  # well inside the task: its nbgrader child is grading
                still = {w: list(keys) for w, keys in client.processing().items() if keys}
                for w, keys in still.items():
                    if w in pids and set(keys) & set(busy.get(w, ())):
                        os.kill(pids[w], signal.SIGKILL)
                        killed.update(worker=w, keys=keys)
                        return
            time.sleep(0.2)

    try:
        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        rc, results, log = autograde.run(d, A, engine="dask", client=client, quiet=True)
        killer.join(timeout=60)
    finally:
        client.close()
        cluster.close()
    assert killed, "no worker was killed while it graded"
    lost = [k for k in killed["keys"]]
    assert lost and all(any(s in k for s in classes["students"]) for k in lost)
    assert not any(r.get("engine_error") for r in results.values()), results
    assert gradebook_scores(d, A) == classes["serial"]


def test_array_job_unit_and_merge_give_the_serial_grades(classes, tmp_path):
    d = classes["base"] / "array"
    cli = [sys.executable, "-m", "bngrade"]
    made = subprocess.run(cli + ["manifest", A, "--course", str(d), "--out", str(tmp_path / "job")],
                          capture_output=True, text=True, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    manifest = tmp_path / "job" / "manifest.json"
    students = json.loads(manifest.read_text())["students"]
    assert sorted(students) == classes["students"]
    for i in range(len(students)):  # as Slurm would: one process per index, the index in its environment
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i))
        unit = subprocess.run(cli + ["unit", "--manifest", str(manifest)], capture_output=True, text=True,
                              cwd=tmp_path, env=env)
        assert unit.returncode == 0, unit.stdout[-2000:] + unit.stderr[-3000:]
        assert students[i] in unit.stdout
    again = subprocess.run(cli + ["unit", "--manifest", str(manifest), "--index", "0"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert "already graded" in again.stdout  # a re-queued index costs nothing
    merged = subprocess.run(cli + ["merge", "--manifest", str(manifest)], capture_output=True, text=True, cwd=ROOT)
    assert "invalid_json" in merged.stdout + merged.stderr
    assert gradebook_scores(d, A) == classes["serial"]
    assert not list(d.glob("submitted/*/bn_forward/*.tar.gz"))  # nothing of the job lands in the course


def test_a_run_killed_then_started_again_ends_with_the_serial_grades(classes):
    d = classes["base"] / "resume"
    results = d / ".bngrade-results"
    cmd = [sys.executable, "-m", "bngrade.autograde", "run", A, "--course", str(d), "--jobs", "2"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline and first.poll() is None:
        done = list(results.glob(f"*/{A}/result.json"))
        if len(done) >= 2:
            break
        time.sleep(0.1)
    assert first.poll() is None, "the run ended before it could be killed"
    os.killpg(first.pid, signal.SIGKILL)  # the whole group, as a lost terminal or a node failure would
    first.wait()
    before = {p.parts[-3]: p.stat().st_mtime_ns for p in results.glob(f"*/{A}/result.json")}
    assert 2 <= len(before) < len(classes["students"])
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = second.stdout + second.stderr
    m = re.search(r"resuming: (\d+) of (\d+) students already graded", out)
    assert m and int(m.group(1)) == len(before), out[-3000:]
    for student, mtime in before.items():  # not graded again
        assert (results / student / A / "result.json").stat().st_mtime_ns == mtime
    assert gradebook_scores(d, A) == classes["serial"]
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # nothing left to do
    assert f"resuming: {len(classes['students'])} of {len(classes['students'])}" in third.stdout
    assert gradebook_scores(d, A) == classes["serial"]


def test_canvas_export_writes_canvas_import_columns_and_nbgrader_csv(classes, tmp_path):
    """Canvas's documented import columns, the scores of nbgrader's own grades.csv, matched on SIS Login ID."""
    import csv

    d = classes["base"] / "serial"
    roster = tmp_path / "roster.csv"
    canvas_ids = {s: (str(1000 + i), f"sis{i}") for i, s in enumerate(classes["students"])}
    with open(roster, "w", newline="") as f:  # as Canvas exports it: Points Possible row, a test student
        w = csv.writer(f)
        w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", f"{A} (4321)", "Other (99)"])
        w.writerow(["    Points Possible", "", "", "", "", "7.00", "10.00"])
        for s, (cid, sis) in canvas_ids.items():
            w.writerow([f"=HYPERLINK(\"x\") {s}" if s == "blank" else f"Name {s}", cid, sis, s, "Sec 1", "", "5"])
        w.writerow(["Student, Test", "77", "", "", "Sec 1", "", ""])
        w.writerow(["Not Submitted", "78", "sis78", "nobody", "Sec 2", "", ""])
    out = tmp_path / "canvas.csv"
    ours = tmp_path / "grades.csv"
    done = subprocess.run([sys.executable, "-m", "nbgrader", "export", "--to", str(ours),
                           "--exporter=bngrade.export_canvas.CanvasExportPlugin",
                           f"--CanvasExportPlugin.roster={roster}", f"--CanvasExportPlugin.canvas_to={out}"],
                          cwd=d, capture_output=True, text=True, env=course._env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", f"{A} (4321)"]
    assert rows[1][0] == "Points Possible"
    body = {r[3]: r for r in rows[2:]}
    assert set(body) == set(classes["students"]) | {"nobody"}  # the test student is left out
    assert body["nobody"][5] == ""  # no submission: the grade in Canvas is left as it is
    assert body["blank"][0].startswith("'=")  # a formula in a name is defused
    nbgrader_csv = {r["student_id"]: float(r["score"]) for r in csv.DictReader(ours.open())
                    if r["assignment"] == A}
    assert set(nbgrader_csv) == set(classes["students"])  # nbgrader's own CSV is still written
    max_scores = {float(r["max_score"]) for r in csv.DictReader(ours.open()) if r["assignment"] == A}
    assert max_scores == {float(rows[1][5])} and float(rows[1][5]) > 7  # the written answer's points included
    for s in classes["students"]:
        assert body[s][1:3] == list(canvas_ids[s])
        assert float(body[s][5]) == nbgrader_csv[s]
    total = sum(v[0] or 0 for v in classes["serial"]["solution"].values())
    assert float(body["solution"][5]) == total > 0


def test_class_report_in_chromium(classes, tmp_path):
    """The report of the serially graded class: renders offline, its numbers are the gradebook's, the planted
    near-copy pair ranks first, and no student text runs as markup or script."""
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("/usr/bin/chromium is missing (make test installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    d = classes["base"] / "serial"
    out = tmp_path / "report" / A / "index.html"
    made = subprocess.run([sys.executable, "-m", "bngrade.report", A, "--course", str(d), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    page_html = out.read_text()
    assert "<script" not in page_html.replace("&lt;script", "")
    serial = classes["serial"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        table = page.eval_on_selector_all("#student-table tr", "rows => rows.slice(1).map(r => "
                                          "[...r.cells].map(c => c.textContent))")
        pairs = page.eval_on_selector_all("#copy-table tr", "rows => rows.slice(1).map(r => "
                                          "[...r.cells].map(c => c.textContent))")
        mistakes = page.eval_on_selector_all("#mistake-table tr", "rows => rows.slice(1).map(r => "
                                             "[...r.cells].map(c => c.textContent))")
        cases = page.eval_on_selector_all("#case-table tr", "rows => rows.slice(1).map(r => "
                                          "[...r.cells].map(c => c.textContent))")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        pwned = page.evaluate("() => window.pwned === undefined && document.querySelectorAll('i').length === 0")
        browser.close()
    assert not errors and pwned
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # offline: nothing fetched
    assert len(images) == 2 and all(w > 100 for w in images)  # the figures rendered
    totals = {s: sum(v[0] for v in row.values() if v[0] is not None) for s, row in serial.items()}
    assert {s: float(v) for s, v in table} == totals  # the gradebook's numbers, every student
    # the planted pair ranks first; the only pairs as similar are students who all handed in the source
    # solution's code unchanged (the catalogue's variants that change other cells), copies too
    planted = [p for p in pairs if {p[1], p[2]} == {"copy_a", "copy_b"}]
    assert planted and pairs[0] == planted[0] and float(planted[0][3]) >= max(float(p[3]) for p in pairs), pairs
    assert all(float(p[3]) < float(planted[0][3]) for p in pairs if len({p[1], p[2]} & {"copy_a", "copy_b"}) == 1)
    assert any("CS231n momentum" in m[0] and "cs231n_default_momentum" in m[3] for m in mistakes), mistakes
    assert any(c[2] == "hidden" for c in cases) and any(c[2] == "visible" for c in cases)
    solution_full = [c for c in cases if c[0] == "test_train_output"]
    assert solution_full and all(int(c[5]) >= len(serial) - 2 for c in solution_full)
