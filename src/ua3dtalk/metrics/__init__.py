"""ua3dtalk.metrics: pure metric functions and evaluator networks (no Lightning; DESIGN §3, §8).

==================  ============================================  =========================  =====================
key                 definition                                    convention / source        evaluator
==================  ============================================  =========================  =====================
psnr                mean over frames of 10·log10(1/MSE),          TalkingGaussian            —
                    frames in [0,1]                               ``metrics.py``
ssim                mean SSIM (Gaussian window 11, σ 1.5,         torchmetrics               —
                    data range 1)
lpips               LPIPS net='alex' v0.1, normalize=True,        ``lpips`` package          AlexNet from the
                    full frame                                    (Zhang et al. 2018)        torch hub cache
lpips_face          the same on face crops (boxes from the        ours                       idem
                    ground-truth landmarks)
lpips_randbackbone  LPIPS with a seeded random AlexNet (tests,    ours; never mixed with     —
                    smoke runs); also lpips_face_randbackbone     ``lpips``
efid_<extractor>    Fréchet distance of per-frame expression      EMO / Hallo E-FID (there   landmark | regressor
                    coefficients, generated vs ground truth       Deep3DFaceRecon 3DMM)      | 3dmm (see .efid)
lmd                 mean L2 (pixels) of mouth landmarks 48–67,    Chen et al. 2018;          LandmarkRegressor or
                    each set mean-centred per frame               DESIGN §8                  ground-truth .lms
f_lmd               the same on all 68 landmarks                  idem                       idem
blink_err           mean |AU45_pred − AU45_gt| (0..5 scale),      OpenFace AU45_r scale;     LandmarkRegressor +
                    AU45 = 5·clip(1 − EAR/EAR_open, 0, 1)         EAR: Soukupová, Čech 2016  EAR
acc_emo             emotion-classifier accuracy on rendered       Acc_emo of EAMM / EAT      EmotionClassifier
                    frames (acc_emo_clip: per clip, mean softmax)                            (trained or loaded)
sync_c / sync_d     SyncNet confidence / distance (``.syncnet``)  joonson/syncnet_python     SyncNet v2
==================  ============================================  =========================  =====================

Modules: :mod:`.landmarks` (EAR, AU45, Procrustes normalisation, landmark expression basis, LMD, blink),
:mod:`.image` (PSNR, SSIM, LPIPS), :mod:`.frechet` (Fréchet distance), :mod:`.evaluators` (face crops,
ExpressionRegressor, LandmarkRegressor, EmotionClassifier, loading), :mod:`.ground_truth` (a dataset's
frames and targets, held-out split), :mod:`.evaluator_training` (their ``fit_*`` trainers),
:mod:`.torchscript` (TorchScriptExtractor), :mod:`.efid` (E-FID with pluggable extractors),
:mod:`.syncnet` + :mod:`.syncnet_scoring` + :mod:`.syncnet_training` + :mod:`.mfcc` (SyncNet v2, Sync-C/Sync-D,
the official MFCC front end, a trainer for project evaluators), :mod:`.evaluator_dir` (metric groups,
evaluator directories, ``load_evaluators``) and :mod:`.suite` (MetricSuite, ClipStream).

Submodules are imported lazily (``from ua3dtalk.metrics import psnr`` imports :mod:`.image` on first
use) so that importing the package stays cheap and never touches optional dependencies.
"""
from __future__ import annotations

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "landmarks": ("TEMPLATE_68", "LANDMARK_EXPR_NAMES", "eye_aspect_ratio", "ear_to_au45", "normalize_landmarks",
                  "landmark_expression", "lmd", "blink_error", "blink_count"),
    "image": ("psnr", "psnr_per_frame", "ssim", "LPIPSMetric", "LPIPSWeightsError", "crop_boxes",
              "alexnet_cache_path"),
    "frechet": ("frechet_distance", "gaussian_frechet_distance"),
    "evaluators": ("EvaluatorError", "EvaluatorMissingError", "face_boxes", "crop_faces", "ExpressionRegressor",
                   "ExpressionRegressorConfig", "LandmarkRegressor", "LandmarkRegressorConfig", "EmotionClassifier",
                   "EmotionClassifierConfig", "load_evaluator", "emotion_accuracy", "landmark_metrics"),
    "ground_truth": ("GroundTruth", "load_ground_truth", "holdout_mask"),
    "torchscript": ("TorchScriptExtractor",),
    "evaluator_training": ("TrainConfig", "fit_expression_regressor", "fit_landmark_regressor",
                           "fit_emotion_classifier"),
    "efid": ("efid", "efid_key", "expression_features"),
    "syncnet": ("SyncNet", "SyncNetConfig", "SyncNetWeightsError", "load_syncnet", "save_syncnet"),
    "syncnet_scoring": ("SyncResult", "sync_scores", "crop_for_sync"),
    "syncnet_training": ("SyncClip", "clips_from_dataset", "train_syncnet"),
    "mfcc": ("syncnet_mfcc",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
