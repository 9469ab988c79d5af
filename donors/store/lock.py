"""One study directory, one running process."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from donors.errors import DonorsError


class StudyLockedError(DonorsError, RuntimeError):
    pass


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold the study's lock for the duration; a second process gets a clear error at once."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    lock_path = study_dir / "donors.lock"
    owner = study_dir / "donors.lock.pid"
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        pid = owner.read_text().strip() if owner.exists() else "unknown"
        raise StudyLockedError(
            f"{study_dir} is in use by another donors process (pid {pid}); wait for it to finish "
            f"or stop it. Finished work is kept in the store either way."
        ) from None
    try:
        owner.write_text(str(os.getpid()))
        yield
    finally:
        lock.release()


def study_in_use(study_dir: Path) -> bool:
    """Whether a donors process holds the study's lock now (without taking it for long)."""
    lock_path = Path(study_dir) / "donors.lock"
    if not lock_path.exists():
        return False
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
