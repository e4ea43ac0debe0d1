"""One cgroup per sandbox: its TOTAL memory and process count, and the CPU it used.

Per-process rlimits cannot bound a sandbox's total memory (N processes may
each hold the limit; tmpfs, /dev/shm, memfd and SysV pages belong to no
process). A memory cgroup counts every page the sandbox's processes fault
in, those included, and the kernel's OOM killer acts inside the group only.

Where: cgroup v2 when the grader's own group offers the `memory` and `pids`
controllers, else cgroup v1's `memory`, `pids` (and `cpuacct`) hierarchies
under /sys/fs/cgroup/<controller>. Each new group is made *below the
grader's own group* (so a container's limits still hold), named
`bngrade-<pid>-<n>`, and removed after the run. `Cgroup.make` raises
`CgroupUnavailable` with the reason where the machine does not allow it; the
grader then says so once, when autograde starts, and runs with rlimits only.

The sandbox joins the group before bwrap starts (sandbox_bwrap's launcher
writes its own pid into each of `procs_files()`, then executes bwrap), so no
process of the sandbox ever runs outside it.
"""
import itertools
import os
import time

CGROUP_FS = "/sys/fs/cgroup"
_counter = itertools.count()


class CgroupUnavailable(RuntimeError):
    """No cgroup with memory and pids limits can be made here (the reason is the message)."""


def _own_groups():
    """{controller: path of this process's group} from /proc/self/cgroup ('' is cgroup v2)."""
    groups = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                groups[c] = (controllers, path)
    return groups


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class Cgroup:
    """A sandbox's cgroup: `make` it, join it, read `cpu_seconds`/`memory_peak`, then `remove`."""

    def __init__(self, version, dirs):
        self.version, self.dirs = version, dirs  # dirs: {controller: directory}

    @classmethod
    def make(cls, memory_bytes, max_pids):
        name = f"bngrade-{os.getpid()}-{next(_counter)}"
        groups = _own_groups()
        errors = []
        v2 = cls._v2_base(groups)
        if v2 is not None:
            try:
                return cls._make_v2(os.path.join(v2, name), memory_bytes, max_pids)
            except OSError as e:
                errors.append(f"cgroup v2 at {v2}: {e.strerror}")
        try:
            return cls._make_v1(groups, name, memory_bytes, max_pids)
        except (OSError, KeyError) as e:
            errors.append(f"cgroup v1: {getattr(e, 'strerror', None) or e}")
        raise CgroupUnavailable("; ".join(errors))

    @staticmethod
    def _v2_base(groups):
        if "" not in groups:
            return None
        for mount in (CGROUP_FS, os.path.join(CGROUP_FS, "unified")):
            base = os.path.join(mount, groups[""][1].lstrip("/"))
            if {"memory", "pids"} <= set(_read(os.path.join(base, "cgroup.controllers")).split()):
                return base
        return None

    @classmethod
    def _make_v2(cls, path, memory_bytes, max_pids):
        os.mkdir(path, 0o755)
        group = cls(2, {"": path})
        try:
            _write(os.path.join(path, "memory.max"), memory_bytes)
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                _write(os.path.join(path, "memory.swap.max"), 0)
            _write(os.path.join(path, "pids.max"), max_pids)
        except OSError:
            group.remove()
            raise
        return group

    @classmethod
    def _make_v1(cls, groups, name, memory_bytes, max_pids):
        dirs = {}
        group = cls(1, dirs)
        try:
            for controller in ("memory", "pids", "cpuacct"):
                if controller not in groups:
                    if controller == "cpuacct":
                        continue  # optional: only tells load from the student's own CPU use
                    raise KeyError(f"the {controller} controller is not mounted")
                mounted, own = groups[controller]
                base = next((os.path.join(CGROUP_FS, m) for m in (mounted, controller)
                             if os.path.isdir(os.path.join(CGROUP_FS, m))), None)
                if base is None:
                    raise KeyError(f"no {controller} hierarchy under {CGROUP_FS}")
                path = os.path.join(base, own.lstrip("/"), name)
                os.mkdir(path, 0o755)
                dirs[controller] = path
            mem = dirs["memory"]
            _write(os.path.join(mem, "memory.limit_in_bytes"), memory_bytes)
            if os.path.exists(os.path.join(mem, "memory.memsw.limit_in_bytes")):
                _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), memory_bytes)  # no swap either
            _write(os.path.join(dirs["pids"], "pids.max"), max_pids)
            if int(_read(os.path.join(mem, "memory.limit_in_bytes")) or 0) > memory_bytes:
                raise KeyError("the memory limit did not hold")
        except (OSError, KeyError):
            group.remove()
            raise
        return group

    # ------------------------------------------------------------ use
    def procs_files(self):
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def cpu_seconds(self):
        """CPU time used by every process of the group so far (None without cpuacct)."""
        if self.version == 2:
            for line in _read(os.path.join(self.dirs[""], "cpu.stat")).splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
            return None
        if "cpuacct" in self.dirs:
            text = _read(os.path.join(self.dirs["cpuacct"], "cpuacct.usage")).strip()
            return int(text) / 1e9 if text else None
        return None

    def memory_peak(self):
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        text = _read(os.path.join(self.dirs.get("" if self.version == 2 else "memory", ""), name)).strip()
        return int(text) if text.isdigit() else None

    def oom_kills(self):
        d = self.dirs.get("" if self.version == 2 else "memory")
        text = _read(os.path.join(d, "memory.events" if self.version == 2 else "memory.oom_control"))
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def pids(self):
        out = set()
        for f in self.procs_files():
            out |= {int(p) for p in _read(f).split()}
        return out

    def kill_all(self):
        """SIGKILL every process still in the group (a daemon that left the pid namespace's tree)."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            time.sleep(0.02)

    def remove(self):
        """Kill what is left, then remove the groups (an empty group's directory is removed by rmdir)."""
        self.kill_all()
        for d in self.dirs.values():
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def sweep_stale():
    """Remove the empty groups of graders that no longer run (one killed with SIGKILL leaves its group)."""
    removed = []
    for controller, (mounted, own) in _own_groups().items():
        parent = os.path.join(CGROUP_FS, mounted, own.lstrip("/")) if controller else None
        if parent is None or not os.path.isdir(parent):
            continue
        for name in os.listdir(parent):
            parts = name.split("-")
            if len(parts) != 3 or parts[0] != "bngrade" or not parts[1].isdigit():
                continue
            if os.path.exists(f"/proc/{parts[1]}"):
                continue  # its grader still runs (or the pid was reused: leave it)
            try:
                os.rmdir(os.path.join(parent, name))  # only an empty group can be removed
                removed.append(os.path.join(parent, name))
            except OSError:
                pass
    return removed
