"""A generic 3-D face of 68 iBUG landmarks for head-pose fitting (hand-built, metres).

Frame: the head's own frame in OpenCV axes — x to the viewer's right (the subject's left), y down,
z away from the viewer (the face looks towards −z) — with the origin near the centre of the head, as
the synthetic heads and the default Gaussian bounding box of the model assume (DESIGN §4, §6):
eyes at y ≈ −0.02, chin at y ≈ +0.10, nose tip at z ≈ −0.105.

The frontal (x, y) layout is a normalised mean face of the iBUG 68 points (OpenFace's alignment
template, face width 0.89 units), scaled to 0.15 m per unit (outer eye corners 80 mm apart, eye
line → chin 110 mm). Depths are per-landmark anthropometric values (mm behind the nose tip):
nose 0–22, nostrils 9–15, eye corners 28–38, brows 22–33, lips 12–26, jaw contour from 14 (chin)
to 95 (in front of the ears). Pose fitting adapts this template to the subject
(:func:`ua3dtalk.preprocess.pose.fit_clip` with ``refine_template``), so only its rough shape matters.

:data:`POSE_WEIGHTS` weights the landmarks in the fit: rigid points (eye corners, nose) count most;
eyelids, brows and the mouth move with expressions and the jaw contour is a silhouette, so they count
less.
"""
from __future__ import annotations

import numpy as np

# OpenFace's mean face (x, y in units of the face box), iBUG order
_XY = np.array([
    (0.0792396913815, 0.339223741112), (0.0829219487236, 0.456955367943), (0.0967927109165, 0.575648016728),
    (0.122141515615, 0.691921601066), (0.168687863544, 0.800341263616), (0.239789390707, 0.895732504778),
    (0.325662452515, 0.977068762493), (0.422318282013, 1.04329000149), (0.531777802068, 1.06080371126),
    (0.641296298053, 1.03981924107), (0.738105872266, 0.972268833998), (0.824444363295, 0.889624082279),
    (0.894792677532, 0.792494155836), (0.939395486253, 0.681546643421), (0.96111933829, 0.562238253072),
    (0.970579841181, 0.441758925744), (0.971193274221, 0.322118743967), (0.163846223133, 0.249151738053),
    (0.21780354657, 0.204255863861), (0.291299351124, 0.192367318323), (0.367460241458, 0.203582210627),
    (0.4392945113, 0.233135599851), (0.586445962425, 0.228141644834), (0.660152671635, 0.195923841854),
    (0.737466449096, 0.182360984545), (0.813236546239, 0.192828009114), (0.8707571886, 0.235293377042),
    (0.51534533827, 0.31863546193), (0.516221448289, 0.396200446263), (0.517118861835, 0.473797687758),
    (0.51816430343, 0.553157797772), (0.433701156035, 0.604054457668), (0.475501237769, 0.62076344024),
    (0.520712933176, 0.634268222208), (0.565874114041, 0.618796581487), (0.607054002672, 0.60157671656),
    (0.252418718401, 0.331052263829), (0.298663015648, 0.302646354002), (0.355749724218, 0.303020650651),
    (0.403718978315, 0.33867711083), (0.352507175597, 0.349987615384), (0.296791759886, 0.350478978225),
    (0.631326076346, 0.334136672344), (0.679073381078, 0.29645404267), (0.73597236153, 0.294721285802),
    (0.782865376271, 0.321305281656), (0.740312274764, 0.341849376713), (0.68499850091, 0.343734332172),
    (0.353167761422, 0.746189164237), (0.414587777921, 0.719053835073), (0.477677654595, 0.706835892494),
    (0.522732900812, 0.717092275768), (0.569832064287, 0.705414478982), (0.635195811927, 0.71565572516),
    (0.69951672331, 0.739419187253), (0.639447159575, 0.805236879972), (0.576410514055, 0.835436670169),
    (0.525398405766, 0.841706377792), (0.47641545769, 0.837505914975), (0.41379548902, 0.810045601727),
    (0.380084785646, 0.749979603086), (0.477955996282, 0.74513234612), (0.523389793327, 0.748924302636),
    (0.571057789237, 0.74332894691), (0.672409137852, 0.744177032192), (0.572539621444, 0.776609286626),
    (0.5240106503, 0.783370783245), (0.477561227414, 0.781950322297),
])

# depth behind the nose tip, millimetres (left/right symmetric)
_DEPTH_MM = np.array(
    [95, 88, 78, 66, 52, 38, 26, 18, 14, 18, 26, 38, 52, 66, 78, 88, 95]  # jaw 0-16
    + [33, 27, 24, 23, 22, 22, 23, 24, 27, 33]  # brows 17-26
    + [22, 16, 8, 0, 15, 11, 9, 11, 15]  # nose 27-35
    + [38, 31, 30, 28, 31, 32, 28, 30, 31, 38, 32, 31]  # eyes 36-47
    + [26, 18, 13, 12, 13, 18, 26, 21, 16, 14, 16, 21]  # outer lips 48-59
    + [24, 17, 15, 17, 24, 18, 16, 18],  # inner lips 60-67
    dtype=np.float64)

_SCALE = 0.15  # metres per template unit


def _build() -> np.ndarray:
    xy = _XY - np.array([_XY[:, 0].mean(), 0.0])
    # symmetrise left/right (the mean face is almost symmetric already)
    from .landmarks import IBUG_MIRROR

    m = np.array(IBUG_MIRROR)
    xy = 0.5 * (xy + np.stack([-xy[m, 0], xy[m, 1]], -1))
    p = np.zeros((68, 3))
    p[:, 0] = xy[:, 0] * _SCALE
    eye_y = xy[36:48, 1].mean() * _SCALE
    p[:, 1] = xy[:, 1] * _SCALE - eye_y - 0.02
    p[:, 2] = _DEPTH_MM / 1000.0 - 0.105
    return p


TEMPLATE_3D: np.ndarray = _build()
"""float64 [68,3]: the generic 3-D face (metres, head frame, OpenCV axes, origin ≈ head centre)."""
TEMPLATE_3D.setflags(write=False)

POSE_WEIGHTS: np.ndarray = np.array(
    [0.3] * 4 + [0.15] * 9 + [0.3] * 4  # jaw: upper contour more reliable than the chin (moves with the jaw)
    + [0.3] * 10  # brows
    + [1.0] * 9  # nose
    + [1.0, 0.3, 0.3, 1.0, 0.3, 0.3, 1.0, 0.3, 0.3, 1.0, 0.3, 0.3]  # eye corners 1, lids 0.3
    + [0.15] * 20,  # lips
    dtype=np.float64)
"""float64 [68]: per-landmark weights of the pose fit."""
POSE_WEIGHTS.setflags(write=False)
