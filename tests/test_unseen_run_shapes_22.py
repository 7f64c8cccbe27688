"""Run shapes from the twenty-sixth session: the sets 8-9 and 80-94 re-run on a new CPU, and
what their misses showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.diagnose import rules


def test_a_gradient_spike_names_the_tensors_most_above_their_level_first(tmp_path):
    # Set 85's Jasper: block 2's gradient scaled 3000x for one step spiked every layer it
    # flowed back through, block 2's most (2,000x its level against 400x upstream); the
    # tensors were named in model order, the prologue first, and block 2 fell past the list's
    # end. A bias before a norm has a gradient of rounding: its factor means nothing.
    rows = [{"loss": 1.0, "grad_norm": 1.0} for _ in range(60)]
    spike = ("gradient_spike", 50)
    findings = [
        (*spike, "prologue.weight", {"grad_norm": 460.0, "spike_factor": 437.0}, "warning"),
        (*spike, "blocks.2.conv.bias", {"grad_norm": 1e-9, "spike_factor": 2890.0}, "critical"),
        (*spike, "blocks.2.conv.weight", {"grad_norm": 1200.0, "spike_factor": 2275.0}, "critical"),
        (*spike, "blocks.1.conv.weight", {"grad_norm": 750.0, "spike_factor": 720.0}, "critical"),
        (
            "gradient_spike",
            55,
            "prologue.weight",
            {"grad_norm": 90.0, "spike_factor": 80.0},
            "warning",
        ),
    ]
    report = diagnose_stored(tmp_path, "jasper", rows, findings)
    spikes = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    # by hand: step 50's material tensors by factor, then the rounding one; each named once
    assert spikes.where == [
        "blocks.2.conv.weight",
        "blocks.1.conv.weight",
        "prologue.weight",
        "blocks.2.conv.bias",
    ]


@pytest.mark.parametrize("within_limit", [True, False])
def test_an_overshoot_read_once_the_gradients_had_exploded_is_not_the_cause(tmp_path, within_limit):
    # Set 94's DCN-v2: its cross layers multiply the input by their own output, and the
    # gradient norm grew 12 -> 258 over steps 5-9 while every update stayed within its
    # stability limit along its own direction (ratios 0.55-0.69, one 1.09); only at step 10,
    # once the gradients had exploded, did the update overshoot (144x). Read with ratios above
    # 1 as it grew (the control), the same climb is a step size above the limit.
    grads = [12.8, 8.5, 10.4, 11.3, 14.4, 12.2, 26.1, 34.8, 64.8, 258.4, 272044.0]
    losses = [2.14, 1.40, 2.11, 2.04, 1.79, 2.06, 4.54, 3.64, 7.81, 21.4, 96584.0]
    ratios = [0.47, 0.85, 0.58, 0.54, 0.59, 1.09, 0.55, 0.69, 0.60, 144.0]
    if not within_limit:
        ratios = [r if t < 5 else 3.0 + t for t, r in enumerate(ratios)]
    rows = [
        {
            "loss": loss,
            "grad_norm": g,
            **({"directional_sharpness_ratio": ratios[t - 1]} if t else {}),
        }
        for t, (loss, g) in enumerate(zip(losses, grads, strict=True))
    ]
    rows += [{"loss": math.nan, "grad_norm": math.nan} for _ in range(3)]
    findings = [
        (
            "loss_divergence",
            10,
            None,
            {"loss": 96584.0, "best_level": 2.04, "ratio": 4.7e4},
            "critical",
        ),
        ("nonfinite", 11, None, {"loss": math.nan}, "critical"),
    ]
    report = diagnose_stored(tmp_path, "dcn", rows, findings)
    # the oracle, by hand: 258.4 / 8.5 = 30x growth; the readings while it grew
    grew = grads[9] / min(grads[:10])
    during = ratios[1:9]
    assert grew > rules.GROWN_WITHIN_LIMIT
    sharp = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    if within_limit:
        assert sorted(during)[len(during) // 2] < 1.0
        assert not sharp, report.diagnoses
    else:
        assert min(during[4:]) > 1.0
        assert sharp and report.top.cause == "sharpness_above_limit", report.diagnoses


class ManyQuietParts(nn.Module):
    """Set 90's DAB-DETR shape: a path the model computes but never uses (10 layers: 20 tensors
    whose gradient is exactly zero) beside a layer whose ReLU inputs sit at exactly 0 (its
    gradient is exactly zero too, yet nudging its weights changes the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 3)
        self.unused = nn.ModuleList(nn.Linear(16, 16) for _ in range(10))
        self.dead = nn.Linear(16, 16)
        with torch.no_grad():
            self.dead.weight.zero_()
            self.dead.bias.zero_()

    def forward(self, x):
        h = torch.relu(self.body(x))
        for layer in self.unused:  # computed, and multiplied away
            h = h + 0 * layer(h)
        return self.head(h + torch.relu(self.dead(h)))


def test_a_path_many_tensors_long_that_changes_nothing_is_dead_code(tmp_path):
    torch.manual_seed(0)
    model, x, y = ManyQuietParts(), torch.randn(32, 8), torch.randint(0, 3, (32,))
    nn.functional.cross_entropy(model(x), y).backward()  # the oracle, by hand
    quiet = {n for n, p in model.named_parameters() if not p.grad.any()}
    assert len(quiet) == 22 and {"dead.weight", "dead.bias"} <= quiet  # more than 16
    model.zero_grad(set_to_none=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(30):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    found = steadygrad.load(tmp_path / "run").findings()
    unused = {f.where for f in found if f.evidence.get("direction") == "unused"}
    assert unused == {f"unused.{i}.{k}" for i in range(10) for k in ("weight", "bias")}


def _scaled_once_run(path, kind):
    """A tanh regressor under Adam (or SPAM); at step 110 its loss is backpropagated 1e5 times
    over ("scaled": a loss scale left on for one step; the logged loss is the true one), or its
    batch's inputs are 300x their scale ("outlier"), run to step 140."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    make = steadygrad.optim.SPAM if kind == "spam" else torch.optim.Adam
    opt = make(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=gen)
    losses = []
    with steadygrad.watch(model, opt, path, progress=False) as mon:
        for step in range(140):
            x = torch.randn(64, 8, generator=gen)
            y = x @ w
            if step == 110 and kind == "outlier":
                x = x * 300.0
            loss = nn.functional.mse_loss(model(x), y)
            (loss * (1e5 if step == 110 and kind != "outlier" else 1.0)).backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            losses.append(float(loss))
    return losses, steadygrad.diagnose(path)


@pytest.mark.parametrize("kind", ["scaled", "outlier", "spam"])
def test_a_giant_gradient_on_an_ordinary_batch_throws_the_weights_through_adams_moments(
    tmp_path, kind
):
    # Sets 80 and 93 (an SSD head, a DeepAR LSTM): one loss backpropagated 1e5 times over under
    # Adam; the loss climbed from the next steps on and the run broke before any damping could
    # be read, named an explosion. Adam's moments carried the spike: (1 - 0.9) / sqrt(0.001)
    # = 3.2x the rate per coordinate, in its direction, for the steps that followed.
    losses, report = _scaled_once_run(tmp_path / kind, kind)
    before, typical = max(losses[90:110]), sorted(losses[90:110])[10]
    if kind == "outlier":  # the control: the batch's own loss was out of line
        assert losses[110] > 20 * typical  # the oracle: the bad batch, seen in its loss
        assert report.top.cause == "data_outlier", report.diagnoses
        return
    assert losses[110] <= 2 * before  # the oracle: an ordinary batch, a scaled gradient
    poisoned = [d for d in report.diagnoses if d.cause == "adam_second_moment_poisoned"]
    if kind == "spam":  # the control: SPAM clips the spike before its moments take it
        assert not poisoned and max(losses[115:]) < 30 * typical, report.diagnoses
        return
    assert max(losses[118:]) > 30 * typical  # the oracle: the climb that followed
    assert report.top.cause == "adam_second_moment_poisoned", report.diagnoses
    assert report.top.first_step == 110 and report.top.evidence["thrown_by_the_moments"]
    assert "sharpness_above_limit" not in [d.cause for d in report.diagnoses]


def test_a_gradient_exactly_zero_until_now_has_no_level_to_spike_from():
    # Set 97's SNGAN control: the critic's output bias gets the mean of its real and fake
    # halves' gradients, which cancel exactly on most steps; the first that do not were read
    # as spikes "inf times" a running level of 0, every few steps for the rest of the run.
    detector = steadygrad.GradientSpike()
    bias = [0.0] * 40 + [0.03, 0.0, 0.17, 0.0, 0.0, 0.22, 0.33, 0.0, 0.11] * 6
    found = [
        f
        for t, g in enumerate(bias)
        for f in detector.update(Record(t, {"grad_norm/fc3.bias": g, "grad_norm": 1.0}))
    ]
    assert found == []
    # the control: once it has a level (the same values), one 1000x that level is a spike
    t = len(bias)
    spike = detector.update(Record(t, {"grad_norm/fc3.bias": 200.0, "grad_norm": 200.0}))
    level = math.sqrt(sum(g * g for g in bias[40:]) / len(bias[40:]))  # its RMS, by hand
    assert [f.where for f in spike] == ["fc3.bias"]
    assert spike[0].evidence["spike_factor"] > 200.0 / level / 2  # a level near the RMS


class SinkAttention(nn.Module):
    """Attention written out as GPT-OSS writes it: causal scores, one learnt sink logit per
    head concatenated to each row, the row's largest subtracted (an overflow guard), softmax,
    the sink's column dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 8)
        self.sinks = nn.Parameter(torch.zeros(2))
        self.scores: list[torch.Tensor] = []

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (z.reshape(b, t, 2, 4).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        mask = torch.full((t, t), float("-inf")).triu(1)
        logits = q @ k.transpose(-1, -2) * 2.0 + mask
        rows = torch.cat([logits, self.sinks.reshape(1, 2, 1, 1).expand(b, 2, t, 1)], -1)
        rows = rows - rows.max(-1, keepdim=True).values
        self.scores.append(rows.detach())
        probs = torch.softmax(rows, -1)[..., :-1]
        return self.out((probs @ v).transpose(1, 2).reshape(b, t, 8))


class SinkModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.head = SinkAttention(), nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.attn(x))


def test_attention_with_sink_logits_written_out_is_read(tmp_path):
    # Set 97's GPT-OSS: its eager attention concatenates a sink logit to each row, so the
    # softmax is over (L, L + 1) scores, and none of its attention logits was ever read.
    torch.manual_seed(0)
    model, x = SinkModel(), torch.randn(4, 6, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    signal = steadygrad.AttentionLogitSignal(every=1)
    with steadygrad.watch(model, opt, tmp_path / "run", signals=[signal], progress=False) as mon:
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 5), torch.arange(24) % 5)
        loss.backward()
        opt.step()
        record = mon.step(loss)
    rows = model.attn.scores[0]  # by hand: the largest |score| the softmax saw, masks left out
    read = rows[torch.isfinite(rows)].abs().max().item()
    assert record.values["attn_logit_max/attn"] == pytest.approx(read, rel=1e-5)


def test_a_hugging_face_gpt_oss_attention_is_read():
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    config = GptOssConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=32,
    )
    model = GptOssForCausalLM(config)
    model.config._attn_implementation = "eager"
    signal = steadygrad.AttentionLogitSignal(every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ids = torch.randint(0, 64, (2, 8))
    with steadygrad.Monitor(model, opt, signals=[signal], progress=False) as mon:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        record = mon.step(loss)
    assert record.values["attn_logit_max/model.layers.0.self_attn"] > 0


def test_an_explosion_whose_tensors_spiked_a_step_after_the_whole_gradient_names_them(tmp_path):
    # Set 96's heat-sink CNN: the whole gradient's spike was read at step 86, its tensors' own
    # at 87 (their running levels lag), and the run was NaN at 88: the explosion named no layer.
    rows = [{"loss": 9.0e4 - t, "grad_norm": 700.0} for t in range(86)]
    rows += [{"loss": 9.0e4, "grad_norm": 1.7e5}, {"loss": 6.2e9, "grad_norm": 1.2e10}]
    rows += [{"loss": math.nan, "grad_norm": math.nan}]
    ev = {"grad_norm": 1.7e5, "baseline": 720.0, "ratio": 234.0}
    findings = [("grad_norm_spike", 86, None, ev, "warning")]
    for name, factor in [
        ("convs.0.weight", 2.9e6),
        ("convs.5.weight", 2.0e6),
        ("out.weight", 2.5e6),
    ]:
        findings.append(
            ("gradient_spike", 87, name, {"grad_norm": 1e10, "spike_factor": factor}, "critical")
        )
    findings.append(("nonfinite", 88, None, {"loss": math.nan}, "critical"))
    report = diagnose_stored(tmp_path, "heatsink", rows, findings)
    exploded = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert exploded.first_step == 86
    assert exploded.where == ["convs.0.weight", "out.weight", "convs.5.weight"]  # by factor
