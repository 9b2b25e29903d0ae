"""ua3dtalk — UA-3DTalk (uncertainty-aware 3D emotional talking-face synthesis) as a PyTorch
Lightning experiment framework that installs with one command and runs on any machine.

Subpackages (DESIGN §3): ``render`` (Gaussian rasterizer, several backends), ``data``,
``preprocess``, ``models``, ``metrics``, ``callbacks``, ``cli``.
"""

__version__ = "0.1.0"
