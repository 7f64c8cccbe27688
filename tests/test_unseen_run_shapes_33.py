"""Run shapes from the thirty-seventh session (held-out set 139 onward's misses).

Each change has a trigger (the held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    diagnose_stored,
    fitted,
    held_out_run,
    induced_or_skip,
    on_bench_path,
    steadygrad,
)

on_bench_path()  # the scenarios' models and data


def _report(tmp_path, name):
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    return report


def test_a_recurrence_carrying_a_first_gradient_above_the_weights_alone_is_born_exploded(
    tmp_path,
):
    # Trigger: a ReLU RNN whose recurrent matrix starts orthogonal at 1.3x the ReLU gain
    # (1.84). At step 0 the RNN's gradient is 59, 5.6x the norm of all the weights and 270x
    # the head's; SGD momentum throws the run at step 5 with a directional-sharpness reading
    # of 7,800x its limit at the break. That reading came with the explosion, not before it:
    # the gradient was born large.
    top = _report(tmp_path, "h139_dragon_boat_recurrent_gain").top
    assert top.cause == "exploding_gradients" and top.first_step == 0
    assert top.where[0] == "rnn" and "5.63x the norm of all the weights" in top.summary


def _born(tmp_path, name, rnn: float, head: float, weights: float = 10.0):
    rows = [
        {
            "loss": 1.0,
            "grad_norm": math.hypot(rnn, head),
            "param_norm": weights,
            "grad_norm/rnn.weight_hh_l0": rnn,
            "grad_norm/head.weight": head,
        }
        for _ in range(30)
    ]
    report = diagnose_stored(tmp_path, name, rows, [], config={"recurrent_modules": ["rnn"]})
    return [d for d in report.diagnoses if d.cause == "exploding_gradients"]


def test_born_exploded_needs_the_recurrence_alone_above_three_times_the_weights(tmp_path):
    # Hand-computed, weights of norm 10: a recurrent gradient of 40 (4x) with the head at 5
    # (the recurrence 8x it) is born exploded; the same 40 with the head at 20 (a loss on a
    # large scale makes every gradient large: the recurrence only 2x the head) is not, nor is
    # a recurrent gradient of 25 (2.5x) however alone; at 10x the weights the old rule holds
    # whatever the head.
    assert _born(tmp_path, "alone", rnn=40.0, head=5.0)
    assert not _born(tmp_path, "scaled", rnn=40.0, head=20.0)
    assert not _born(tmp_path, "under", rnn=25.0, head=0.1)
    assert _born(tmp_path, "tenfold", rnn=120.0, head=50.0)


def _exploded(report) -> bool:
    return any(d.cause == "exploding_gradients" for d in report.diagnoses)


def test_the_same_recurrence_at_pytorchs_default_init_is_not_born_exploded(tmp_path):
    # Control: the same ReLU RNN with PyTorch's default recurrent init and the same SGD
    # momentum run trains; nothing is said to explode.
    from scenarios.cases_heldout139 import StrokeRNN, _stroke_batches
    from scenarios.common import seeded

    torch.manual_seed(0)
    model = StrokeRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _stroke_batches(seeded(13907))
    mse = torch.nn.functional.mse_loss
    ctx, report = fitted(tmp_path, model, opt, batches, 60, loss_fn=mse, classifier=False)
    assert all(math.isfinite(v) for v in ctx.losses)
    assert sum(ctx.losses[-10:]) < sum(ctx.losses[:10])
    assert not _exploded(report)


def test_gradients_growing_back_through_a_stack_from_the_first_step_name_the_init(tmp_path):
    # Trigger: eight tanh layers initialised with std 1.0 (an absolute value read as a gain:
    # the chaotic phase). At step 0 each layer's weight gradient stands about 1.8x the next
    # one's, body.0's 111x body.14's, while the gradient as a whole is small (0.1x the weights)
    # and SGD at 1e-3 trains: nothing broke, so nothing was said. The chain is the evidence.
    top = _report(tmp_path, "h140_chainsaw_carving_init_std").top
    assert top.cause == "exploding_gradients" and top.first_step == 0
    assert top.where[0] == "body.0" and "body.0 .. body.14 (8 layers)" in top.summary


def test_the_same_stack_at_pytorchs_default_init_grows_no_gradient_back(tmp_path):
    # Control: the same eight tanh layers at PyTorch's default init (uniform, 1/sqrt(fan_in)):
    # their gradients stay within a few times of each other; nothing is said to explode.
    from scenarios.cases_heldout140 import DeepTanh, _tabular
    from scenarios.common import seeded

    torch.manual_seed(0)
    model = DeepTanh(10, 64, 8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _tabular(seeded(14005), 10, 64)
    huber = torch.nn.functional.huber_loss
    ctx, report = fitted(tmp_path, model, opt, batches, 60, loss_fn=huber, classifier=False)
    assert all(math.isfinite(v) for v in ctx.losses)
    assert not _exploded(report)
    # nor live (the gradient-growth detector's chain test, tests/test_unseen_run_shapes_34.py)
    live = [f for f in ctx.monitor.findings if f.kind == "gradient_growth"]
    assert not [f for f in live if f.evidence.get("through_depth")]


def _stack_run(tmp_path, name, grads):
    rows = [
        {"loss": 1.0, "grad_norm": 1.0, "param_norm": 10.0}
        | {f"grad_norm/{tensor}": g for tensor, g in grads.items()}
        for _ in range(30)
    ]
    report = diagnose_stored(tmp_path, name, rows, [])
    return [d for d in report.diagnoses if d.cause == "exploding_gradients"]


def test_a_gradient_chain_is_five_like_layers_each_1_2x_the_next_and_30x_in_all(tmp_path):
    # Hand-computed: body.0 .. body.5 at 1.8x a layer back from body.5 (0.01 .. 0.19: 19x) is
    # too short a rise; at 3x a layer (0.01 .. 2.43: 243x) it is a chain; one layer at 1.1x
    # breaks it into two short ones; tensors of different stacks (blocks.N.q and blocks.N.v)
    # do not chain with each other; a bias is no layer's weight.
    short = {f"body.{i}.weight": 0.01 * 1.8 ** (5 - i) for i in range(6)}
    assert not _stack_run(tmp_path, "short", short)
    thrice = {f"body.{i}.weight": 0.01 * 3 ** (5 - i) for i in range(6)}
    found = _stack_run(tmp_path, "thrice", thrice)
    assert found and found[0].where == [f"body.{i}" for i in range(6)]
    broken = dict(thrice, **{"body.2.weight": 0.01 * 3**2 * 1.1})
    assert not _stack_run(tmp_path, "broken", broken)
    mixed = {f"blocks.{i}.{'q' if i % 2 else 'v'}.weight": 0.01 * 3 ** (5 - i) for i in range(6)}
    assert not _stack_run(tmp_path, "mixed", mixed)
    biases = {f"body.{i}.bias": 0.01 * 3 ** (5 - i) for i in range(6)}
    assert not _stack_run(tmp_path, "biases", biases)


def _nonfinite(report):
    return next(d for d in report.diagnoses if d.cause == "nonfinite")


def test_a_nan_the_loss_made_from_a_rate_that_crossed_zero_is_placed_at_its_head(tmp_path):
    # Trigger: a hand-written Poisson NLL, rate - y * log(rate), on the head's raw output (its
    # softplus dropped): once a rate crosses zero the log is NaN. The forward pass was finite
    # on the replay, so no module made the NaN; the head's output, the model's only one, is
    # what the loss made it from.
    found = _nonfinite(_report(tmp_path, "h140_firefly_rate_missing_softplus"))
    assert found.where == ["head"]
    assert "the loss made the NaN from head's output" in found.summary


def test_an_output_the_models_own_code_made_is_placed_at_the_layer_it_came_from(tmp_path):
    # Trigger: a duration predictor returns proj(h).squeeze(-1) and the loss takes its log:
    # the squeezed output is the model's own (no module returned it); the walk back through
    # its autograd graph meets proj's output first (not ln2's, which proj saved).
    found = _nonfinite(_report(tmp_path, "h111_tts_duration_log_of_linear"))
    assert found.where == ["proj"]


def test_a_loss_of_two_outputs_is_placed_at_the_one_the_step_made_out_of_range(tmp_path):
    # A mean head and a raw sigma head under a Gaussian NLL; the forward pass was finite. The
    # replay, on weights the NaN step's finite update had moved, saw both outputs in range
    # (the forty-second session named no place); the outputs the step itself made show eleven
    # of sigma's below zero, which a log cannot take (forty-third session).
    found = _nonfinite(_report(tmp_path, "h109_heteroscedastic_raw_sigma"))
    assert found.where == ["sigma_head"] and "negative value(s)" in found.summary


def test_a_few_negatives_among_positive_values_are_what_a_log_cannot_take():
    # Hand-computed: one negative among twenty positive rates is an edge (its log is NaN); a
    # regression output half below zero, or all of it, is an ordinary output.
    from steadygrad.monitor.activations import _edge_values

    rates = torch.linspace(0.5, 2.0, 20)
    rates[3] = -0.01
    assert "1 negative value(s)" in _edge_values(rates)
    assert _edge_values(torch.linspace(-1.0, 1.0, 21).add(0.05)) is None
    assert _edge_values(-rates.abs()) is None


def test_a_chain_of_layers_is_read_over_the_layers_with_weights(tmp_path):
    # Trigger: ten Linear layers with ReLU modules between them, at 1.8x the He gain. Each
    # Linear's output stood ~1.8x the one before (2.5 -> 442 at step 0), each ReLU's about
    # 0.7x its Linear's, which broke every chain read over all modules; the first SGD step
    # threw the run to NaN at step 2, named only as the NaN. Read over the layers that hold
    # weights, the chain is there, and the place is where the rise began.
    top = _report(tmp_path, "h141_landslide_init_gain").top
    assert top.cause == "exploding_gradients" and top.first_step == 0
    assert top.where[0] == "body.0" and "each of body.0 .. body.18 (10 layers)" in top.summary


def test_the_same_relu_stack_at_the_he_gain_is_no_chain(tmp_path):
    # Control: the same ten layers at the He gain keep the signal's RMS; the same SGD run is
    # not said to explode.
    from scenarios.common import seeded
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        *[m for i in range(10) for m in (nn.Linear(10 if i == 0 else 32, 32), nn.ReLU())],
        nn.Linear(32, 1),
    )
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    gen = seeded(14108)
    w = torch.randn(10, 1, generator=gen)
    batches = iter(lambda: (x := torch.randn(64, 10, generator=gen), x @ w), None)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    mse = torch.nn.functional.mse_loss
    ctx, report = fitted(tmp_path, model, opt, batches, 40, loss_fn=mse, classifier=False)
    assert all(math.isfinite(v) for v in ctx.losses)
    assert not _exploded(report)


def test_attention_logits_grown_with_every_weight_are_that_growths_consequence(tmp_path):
    # Trigger: an XLM-RoBERTa LM under a hand-rolled weight decay of the wrong sign: every
    # weight tensor grew (the median 5x by the warning, LayerNorm gains with them), and the
    # attention logits with them. The logits are not where it starts: said so, with the fix.
    report = _report(tmp_path, "h141_xlm_roberta_decay_sign")
    attention = next(d for d in report.diagnoses if d.cause == "attention_logit_growth")
    assert "x everywhere (the median tensor)" in attention.consequence_of


def test_attention_logits_that_grew_alone_are_no_consequence_of_the_weights(tmp_path):
    # Control: a GPT whose unscaled attention logits grow until the run breaks, its other
    # weights as they were: its own cause.
    report = _report(tmp_path, "h67_hf_openai_gpt_unscaled_attention")
    attention = next(d for d in report.diagnoses if d.cause == "attention_logit_growth")
    assert "everywhere" not in attention.consequence_of


class _Tagger(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, 5)

    def forward(self, x):
        return torch.softmax(self.proj(x), -1)  # (batch, 12, 5): a layer's, no attention


class _Pooling(torch.nn.Module):
    """A learnt query attending over a sequence, by hand (one query, twelve keys), and an
    output whose probabilities a softmax over its (batch, time, classes) logits makes."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.k = torch.nn.Linear(dim, dim)
        self.v = torch.nn.Linear(dim, dim)
        self.tagger = _Tagger(dim)
        self.head = torch.nn.Linear(dim, 3)

    def forward(self, x):
        scores = self.query.expand(len(x), 1, -1) @ self.k(x).transpose(1, 2) / 8**0.5
        pooled = (torch.softmax(scores, -1) @ self.v(x))[:, 0]
        return self.head(pooled) + self.tagger(x).mean((1, 2))[:, None]


def test_attention_by_hand_with_one_query_over_many_keys_is_read(tmp_path):
    # Trigger: softmax(q @ k^T / sqrt(d)) over (batch, 1, 12) scores, a product of two
    # activations, is attention: its largest logit is recorded, and it equals the one computed
    # here from the same weights. Control: the same model's softmax over a layer's (batch, 12, 5)
    # logits (a product with a weight) is not read as attention.
    torch.manual_seed(0)
    model = _Pooling()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 12, 8), torch.randint(0, 3, (4,))
    with steadygrad.watch(model, opt, tmp_path / "pool", progress=False) as mon:
        with torch.no_grad():
            expected = (model.query @ model.k(x).transpose(1, 2) / 8**0.5).abs().max()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
    run = steadygrad.load(tmp_path / "pool")
    attention = [n for n in run.names() if n.startswith("attn_logit_max")]
    assert attention == ["attn_logit_max"]  # the model's own forward: no module's name
    assert run.series(attention[0])[1][0] == pytest.approx(float(expected), rel=1e-5)


def test_a_rule_that_fails_on_a_run_costs_its_own_diagnosis_only(tmp_path):
    # A rule that raises on a run's data (the chain rule once met a run with no layer holding
    # weights) warns and is left out; the other rules' diagnoses stand. Control: the same run
    # with the rules as they are gives the same diagnoses.
    import dataclasses

    from steadygrad.diagnose.rules import RULES

    def boom(facts):
        raise IndexError("list index out of range")

    rows = [{"loss": 2.0 if t < 40 else 2.0 * 1.1 ** (t - 40)} for t in range(80)]
    whole = diagnose_stored(tmp_path, "run", rows, [])
    broken = (dataclasses.replace(RULES[0], check=boom),) + RULES[1:]
    with pytest.warns(RuntimeWarning, match=f"the rule for {RULES[0].cause} failed"):
        report = steadygrad.diagnose(tmp_path / "run", rules=broken)
    assert report.causes() == [c for c in whole.causes() if c != RULES[0].cause]


def test_an_output_concatenated_from_two_heads_is_read_part_by_part(tmp_path):
    # A mean head and a raw variance head concatenated into the model's one output, a Gaussian
    # NLL taking the log of the variance column. The graph alone cannot tell which head the
    # loss made its NaN from (the first one found, the mean head, was once named); read part by
    # part, the step's own output holds three negative variances: the variance head.
    found = _nonfinite(_report(tmp_path, "h142_fumarole_raw_variance"))
    assert found.where == ["var_head"] and "negative value(s)" in found.summary
