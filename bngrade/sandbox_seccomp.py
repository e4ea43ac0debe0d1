"""The sandbox's seccomp filter, compiled at run time from sandbox_policy with Debian's libseccomp.

`compile_filter(path)` writes a classic-BPF program that bwrap loads with
`--seccomp FD` just before it executes the kernel's first process; every
process of the sandbox inherits it and none can remove it. libseccomp adds
the architecture check itself: a syscall made through another ABI (i386's
int 0x80, x32) kills the process instead of slipping past the table.
libseccomp is reached through ctypes (libseccomp2 is part of every Debian
install, bubblewrap depends on it), so no Python package is needed.
"""
import ctypes
import ctypes.util
import functools
import os

from bngrade import sandbox_policy as policy

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(e):
    return 0x00050000 | (e & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(RuntimeError):
    """libseccomp is missing or refused the policy."""


@functools.lru_cache(maxsize=1)
def _lib():
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompUnavailable(f"libseccomp not found ({e}); apt-get install -y libseccomp2") from e
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def rules():
    """[(syscall, action, [(arg, mask, value)])]: the policy as filter rules (no conditions = always)."""
    out = []
    for names in policy.DENIED_SYSCALLS.values():
        out += [(name, SCMP_ACT_ERRNO(policy.DENIED_ERRNO), []) for name in names]
    out += [(name, SCMP_ACT_ERRNO(38), []) for name in policy.ENOSYS_SYSCALLS]  # ENOSYS
    out += [("clone", SCMP_ACT_ERRNO(policy.DENIED_ERRNO), [(0, flag, flag)])
            for flag in policy.DENIED_CLONE_FLAGS.values()]
    return out


def compile_filter(path):
    """Write the compiled filter to `path` (a new file, 0600); returns the number of rules."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        n = 0
        for name, action, conditions in rules():
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a syscall on this architecture (e.g. a 32-bit only one): nothing to refuse
                continue
            cmps = (_ArgCmp * max(1, len(conditions)))(
                *[_ArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, value) for arg, mask, value in conditions])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conditions), cmps)
            if rc != 0:
                raise SeccompUnavailable(f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")
            n += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
        finally:
            os.close(fd)
        if rc != 0:
            raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
        return n
    finally:
        lib.seccomp_release(ctx)
