"""What a grading sandbox sees and may do: the whole policy, as data.

This file is the one a reviewer audits. Everything here is enforced by the
machinery in the other `sandbox_*` modules (bwrap's argv: sandbox_bwrap.py;
the seccomp filter: sandbox_seccomp.py; the cgroup: sandbox_cgroup.py; the
copy of the submission by content: sandbox_files.py) and checked from inside
a real sandbox by tests/test_sandbox*.py. Sizes and counts are the defaults
of `SandboxedExecute`'s traits (the course may lower or raise them in
nbgrader_config.py); everything else is fixed.
"""
import errno

MiB = 1 << 20

# ---------------------------------------------------------------- what it sees
# Everything not listed here does not exist inside: the root is an empty tmpfs,
# remounted read-only. /work, /root, /home, /opt, the host's /tmp and the course are absent.
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # read-only
# the interpreter's own tree (sys.base_prefix) is bound read-only, its site-packages hidden by an empty tmpfs
SITE = "/opt/bngrade/site"           # read-only: the distributions below, kernel-side bngrade, gradcheck-only bnkit
KERNEL_PACKAGES = ("ipykernel", "numpy")   # with their requirements (resolved from metadata at run time)
KERNEL_MODULES = ("__init__.py", "harness.py", "cases.py")  # bngrade's kernel side
FORBIDDEN = {"torch", "triton", "bnkit", "bngrade", "nbgrader", "jupyter_book", "sphinx"}  # never bound as packages
SUBMISSION = "/submission"           # read-only: the student's files, copied by content (see FILES_GIVEN)
ROOT = "/sandbox"                    # a size-capped tmpfs: HOME, WORK, RESULTS
HOME, WORK, RESULTS = ROOT + "/home", ROOT + "/work", ROOT + "/results"
START_DIR = "/"                      # the kernel starts in a read-only directory, moves to WORK once IPython is up
# tmpfs mounts, each sized by the trait named (bytes also count in the cgroup's memory)
TMPFS = {ROOT: "disk_limit_mb", "/tmp": "tmp_limit_mb", "/dev/shm": "shm_limit_mb"}
# The IPC sockets and the connection file: a host directory the kernel needs for zmq's ipc:// sockets.
# As root it is a host tmpfs of IPC_TMPFS_BYTES (unmounted after the run, so nothing stays on the disk);
# the connection file sits beside it in a directory the sandbox cannot write.
IPC_TMPFS_BYTES = 4 * MiB
# Which of the student's files reach the kernel: regular files with exactly one link, and directories.
# Symbolic links, hard links, FIFOs, sockets and devices are left out (and the instructor is told).
FILES_GIVEN = "regular files with one link, copied by content"
MAX_FILES_GIVEN, MAX_DEPTH_GIVEN = 2000, 16

# The kernel's whole environment (nothing of the grader's is inherited).
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": HOME, "LANG": "C.UTF-8", "BNGRADE_RESULTS": RESULTS,
       "TMPDIR": "/tmp", "MPLBACKEND": "agg",
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# python -I: no working directory on sys.path, no PYTHON* variables, no user site; -B: no .pyc written
PYTHON_FLAGS = ("-I", "-B")

# ---------------------------------------------------------------- what it may do
NAMESPACES = ("pid", "net", "ipc", "uts", "cgroup")  # its own: no network at all, no host processes
DROP_TO_UID = True  # as root: setpriv to an unprivileged uid, no capabilities, no_new_privs

# Syscalls refused with EPERM. The filter also refuses every other architecture (i386, x32).
DENIED_SYSCALLS = {
    "new namespaces": ("unshare", "setns"),
    "mounts": ("mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
               "fsmount", "fspick", "mount_setattr"),
    "other processes' memory": ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp"),
    "kernel attack surface": ("bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
                              "io_uring_register", "keyctl", "add_key", "request_key", "fanotify_init",
                              "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "uselib", "vhangup"),
    "SysV IPC (memory outside any process)": ("shmget", "shmat", "shmctl", "shmdt", "msgget", "semget"),
    "the machine itself": ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
                           "reboot", "swapon", "swapoff", "acct", "syslog", "quotactl", "settimeofday",
                           "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "personality"),
}
DENIED_ERRNO = errno.EPERM
# clone(2) with any of these flags is refused (a new user/mount/... namespace); clone3 passes its flags in
# memory a filter cannot read, so clone3 answers ENOSYS and the C library falls back to clone.
DENIED_CLONE_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
                      "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                      "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080}
ENOSYS_SYSCALLS = ("clone3",)

# Resources. TOTAL memory and processes are the cgroup's (every process, tmpfs, /dev/shm, memfd and
# page-cache page of the sandbox counts); the rlimits hold per process, also where no cgroup can be made.
LIMITS = dict(
    total_memory_mb=2560,    # cgroup memory limit of the whole sandbox
    memory_limit_mb=2048,    # RLIMIT_AS of each process (one huge allocation: a MemoryError, not an OOM kill)
    max_processes=64,        # cgroup pids.max and RLIMIT_NPROC of the sandbox's uid (threads count)
    max_file_mb=64,          # RLIMIT_FSIZE
    disk_limit_mb=256,       # tmpfs /sandbox (HOME, work, results)
    tmp_limit_mb=64,         # tmpfs /tmp
    shm_limit_mb=64,         # tmpfs /dev/shm
    open_files=256,          # RLIMIT_NOFILE
)

# Time. One submission may hold a worker for the reference solution's own time (measured once in this
# sandbox, per source notebook) times a margin, within [floor, cap] seconds. A timeout is retried once only
# when the sandbox was starved of CPU by others (its kernel waited on the run queue for a quarter of the time
# or more, longer than it ran, and the sandbox used under half a CPU), never when the student's code slept or
# spun on its own.
TIME_BUDGET = dict(margin=10.0, floor_s=120, cap_s=900)
