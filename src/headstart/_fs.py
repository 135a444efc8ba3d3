"""Files and folders without surprises (private; the lowest floor, imports nothing of ours).

* :func:`file_problem` says, from ``stat`` alone, why a path is not a file to read: a
  folder, a named pipe (FIFO), a socket, a device such as ``/dev/zero``, a broken link, a
  file too large. Nothing here ever opens a FIFO in blocking mode, so nothing hangs.
* :func:`read_regular` reads a regular file whole, refusing anything else (checked on the
  open descriptor, so a file swapped for a FIFO after the check cannot block either).
* :func:`atomic_folder` fills a temporary sibling folder and moves it into place only when
  the block succeeds; an existing folder is replaced without ever leaving the path absent
  (Linux ``renameat2(RENAME_EXCHANGE)``), or, where that is unavailable, by two renames
  that :func:`recover_folder` undoes after a crash between them.
* :func:`worker_count`: threads for a pool (:mod:`headstart._threads`);
  :func:`resolve_cache_dir`: where caches live.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["MAX_FILE_BYTES", "FileProblem", "atomic_folder", "digest_bytes", "file_digest",
           "file_problem", "read_regular", "recover_folder", "resolve_cache_dir",
           "worker_count", "write_text_atomic"]

logger = logging.getLogger(__name__)

# Larger files are refused with a reason: no image or model file headstart reads is this big.
MAX_FILE_BYTES = 2 << 30


class FileProblem(Exception):
    """A path that cannot be read as a regular file; ``str(e)`` is the reason in words."""


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "not a regular file: a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "not a regular file: a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "not a regular file: a device"
    return "not a regular file"


def _size_problem(size: int, limit: int) -> str | None:
    if size > limit:
        return f"file too large ({size / 2**30:.1f} GiB > {limit / 2**30:.0f} GiB)"
    return None


def _os_reason(e: OSError, path: str | os.PathLike) -> str:
    if isinstance(e, FileNotFoundError):
        return ("broken symbolic link (its target is missing)" if os.path.islink(path)
                else "file not found")
    if isinstance(e, PermissionError):
        return "permission denied"
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    return f"cannot read: {e.strerror or e}"


def file_problem(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> str | None:
    """Why ``path`` is not a readable regular file (following links), or None if it is."""
    try:
        st = os.stat(path)
    except OSError as e:
        return _os_reason(e, path)
    return _kind(st.st_mode) or _size_problem(st.st_size, limit)


def read_regular(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file.

    Raises:
        FileProblem: anything but a regular file of at most ``limit`` bytes, or unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise FileProblem(_os_reason(e, path)) from None
    try:
        st = os.fstat(fd)
        problem = _kind(st.st_mode) or _size_problem(st.st_size, limit)
        if problem:
            raise FileProblem(problem)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 22)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise FileProblem(_size_problem(total, limit) or "file too large")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise FileProblem(_os_reason(e, path)) from None
    finally:
        os.close(fd)


def digest_bytes(data: bytes) -> str:
    """Content hash of bytes: 32 hex digits (BLAKE2b-128), the key of cached features."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a regular file (model files' integrity check).

    Raises:
        FileProblem: see :func:`read_regular`.
    """
    return hashlib.sha256(read_regular(path)).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a temporary file beside it, then a
    rename): a reader, or a kill, sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def worker_count(limit: int = 8) -> int:
    """Threads for a decode pool (see :func:`headstart._threads.cores`), at most ``limit``."""
    from ._threads import cores

    return cores(limit)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$HEADSTART_CACHE``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HEADSTART_CACHE"):
        return Path(os.environ["HEADSTART_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("headstart", appauthor=False))


# ------------------------------------------------------------------ atomic folders
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(e, os.strerror(e), str(b))


def _alive(pid: int) -> bool:
    if pid <= 0:  # a name without a pid: left by an older headstart
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[tuple[Path, int]]:
    """Hidden siblings ``.<name>.<kind>-<pid>-*`` left by earlier writes, with their pid."""
    out = []
    prefix = f".{target.name}.{kind}-"
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return []
    for p in siblings:
        if p.name.startswith(prefix):
            pid = p.name[len(prefix):].split("-", 1)[0]
            out.append((p, int(pid) if pid.isdigit() else -1))
    return out


def recover_folder(target: Path, complete: Callable[[Path], bool]) -> bool:
    """Put back a folder that a crash left aside (``.<name>.old-<pid>``) while ``target``
    is missing, if ``complete(aside)``; and remove temporary folders of writers that are no
    longer running. True when a folder was put back."""
    target = Path(target)
    restored = False
    for p, pid in _leftovers(target, "tmp"):
        if not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
    for p, pid in sorted(_leftovers(target, "old"), key=lambda t: t[0].stat().st_mtime,
                         reverse=True):
        if _alive(pid) and pid != os.getpid():
            continue  # another process is in the middle of its swap
        if not target.exists() and complete(p):
            os.replace(p, target)
            logger.warning("%s was missing after an interrupted save; the previous version "
                           "was put back", target)
            restored = True
        else:
            shutil.rmtree(p, ignore_errors=True)
    return restored


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder to fill; when the block succeeds it becomes ``target``
    (replacing what was there), when it fails it is removed and ``target`` is untouched.

    Raises:
        OSError: the parent cannot be created or written (full disk, a file in the way...).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-",
                                dir=target.parent))
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # a folder like any other, not mkdtemp's private 0700
        yield tmp
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        else:
            old = target.parent / f".{target.name}.old-{os.getpid()}-{tmp.name[-8:]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
