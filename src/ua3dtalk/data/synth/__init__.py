"""Procedural synthetic talking heads with known ground truth (DESIGN §6)."""
from ...constants import EMOTIONS
from .generate import PRESETS, generate_emotional, generate_subject
from .head import EXPR_NAMES, ProceduralHead

__all__ = ["PRESETS", "generate_emotional", "generate_subject", "EXPR_NAMES", "ProceduralHead", "EMOTIONS"]
