"""How many students one hub on this machine holds: N log in, fetch and submit at once (make hub-load).

    python hub/load.py --rounds 10 30 60 --out-dir test-artifacts/hub   # load-10.json, load-30.json, ...

It starts its own hub (hub/hub.py: accounts bnkl-student1..K, its own port
and state dir on 127.0.0.1), runs each round with fresh students (so no
fetch finds a copy already there), stops every server between rounds, and
removes its accounts, homes and hub at the end, also on Ctrl-C or a failure.
Bounded: each request has a timeout, each round a deadline (--round-seconds),
and nothing is retried. Every request goes to 127.0.0.1 only.

Per round it records, for each student: login -> server ready, login ->
fetch done (the student's view: the Assignments tab lists bn_forward as
fetched), and the submit time; the JSON holds the percentiles and every
failure with its reason.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import HubError, HubUser  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))
    return round(v[k], 2)


def summary(values):
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "p95": pct(values, 95),
            "max": round(max(values), 2) if values else None,
            "mean": round(statistics.fmean(values), 2) if values else None}


def one_student(url, name, password, timeout, out):
    rec = {"student": name}
    t0 = time.monotonic()
    u = HubUser(url, name, password, timeout=timeout)
    try:
        u.login()
        rec["login_to_server_s"] = time.monotonic() - t0
        u.action("fetch", "bn_forward")
        if not any(a["assignment_id"] == "bn_forward" and a["status"] == "fetched" for a in u.assignments()["value"]):
            raise HubError("bn_forward not listed as fetched")
        rec["login_to_fetch_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        u.action("submit", "bn_forward")
        rec["submit_s"] = time.monotonic() - t1
        rec["ok"] = True
    except Exception as e:  # a failure is a result: record it and go on
        rec["ok"] = False
        rec["error"] = f"{type(e).__name__}: {e}"[:500]
    rec["total_s"] = time.monotonic() - t0
    out.append((rec, u))


def run_round(url, users, timeout, round_seconds):
    out, threads = [], []
    t0 = time.monotonic()
    for name, password in users:
        th = threading.Thread(target=one_student, args=(url, name, password, timeout, out), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(max(0.0, round_seconds - (time.monotonic() - t0)))
    wall = time.monotonic() - t0
    done = {rec["student"] for rec, _ in out}
    records = [rec for rec, _ in out] + [{"student": n, "ok": False, "error": f"not finished in {round_seconds} s"}
                                         for n, _ in users if n not in done]
    for _, u in out:  # stop the servers: the next round measures a hub without them
        try:
            u.stop_server()
        except Exception:
            pass
    ok = [r for r in records if r.get("ok")]
    return {
        "students": len(users), "wall_s": round(wall, 1), "succeeded": len(ok), "failed": len(records) - len(ok),
        "login_to_server_s": summary([r["login_to_server_s"] for r in ok]),
        "login_to_fetch_s": summary([r["login_to_fetch_s"] for r in ok]),
        "submit_s": summary([r["submit_s"] for r in ok]),
        "failures": [r for r in records if not r.get("ok")][:20],
    }


def wait_no_servers(root, users, limit=300):
    import pwd
    uids = set()
    for n, _ in users:
        try:
            uids.add(pwd.getpwnam(n).pw_uid)
        except KeyError:
            pass
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy = False
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    busy = busy or p.stat().st_uid in uids
                except OSError:
                    pass
        if not busy:
            return
        time.sleep(2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, nargs="+", default=[10, 30, 60])
    ap.add_argument("--out-dir", default="test-artifacts/hub", help="one load-N.json per round goes here")
    ap.add_argument("--port", type=int, default=18500)
    ap.add_argument("--timeout", type=int, default=600, help="seconds for one request (a spawn included)")
    ap.add_argument("--round-seconds", type=int, default=900, help="a round's deadline")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("hub/load.py: run as root (it creates and removes its own accounts)")
    total = sum(a.rounds)
    env = {**os.environ, "HUB_ROOT": "/srv/bnkit-hub-load", "HUB_PORT": str(a.port), "HUB_USER_PREFIX": "bnkl-",
           "HUB_STUDENTS": str(total), "HUB_VENV": os.environ.get("HUB_VENV", "/opt/bnkit-hub/venv")}
    hub = [sys.executable, str(REPO / "hub" / "hub.py")]
    url = f"http://127.0.0.1:{a.port}/"
    result = {"url": url, "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "rounds": []}
    t_setup = time.monotonic()
    try:
        r = subprocess.run(hub + ["start", "--detach"], env=env, capture_output=True, text=True, timeout=3600)
        if r.returncode:
            sys.exit(f"hub did not start:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        result["setup_s"] = round(time.monotonic() - t_setup, 1)
        users = json.loads(Path("/srv/bnkit-hub-load/state/users.json").read_text())
        students = [(n, users[n]) for n in sorted(users, key=lambda n: (len(n), n)) if "student" in n]
        start = 0
        for n in a.rounds:
            group = students[start:start + n]
            start += n
            print(f"[load] round: {n} students at once", flush=True)
            loadavg_before = os.getloadavg()
            rnd = run_round(url, group, a.timeout, a.round_seconds)
            rnd["loadavg_before"], rnd["loadavg_after"] = loadavg_before, os.getloadavg()
            print(json.dumps({k: v for k, v in rnd.items() if k != "failures"}), flush=True)
            result["rounds"].append(rnd)
            out = Path(a.out_dir) / f"load-{n}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"url": url, "machine": result["machine"], **rnd}, indent=1))
            wait_no_servers("/srv/bnkit-hub-load", group)
    finally:
        subprocess.run(hub + ["clean"], env=env, capture_output=True, text=True, timeout=900)
        out = Path(a.out_dir) / "load-all.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"[load] written {out} (and one load-N.json per round)", flush=True)


if __name__ == "__main__":
    main()
