"""Network health of the avatar (DESIGN §4.5): :class:`HealthMixin` attaches
:class:`~ua3dtalk.models.deformation.HealthMeter` s to both deformation networks of a
:class:`~ua3dtalk.models.module.UA3DTalk` and reads them back."""
from __future__ import annotations

import warnings

from .deformation import CODE_RMS_RANGE, LOW_HEALTH, HealthMeter, low_health, off_scale

__all__ = ["HealthMixin"]


class HealthMixin:
    """Needs ``self.deformation`` and ``self.mouth_deformation``."""

    def attach_health(self) -> None:
        """Attach fresh meters to both deformation networks: every forward without autograd (validation,
        evaluation) is recorded until :meth:`detach_health`."""
        self.deformation.monitor = HealthMeter()
        self.mouth_deformation.monitor = HealthMeter("mouth_")

    def _health_judged(self, key: str) -> bool:
        """Whether the network a ``health/*`` key describes is far enough in its training to be judged: live units
        after its first optimizer step (``trained_steps``), the code's scale once its statistics come from the
        ensembles' stage B (``code_stats_stage_b``: in stage A they follow single members while inference
        averages them, so the code is expectedly off scale until the switch)."""
        mouth = key.startswith(("health/live_mouth_", "health/mouth_"))
        net = getattr(self, "mouth_deformation" if mouth else "deformation", None)
        if key.endswith("code_rms"):
            flag = getattr(net, "code_stats_stage_b", None)
            return flag is None or bool(flag)
        steps = getattr(net, "trained_steps", None)
        return steps is None or int(steps) > 0

    def detach_health(self) -> dict[str, float]:
        """Detach the meters and return ``health/live_*`` and ``fusion_weight/*`` of what they recorded
        (face keys unprefixed, inside-mouth keys with ``mouth_``); empty when nothing was recorded."""
        out: dict[str, float] = {}
        for net in (self.deformation, self.mouth_deformation):
            m, net.monitor = net.monitor, None
            if m:
                out.update(m.summary())
        return out

    def warn_low_health(self, health: dict[str, float]) -> None:
        """Warn once per network and run when its live fraction falls below 20 %, or when the code its decoder
        reads is off unit scale (RMS outside [0.5, 2]). A network is judged only once its state means something
        (:meth:`_health_judged`: not the face network in the mouth stage's validations, not the code scale in
        the ensembles' stage A); a warning spent earlier would silence the one its trained state may need."""
        warned = self.__dict__.setdefault("_health_warned", set())
        health = {k: v for k, v in health.items() if self._health_judged(k)}
        dead = ("fewer than {:.0%} of the network's ReLU units are active on any input (dead units give constant "
                "offsets; DESIGN §4.5)").format(LOW_HEALTH)
        scale = (f"the decoder reads the fused code off unit scale (expected within {CODE_RMS_RANGE}): the code "
                 "statistics stored in training do not describe these inputs (DESIGN §4.5)")
        for found, why in ((low_health(health), dead), (off_scale(health), scale)):
            for k, v in found.items():
                if k not in warned:
                    warned.add(k)
                    warnings.warn(f"{k} = {v:.2f}: {why}", RuntimeWarning, stacklevel=2)
