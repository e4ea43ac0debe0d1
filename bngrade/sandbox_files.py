"""Files between the host and a sandbox: data, never a path to follow.

- `copy_given_files`: the student's directory into the run directory, by
  content. Only regular files with one link (and directories) are copied;
  symbolic links, hard links, FIFOs, sockets and devices are left out and
  listed. Every component is opened with O_NOFOLLOW relative to its parent's
  descriptor, and each file is checked again on the descriptor it is read
  from (a swap between the check and the read changes nothing).
- `submission_refusals`: the same test on nbgrader's submitted/ directory:
  nbgrader's own copy into autograded/ follows links, so a link or hard link
  there would arrive in autograded/ as an ordinary file.
- `listing` / `shown`: those names for a log line, a name with control or invisible
  characters quoted (a file name is the student's text in the instructor's
  terminal: an escape sequence could clear it or forge a log line).
- `read_results`: the bounded result files, read from the live sandbox.
- `private_tmpfs` / `unmount`: the run's IPC directory as a small host tmpfs
  (as root), so that what the kernel writes there is bounded and gone when
  the run ends.
"""
import ctypes
import errno
import os
import re
import shutil
import stat

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def shown(name):
    """A student's file name for a log line: as it is when printable, else quoted with escapes."""
    return name if name.isprintable() else ascii(name)


def listing(entries, limit=20):
    """'name (why); ...' for [(relative path, why)], the first `limit`, each name `shown`."""
    return "; ".join(f"{shown(rel)} ({why})" for rel, why in list(entries)[:limit])


def _kind(st, hard_links_ok=False):
    """Why a file of this stat is not given to the kernel, or None when it is (a hard link too,
    with hard_links_ok: the submitted notebook, which is read for what it holds)."""
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device)"
    if st.st_nlink != 1 and not hard_links_ok:
        return f"a hard link ({st.st_nlink} names for one file)"
    return None


def _lstat_under(root, relative):
    """lstat of root/relative, every directory opened with O_NOFOLLOW (None if absent or unreachable)."""
    parts = [p for p in relative.split("/") if p]
    fds = []
    try:
        fd = os.open(root, _DIR)
        fds.append(fd)
        for part in parts[:-1]:
            fd = os.open(part, _DIR, dir_fd=fd)
            fds.append(fd)
        return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False) if parts else os.fstat(fd)
    except OSError:
        return None
    finally:
        for f in fds:
            os.close(f)


def submission_refusals(submitted, relatives, hard_links_ok=False):
    """{relative path: why} for those of `relatives` that are not plain files in `submitted` (absent: fine)."""
    refused = {}
    for rel in relatives:
        st = _lstat_under(submitted, rel)
        why = None if st is None else _kind(st, hard_links_ok)
        if why:
            refused[rel] = f"{why} in the submission"
    return refused


def copy_given_files(source, dest, max_files=2000, max_depth=16, max_bytes=256 << 20, skip=(".ipynb_checkpoints",)):
    """Copy the directory `source` into the new directory `dest`; returns ({relative: why left out}, [copied]).

    Files are created 0644 and directories 0755 (the sandbox's uid reads them), owned by the caller.
    """
    refused, copied, total = {}, [], 0
    src_fd = os.open(source, _DIR)
    os.mkdir(dest, 0o755)
    dst_fd = os.open(dest, _DIR)

    def walk(sfd, dfd, prefix, depth):
        nonlocal total
        with os.scandir(sfd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            rel = prefix + name
            if name in skip:
                continue
            if len(copied) >= max_files or depth > max_depth:
                refused[rel] = f"over the limit of {max_files} files or {max_depth} directory levels"
                continue
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except OSError as e:
                refused[rel] = os.strerror(e.errno)
                continue
            why = _kind(st)
            if why:
                refused[rel] = why
                continue
            try:
                fd = os.open(name, _DIR if stat.S_ISDIR(st.st_mode) else _FILE, dir_fd=sfd)
            except OSError as e:
                refused[rel] = "a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno)
                continue
            try:
                st2 = os.fstat(fd)
                why = _kind(st2) or ("changed while it was copied" if (st2.st_dev, st2.st_ino) !=
                                     (st.st_dev, st.st_ino) else None)
                if why:
                    refused[rel] = why
                elif stat.S_ISDIR(st2.st_mode):
                    os.mkdir(name, 0o755, dir_fd=dfd)
                    sub = os.open(name, _DIR, dir_fd=dfd)
                    try:
                        walk(fd, sub, rel + "/", depth + 1)
                    finally:
                        os.close(sub)
                elif total + st2.st_size > max_bytes:
                    refused[rel] = f"the files together exceed {max_bytes >> 20} MiB"
                else:
                    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
                    try:
                        left = max_bytes - total
                        while left > 0:
                            chunk = os.read(fd, min(1 << 20, left))
                            if not chunk:
                                break
                            os.write(out, chunk)
                            total += len(chunk)
                            left -= len(chunk)
                        os.fchmod(out, 0o644)
                    finally:
                        os.close(out)
                    copied.append(rel)
            finally:
                os.close(fd)

    try:
        walk(src_fd, dst_fd, "", 0)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    return refused, copied


def read_results(root_fd_path, relative, max_file_bytes, max_total_bytes):
    """({name: bytes}, {name: why}) from the directory `relative` under `root_fd_path`.

    Every component is opened with O_NOFOLLOW from the previous one: a planted
    symlink is refused, never followed. Only regular files are read, each up to
    `max_file_bytes`, all together up to `max_total_bytes`.
    """
    results, problems, total = {}, {}, 0
    fds = []
    try:
        fd = os.open(root_fd_path, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        for part in [p for p in relative.split("/") if p]:
            fd = os.open(part, _DIR, dir_fd=fd)
            fds.append(fd)
        names = sorted(os.listdir(fd))
    except OSError as e:
        return results, {"": f"the results directory could not be read ({os.strerror(e.errno)})"}
    try:
        for name in names[:1000]:
            try:
                f = os.open(name, _FILE, dir_fd=fd)
            except OSError as e:
                why = "a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno)
                problems[name] = f"not read: {why}"
                continue
            try:
                st = os.fstat(f)
                if not stat.S_ISREG(st.st_mode):
                    problems[name] = "not read: not a regular file"
                elif st.st_size > max_file_bytes:
                    problems[name] = f"not read: {st.st_size} bytes, over the {max_file_bytes} byte limit"
                elif total + st.st_size > max_total_bytes:
                    problems[name] = f"not read: the results together exceed {max_total_bytes} bytes"
                else:
                    data = os.read(f, max_file_bytes + 1)
                    while len(data) <= max_file_bytes:
                        more = os.read(f, max_file_bytes + 1 - len(data))
                        if not more:
                            break
                        data += more
                    if len(data) > max_file_bytes:
                        problems[name] = f"not read: over the {max_file_bytes} byte limit"
                    else:
                        results[name] = data
                        total += len(data)
            finally:
                os.close(f)
        if len(names) > 1000:
            problems["..."] = f"{len(names) - 1000} more files not read"
    finally:
        for f in fds:
            os.close(f)
    return results, problems


# ---------------------------------------------------------------- a bounded host directory for the IPC sockets
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MNT_DETACH = 2, 4, 8, 2


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def private_tmpfs(path, size_bytes, uid, gid, max_files=64):
    """Mount a tmpfs of `size_bytes` on the existing empty directory `path`, owned by uid:gid, mode 0700.

    Returns None, or why it could not be mounted (not root, no CAP_SYS_ADMIN).
    """
    opts = f"size={size_bytes},nr_inodes={max_files},mode=0700,uid={uid},gid={gid}".encode()
    libc = _libc()
    if libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, opts) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def unmount(path):
    """Detach the tmpfs at `path` (its pages are freed once no process holds a file of it)."""
    _libc().umount2(os.fsencode(path), _MNT_DETACH)


def run_dir_prefix():
    """Run directories are named after their grader's pid, so a sweep can tell the stale ones."""
    return f"bngrade-run-{os.getpid()}-"


def sweep_stale_mounts():
    """Unmount and remove the IPC tmpfs of run directories whose grader no longer runs (killed with SIGKILL)."""
    removed = []
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        m = re.search(r"/bngrade-run-(\d+)-[^/]+/ipc$", point)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            unmount(point)
            shutil.rmtree(os.path.dirname(point), ignore_errors=True)
            removed.append(point)
    return removed
