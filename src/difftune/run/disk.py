"""Writing to disk: whether a location takes our files, and one line when a write fails."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from difftune.errors import DifftuneError

# what torch's zip writer and safetensors put in the errors they raise for a failed write
# (safetensors: `IoError(Os { code: 28, ... })` before 0.6, `I/O error: ... (os error 28)` since)
WRITER_ERRORS = ("inline_container.cc", "PytorchStreamWriter", "IoError(", "I/O error: ")
KNOWN = [os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)]
#: the file system's refusals that no retry fixes: full disk, quota, read-only
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def write_failure(err: BaseException) -> str | None:
    """Why a write failed if `err` is the file system's doing (full, read-only, ...), else None."""
    if isinstance(err, DifftuneError):
        return None
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err)
    if not any(marker in text for marker in WRITER_ERRORS):
        return None
    lines = [line.split("] . ")[-1].strip() for line in text.splitlines() if line.strip()]
    known = next((known for known in KNOWN if known in text), None)
    if known is None and "unexpected pos" in text:  # torch's zip writer hides the errno
        return f"a short write, as on a full disk: {lines[-1][:160]}"
    return known or lines[-1][:200]


def free_space(path: str | Path) -> str:
    """The free space on the disk that holds (or would hold) `path`, e.g. '1.3 GiB'."""
    existing = next(p for p in [Path(path), *Path(path).parents] if p.exists())
    size = float(shutil.disk_usage(existing).free)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@contextmanager
def reported_writes(path: str | Path, what: str, then: str) -> Iterator[None]:
    """A write failure inside becomes one line: `what`, `path`, the reason, free space, `then`."""
    try:
        yield
    except Exception as err:
        reason = write_failure(err)
        if reason is None:
            raise
        raise DifftuneError(
            f"cannot write {what} {path} ({reason}; {free_space(path)} free); {then}"
        ) from err


def disk_error(err: BaseException | None) -> DifftuneError | None:
    """A full or read-only disk anywhere behind `err` (a grid, a curve, a log) as one line."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            where = err.filename or "a file"
            space = f"; {free_space(where)} free" if err.filename else ""
            return DifftuneError(
                f"cannot write {where} ({err.strerror}{space}); the checkpoints already written "
                "are kept: free space, then run the same command with resume=true"
            )
        err = err.__cause__ or err.__context__
    return None


def check_writable(key: str, value: Path, where: Path, *, links: bool = False) -> None:
    """`where` is, or can become, a directory we can create files (and symlinks) in.

    `key=value` is the setting that asks for it. The nearest existing directory on the way is
    probed; nothing is left behind.
    """
    existing = next(p for p in [where, *where.parents] if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise DifftuneError(
            f"{key}={value}: {existing} is a file, not a directory; pass a directory path"
        )
    try:
        probe = Path(tempfile.mkdtemp(prefix=".difftune-probe-", dir=existing))
        try:
            os.close(os.open(probe / "file", os.O_CREAT | os.O_WRONLY, 0o644))
            if links:
                os.symlink("file", probe / "link")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as err:
        raise DifftuneError(
            f"{key}={value}: cannot write there ({err.strerror or err}; {free_space(existing)} "
            f"free in {existing}); pass a writable directory"
        ) from None
