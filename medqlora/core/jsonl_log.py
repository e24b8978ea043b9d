"""Append-only JSON-lines records that survive a full disk or a kill: a write that fails is cut off again, a torn
last line (a kill mid-write) is skipped with a note, and a full disk fails with the folder named."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import warnings
from pathlib import Path

_write = os.write  # one name to stand in for in tests (a disk that fills mid-write)
FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskFull(OSError):
    """No space left where a run writes its records; the message names the folder and what to do."""


def append(path: Path, record: dict) -> None:
    """Add one record as one line. A failed write leaves the file as it was (whole lines only), so that a run
    resumed once space is freed reads every earlier record."""
    path = Path(path)
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn earlier: never glue this record onto it
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[_write(fd, view):]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # drop the part that went out
            if e.errno in FULL_DISK:
                raise DiskFull(errno.ENOSPC, f"no space left on the disk holding {path.parent} (writing {path.name}): "
                               "free space there (or move the run folder to a larger disk), then go on with "
                               "runner.py --resume") from e
            raise
    finally:
        os.close(fd)


def read(path: Path) -> list[dict]:
    """Every whole record; a line that is not one (torn by a kill or a full disk) is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        else:
            warnings.warn(f"{path}: line {n} is not a whole record (cut short by a full disk or a kill?): skipped",
                          UserWarning, stacklevel=2)
    return out
