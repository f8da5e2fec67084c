"""One daemon per state database: an advisory lock on `<state>.lock` that names its owner."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

EX_TEMPFAIL = 75


class StateLocked(Exception):
    """Another process owns this state database."""


@dataclass
class OwnerLock:
    path: Path
    fd: int

    def release(self) -> None:
        """Give up ownership (the OS also does this when the process dies, even by SIGKILL)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_path(state_path: Path) -> Path:
    """Where the lock for a state database lives."""
    return state_path.with_name(state_path.name + ".lock")


def acquire(state_path: Path) -> OwnerLock:
    """Take sole ownership of a state database or raise StateLocked naming the owner's pid."""
    path = lock_path(state_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateLocked(
            f"{state_path} is in use by another erpsync (pid {owner}); stop it first, "
            f"or give this one its own daemon.state"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return OwnerLock(path, fd)
