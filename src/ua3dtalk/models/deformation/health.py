"""Health of the deformation networks: live units and fusion weights (DESIGN §4.5).

A ReLU unit that is never active receives no gradient and never comes back; a network whose units are
mostly dead outputs nearly constant offsets (at demo scale the decoder trunk once ended with 6 of 64 units
alive, and emotion control was faint). :class:`HealthMeter` counts, over the inputs it is shown, how often
every hidden unit of every network is active (pre-activation > 0):

* ``decoder`` — the decoder trunk and the heads' hidden layers;
* ``<view>`` — every member's hidden layer of that view's ensemble (``audio``, ``content``, ``style``,
  ``emotion``);
* ``concat`` — the hidden layer of the ``fusion=concat`` MLP;

the mean fusion weight of every view, and the root mean square of the standardised fused code the decoder
reads (``health/code_rms``, ≈ 1 when the code statistics stored in training describe the inputs of inference;
it read 0.36 while the fuse stage trained single ensemble members and inference averaged them). A unit is
*live* when it is active on at least ``min_active`` (0.1 %) of the inputs (Gaussians × frames).
:meth:`HealthMeter.summary` gives ``health/live_<net>`` (the live fraction of the network's units),
``fusion_weight/<view>`` and ``health/code_rms``, prefixed with ``prefix`` (``mouth_`` for the inside-mouth
branch). :func:`low_health` lists the networks below a threshold (20 %: a warning),
:func:`off_scale` the codes whose RMS is outside [0.5, 2] (a warning).

The meter is attached to a :class:`~ua3dtalk.models.deformation.network.DeformationNetwork` as its
``monitor``; the network then records every forward that runs without autograd (validation, evaluation),
at the cost of one extra evaluation of the first layers.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

Tensor = torch.Tensor

__all__ = ["HealthMeter", "low_health", "off_scale", "LOW_HEALTH", "CODE_RMS_RANGE"]

#: below this live fraction a network is reported (warning once per run)
LOW_HEALTH = 0.2
#: outside this range of ``health/code_rms`` the decoder's input is reported (warning once per run)
CODE_RMS_RANGE = (0.5, 2.0)


class HealthMeter:
    """Accumulates unit activity and fusion weights (see the module docstring).

    Args:
        prefix: prepended to the network/view names of :meth:`summary` (``""`` face, ``"mouth_"`` mouth).
        min_active: fraction of the inputs on which a unit must be active to count as live.
    """

    def __init__(self, prefix: str = "", min_active: float = 1e-3) -> None:
        if not 0.0 <= float(min_active) < 1.0:
            raise ValueError(f"HealthMeter: min_active must be in [0, 1), got {min_active}")
        self.prefix, self.min_active = str(prefix), float(min_active)
        self.active: dict[str, Tensor] = {}  # net -> [units] count of inputs with the unit active
        self.seen: dict[str, int] = {}  # net -> inputs seen
        self.weights: dict[str, list[float]] = {}
        self.code_sq, self.code_n = 0.0, 0  # Σ code², number of code entries

    def add(self, net: str, pre: Tensor) -> None:
        """Record pre-activations ``pre [..., units]`` of network ``net``."""
        flat = pre.detach().reshape(-1, pre.shape[-1])
        cnt = (flat > 0).sum(0).to(torch.float64).cpu()
        self.active[net] = self.active[net] + cnt if net in self.active else cnt
        self.seen[net] = self.seen.get(net, 0) + flat.shape[0]

    def add_weights(self, weights: Mapping[str, Any]) -> None:
        """Record one forward's mean fusion weights ``view → scalar``."""
        for k, v in weights.items():
            self.weights.setdefault(k, []).append(float(v))

    def add_code(self, code: Tensor) -> None:
        """Record the standardised fused code ``[..., D]`` the decoder reads."""
        self.code_sq += float(code.detach().to(torch.float64).square().sum())
        self.code_n += code.numel()

    def live_fraction(self, net: str) -> float:
        """Fraction of ``net``'s units active on at least ``min_active`` of the inputs seen."""
        n = self.seen.get(net, 0)
        if n == 0:
            raise KeyError(f"HealthMeter: no inputs recorded for {net!r}")
        need = max(1.0, self.min_active * n)
        return float((self.active[net] >= need).to(torch.float64).mean())

    def summary(self) -> dict[str, float]:
        """``{"health/live_<prefix><net>": fraction, "fusion_weight/<prefix><view>": mean weight,
        "health/<prefix>code_rms": RMS of the code}``."""
        out = {f"health/live_{self.prefix}{k}": self.live_fraction(k) for k in self.active}
        out.update({f"fusion_weight/{self.prefix}{k}": sum(v) / len(v) for k, v in self.weights.items() if v})
        if self.code_n:
            out[f"health/{self.prefix}code_rms"] = (self.code_sq / self.code_n) ** 0.5
        return out

    def __bool__(self) -> bool:
        return bool(self.seen)


def low_health(summary: Mapping[str, float], threshold: float = LOW_HEALTH) -> dict[str, float]:
    """The ``health/live_*`` entries of ``summary`` below ``threshold``."""
    return {k: v for k, v in summary.items() if k.startswith("health/live_") and v < threshold}


def off_scale(summary: Mapping[str, float], bounds: tuple[float, float] = CODE_RMS_RANGE) -> dict[str, float]:
    """The ``health/*code_rms`` entries of ``summary`` outside ``bounds``."""
    return {k: v for k, v in summary.items() if k.startswith("health/") and k.endswith("code_rms")
            and not bounds[0] <= v <= bounds[1]}


def record_forward(meter: Optional[HealthMeter], net, h: Tensor, views: Mapping[str, Any], fused, code: Tensor) -> None:
    """Record one forward of a deformation network ``net`` (its inputs as built by the network) into
    ``meter``: the first layers of the view ensembles (or the concat MLP), the decoder's hidden layers and
    the fusion weights, and the code."""
    if meter is None:
        return
    with torch.no_grad():
        fusion = net.fusion
        if fusion.fusion == "concat":
            xs = [views[n].materialize() if hasattr(views[n], "materialize") else views[n] for n in fusion.view_names]
            meter.add("concat", fusion.concat_mlp[0](torch.cat(xs, dim=-1)))
        else:
            for name in fusion.view_names:
                meter.add(name, fusion.blocks[name].ensemble.pre_activation(views[name]).float())
            meter.add_weights(fused.weights)
        meter.add_code(code)
        dec = net.decoder
        zpre = dec.trunk_pre(code, h)
        upre = dec.head_pre(dec._act(zpre))
        meter.add("decoder", torch.cat([zpre, upre], dim=-1))
