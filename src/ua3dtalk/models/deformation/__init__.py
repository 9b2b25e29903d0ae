"""Uncertainty-based Deformation (DESIGN §4, ``models/deformation/``).

Public API:

* :class:`EnsembleMLP`, :class:`UncertaintyBlock`, :class:`ViewEstimate`, :class:`ViewInput` — per-view
  batched ensembles with aleatoric/epistemic variance; decomposed view inputs (``ensemble.py``);
* :func:`diagonal_fusion`, :func:`full_cov_fusion` (:func:`full_cov_fusion_factors`, :func:`full_cov_fusion_lowrank`,
  :func:`lowrank_covariance`, :func:`lowrank_precision`), :func:`spd_inverse`, :func:`uniform_fusion`,
  :func:`ensemble_covariance`, :class:`UncertaintyFusion`, :class:`FusionOutput` (``fusion.py``);
* :class:`MultiHeadDecoder`, :class:`Deltas` (``decoder.py``);
* :class:`RunningStandardize` — per-channel standardisation with stored statistics (``norm.py``);
* :class:`HealthMeter`, :func:`low_health`, :func:`off_scale` — live units, fusion weights, code scale (``health.py``);
* :class:`DeformationNetwork` (face), :class:`MouthDeformation` (inside mouth), :class:`DeformationOutput`
  (``network.py``).
"""
from .decoder import HEAD_DIMS, Deltas, MultiHeadDecoder
from .ensemble import (
    COMPUTE_DTYPES,
    UNCERTAINTY_MODES,
    EnsembleMLP,
    UncertaintyBlock,
    ViewEstimate,
    ViewInput,
    bound_logvar,
)
from .fusion import (
    FUSION_MODES,
    FusionOutput,
    UncertaintyFusion,
    diagonal_fusion,
    ensemble_covariance,
    full_cov_fusion,
    full_cov_fusion_factors,
    full_cov_fusion_lowrank,
    lowrank_covariance,
    lowrank_precision,
    spd_inverse,
    uniform_fusion,
)
from .health import CODE_RMS_RANGE, LOW_HEALTH, HealthMeter, low_health, off_scale
from .norm import RunningStandardize
from .config import DeformationConfig, MouthDeformationConfig
from .network import VIEW_NAMES, DeformationNetwork, DeformationOutput, MouthDeformation

__all__ = [
    "EnsembleMLP", "UncertaintyBlock", "ViewEstimate", "ViewInput", "bound_logvar", "UNCERTAINTY_MODES",
    "COMPUTE_DTYPES",
    "diagonal_fusion", "full_cov_fusion", "full_cov_fusion_factors", "full_cov_fusion_lowrank", "lowrank_covariance",
    "lowrank_precision", "spd_inverse",
    "uniform_fusion", "ensemble_covariance", "FusionOutput",
    "UncertaintyFusion", "FUSION_MODES",
    "MultiHeadDecoder", "Deltas", "HEAD_DIMS",
    "DeformationNetwork", "MouthDeformation", "DeformationOutput", "VIEW_NAMES", "DeformationConfig",
    "MouthDeformationConfig",
    "RunningStandardize", "HealthMeter", "low_health", "off_scale", "LOW_HEALTH", "CODE_RMS_RANGE",
]
