"""Files and folders without surprises (private; imports only :mod:`headstart.errors`).

* :func:`file_problem` says, from ``stat`` alone, why a path is not a file to read: a
  folder, a named pipe (FIFO), a socket, a device such as ``/dev/zero``, a broken link, a
  file too large. Nothing here ever opens a FIFO in blocking mode, so nothing hangs.
* :func:`read_regular` reads a regular file whole, refusing anything else (checked on the
  open descriptor, so a file swapped for a FIFO after the check cannot block either).
* :func:`atomic_folder` fills a temporary sibling folder and moves it into place only when
  the block succeeds; an existing folder is replaced without ever leaving the path absent
  (Linux ``renameat2(RENAME_EXCHANGE)``), or, where that is unavailable, by two renames
  that :func:`recover_folder` undoes after a crash between them.
* :func:`inside` is the one check of a path that comes from a request, a CSV, a log or a
  model file: resolved, it must stay inside the folder it belongs to (no ``..``, no
  absolute path elsewhere, no symbolic link out), hold no NUL byte, have names of at most
  255 bytes, and be what it should (a regular file, a folder, or nothing yet).
  :func:`check_output` is its twin for a file about to be written: never a folder, a named
  pipe or a device. :func:`load_json` parses JSON with a bound on its nesting.
* :func:`worker_count`: threads for a pool (:mod:`headstart._threads`);
  :func:`resolve_cache_dir`: where caches live.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import PathError

__all__ = ["MAX_FILE_BYTES", "MAX_JSON_DEPTH", "MAX_NAME_BYTES", "FileProblem",
           "atomic_folder", "check_output", "clip_name", "digest_bytes", "file_digest",
           "file_problem", "human_bytes", "inside", "load_json", "move_new", "name_bytes",
           "name_problem", "read_regular", "recover_folder", "resolve_cache_dir", "worker_count",
           "write_text_atomic"]

logger = logging.getLogger(__name__)

# Larger files are refused with a reason: no image or model file headstart reads is this big.
MAX_FILE_BYTES = 2 << 30
MAX_NAME_BYTES = 255  # one file or folder name, encoded (Linux, macOS and Windows agree)
MAX_JSON_DEPTH = 32   # headstart's own JSON nests 4 deep; Python's parser overflows near 1000
NUL_BYTE = "invalid path: it contains a NUL byte"


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


def human_bytes(n: float) -> str:
    """``n`` bytes in the unit that shows it: ``512 bytes``, ``30.0 MiB``, ``2.0 GiB``."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _size_problem(size: int, limit: int) -> str | None:
    if size > limit:
        return f"file too large ({human_bytes(size)} > {human_bytes(limit)})"
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
    except ValueError:  # os.stat's answer to a NUL byte
        return NUL_BYTE
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
    except ValueError:
        raise FileProblem(NUL_BYTE) from None
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


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def load_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)``, refusing text nested deeper than ``max_depth`` before parsing
    it (a deeply nested file would otherwise overflow the parser's recursion).

    Raises:
        ValueError: not JSON, or nested too deeply (the message says how deep).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig")
    if text.count("[") + text.count("{") > max_depth:
        depth = 0
        for m in _JSON_TOKEN.finditer(text):
            c = m.group()
            if c in "[{":
                depth += 1
                if depth > max_depth:
                    raise ValueError(f"JSON nested more than {max_depth} levels deep")
            elif c in "]}":
                depth -= 1
    return json.loads(text)


def name_bytes(name: str) -> int:
    """The length of a file name as the file system counts it: encoded bytes."""
    return len(name.encode("utf-8", "surrogateescape"))


def clip_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` cut to at most ``max_bytes`` encoded bytes at a character boundary; the
    suffix (``.jpg``) is kept when it is short."""
    if name_bytes(name) <= max_bytes:
        return name
    stem, ext = os.path.splitext(name)
    if name_bytes(ext) > 16:
        stem, ext = name, ""
    room = max_bytes - name_bytes(ext)
    cut = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return cut + ext


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one file or folder name (empty, ``.``, ``..``, a path
    separator, a NUL byte, over 255 bytes), or None."""
    if name in ("", ".", ".."):
        return "not a name"
    if any(c in name for c in "/\\\0"):
        return "holds a path separator or a NUL byte"
    if name_bytes(name) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def _within(base: Path, p: Path) -> bool:
    return p == base or base in p.parents


def _plain(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, refused for a NUL byte or a name over 255 bytes."""
    text = os.fspath(path)
    if "\0" in text:
        raise PathError(f"{what}: {text!r}: {NUL_BYTE}")
    for part in Path(text).parts:
        if name_bytes(part) > MAX_NAME_BYTES:
            raise PathError(f"{what}: {text[:80]!r}...: a name is longer than "
                            f"{MAX_NAME_BYTES} bytes")
    return Path(text)


def _resolved(p: Path, what: str) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        raise PathError(f"{what}: {p}: symbolic link loop") from None


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path",
           want: str = "file") -> Path:
    """``path`` (relative to ``root``, or absolute) checked to stay inside ``root``:
    no NUL byte, no name over 255 bytes, the folder it is in resolves inside ``root`` and
    so does the path itself (a symbolic link to elsewhere is refused), and it is ``want``:
    ``file`` (an existing regular file), ``folder`` (an existing folder, not ``root``
    itself) or ``absent`` (nothing there yet, not even a broken link).

    Returns:
        the path under the resolved ``root``, its last name as given (a link inside
        ``root`` is moved as a link, not its target).

    Raises:
        PathError: any of the above fails; the message names ``what`` and the path.
    """
    p = _plain(path, what)
    base = _resolved(Path(root), what)
    full = p if p.is_absolute() else base / p
    if full.name in ("", ".", ".."):
        raise PathError(f"{what}: {path} names a folder above, not a "
                        f"{'file' if want == 'file' else 'folder'} inside {base}")
    here = _resolved(full.parent, what) / full.name
    if not _within(base, here.parent):
        raise PathError(f"{what}: {path} is not inside {base}")
    real = _resolved(here, what)
    if real == base or not _within(base, real):
        raise PathError(f"{what}: {path} leads outside {base} (a symbolic link to {real})"
                        if real != base else f"{what}: {path} is {base} itself")
    _is_wanted(here, path, what, want)
    return here


def _is_wanted(here: Path, path: str | os.PathLike, what: str, want: str) -> None:
    if want == "file":
        problem = file_problem(here)
        if problem:
            raise PathError(f"{what}: {path}: {problem}")
    elif want == "folder":
        if not here.is_dir():
            raise PathError(f"{what}: {path}: "
                            f"{'not a folder' if os.path.lexists(here) else 'no such folder'}")
    elif want == "absent":
        if os.path.lexists(here):
            raise PathError(f"{what}: {path} already exists (nothing is overwritten)")
    else:
        raise ValueError(f"want: expected file, folder or absent, got {want!r}")


def check_output(path: str | os.PathLike, what: str = "output", folder: bool = False) -> Path:
    """``path`` checked as a file to write: no NUL byte, names of at most 255 bytes, an
    existing folder to hold it, and nothing there yet or a regular file (never a folder, a
    named pipe that would block the writer forever, a socket, a device, a broken link).
    ``folder``: a folder to write instead, so nothing there yet or a folder.

    Raises:
        PathError: naming ``what`` and the path.
    """
    p = _plain(path, what)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise PathError(f"{what}: {p} is a broken symbolic link; remove it or choose "
                            "another file") from None
        if not (p.parent if str(p.parent) else Path(".")).is_dir():
            raise PathError(f"{what}: {p}: the folder {p.parent} does not exist") from None
        return p
    except OSError as e:
        raise PathError(f"{what}: {p}: {_os_reason(e, p)}") from None
    if folder:
        if not stat.S_ISDIR(st.st_mode) or os.path.islink(p):
            raise PathError(f"{what}: {p} exists and is not a folder; give a folder to write")
        return p
    problem = _kind(st.st_mode)
    if problem:
        raise PathError(f"{what}: {p}: {problem}; give a file to write")
    return p


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
    from .._threads import cores

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
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """Linux renameat2(a, b, flags); False where that is unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(e, os.strerror(e), str(b))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is unsupported."""
    try:
        return _renameat2(a, b, _RENAME_EXCHANGE)
    except OSError as e:
        if e.errno == errno.EXDEV:
            return False
        raise


def move_new(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` on one file system, never replacing what is at ``dest``
    (atomically where Linux renameat2 is available, else checked just before).

    Raises:
        FileExistsError: something is at ``dest``.
        OSError: the move failed (another file system, no permission...).
    """
    if _renameat2(src, dest, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "already exists", str(dest))
    os.replace(src, dest)


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
