"""Typed component configurations (in the manner of nerfstudio): frozen dataclasses whose choices are
``Literal`` types, checked once when the configuration is made, and passed down to the modules as one
object instead of dozens of loose arguments.

A component takes ``config: XConfig | None = None, **options``: ``options`` are field names of the
configuration (the keys the experiment yamls write, e.g. ``model.deformation.members``), applied on top of
``config`` (or the defaults). :func:`make_config` does that and turns a misspelt key into a one-line
``TypeError`` naming the valid keys, a bad choice into a ``ValueError`` naming the choices.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal, Optional, TypeVar, get_args, get_origin

C = TypeVar("C")


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    """The resolved field types of ``cls`` (once per class: the annotations are strings)."""
    return typing.get_type_hints(cls)


def choices(cls, name: str) -> Optional[tuple]:
    """The allowed values of field ``name`` of ``cls`` when it is a ``Literal`` (or a tuple of one), else None."""
    tp = _hints(cls)[name]
    if get_origin(tp) is tuple:
        args = get_args(tp)
        tp = args[0] if args else tp
    return get_args(tp) if get_origin(tp) is Literal else None


def check_config(cfg, owner: Optional[str] = None) -> None:
    """Normalise sequence fields to tuples (Hydra hands over lists) and check every ``Literal`` field.
    Call from ``__post_init__`` of a frozen dataclass."""
    owner = owner or type(cfg).__name__
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp = hints[f.name]
        v = getattr(cfg, f.name)
        if get_origin(tp) is tuple and v is not None and not isinstance(v, tuple):
            if isinstance(v, (str, bytes)):
                raise ValueError(f"{owner}: {f.name} must be a sequence, got {v!r}")
            v = tuple(v)
            object.__setattr__(cfg, f.name, v)
        allowed = choices(type(cfg), f.name)
        if allowed is None:
            continue
        for item in (v if get_origin(tp) is tuple else (v,)):
            if item not in allowed:
                raise ValueError(f"{owner}: {f.name} must be one of {', '.join(map(str, allowed))}, got {item!r}")


def make_config(cls: type[C], config: Optional[C], options: dict, owner: str) -> C:
    """``config`` (or ``cls()``) with the field values of ``options``; unknown keys → TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{owner}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    if config is None:
        return cls(**options)
    if not isinstance(config, cls):
        raise TypeError(f"{owner}: config must be a {cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **options) if options else config


__all__ = ["check_config", "choices", "make_config"]
