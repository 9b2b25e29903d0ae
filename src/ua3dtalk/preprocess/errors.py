"""Errors and warnings of the preprocessing pipeline."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


class PreprocessError(RuntimeError):
    """Preprocessing cannot go on: bad input (no face, no audio, corrupt file, too short, ...) or a
    missing model. The message names the file/argument and what was expected; ``path`` is the file
    concerned (when there is one) and ``step`` the pipeline step that failed."""

    def __init__(self, message: str, path: Optional[Path | str] = None, step: Optional[str] = None):
        self.path = Path(path) if path is not None else None
        self.step = step
        super().__init__(message)

    def __str__(self) -> str:
        msg = super().__str__()
        if self.path is not None and str(self.path) not in msg:
            msg = f"{self.path}: {msg}"
        return msg


class MissingModelError(PreprocessError, FileNotFoundError):
    """A backend's weights are not on this machine (nothing is ever downloaded)."""


class PreprocessWarning(UserWarning):
    """Something the pipeline fixed or chose for the user (several faces, frame-rate resampling,
    interpolated frames, padded audio): printed, not fatal."""
