"""Run shapes from the twenty-eighth session's held-out controls (sets 88-101) and set 102.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import pytest
import torch
from helpers import diagnose_stored
from torch import nn
from torch.nn import functional as F

import steadygrad


class _Matcher(nn.Module):
    """Features of each cell of an image; the matching logits are computed by the caller (a
    dual-softmax's similarity). ``aux`` is as wide as a batch's cells, by coincidence."""

    def __init__(self, cells: int) -> None:
        super().__init__()
        self.features = nn.Linear(8, 16)
        self.aux = nn.Linear(8, cells)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features(x), self.aux(x)


@pytest.mark.parametrize("ops", [1, 8])
def test_logits_computed_far_from_any_module_name_no_module_of_their_width(tmp_path, ops):
    # Trigger: set 100's EfficientLoFTR control, whose matching similarity is computed by the
    # caller over many operations from the model's features; the head was then taken to be
    # the latest module whose output was as wide as the logits (an activation inside its
    # attention, 64 wide like an 8x8 grid of cells). A graph to follow back says where the
    # logits come from; a width that only matches does not. Control: logits computed a step
    # from the features still name them.
    cells = 32
    torch.manual_seed(0)
    model = _Matcher(cells)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(cells, 8)
    heads = set()
    with steadygrad.watch(model, opt, tmp_path / str(ops), progress=False) as mon:
        for _ in range(3):
            f, a = model(x)
            for _ in range(ops - 1):
                f = f * 1.0 + 0.0
            sim = f @ f.T / 0.1
            loss = F.cross_entropy(sim, torch.arange(cells)) + 1e-3 * a.pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if "logit_lse_mean" in mon.last_record.values:
                heads.add(mon.last_record.meta.get("output_module"))
    assert heads == ({"features"} if ops == 1 else {None})


class _SpikingReadout(nn.Module):
    """A recurrent body read out at each time step; the caller sums the readouts over time."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.readout = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, outs = torch.zeros_like(x), []
        for _ in range(10):
            h = torch.tanh(self.body(h) + x)
            outs.append(self.readout(h))
        return outs


def test_logits_summed_over_time_steps_name_the_readout(tmp_path):
    # Control: the logits are a sum of ten readouts, too many steps back along first inputs;
    # the last readout is one step away by the other input
    torch.manual_seed(0)
    model = _SpikingReadout()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    heads = set()
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(3):
            logits = torch.zeros(16, 4)
            for out in model(x):
                logits = logits + out
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if "logit_lse_mean" in mon.last_record.values:
                heads.add(mon.last_record.meta.get("output_module"))
    assert heads == {"readout"}


def _matching_records(epsilon: float | None, halved: bool = True) -> list:
    """Set 100's EfficientLoFTR control as it was read: its dual-softmax similarities' common
    level rises from 8 to 247 (log Z from 13 to 277) in its first 50 steps as its features
    grow, while its loss falls from 7 to 0.2 (or, ``halved`` False, only to 4)."""
    from steadygrad.core import Record
    from steadygrad.core.metrics import OUTPUT_CLASSES, OUTPUT_EPSILON

    steps = [0, 25, 50, 75, 76, 77, 78, 100, 111, 112, 113, 121, 122, 123, 125, 131, 141]
    lse = [13.0, 221.4, 270.2, 277.1, 277.2, 277.5, 277.4, 277.8, 278.4, 278.4, 278.5, 278.0]
    lse += [278.3, 278.2, 278.1, 277.9, 277.9]
    mean = [7.8, 205.3, 242.3, 247.1, 246.8, 246.8, 246.9, 246.4, 247.5, 247.2, 246.7, 246.4]
    mean += [246.5, 246.4, 246.5, 246.5, 246.1]
    loss = [7.0, 1.84, 0.40] + [0.19, 0.27, 0.18, 0.17, 0.2, 0.18, 0.15, 0.17] * 2
    records = []
    for step, z, m, value in zip(steps, lse, mean, loss, strict=False):
        meta = {OUTPUT_CLASSES: 64}
        if epsilon is not None:
            meta[OUTPUT_EPSILON] = epsilon
        values = {
            "loss": value if halved else 4.0 + value,
            "logit_lse_mean": z,
            "output_logit_mean": m,
            "output_logit_max": z + 11.0,
            "output_shift_gradient": 1e-7,
        }
        records.append(Record(step, values, meta=meta))
    return records


@pytest.mark.parametrize(
    "epsilon, halved, fires",
    [
        (2.0**-23, True, False),  # float32, the loss halved: the level costs nothing
        (None, True, False),  # an opt-in signal's reading, no precision known: float32
        (2.0**-7, True, True),  # bfloat16: a level of 250 is rounded to 2
        (2.0**-23, False, True),  # the loss never halved: nothing vouches for the growth
    ],
)
def test_a_common_level_the_loss_earned_at_float32_is_no_divergence(epsilon, halved, fires):
    # Trigger: set 100's EfficientLoFTR control (the matching loss halved, most cells matched)
    # was warned of output-logit divergence for log Z's drift of 264: nearly all of it the
    # similarities' common level, which the softmax does not see and float32 resolves to 3e-5.
    # Controls: the same drift in bfloat16 (Wortsman et al.'s divergence), or with a loss that
    # did not halve, still fires.
    from steadygrad.diagnose.detectors.transformer import OutputLogitDivergence

    detector = OutputLogitDivergence()
    found = [f for r in _matching_records(epsilon, halved) for f in detector.update(r)]
    assert bool(found) == fires


@pytest.mark.parametrize("autocast", [False, True])
def test_the_logits_precision_is_recorded_with_their_statistics(tmp_path, autocast):
    # Oracle: torch.finfo of the logits' dtype, or of autocast's where it is on (the logits
    # upcast for the loss were computed in bfloat16)
    torch.manual_seed(0)
    model = nn.Linear(8, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        mon.step(loss)
    expected = torch.finfo(torch.bfloat16 if autocast else torch.float32).eps
    assert mon.last_record.meta["output_epsilon"] == expected


@pytest.mark.parametrize(
    "family, moved, grad, rates, frozen",
    [
        ("momentum", 0.5, 4.5e-7, 1.0, False),  # stepped by half what SGD makes of it
        ("momentum", 0.0, 4.5e-7, 1.0, True),  # nothing moved though its gradient asked
        ("momentum", 0.01, 4.5e-7, 1.0, True),  # a hundredth: a rate of its own, far lower
        ("adam", 0.5, 4.5e-7, 1.0, True),  # Adam's step does not shrink with the gradient
        ("momentum", 0.5, 1.12e-4, 0.01, True),  # a typical gradient, rates too small for it
    ],
)
def test_a_tensor_stepped_by_what_its_gradient_asks_as_the_rate_decays_is_not_frozen(
    family, moved, grad, rates, frozen
):
    # Trigger: set 100's EfficientLoFTR control under SGD with momentum, its rate decaying by
    # a cosine to 0.0005 at step 140: an attention query's gradient was 4e-6 of its weights
    # (a few thousandths of the median tensor's), and its update ratio fell under 1e-7 from
    # step 100, about half what plain SGD makes of that gradient: "frozen", warned. Controls:
    # nothing moved, or far less than the gradient asks, or an optimizer whose step does not
    # scale with the gradient.
    from steadygrad.core import Record
    from steadygrad.core.metrics import OPTIMIZER_FAMILY
    from steadygrad.diagnose.detectors import UpdateRatioOutOfRange

    det = UpdateRatioOutOfRange()
    found = []
    for t, rate in enumerate(rates * r for r in [0.0125, 0.00827, 0.00477, 0.00216, 0.00055]):
        values = {"lr/0": rate, "grad_norm/q.weight": grad, "param_norm/q.weight": 0.112}
        values["update_ratio/q.weight"] = moved * rate * grad / 0.112
        for i in range(5):  # the other tensors: gradients a thousandth of their weights
            values.update({f"update_ratio/fc{i}.weight": 1e-3, f"param_norm/fc{i}.weight": 1.0})
            values[f"grad_norm/fc{i}.weight"] = 1e-3
        meta = {OPTIMIZER_FAMILY: family} if t == 0 else {}
        found += det.update(Record(100 + 10 * t, values, meta=meta))
    (finding,) = found
    assert finding.where == "q.weight"
    assert (finding.severity, finding.evidence["direction"]) == (
        ("warning", "frozen") if frozen else ("info", "vanishing")
    )


@pytest.mark.parametrize("loss", ["improving", "worse", "worse_later"])
def test_units_dead_while_the_loss_improves_are_info_until_it_turns_worse(loss):
    # Trigger: healthy controls (set 94's Parakeet encoder, set 97's MaskFormer, set 81's TDT,
    # set 41's ladder VAE) had 50-78% of a small layer's ReLU units dead on a batch while
    # their loss halved: warned. Trained networks grow sparse on their own; units that died
    # cost the loss nothing while it improves. Controls: a loss that turned worse than its
    # best as they died, and one that turns worse later with the units still dead: warned.
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors.transformer import PlasticityLoss

    detector = PlasticityLoss()
    found = []
    for t in range(40):
        if loss == "improving":
            value = 4.0 * 0.97**t
        elif loss == "worse":
            value = 4.0 if t < 4 else 5.0
        else:
            value = 4.0 * 0.97**t if t < 16 else 4.0
        values = {"loss": value}
        if t % 4 == 0:
            values["dead_units/fc.act"] = 0.1 if t == 0 else 0.62
        found += detector.update(Record(t, values))
    severities = [f.severity for f in found]
    if loss == "improving":
        assert severities == ["info"] and "still improves" in found[0].evidence["note"]
    elif loss == "worse":
        assert severities == ["warning"]
    else:
        assert severities == ["info", "warning"]


@pytest.mark.parametrize(
    "origin, attention_first",
    [
        ({"module": "cross_attn", "replayed": True}, False),  # made elsewhere, from finite inputs
        ({"module": "process.self_attn", "replayed": True}, True),  # made in the attention
        ({"module": "cross_attn"}, True),  # not replayed: not known to be made at once
    ],
)
def test_attention_growth_does_not_explain_a_nan_another_module_made(
    tmp_path, origin, attention_first
):
    # Trigger: set 102's Perceiver IO: its latent self-attention's largest logit grew 200-fold
    # to 15 (an early warning at step 200); at 240 a blank scan masked every key of the input
    # cross-attention, whose softmax made a NaN from finite inputs. Attention's output is a
    # weighted mean of its values however large its logits: the growth was named the cause.
    # Controls: the NaN made in the growing attention itself, or not known to be made at once.
    rows = [{"loss": 2.4 - 0.002 * t} for t in range(240)] + [{"loss": float("nan")}]
    findings = [
        ("attention_logit_growth", 200, "process.self_attn", {"attn_logit_max": 15.3}, "warning"),
        (
            "nonfinite",
            240,
            "cross_attn",
            {"loss": float("nan"), "forward_origin": origin},
            "critical",
        ),
    ]
    report = diagnose_stored(tmp_path, "perceiver", rows, findings)
    assert (report.top.cause == "attention_logit_growth") == attention_first
    assert report.top.cause in ("attention_logit_growth", "nonfinite")
