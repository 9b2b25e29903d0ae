"""Fixtures of the experiment-configuration tests: the config root and a cheap way to build things."""
from __future__ import annotations


