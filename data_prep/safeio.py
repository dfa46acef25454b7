"""Writing folders and files whole or not at all: build aside, fsync, rename into place.

Every writer of an output folder (``prepare``'s dataset, ``train``'s model, ``evaluate``'s
and ``visualize``'s reports) goes through one context manager, :func:`output_folder`, which
follows one protocol, so that a kill, a full disk or a second run at the same time never
leaves a mix:

1. :func:`output_lock` takes an exclusive ``flock`` on a hidden lock file beside the output
   (``.prepared.lock``). A second writer of the same output is refused at once with one line
   naming the holder's pid. The kernel drops the lock when its holder dies, even by SIGKILL,
   so a lock is never stale.
2. Holding the lock, :func:`recover_output` tidies what a killed run left: hidden siblings
   named ``.<name>.tmp-<pid>-<hex>`` / ``.<name>.old-<pid>-<hex>`` of dead processes are
   removed, and if the output itself is missing while a complete ``.old-`` sibling exists
   (a kill between the two renames of the portable fallback) that old folder is put back.
3. The new output is built in a hidden ``.tmp-`` sibling, flushed, and published by
   :func:`publish_folder`: on Linux with one atomic ``renameat2(RENAME_EXCHANGE)`` swap, so at
   every instant the output path holds either the complete old folder or the complete new
   one; elsewhere with rename-aside + rename-in, which step 2 repairs after a kill.
4. An ``OSError`` that means "cannot write here" (no space, read-only, permission, a file in
   the way) is turned into one line naming the output (:class:`OutputError`), after the
   hidden folder and any parent folders created for it have been removed.

Small files that other files depend on (``dataset.json``, ``model.json``, ``metrics.json``,
a checkpoint's ``state.json``) go through :func:`write_atomic`: written to a temporary
sibling, flushed, renamed into place, and the folder flushed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from data_prep import failpoints

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, the rest still applies
    fcntl = None  # type: ignore[assignment]

# errno values that mean "this output cannot be written here"; turned into one clear line.
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent path is a file, not a folder",
    errno.EFBIG: "file too large for this file system",
}


class OutputBusyError(ValueError):
    """Another process is writing the same output folder right now."""


class OutputError(OSError):
    """An output could not be written; ``str()`` is the one line to show."""

    def __str__(self) -> str:
        return str(self.strerror)


MAX_STEM_BYTES = 200
"""The longest output name that hidden siblings repeat in full: ``.<name>.tmp-<pid>-<hex>``
adds up to 22 bytes, and a file name may have 255."""


def sibling_stem(path: Path) -> str:
    """The part of ``path``'s name that its hidden siblings (temporary folder, lock file,
    checkpoint) carry: the name itself, or for a name too long to take their suffixes, its
    first bytes and a hash of the whole name (so two long names never share siblings)."""
    raw = os.fsencode(path.name)
    if len(raw) <= MAX_STEM_BYTES:
        return path.name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return os.fsdecode(raw[: MAX_STEM_BYTES - 13]) + "~" + digest


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh hidden path beside ``path`` (same filesystem, so a rename is atomic).

    The name carries the pid of the writer, so leftovers of dead processes can be recognised
    (:func:`stale_siblings`).
    """
    return path.parent / f".{sibling_stem(path)}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def lock_path(out: Path) -> Path:
    return out.parent / f".{sibling_stem(out)}.lock"


@contextlib.contextmanager
def native_stderr_to(target: int | None = None) -> Iterator[None]:
    """Point file descriptor 2 at ``target`` (a descriptor; default: the null device) for
    the block, then back.

    What native code writes there (libjpeg's warnings, TensorFlow's C++ log lines) goes with
    it; Python's ``sys.stderr`` is flushed first, so none of its own output is misdirected.
    When there is no descriptor 2 (closed by the caller), nothing is done.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY) if target is None else -1
    try:
        if sys.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
        os.dup2(null if target is None else target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if null >= 0:
            os.close(null)


def fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(folder: Path) -> None:
    """Flush every file in ``folder`` (not recursive) and the folder itself to disk."""
    for child in folder.iterdir():
        if child.is_file():
            fsync_path(child)
    fsync_path(folder)


def reserve_space(path: Path) -> None:
    """Allocate the blocks of the (sparse) file ``path`` now.

    A memory-mapped file written on a full disk kills the process with SIGBUS; reserving its
    blocks first turns that into an ``OSError(ENOSPC)`` raised here, which is caught and
    reported. Filesystems without ``fallocate`` are left as they are.
    """
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - macOS, Windows
        return
    handle = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(handle).st_size
        if size:
            try:
                os.posix_fallocate(handle, 0, size)
            except OSError as error:
                if error.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                    return
                raise OSError(error.errno, os.strerror(error.errno), str(path)) from None
    finally:
        os.close(handle)


def _megabytes(count: int) -> str:
    return f"{count / (1 << 20):.1f} MB"


def check_free_space(out: Path, needed: int, what: str = "the output") -> None:
    """Refuse early, with one line, when the filesystem of ``out`` has less than ``needed``
    bytes free: better before hours of training than when saving its result."""
    place = next((p for p in [out.parent, *out.parent.parents] if p.is_dir()), Path("."))
    free = shutil.disk_usage(place).free
    if free < needed:
        raise OutputError(
            errno.ENOSPC,
            f"No space left on device: {out} needs about {_megabytes(needed)} for {what}, "
            f"{_megabytes(free)} free (nothing was written; free some space or choose "
            "another --out)",
        )


def replace_file(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` and rename it over ``final``."""
    fsync_path(tmp)
    os.replace(tmp, final)


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write the file ``path`` whole or not at all: ``write(handle)`` fills a temporary
    sibling, which is flushed to disk, renamed over ``path``, and the folder flushed, so
    that after a crash ``path`` holds the old content or the new, and whatever is written
    after this returns can rely on it."""
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_atomic` for UTF-8 text."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: Path, value: Any, indent: int = 2) -> None:
    """:func:`write_atomic` for a JSON document (with a final newline)."""
    write_text_atomic(path, json.dumps(value, indent=indent) + "\n")


# --- atomic swap -------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Any:
    if failpoints.rename_exchange_disabled():  # test hook: force the fallback path
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or filesystem cannot do it; raises OSError otherwise.
    """
    function = _renameat2()
    if function is None:
        return False
    result = function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                      _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))



def check_replaceable(out: Path, force: bool, is_ours: Callable[[Path], bool], what: str,
                      held: str) -> None:
    """Refuse to replace anything at ``out`` but an output of ours, and that only with
    ``force``: an empty or missing folder is fine; a non-empty folder that ``is_ours`` does
    not recognize is never replaced, whatever the flags. ``what`` names our kind of folder
    ("a catsdogs model"), ``held`` how an existing one is described ("a model")."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if is_ours(out):
        if not force:
            raise ValueError(f"{out} already holds {held}; use --force to replace it")
        return
    if any(out.iterdir()):
        raise ValueError(
            f"output folder {out} is not empty and is not {what}; choose another --out"
        )


def publish_folder(tmp: Path, out: Path) -> None:
    """Move the complete folder ``tmp`` to ``out``, replacing what is there.

    The caller has already decided that ``out`` may be replaced (it is empty, or it is an
    output of ours and ``--force`` was given), and holds :func:`output_lock`. With an atomic
    exchange ``out`` is never missing; with the fallback the old folder is renamed aside and
    removed only once the new one is in place (:func:`recover_output` puts it back after a
    kill in between).
    """
    fsync_tree(tmp)
    failpoints.failpoint(failpoints.PUBLISH_BEFORE)
    if os.path.lexists(out):
        if exchange(tmp, out):
            fsync_path(out.parent)
            failpoints.failpoint(failpoints.PUBLISH_SWAPPED)
            shutil.rmtree(tmp, ignore_errors=True)  # ``tmp`` now holds the old folder
            return
        old = temporary_sibling(out, "old")
        os.rename(out, old)
        failpoints.failpoint(failpoints.PUBLISH_ASIDE)
        os.rename(tmp, out)
        fsync_path(out.parent)
        failpoints.failpoint(failpoints.PUBLISH_RENAMED)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync_path(out.parent)


# --- leftovers of killed runs ------------------------------------------------------------

def process_alive(pid: int) -> bool:
    """True while process ``pid`` runs. A killed process that its parent has not reaped yet
    (a zombie) counts as gone: its parent may be waiting for our end of a pipe to close."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):  # no /proc (macOS): the kernel's answer stands
        return True


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: we hold the lock, so nothing of ours is in flight
    return process_alive(pid)


def stale_siblings(out: Path) -> list[tuple[str, Path]]:
    """Hidden ``.tmp-``/``.old-`` siblings of ``out`` left by processes that are gone:
    ``(tag, path)``, newest first."""
    pattern = re.compile(
        r"^\." + re.escape(sibling_stem(out)) + r"\.(?P<tag>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$"
    )
    found: list[tuple[float, str, Path]] = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match["pid"])):
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            found.append((mtime, match["tag"], Path(entry.path)))
    found.sort(key=lambda item: item[0], reverse=True)
    return [(tag, path) for _, tag, path in found]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def recover_output(out: Path) -> list[str]:
    """Repair what killed writers of ``out`` left; the caller holds :func:`output_lock`.

    If ``out`` is missing and a complete ``.old-`` sibling exists (published earlier, renamed
    aside by a run killed before its new folder went in), it is renamed back. Every other
    stale sibling is removed. Returns one line per action, for tests and debugging.
    """
    actions: list[str] = []
    leftovers = stale_siblings(out)
    if not os.path.lexists(out):
        for tag, path in leftovers:
            if tag == "old":
                os.rename(path, out)
                fsync_path(out.parent)
                actions.append(f"restored {out} from {path.name}")
                leftovers.remove((tag, path))
                break
    for _, path in leftovers:
        _remove(path)
        actions.append(f"removed {path.name}")
    return actions


def restore_interrupted(out: Path) -> None:
    """For readers: if ``out`` is missing because a writer was killed mid-publish, put the
    old folder back. Does nothing when another process is writing ``out`` right now or when
    the folder cannot be written."""
    if os.path.lexists(out) or not os.path.isdir(out.parent):
        return
    if not any(tag == "old" for tag, _ in stale_siblings(out)):
        return
    with contextlib.suppress(OSError, ValueError), output_lock(out, create_parents=False):
        pass  # output_lock runs recover_output once it holds the lock


# --- the lock ----------------------------------------------------------------------------

def _missing_parents(out: Path) -> list[Path]:
    missing = []
    for parent in [out.parent, *out.parent.parents]:
        if os.path.lexists(parent):
            break
        missing.append(parent)
    return missing


def _holder_pid(handle: int, wait: float = 0.5) -> str:
    """The pid the lock's holder wrote into the lock file, or "" if none appears in ``wait``.

    The holder writes its pid just after it takes the lock, so a process refused in that
    instant finds the file still empty: it looks again for a moment before giving up.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            text = os.pread(handle, 32, 0).decode("ascii", "replace")
        except OSError:
            return ""
        if text.endswith("\n") and text.strip().isdigit():
            return text.strip()
        if time.monotonic() >= deadline:
            return ""
        time.sleep(0.005)


def _acquire(path: Path, out: Path) -> int:
    """Open and ``flock`` ``path``; refuse at once if another process holds it."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(handle)
            os.close(handle)
            who = f" (pid {holder})" if holder else ""
            raise OutputBusyError(
                f"{out} is being written by another catsdogs process{who}; wait for it to "
                "finish or choose another --out"
            ) from None
        except BaseException:
            os.close(handle)
            raise
        # The previous holder unlinks the file as it releases: make sure we locked the file
        # that is still at ``path``, not an unlinked one.
        try:
            same = os.path.samestat(os.fstat(handle), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    with contextlib.suppress(OSError):
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
    return handle


def _release(handle: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)  # while still holding the lock; see _acquire
    os.close(handle)


def _is_output_path(path: Path, out: Path) -> bool:
    """Is ``path`` the output, inside it, one of its hidden siblings, or one of its parents?"""
    path, out = Path(os.path.abspath(path)), Path(os.path.abspath(out))
    if path == out or out in path.parents or path in out.parents:
        return True
    top = next((p for p in [path, *path.parents] if p.parent == out.parent), None)
    return top is not None and top.name.startswith(f".{sibling_stem(out)}.")


def describe_write_error(error: OSError, out: Path) -> OutputError | None:
    """One clear line for an OSError that means ``out`` cannot be written, else None.

    Only errors about the output (no file name, or a path beside or inside ``out``) are
    rewritten; an error about an input file keeps its own message.
    """
    if error.errno not in WRITE_ERRNOS:
        return None
    if error.filename is not None and not _is_output_path(Path(os.fsdecode(error.filename)), out):
        return None
    reason = WRITE_ERRNOS[error.errno]
    if error.errno == errno.ENOTDIR:
        blocker = next((p for p in [out.parent, *out.parent.parents] if os.path.lexists(p)),
                       None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a folder"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        message = (f"{os.strerror(error.errno)}: {out} (nothing was written; free some "
                   "space or choose another --out)")
    else:
        message = f"cannot write {out}: {reason}"
    return OutputError(error.errno, message)


@contextlib.contextmanager
def output_lock(out: Path, *, create_parents: bool = True) -> Iterator[None]:
    """Hold the exclusive write lock of the output folder ``out`` for the ``with`` body.

    Creates missing parent folders (removed again if the body fails), refuses with
    :class:`OutputBusyError` when another process holds the lock, then repairs leftovers of
    killed runs (:func:`recover_output`). Write errors are reported by
    :func:`describe_write_error`.
    """
    out = Path(out)
    target = Path(os.path.abspath(out))  # so that "." or "a/.." still has a name and a parent
    here = Path(os.getcwd())
    if target == here or target in here.parents:
        raise ValueError(f"--out {out} is the current folder or holds it; choose another --out")
    created = _missing_parents(target) if create_parents else []
    handle = None
    lock = lock_path(target)
    try:
        for parent in reversed(created):
            os.mkdir(parent)
        if fcntl is not None:
            handle = _acquire(lock, out)
        recover_output(target)
        yield
    except OutputError:
        raise
    except OSError as error:
        clear = describe_write_error(error, out)
        if clear is None:
            raise
        raise clear from None
    finally:
        if handle is not None:
            _release(handle, lock)
        if not os.path.lexists(target):
            for parent in created:  # innermost first; stops at the first non-empty one
                try:
                    os.rmdir(parent)
                except OSError:
                    break


# --- the protocol ------------------------------------------------------------------------

class Build:
    """An output being built by :func:`output_folder`: write into ``path`` (a hidden sibling
    of ``out``); it is published as ``out`` when the ``with`` body ends normally."""

    def __init__(self, out: Path, path: Path, checked: Any = None) -> None:
        self.out = out
        self.path = path
        self.checked = checked  # what output_folder's ``check`` returned
        self.publish = True

    def discard(self) -> None:
        """Publish nothing: the hidden folder is removed and ``out`` stays as it was."""
        self.publish = False


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike[str],
    *,
    kind: str,
    force: bool,
    is_ours: Callable[[Path], bool],
    held: str | None = None,
    not_inside: str | os.PathLike[str] | None = None,
    check: Callable[[], Any] | None = None,
) -> Iterator[Build]:
    """Write the output folder ``out`` whole or not at all; the one way every command does.

    In order: refuse an ``out`` inside ``not_inside`` (the source folder) before anything is
    written; take the lock (:func:`output_lock`: one writer per output, the repair of what
    killed runs left); run ``check()``, the caller's own checks that need the lock (its
    result is ``Build.checked``); refuse to replace anything but a folder that ``is_ours``
    recognizes, and that only with ``force`` (:func:`check_replaceable`; ``kind`` names our kind of
    folder, "evaluation", and ``held`` how an existing one is described, by default
    "an evaluation"); create a hidden sibling and yield it as a :class:`Build`. When the body
    ends normally, the folder is published (:func:`publish_folder`) unless the body called
    :meth:`Build.discard`; in every case the hidden folder is gone afterwards.
    """
    out = Path(out)
    if not_inside is not None and Path(os.path.abspath(out)).resolve().is_relative_to(
            Path(not_inside).resolve()):
        raise ValueError(f"--out {out} is inside the source folder; choose another place")
    with output_lock(out):
        checked = check() if check is not None else None
        check_replaceable(out, force, is_ours, f"a catsdogs {kind}",
                          held or f"{_article(kind)} {kind}")
        tmp = temporary_sibling(out)
        os.mkdir(tmp)
        build = Build(out, tmp, checked)
        try:
            failpoints.failpoint(failpoints.BUILDING)
            yield build
            if build.publish:
                publish_folder(tmp, out)
        finally:
            if os.path.lexists(tmp):  # a failure, a discard, or the old folder after a swap
                _remove(tmp)
