"""Same-host fast path for weight versions: the publisher's snapshot lives in a ``/dev/shm`` file.

Why: over loopback TCP every byte is copied by the kernel twice and again out of ZeroMQ's message,
which on this machine caps a weight sync far below memcpy speed. A subscriber on the same host
instead maps the publisher's snapshot read-only and copies each bucket once into its own buffer,
then verifies the same per-bucket checksums as over TCP. The snapshot costs no extra memory: it *is*
the publisher's one snapshot (tmpfs pages), which the TCP path serves as well.

Safety: the file is created owner-only with ``O_EXCL`` and fully allocated up front
(``posix_fallocate``), so a full ``/dev/shm`` fails cleanly (the publisher then uses anonymous
memory) instead of killing the process with SIGBUS later. A released snapshot is unlinked at once;
a subscriber that already opened it keeps a valid mapping. Files of publishers that died without
cleaning up are removed by the next publisher on the host (`sweep_stale`).
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import uuid
import warnings
from pathlib import Path

import torch

__all__ = ["ShmSnapshot", "host_id", "map_read_only", "sweep_stale"]

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


def _tensor_over(buf) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only maps: we only ever copy out of them
        return torch.frombuffer(buf, dtype=torch.uint8)


class ShmSnapshot:
    """A writable uint8 buffer of ``nbytes`` backed by an owner-only file in ``/dev/shm``.

    Raises OSError when the file cannot be created or fully allocated (caller falls back).
    """

    def __init__(self, nbytes: int, version: int) -> None:
        self.path = SHM_DIR / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-v{version}"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, nbytes)
            self._map = mmap.mmap(fd, nbytes)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.tensor = _tensor_over(self._map)

    def release(self) -> None:
        """Unlink the file; its memory goes once the last mapping and in-flight frame drop it."""
        self.path.unlink(missing_ok=True)


def map_read_only(path: str, nbytes: int) -> torch.Tensor | None:
    """The publisher's snapshot mapped read-only, or None if it is not reachable from here."""
    p = Path(path)
    if p.parent != SHM_DIR or not p.name.startswith(PREFIX):
        return None  # never map a path a manifest made up
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != nbytes:
            return None
        return _tensor_over(mmap.mmap(fd, nbytes, access=mmap.ACCESS_READ))
    except OSError:
        return None
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
