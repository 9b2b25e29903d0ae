"""File-type checks before ``open()``: a named pipe, a device or a socket in place of a data file would block
forever or never end, so readers ask :func:`special_file_kind` first and refuse such a path by name."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Union


def special_file_kind(path: Union[str, Path]) -> Optional[str]:
    """``None`` for a regular file (or a missing path: the caller reports that); else what the path is."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a FIFO is a FIFO
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"
