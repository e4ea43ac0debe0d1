"""The sandboxed kernel's lifecycle: its manager and client, its processes on the host, its end, its CPU.

`SandboxedExecute` (bngrade/sandbox.py) drives a notebook through these;
what the sandbox sees and may do is declared in `sandbox_policy.py` and
built by `sandbox_bwrap.py`, `sandbox_seccomp.py` and `sandbox_cgroup.py`.

- `SandboxedKernelManager` starts bwrap's command line instead of the
  kernel spec's argv; its client's sockets refuse any single message over
  `max_message_bytes`; interrupts are `interrupt_request` messages (a signal
  to bwrap's process group would not reach a kernel in its own session).
- `sandbox_root` / `kernel_pid`: the sandbox's init (the child of the
  host-side bwrap) and the kernel (init's child), found through /proc.
- `close_ipc_dir`: once the kernel has made its sockets, the IPC directory
  becomes root's (on a descriptor, no path followed).
- `wait_for_sandbox_end`: returns once every process of the sandbox is gone.
- `starved_by_others`: the rule that decides whether a timeout came from load.
"""
import asyncio
import os
import time

import zmq
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import channel_socket_types
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Integer, List, Type, Unicode

MiB = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


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
    client_class = DottedObjectName("bngrade.sandbox_kernel.SandboxedKernelClient")
    client_factory = Type(SandboxedKernelClient, klass=AsyncKernelClient)

    def client(self, **kwargs):
        kc = super().client(**kwargs)
        kc.max_message_bytes = self.max_message_bytes  # the sockets are made later, by start_channels
        return kc

    def format_kernel_cmd(self, extra_arguments=None):
        if self.sandbox_uid >= 0:  # the kernel reads it (group), cannot write it; on a descriptor, no path
            fd = os.open(self.connection_file, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fchown(fd, 0, self.sandbox_uid)
                os.fchmod(fd, 0o640)
            finally:
                os.close(fd)
        return list(self.sandbox_argv) + ["-f", self.connection_file] + list(extra_arguments or [])

    async def interrupt_kernel(self):
        if self.has_kernel:
            msg = self.session.msg("interrupt_request", content={})
            self._connect_control_socket()
            self.session.send(self._control_socket, msg)


# ---------------------------------------------------------------------- the sandbox's processes on the host

def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def sandbox_root(km):
    """(/proc/<pid>/root of the sandbox's init, its pid), or (None, None). Never the host's root."""
    proc = getattr(getattr(km, "provisioner", None), "process", None)
    if proc is None:
        return None, None
    children = _children(proc.pid)
    if not children:
        return None, None
    root = f"/proc/{children[0]}/root"
    try:  # a recycled pid would show the host's root: never read from there
        here, there = os.stat("/"), os.stat(root)
    except OSError:
        return None, None
    if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
        return None, None
    return root, int(children[0])


def kernel_pid(init_pid):
    """The kernel's pid on the host: the child of the sandbox's init (setpriv executed python there)."""
    children = _children(init_pid) if init_pid is not None else []
    return int(children[0]) if children else None


def close_ipc_dir(run_dir):
    """The run's ipc/ becomes root's, 0755, on a descriptor opened without following links."""
    run_fd = os.open(run_dir, _DIR)
    try:
        fd = os.open("ipc", _DIR, dir_fd=run_fd)
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)
    finally:
        os.close(run_fd)


async def wait_for_sandbox_end(init_pid, cgroup, uid, log):
    """Return once every process of the sandbox is gone (the pid namespace's init exits last)."""
    deadline = time.monotonic() + 60
    while init_pid is not None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{init_pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break
        except OSError:
            break
        await asyncio.sleep(0.05)
    if cgroup is not None:
        cgroup.kill_all()
    if uid > 0:  # belt and braces: nothing of this grader's sandbox uid may outlive the notebook
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == uid:
                        os.kill(int(entry), 9)
                        log.warning("bngrade: killed a leftover sandbox process %s", entry)
                except OSError:
                    pass


# ---------------------------------------------------------------------- CPU: was a timeout load or the student?

def lowered_own_priority(pid):
    """Did the kernel lower its priority below the grader's (nice, SCHED_BATCH, SCHED_IDLE)? Its own doing then."""
    def nice_and_policy(p):
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[16]), int(fields[38])  # nice; policy (3 SCHED_BATCH, 5 SCHED_IDLE)

    try:
        (nice, policy_), (own_nice, own_policy) = nice_and_policy(pid), nice_and_policy("self")
    except (OSError, ValueError, IndexError):
        return False
    return nice > own_nice or (policy_ in (3, 5) and policy_ != own_policy)


def schedstat(pid):
    """(ns on a CPU, ns waiting on a run queue) summed over the threads of `pid`; None if gone."""
    run = wait = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    return run, wait


def load_sample(cgroup, pid):
    """(wall s, sandbox CPU s or None, kernel (run ns, wait ns) or None)."""
    cpu = cgroup.cpu_seconds() if cgroup is not None else None
    return time.monotonic(), cpu, schedstat(pid) if pid else None


def starved_by_others(wall, ran, waited, used, lowered):
    """Starved: the kernel's threads waited on a run queue for at least a quarter of the time, yet the whole
    sandbox had under 0.6 of one CPU, and the kernel did not lower its own priority. (A fair share of 2/3,
    three sessions on two CPUs, is ordinary load, not starvation: the time budget's margin absorbs it.)

    Waiting that the sandbox causes itself (threads or processes competing for the CPUs it pinned) comes
    with at least one CPU's worth of use, so it does not qualify. (Not "waited longer than it ran": each
    session is its own scheduler autogroup, so a host hog at nice -15 takes about half the CPU, measured.)
    """
    return wall > 0 and waited >= 0.25 * wall and used < 0.6 * wall and not lowered
