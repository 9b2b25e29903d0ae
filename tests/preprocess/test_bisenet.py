"""A BiSeNet face-parsing checkpoint given by path: loads with the peers' parameter names, maps the
19 CelebAMask-HQ classes to the palette, and bad checkpoints are clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ua3dtalk.preprocess.bisenet import CLASS_TO_PART, BiSeNet, BiSeNetParser
from ua3dtalk.preprocess.errors import MissingModelError, PreprocessError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = BiSeNet(19).eval()
    p = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(net.state_dict(), p)
    return p, net


def test_checkpoint_keys_and_parsing(ckpt):
    path, net = ckpt
    keys = set(net.state_dict())
    # the parameter names of the peers' face-parsing checkpoint
    for k in ("cp.resnet.conv1.weight", "cp.resnet.layer2.0.downsample.0.weight", "cp.arm16.conv_atten.weight",
              "cp.conv_avg.bn.running_mean", "ffm.convblk.conv.weight", "conv_out.conv_out.weight",
              "conv_out16.conv.conv.weight"):
        assert k in keys, k
    parser = BiSeNetParser(path, input_size=128)
    img = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    cls = parser.classes(img)
    assert cls.shape == (96, 80) and cls.max() < 19
    lab = parser.parse(img)
    np.testing.assert_array_equal(lab, CLASS_TO_PART[cls])
    # the mapping: skin → face, inside mouth → mouth, neck → neck, cloth → torso, hair → hair
    assert [CLASS_TO_PART[i] for i in (0, 1, 11, 14, 16, 17)] == [0, 1, 2, 4, 5, 3]


def test_bad_checkpoints(ckpt, tmp_path):
    with pytest.raises(MissingModelError, match="not found"):
        BiSeNetParser(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(PreprocessError, match="not a face-parsing BiSeNet checkpoint"):
        BiSeNetParser(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PreprocessError, match="unreadable"):
        BiSeNetParser(junk)
