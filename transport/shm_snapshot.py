"""Same-host fast path for weight versions: the publisher's snapshot lives in a ``/dev/shm`` file.

Why: over loopback TCP every byte is copied by the kernel twice and again out of ZeroMQ's message,
which on this machine caps a weight sync far below memcpy speed. A subscriber on the same host
instead maps the publisher's snapshot, verifies the same per-bucket checksums as over TCP straight
from the mapping, and hands out the tensors as views of it: the caller's load into its model is the
one copy. The snapshot costs no extra memory: it *is* the publisher's one snapshot (tmpfs pages),
which the TCP path serves as well.

Why the file is rewritten in place when it can be: a freshly mapped 1 GB snapshot costs ~260k page
faults on first read (on a quiet machine about half a memcpy of the same bytes; ``MAP_POPULATE`` was
slower still). Reusing one file across versions keeps the subscriber's mapping, and its page tables,
valid, so the next version is read at memory speed. The publisher may only rewrite the file when no
subscriber still uses the tensors of the version in it. Subscribers therefore hold a *lease*, a
shared ``flock`` on their own open file description that lasts exactly as long as any tensor over
that version is alive; the publisher rewrites only if it gets an exclusive lock without waiting
(`ShmSnapshot.try_rewrite`), and otherwise releases the file and packs into a new one. Training
never waits on a worker, and a handed-out tensor never changes under its holder.

The name of the file carries the version and is renamed (under the exclusive lock) before a rewrite,
so a subscriber that locked the file checks that the manifest's path still names it
(`SnapshotReader.open`); a superseded name makes the subscriber fall back to asking again.

Safety: the file is created owner-only with ``O_EXCL`` and fully allocated up front
(``posix_fallocate``), so a full ``/dev/shm`` fails cleanly (the publisher then uses anonymous
memory) instead of killing the process with SIGBUS later. A released snapshot is unlinked at once;
a subscriber that already mapped it keeps a valid mapping. Subscribers map it copy-on-write: a caller
that writes into a handed-out tensor gets private pages and never touches the publisher's snapshot.
Files of publishers that died without cleaning up are removed by the next publisher on the host
(`sweep_stale`).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import socket
import uuid
import warnings
import weakref
from pathlib import Path

import torch

__all__ = ["ShmSnapshot", "SnapshotReader", "host_id", "sweep_stale", "valid_snapshot_path"]

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "stgrl-weights-"


def host_id() -> str:
    """Identifies this kernel instance: hostname plus boot id (same id = same ``/dev/shm`` unless a
    container gives it its own, in which case the file is simply not found and TCP is used)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def valid_snapshot_path(path: str) -> Path | None:
    """``path`` if it names a snapshot file directly in /dev/shm, else None: never map a path a
    manifest made up."""
    p = Path(path)
    if p.parent != SHM_DIR or not p.name.startswith(PREFIX) or p.name in (".", ".."):
        return None
    return p


def _tensor_over(buf) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=torch.uint8)


class ShmSnapshot:
    """Publisher side: a writable buffer of ``nbytes`` backed by an owner-only file in ``/dev/shm``.

    Raises OSError when the file cannot be created or fully allocated (caller falls back).
    """

    def __init__(self, nbytes: int, version: int) -> None:
        self.nbytes = nbytes
        self._stem = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = SHM_DIR / f"{self._stem}-v{version}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(self._fd, 0, nbytes)
            self._map: mmap.mmap | None = mmap.mmap(self._fd, nbytes)
        except OSError:
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
            raise
        self._locked = False

    def tensor(self) -> torch.Tensor:
        """A new uint8 tensor over the snapshot (one per version, so the caller can tell by a weak
        reference when the frames of the previous version let go of it)."""
        assert self._map is not None, "snapshot released"
        return _tensor_over(self._map)

    def try_rewrite(self, version: int) -> bool:
        """Take the file for rewriting as ``version``: True only if no subscriber holds a lease on it
        (never waits). The file is renamed to the new version's name first, so stale manifests no
        longer resolve to it; call `done_writing` once packed."""
        if self._map is None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        path = SHM_DIR / f"{self._stem}-v{version}"
        try:
            os.rename(self.path, path)
        except OSError as err:  # e.g. removed from under us: pack into a new file instead
            log.warning("weight snapshot %s not reusable: %s", self.path, err)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            return False
        self._locked = True
        self.path = path
        return True

    def done_writing(self) -> None:
        """Let subscribers lease the rewritten version."""
        if self._locked:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._locked = False

    def release(self) -> None:
        """Unlink the file; its memory goes once the last mapping and in-flight frame drop it."""
        self.path.unlink(missing_ok=True)
        if self._map is not None:
            self._map = None  # unmapped when the last tensor over it is gone
            os.close(self._fd)


class SnapshotReader:
    """Subscriber side: leases and maps a publisher's snapshot, keeping the mapping of the last file
    read so a version rewritten into the same file is read without page faults.

    Memory: the cached mapping pins the pages of the last file read (at most one snapshot) until the
    next `open` maps another file or `close`; they are the publisher's pages while it still serves
    that file.
    """

    def __init__(self) -> None:
        self._cached: tuple[tuple[int, int], mmap.mmap] | None = None

    def open(self, path: str, nbytes: int, *, fresh: bool = False) -> tuple[torch.Tensor, bool] | None:
        """The snapshot at ``path`` as a uint8 tensor and whether an existing mapping was reused.

        The tensor (and every view of it) holds a lease: the publisher will not rewrite the file
        while any of them is alive. None when the file is not reachable from here (other host, own
        /dev/shm), is being rewritten, or ``path`` no longer names it (superseded): the caller asks
        again / uses TCP. ``fresh=True`` maps the file anew instead of reusing the cached mapping.
        """
        p = valid_snapshot_path(path)
        if p is None:
            return None
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # BlockingIOError: the publisher is rewriting it
            st = os.fstat(fd)
            if st.st_size != nbytes or os.stat(p).st_ino != st.st_ino:
                raise FileNotFoundError(p)  # renamed for a newer version after we opened it
            key = (st.st_dev, st.st_ino)
            hot = not fresh and self._cached is not None and self._cached[0] == key
            if not hot:
                self._cached = None  # unmapped now unless tensors of an older version still use it
                self._cached = (key, _map_copy_on_write(p, key, nbytes))
        except OSError:
            os.close(fd)
            return None
        view = memoryview(self._cached[1])
        weakref.finalize(view, os.close, fd)  # the lease ends with the last tensor over this version
        return _tensor_over(view), hot

    def close(self) -> None:
        """Drop the cached mapping (tensors still alive keep theirs)."""
        self._cached = None


def _map_copy_on_write(path: Path, key: tuple[int, int], nbytes: int) -> mmap.mmap:
    """Map ``path`` (which must still be the file ``key``) through a descriptor of its own: Python's
    mmap keeps a duplicate of the descriptor it was given, and a duplicate of the leased one would
    share (and so keep) its lock for as long as the mapping lives."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:
            raise FileNotFoundError(path)
        return mmap.mmap(fd, nbytes, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)


def sweep_stale() -> int:
    """Remove snapshot files whose publisher process is gone; returns how many were removed."""
    removed = 0
    for f in SHM_DIR.glob(f"{PREFIX}*"):
        try:
            pid = int(f.name[len(PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            f.unlink()
            removed += 1
            log.info("removed stale weight snapshot %s", f)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
