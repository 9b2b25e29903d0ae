"""Health meters of the deformation networks (DESIGN §4.5): live units, fusion weights, the code's scale, and the
warnings. The meter must see a broken network: dead decoder units, and a code whose stored statistics were
gathered under other conditions than inference (the fuse stage once trained single ensemble members while
inference averaged them: the decoder read the code at 0.36 of unit scale)."""
from __future__ import annotations

import warnings

import pytest
import torch

from ua3dtalk.models.deformation import CODE_RMS_RANGE, DeformationNetwork, HealthMeter, low_health, off_scale
from ua3dtalk.models.health import HealthMixin

from test_deformation import net_inputs  # the network's inputs (same directory)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def inputs(seed: int):
    return net_inputs(n=60, seed=seed)


def trained_stats(single_member: bool, frames: int = 30) -> DeformationNetwork:
    """A network whose stored statistics come from ``frames`` training-mode forwards in one ensemble stage."""
    torch.manual_seed(0)
    net = DeformationNetwork(29, members=10).train()
    with torch.enable_grad():
        for k in range(frames):
            net(**inputs(seed=k), single_member=single_member)
            net.count_step()
    return net.eval()


def measure(net: DeformationNetwork, frames: range = range(100, 110)) -> dict[str, float]:
    net.monitor = HealthMeter()
    with torch.no_grad():
        for k in frames:
            net(**inputs(seed=k))
    meter, net.monitor = net.monitor, None
    return meter.summary()


def test_summary_has_every_network_the_weights_and_the_code_scale():
    s = measure(trained_stats(single_member=False))
    assert {f"health/live_{v}" for v in ("audio", "content", "style", "emotion", "decoder")} <= set(s)
    assert sum(s[f"fusion_weight/{v}"] for v in ("audio", "content", "style", "emotion")) == pytest.approx(1, abs=1e-4)
    assert CODE_RMS_RANGE[0] <= s["health/code_rms"] <= CODE_RMS_RANGE[1], s
    assert low_health(s) == {} and off_scale(s) == {}


def test_statistics_of_single_members_put_the_averaged_code_off_scale():
    """Stored with one random member per forward (stage A), applied to the members' mean (inference): the code
    shrinks (independent members: ≈ 1/√T of the spread) and the meter reports it."""
    good = measure(trained_stats(single_member=False))["health/code_rms"]
    bad = measure(trained_stats(single_member=True))["health/code_rms"]
    assert bad < CODE_RMS_RANGE[0] < good, (bad, good)
    assert list(off_scale({"health/code_rms": bad})) == ["health/code_rms"]


def test_stage_b_restarts_the_code_statistics():
    """Training goes from stage A (single members) to stage B (the members' mean): the code statistics restart at
    the first stage-B forward, so a few stage-B frames put the code inference reads back at unit scale (with a
    moving average, the stage-A statistics would linger for ≈ 1/momentum = 100 updates)."""
    torch.manual_seed(0)
    net = DeformationNetwork(29, members=10, ensemble_switch=30).train()
    with torch.enable_grad():
        for k in range(35):  # steps 0–29: stage A, 30–34: stage B
            net(**inputs(seed=k), step=k)
    assert bool(net.code_stats_stage_b) and int(net.code_norm.updates) == 5
    rms = measure(net.eval())["health/code_rms"]
    assert CODE_RMS_RANGE[0] <= rms <= CODE_RMS_RANGE[1], rms
    net.train()
    with torch.enable_grad():
        net(**inputs(seed=99), step=99)
    assert int(net.code_norm.updates) == 6  # restarted once only


def test_dead_decoder_units_are_counted():
    net = trained_stats(single_member=False)
    assert measure(net)["health/live_decoder"] >= 0.6
    with torch.no_grad():
        net.decoder.trunk[0].bias.fill_(-1e3)  # every trunk unit off, hence every head unit (zero input, zero bias)
    s = measure(net)
    assert s["health/live_decoder"] == 0.0 and list(low_health(s)) == ["health/live_decoder"], s


class _Avatar(HealthMixin):
    def __init__(self, face, mouth):
        self.deformation, self.mouth_deformation = face, mouth


def warned(av: _Avatar, health: dict[str, float]) -> str:
    """The text of the warnings ``av.warn_low_health(health)`` gives (at least one expected)."""
    with pytest.warns(RuntimeWarning) as rec:
        av.warn_low_health(health)
    return " ".join(str(w.message) for w in rec)


def test_warnings_name_the_key_once_per_run():
    av = _Avatar(trained_stats(single_member=False), trained_stats(single_member=False))
    sick = {"health/live_decoder": 0.05, "health/live_audio": 0.9, "health/code_rms": 0.3,
            "health/mouth_code_rms": 1.0}
    text = warned(av, sick)
    assert "health/live_decoder = 0.05" in text and "health/code_rms = 0.30" in text
    assert "live_audio" not in text and "mouth_code_rms" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        av.warn_low_health(sick)  # the same keys again: silent


def test_untrained_networks_are_not_warned_about():
    """Before a network's first optimizer step (the face network during the mouth stage) nothing is judged, and
    its code scale only once the statistics come from stage B: no warning, and the keys stay free for the trained
    network's own."""
    fresh = DeformationNetwork(29, members=10).eval()
    av = _Avatar(fresh, trained_stats(single_member=False))
    sick = {"health/live_decoder": 0.05, "health/code_rms": 0.3, "health/mouth_code_rms": 0.2,
            "health/live_mouth_decoder": 0.1}
    text = warned(av, sick)
    assert "mouth_code_rms = 0.20" in text and "live_mouth_decoder = 0.10" in text
    assert "health/code_rms" not in text and "health/live_decoder" not in text
    fresh.count_step()  # trained, but its code statistics are still stage A's: the live units are judged only
    text = warned(av, sick)
    assert "health/live_decoder = 0.05" in text and "health/code_rms" not in text
    av.deformation = trained_stats(single_member=False)  # stage B statistics: the code scale is judged
    with pytest.warns(RuntimeWarning, match=r"health/code_rms = 0\.30"):
        av.warn_low_health(sick)


def test_attach_and_detach_prefix_the_mouth_network():
    av = _Avatar(trained_stats(single_member=False), trained_stats(single_member=False))
    av.attach_health()
    with torch.no_grad():
        av.deformation(**inputs(seed=200))
        av.mouth_deformation(**inputs(seed=201))
    s = av.detach_health()
    assert "health/code_rms" in s and "health/mouth_code_rms" in s and "health/live_mouth_decoder" in s
    assert av.deformation.monitor is None and av.mouth_deformation.monitor is None


def test_schedule_step_is_the_networks_own_count():
    net = DeformationNetwork(29, members=2, ensemble_switch=2)
    assert net.schedule_step(None) is None and net.schedule_step(12345) == 0
    net.count_step(), net.count_step()
    assert net.schedule_step(0) == 2
    net.train()
    assert not net.fusion.is_single_member(net.schedule_step(0))  # past the switch: stage B whatever the stage step
    state = net.state_dict()
    assert int(state["trained_steps"]) == 2
    other = DeformationNetwork(29, members=2, ensemble_switch=2)
    other.load_state_dict(state)
    assert int(other.trained_steps) == 2
