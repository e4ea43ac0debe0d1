"""The bnkit course on a real JupyterHub, on this machine: `make hub`, `make hub-stop`, `make hub-clean`.

    python hub/hub.py setup    # as root: accounts, hub venv, course, exchange (idempotent)
    python hub/hub.py start    # foreground; Ctrl-C stops the hub and every server it started
    python hub/hub.py start --detach ; python hub/hub.py stop
    python hub/hub.py clean    # stop, remove the accounts, their homes and the hub's directories

Standard library only, so any Python 3.10+ runs it. Settings come from the
environment (the Makefile passes them): HUB_ROOT (/srv/bnkit-hub), HUB_VENV
(/opt/bnkit-hub/venv), HUB_PORT (8000), HUB_USER_PREFIX (bnk-), HUB_STUDENTS (3).

Decisions (see README, "Running the course for a class"):
- Accounts are real Unix users (useradd), authenticated by PAM, JupyterHub's
  default: the hub already has to spawn each server as its own uid, so the
  Unix account *is* the identity; no second password store, no sign-up page
  to lock down. Passwords are random, printed once, kept in HUB_ROOT/state
  (mode 600) for the instructor.
- The hub and every single-user server run from one venv built from Debian's
  /usr/bin/python3 (root-owned, world-readable, read-only to users): the
  project's own interpreter lives under /root (mode 700), which other uids
  cannot execute, and opening /root would expose root's home. bnkit/bngrade
  are installed into it as a copy (not editable), so users never need to
  read the repository, whose assignments/source holds the solutions.
- The course directory is ~instructor/bnkit (instructor-owned, 700), a copy of
  assignments/ with its nbgrader_config.py (the sandbox) in force; the
  exchange is HUB_ROOT/exchange with the modes nbgrader's docs ask for.
- Students' servers do not load the formgrader/course-list server extensions
  (role config dirs on JUPYTER_CONFIG_PATH, set by the hub per user).
"""
import argparse
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ["bn_forward", "bn_backward_graph", "bn_backward_fast", "bn_spatial_layernorm"]
COURSE_ID = "bnkit"


class Settings:
    def __init__(self, env=os.environ):
        self.root = Path(env.get("HUB_ROOT", "/srv/bnkit-hub"))
        self.venv = Path(env.get("HUB_VENV", "/opt/bnkit-hub/venv"))
        self.port = int(env.get("HUB_PORT", "8000"))
        self.prefix = env.get("HUB_USER_PREFIX", "bnk-")
        self.n_students = int(env.get("HUB_STUDENTS", "3"))
        self.python = env.get("HUB_BASE_PYTHON", "/usr/bin/python3")
        self.state = self.root / "state"
        self.exchange = self.root / "exchange"
        self.roles = self.root / "jupyter"
        self.instructor = self.prefix + "instructor"
        self.students = [f"{self.prefix}student{i}" for i in range(1, self.n_students + 1)]
        self.url = f"http://127.0.0.1:{self.port}/"

    def course_dir(self):
        return Path(pwd.getpwnam(self.instructor).pw_dir) / COURSE_ID

    def env(self):
        return {"HUB_ROOT": str(self.root), "HUB_VENV": str(self.venv), "HUB_PORT": str(self.port),
                "HUB_USER_PREFIX": self.prefix, "HUB_STUDENTS": str(self.n_students)}


def say(msg):
    print(f"[hub] {msg}", flush=True)


def run(argv, check=True, **kw):
    r = subprocess.run([str(a) for a in argv], **kw)
    if check and r.returncode != 0:
        out = "".join(x for x in (r.stdout, r.stderr) if isinstance(x, str))
        sys.exit(f"hub: {' '.join(str(a) for a in argv)[:300]} failed (exit {r.returncode})\n{out[-3000:]}")
    return r


def need_root():
    if os.geteuid() != 0:
        sys.exit("hub: run this as root (make hub does). It creates Unix accounts (useradd, chpasswd), chowns "
                 "their homes and the course, and the hub must read /etc/shadow (PAM) and start each user's "
                 "server under that user's uid. Without root, use sudo for `make hub`, or run JupyterHub with "
                 "sudospawner and accounts made by an administrator (see README).")


# ---------------------------------------------------------------- setup
def apt_install(*packages):
    say(f"apt-get install {' '.join(packages)}")
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", *packages], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_system_packages(s):
    missing = []
    if not os.access(s.python, os.X_OK):
        missing += ["python3", "python3-venv"]
    elif subprocess.run([s.python, "-c", "import ensurepip, venv"], capture_output=True).returncode:
        missing.append("python3-venv")
    if not os.access("/usr/bin/bwrap", os.X_OK):
        missing.append("bubblewrap")  # the course's sandbox (autograde from the formgrader)
    if not shutil.which("node"):
        missing.append("nodejs")  # configurable-http-proxy
    if missing:
        apt_install(*missing)
    chp = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
    if not chp.exists():
        run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=REPO)


def venv_fingerprint():
    h = hashlib.sha256()
    for p in sorted([REPO / "pyproject.toml", REPO / "constraints.txt",
                     *(REPO / "bnkit").rglob("*.py"), *(REPO / "bngrade").rglob("*.py")]):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


# Pins of constraints.txt that Debian's python3 cannot take (bookworm's is 3.11.2):
# soupsieve >= 3 needs 3.11.5 (a broken `re` before it; 3.0.1 is yanked for that).
DEBIAN_PYTHON_PINS = {"soupsieve": "2.8.3"}


def hub_constraints(s):
    """constraints.txt with DEBIAN_PYTHON_PINS in place of its pins for those packages."""
    out = []
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name = line.split("==")[0].strip().lower()
        out.append(f"{name}=={DEBIAN_PYTHON_PINS[name]}" if name in DEBIAN_PYTHON_PINS else line)
    return "\n".join(out) + "\n"


def ensure_venv(s):
    """The hub's and users' venv from Debian's python3: jupyterhub, jupyterlab, nbgrader, bnkit (a copy)."""
    stamp = s.venv / ".bnkit-hub-stamp"
    fp = venv_fingerprint()
    if stamp.exists() and stamp.read_text() == fp:
        install_grades_extension(s)
        return
    say(f"building the hub's venv {s.venv} from {s.python} (pip, pinned by constraints.txt)")
    if not (s.venv / "bin" / "python").exists():
        s.venv.parent.mkdir(parents=True, exist_ok=True)
        run([s.python, "-m", "venv", s.venv])
    pip = [s.venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    pins = s.state / "constraints-hub.txt"
    pins.write_text(hub_constraints(s))
    run(pip + ["-c", pins, "jupyterhub"])  # first alone: a smaller resolution for Debian's old pip
    run(pip + ["-c", pins, f"{REPO}[hub]"])
    # a copy: reinstall even if the version did not change, so edits to bnkit/bngrade reach the course
    run(pip + ["--no-deps", "--force-reinstall", str(REPO)])
    install_grades_extension(s)
    run(["chmod", "-R", "go-w,a+rX", s.venv])
    stamp.write_text(fp)


def install_grades_extension(s):
    """hub/bnkit_hub_grades.py (the instructor's CSV download) into the venv, where the servers import it,
    and the local MathJax that bngrade.formgrader_csp serves to the formgrader (<venv>/share/bnkit)."""
    site = next((s.venv / "lib").glob("python3*/site-packages"))
    shutil.copy2(REPO / "hub" / "bnkit_hub_grades.py", site / "bnkit_hub_grades.py")
    os.chmod(site / "bnkit_hub_grades.py", 0o644)
    mathjax = REPO / "node_modules" / "mathjax" / "es5" / "tex-svg.js"
    if mathjax.is_file():
        (s.venv / "share" / "bnkit").mkdir(parents=True, exist_ok=True)
        shutil.copy2(mathjax, s.venv / "share" / "bnkit" / "tex-svg.js")
    else:
        say("no node_modules/mathjax (make mathjax): the formgrader will show LaTeX as text")


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def load_users(s):
    f = s.state / "users.json"
    return json.loads(f.read_text()) if f.exists() else {}


def ensure_accounts(s):
    users = load_users(s)
    for name in [s.instructor, *s.students]:
        if name in users and user_exists(name):
            continue
        if user_exists(name) and name not in users:
            sys.exit(f"hub: a Unix account {name!r} exists that make hub did not create; refusing to take it "
                     f"over (set HUB_USER_PREFIX to another prefix)")
        run(["useradd", "--create-home", "--shell", "/bin/bash", "--comment", "bnkit hub demo", name])
        password = secrets.token_urlsafe(12)
        run(["chpasswd"], input=f"{name}:{password}\n", text=True)
        users[name] = password
        (s.state / "users.json").write_text(json.dumps(users, indent=1))
        os.chmod(s.state / "users.json", 0o600)
    for name in users:
        home = pwd.getpwnam(name).pw_dir
        os.chmod(home, 0o700)  # Debian's useradd leaves 755: classmates would read each other's work
    return users


def as_user(name, argv, cwd, **kw):
    pw = pwd.getpwnam(name)
    env = {"HOME": pw.pw_dir, "USER": name, "LOGNAME": name, "LANG": "C.UTF-8",
           "PATH": f"{os.environ['HUB_VENV_BIN']}:/usr/local/bin:/usr/bin:/bin"}
    return run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv],
               cwd=cwd, env=env, **kw)


# No "news from Jupyter" pop-up (it would ask the network) in a class's servers.
QUIET = {"@jupyterlab/apputils-extension:announcements": True}


def ensure_roles(s):
    """Per-role Jupyter config dirs (JUPYTER_CONFIG_PATH of each user's server, set by the hub)."""
    common = (f"c = get_config()  # noqa: F821\n"
              f"c.Exchange.root = {str(s.exchange)!r}\n"
              f"c.CourseDirectory.course_id = {COURSE_ID!r}\n")
    student = s.roles / "student"
    (student / "labconfig").mkdir(parents=True, exist_ok=True)
    # nbgrader submit copies only data: links, FIFOs and devices in the folder are left out (bngrade.exchange)
    (student / "nbgrader_config.py").write_text(
        common + "c.ExchangeFactory.submit = 'bngrade.exchange.SafeExchangeSubmit'\n")
    off = ["nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list"]
    (student / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {e: False for e in off}}}, indent=1))
    (student / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": {
        "@jupyter/nbgrader:formgrader": True, "@jupyter/nbgrader:create-assignment": True,
        "@jupyter/nbgrader:course-list": True, **QUIET}}, indent=1))
    instructor = s.roles / "instructor"
    instructor.mkdir(parents=True, exist_ok=True)
    (instructor / "labconfig").mkdir(exist_ok=True)
    (instructor / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": QUIET}))
    (instructor / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"bnkit_hub_grades": True, "bngrade.formgrader_csp": True}}},
        indent=1))
    course = s.course_dir()
    # The course's own config (the sandbox, the verdict outside the kernel), with its root made absolute:
    # the server's working directory is the instructor's home, the course a subdirectory of it.
    (instructor / "nbgrader_config.py").write_text(
        common + f"load_subconfig({str(course / 'nbgrader_config.py')!r})\n"
                 f"c.CourseDirectory.root = {str(course)!r}\n")
    # The guard beside it: nbgrader loads a config dir's .json even when its .py fails, so the
    # formgrader's Autograde button refuses to grade unsandboxed (bngrade.sandbox_guard).
    shutil.copy2(REPO / "assignments" / "nbgrader_config.json", instructor / "nbgrader_config.json")
    run(["chmod", "-R", "a+rX,go-w", s.roles])


def ensure_exchange(s):
    # nbgrader's docs: the exchange root is world-writable (ugo+rw); release creates the course's
    # outbound (755), inbound (2733: students drop submissions, nobody else lists them) and feedback.
    # The sticky bit keeps one user from renaming another's entries at the top.
    s.exchange.mkdir(parents=True, exist_ok=True)
    os.chmod(s.exchange, 0o1777)


def ensure_course(s, users):
    pw = pwd.getpwnam(s.instructor)
    course = s.course_dir()
    fresh = not (course / "gradebook.db").exists()
    if fresh:
        say(f"course directory {course} (owner {s.instructor}, mode 700)")
        course.mkdir(exist_ok=True)
        shutil.copytree(REPO / "assignments" / "source", course / "source", dirs_exist_ok=True)
        # bngrade.COURSE_CONFIG: the .json makes autograde refuse to run unsandboxed (bngrade.sandbox_guard)
        for name in ("nbgrader_config.py", "nbgrader_config.json"):
            shutil.copy2(REPO / "assignments" / name, course / name)
        run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", course])
        os.chmod(course, 0o700)
    nbgrader = [s.venv / "bin" / "nbgrader"]
    os.environ["HUB_VENV_BIN"] = str(s.venv / "bin")
    conf = ["--Exchange.root=" + str(s.exchange)]
    released = s.exchange / COURSE_ID / "outbound"
    for a in ASSIGNMENTS:
        if (released / a).is_dir():
            continue
        say(f"generate + release {a}")
        as_user(s.instructor, nbgrader + ["generate_assignment", a, "--force"], cwd=course, capture_output=True,
                text=True)
        as_user(s.instructor, nbgrader + ["release_assignment", a, *conf], cwd=course, capture_output=True,
                text=True)
    # the class list in the gradebook (the formgrader's Manage Students), in one process
    add = ("import sys\nfrom nbgrader.api import Gradebook\n"
           "with Gradebook('sqlite:///gradebook.db') as gb:\n"
           "    for n in sys.argv[1:]:\n        gb.update_or_create_student(n, last_name=n)\n")
    as_user(s.instructor, [s.venv / "bin" / "python", "-c", add, *s.students], cwd=course, capture_output=True,
            text=True)
    # The clone's instructor notebooks (solutions, hidden tests) must not be readable by students.
    src = REPO / "assignments" / "source"
    if src.stat().st_mode & 0o007:
        os.chmod(src, 0o700)
        say(f"{src} made 700 (it holds the solutions and hidden tests)")


def setup(s):
    need_root()
    s.state.mkdir(parents=True, exist_ok=True)
    os.chmod(s.root, 0o755)
    os.chmod(s.state, 0o700)
    ensure_system_packages(s)
    ensure_venv(s)
    users = ensure_accounts(s)
    ensure_exchange(s)
    ensure_course(s, users)
    ensure_roles(s)
    return users


# ---------------------------------------------------------------- start / stop
def hub_argv_env(s):
    (s.state / "cookie_secret").write_bytes(secrets.token_hex(32).encode())  # new at every start
    os.chmod(s.state / "cookie_secret", 0o600)
    env = {**os.environ, **s.env(), "HUB_ROOT": str(s.root), "HUB_INSTRUCTOR": s.instructor,
           "HUB_STUDENTS_LIST": ",".join(s.students), "HUB_CHP": str(REPO / "node_modules" / ".bin" /
                                                                     "configurable-http-proxy"),
           "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{s.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    argv = [str(s.venv / "bin" / "jupyterhub"), "-f", str(REPO / "hub" / "jupyterhub_config.py")]
    return argv, env


def wait_up(s, proc, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(s.url + "hub/api/", timeout=10) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    return False


def banner(s, users):
    say(f"JupyterHub for the bnkit course: {s.url}")
    say(f"  instructor  {s.instructor:<16} password {users[s.instructor]}")
    for name in s.students:
        say(f"  student     {name:<16} password {users[name]}")
    say(f"  course directory {s.course_dir()}  exchange {s.exchange}  log {s.state / 'hub.log'}")


def start(s, detach=False):
    users = setup(s)
    if running_pid(s):
        sys.exit(f"hub: already running (pid {running_pid(s)}); make hub-stop first")
    argv, env = hub_argv_env(s)
    log = open(s.state / "hub.log", "ab")
    proc = subprocess.Popen(argv, cwd=s.state, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    (s.state / "hub.pid").write_text(str(proc.pid))
    say(f"starting JupyterHub (pid {proc.pid}); log: {s.state / 'hub.log'}")
    if not wait_up(s, proc):
        stop(s)
        sys.exit(f"hub: JupyterHub did not come up; see {s.state / 'hub.log'}")
    banner(s, users)
    if detach:
        say("detached; stop it with `make hub-stop`")
        return
    say("Ctrl-C stops the hub, the proxy and every user's server")
    try:
        while proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the hub half stopped
    stop(s)


def running_pid(s):
    f = s.state / "hub.pid"
    if not f.exists():
        return None
    pid = int(f.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        f.unlink()
        return None
    return pid


def user_pids(uids):
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid in uids:
                    pids.append(int(p.name))
            except FileNotFoundError:
                pass
    return pids


def stop(s):
    pid = running_pid(s)
    if pid:
        say(f"stopping JupyterHub (pid {pid}): it stops the proxy and the users' servers")
        os.kill(pid, signal.SIGTERM)
        for _ in range(120):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.5)
        else:
            os.killpg(pid, signal.SIGKILL)
        try:
            os.killpg(pid, signal.SIGKILL)  # the proxy, if the hub died before stopping it
        except ProcessLookupError:
            pass
        (s.state / "hub.pid").unlink(missing_ok=True)
    # anything still running as the hub's users (a server or kernel that outlived the hub)
    uids = set()
    for name in load_users(s):
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    for _ in range(20):
        pids = user_pids(uids)
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    say("stopped")


def clean(s):
    need_root()
    stop(s)
    for name in load_users(s):
        if user_exists(name):
            run(["userdel", "--remove", name], check=False, capture_output=True)
            say(f"removed account {name} and its home")
    shutil.rmtree(s.root, ignore_errors=True)
    say(f"removed {s.root} (the venv {s.venv} is kept; delete it by hand if you want)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["setup", "start", "stop", "clean", "users"])
    ap.add_argument("--detach", action="store_true", help="start: return once the hub answers")
    a = ap.parse_args(argv)
    s = Settings()
    if a.command == "setup":
        banner(s, setup(s))
    elif a.command == "start":
        start(s, detach=a.detach)
    elif a.command == "stop":
        stop(s)
    elif a.command == "clean":
        clean(s)
    elif a.command == "users":
        print(json.dumps(load_users(s)))


if __name__ == "__main__":
    main()
