"""Write output files and folders without following a symbolic link planted where they go.

A sidecar or a report often runs with more rights than whoever can write to the log folder next to it: a link
named like its output (``run-scaleforecast -> ~/.ssh``) must not redirect what it writes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["make_output_dir", "write_bytes", "write_text"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _refuse(path: Path) -> ValueError:
    return ValueError(
        f"{path} is a symbolic link; refusing to write through it (remove it or pick another path)"
    )


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Create or replace the file ``path`` with ``data`` (its folder created if missing); a symbolic link at
    ``path`` is an error."""
    p = Path(path)
    if not p.parent.exists():
        make_output_dir(p.parent)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP or p.is_symlink():
            raise _refuse(p) from None
        raise
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def make_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create the directory ``path`` (and its parents) or accept an existing one; ``path`` itself being a symbolic
    link, or not a directory, is an error, checked again after creation so that a link raced in is caught."""
    p = Path(path)
    for attempt in range(2):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            if attempt:
                raise
            p.mkdir(parents=True, exist_ok=True)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(p)
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{p} exists and is not a directory")
        return p
    return p
