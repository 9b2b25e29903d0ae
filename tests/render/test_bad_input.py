"""Malformed inputs raise ``ValueError`` whose message names the offending argument."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ua3dtalk.render import BACKENDS, rasterize

N, W, H = 5, 10, 8
TENSOR_ARGS = ("means", "quats", "scales", "opacities", "colors", "viewmat", "K", "background")


def valid(dtype=torch.float32, sh: int | None = None) -> dict:
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[12.0, 0.0, 5.0], [0.0, 12.0, 4.0], [0.0, 0.0, 1.0]], dtype=dtype)
    means = torch.rand(N, 3, generator=g, dtype=dtype) - 0.5
    means[:, 2] += 3.0
    colors = torch.rand(N, 3, generator=g, dtype=dtype) if sh is None else \
        0.2 * torch.randn(N, (sh + 1) ** 2, 3, generator=g, dtype=dtype)
    return dict(
        means=means,
        quats=torch.randn(N, 4, generator=g, dtype=dtype),
        scales=0.05 + 0.1 * torch.rand(N, 3, generator=g, dtype=dtype),
        opacities=torch.rand(N, generator=g, dtype=dtype),
        colors=colors,
        viewmat=torch.eye(4, dtype=dtype),
        K=K,
        width=W,
        height=H,
        background=torch.rand(3, generator=g, dtype=dtype),
    )


def call(args: dict, **kw):
    a = dict(args)
    a.update(kw)
    return rasterize(a.pop("means"), a.pop("quats"), a.pop("scales"), a.pop("opacities"), a.pop("colors"),
                     a.pop("viewmat"), a.pop("K"), a.pop("width"), a.pop("height"), **a)


def names(arg: str) -> str:
    """Regex: the message names the argument in backticks right after the 'rasterize:' prefix."""
    return rf"^rasterize: .*`{arg}`"


def test_valid_input_renders(helpers):
    """The baseline used below is valid (so each failure is caused by the one change made)."""
    out = call(valid(), backend="dense")
    assert float(out.alpha.max()) > 0.1
    out = call(valid(torch.float64, sh=2), backend="dense")
    assert out.image.dtype == torch.float64


WRONG_SHAPES = [
    ("means", (N, 2)), ("means", (N,)), ("means", (N, 3, 1)),
    ("quats", (N, 3)), ("quats", (N + 1, 4)), ("quats", (4,)),
    ("scales", (N, 2)), ("scales", (N - 1, 3)),
    ("opacities", (N, 1)), ("opacities", (N + 1,)), ("opacities", ()),
    ("colors", (N, 4)), ("colors", (N + 1, 3)), ("colors", (N, 4, 2)), ("colors", (N,)),
    ("colors", (N, 1, 1, 3)),
    ("viewmat", (3, 4)), ("viewmat", (4, 4, 1)), ("viewmat", (16,)),
    ("K", (3, 4)), ("K", (2, 3)), ("K", (9,)),
    ("background", (4,)), ("background", (1, 3)), ("background", ()),
]


@pytest.mark.parametrize("arg,shape", WRONG_SHAPES)
def test_wrong_shape(arg, shape):
    a = valid()
    a[arg] = torch.ones(shape) * 0.5
    with pytest.raises(ValueError, match=names(arg)):
        call(a)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool])
def test_means_dtype_unsupported(dtype):
    a = valid()
    a["means"] = a["means"].to(dtype)
    with pytest.raises(ValueError, match=names("means")):
        call(a)


@pytest.mark.parametrize("arg", [a for a in TENSOR_ARGS if a != "means"])
@pytest.mark.parametrize("means_dtype,other_dtype", [
    (torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float32, torch.float16),
    (torch.float32, torch.int64),
])
def test_mismatched_dtype(arg, means_dtype, other_dtype):
    a = valid(means_dtype)
    a[arg] = (a[arg] * 10).to(other_dtype) if other_dtype == torch.int64 else a[arg].to(other_dtype)
    with pytest.raises(ValueError, match=names(arg) + ".*dtype"):
        call(a)


def _other_device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("meta")


@pytest.mark.parametrize("arg", [a for a in TENSOR_ARGS if a != "means"])
def test_mismatched_device(arg):
    a = valid()
    a[arg] = a[arg].to(_other_device())
    with pytest.raises(ValueError, match=names(arg) + ".* is on "):
        call(a)


def test_means_on_another_device_than_the_rest():
    a = valid()
    a["means"] = a["means"].to(_other_device())
    with pytest.raises(ValueError, match=r"^rasterize: .*`(means|quats)`"):
        call(a)


@pytest.mark.parametrize("arg", TENSOR_ARGS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf(arg, bad):
    a = valid()
    t = a[arg].clone()
    t.reshape(-1)[-1] = bad
    a[arg] = t
    with pytest.raises(ValueError, match=names(arg) + ".*(NaN|Inf)"):
        call(a)


def test_nan_in_sh_colors():
    a = valid(sh=3)
    a["colors"][2, 9, 1] = float("nan")
    with pytest.raises(ValueError, match=names("colors")):
        call(a)


@pytest.mark.parametrize("value", [0.0, -0.1, -1e-30])
def test_non_positive_scales(value):
    a = valid()
    a["scales"][3, 1] = value
    with pytest.raises(ValueError, match=names("scales") + ".*> 0"):
        call(a)


def test_zero_norm_quaternion():
    a = valid()
    a["quats"][1] = 0.0
    with pytest.raises(ValueError, match=names("quats") + ".*zero-norm"):
        call(a)


@pytest.mark.parametrize("value", [-0.01, 1.01, 2.0, -1e-7])
def test_opacities_outside_unit_interval(value):
    a = valid()
    a["opacities"][0] = value
    with pytest.raises(ValueError, match=names("opacities") + r".*\[0,1\]"):
        call(a)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_opacities_at_the_bounds_are_valid(value):
    a = valid()
    a["opacities"][0] = value
    assert call(a, backend="dense").image.shape == (H, W, 3)


@pytest.mark.parametrize("arg", ["width", "height"])
@pytest.mark.parametrize("value", [0, -3, 10.0, 7.5, "10", None, True, np.int64(0)])
def test_bad_image_size(arg, value):
    a = valid()
    a[arg] = value
    with pytest.raises(ValueError, match=names(arg)):
        call(a)


@pytest.mark.parametrize("f00,f11", [(0.0, 12.0), (12.0, -1.0)])
def test_non_positive_focal_length(f00, f11):
    a = valid()
    a["K"][0, 0], a["K"][1, 1] = f00, f11
    with pytest.raises(ValueError, match=names("K") + ".*focal"):
        call(a)


@pytest.mark.parametrize("backend", ["cuda", "", "Dense", "gpu", None])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match=r"unknown backend.*(auto|dense)"):
        call(valid(), backend=backend)


def test_backend_list_is_documented():
    assert set(BACKENDS) == {"auto", "dense", "torch", "cpu", "gsplat", "inria"}


@pytest.mark.parametrize("sh_degree", [4, -1, 1.5, True, "2"])
def test_sh_degree_out_of_range(sh_degree):
    a = valid(sh=3)  # 16 coefficients
    with pytest.raises(ValueError, match=names("sh_degree")):
        call(a, sh_degree=sh_degree)


def test_sh_degree_given_with_rgb_colors():
    with pytest.raises(ValueError, match=names("sh_degree")):
        call(valid(), sh_degree=1)


def test_sh_degree_needs_more_coefficients():
    a = valid(sh=1)  # 4 coefficients
    with pytest.raises(ValueError, match=r"sh_degree=3 needs 16 coefficients.*`colors` has 4"):
        call(a, sh_degree=3)


@pytest.mark.parametrize("k", [2, 3, 5, 8, 10, 15, 17])
def test_sh_coefficient_count_not_a_square(k):
    a = valid()
    a["colors"] = torch.zeros(N, k, 3)
    with pytest.raises(ValueError, match=r"^rasterize: SH `colors` .*K=" + str(k)):
        call(a)


def test_sh_extra_coefficients_with_explicit_degree_are_accepted():
    a = valid()
    a["colors"] = torch.zeros(N, 5, 3)  # not a square, but degree 1 is explicit and 5 ≥ 4
    out = call(a, sh_degree=1, backend="dense")
    assert float(out.image.max()) > 0


@pytest.mark.parametrize("near,far", [(1.0, 1.0), (2.0, 1.0), (0.0, 10.0), (-1.0, 10.0), (float("nan"), 10.0),
                                      (0.1, float("nan")), ("0.1", 10.0), (None, 10.0)])
def test_near_far(near, far):
    with pytest.raises(ValueError, match=r"near.*far"):
        call(valid(), near=near, far=far)


@pytest.mark.parametrize("arg", ["means", "quats", "colors", "viewmat", "background"])
def test_not_a_tensor(arg):
    a = valid()
    a[arg] = a[arg].numpy()
    with pytest.raises(ValueError, match=names(arg) + ".*torch.Tensor"):
        call(a)


def test_errors_do_not_depend_on_the_backend():
    """Validation runs before dispatch: every backend reports the same error."""
    a = valid()
    a["scales"][0, 0] = -1.0
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=names("scales")):
            call(a, backend=backend)
