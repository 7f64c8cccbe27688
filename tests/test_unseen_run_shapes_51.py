"""Run shapes from the fifty-first session.

Each change has a trigger (a held-out scenario it was found on, or a loop written here) and a
control that must not move."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import held_out_run, induced_or_skip, steadygrad
from torch import nn

from steadygrad.core import Record
from steadygrad.core.metrics import OUTPUT_SCALE
from steadygrad.diagnose.detectors import GradientGrowth, UpdateRatioOutOfRange
from steadygrad.diagnose.rules import _scaled_at_a_stroke


def _explosion_after(losses_before: list[float], after: float = 1.5e-3) -> list:
    """Five quiet records with ``losses_before``, then a gradient 1000x the others whose
    update threw the weights 10x, after which the tensor gets no gradient at all (its units
    saturated) and the loss stands at ``after``."""
    det = GradientGrowth()
    grads = [1.0] * 5 + [1000.0] + [0.0] * 6
    losses = losses_before + losses_before[-1:] + [after] * 6
    found = []
    for step, (grad, loss) in enumerate(zip(grads, losses, strict=True)):
        values = {
            "grad_norm": max(grad, 1e-9),
            "grad_norm/w": grad,
            "param_norm": 40.0 if step >= 5 else 4.0,
            "loss": loss,
        }
        meta = {"optimizer_family": "sgd"} if step == 0 else {}
        found += det.update(Record(step, values, meta=meta))
    return found


def test_a_nan_loss_before_an_explosion_does_not_forget_the_lowest_loss():
    # Trigger: the lowest loss so far (0.5) was forgotten at a NaN loss, and the loss after the
    # explosion (1.5e-3) then read as under a thousandth of the 2.0 after it: "the task was
    # solved", and the explosion dropped. Against 0.5 it is not.
    found = _explosion_after([1.0, 0.5, math.nan, 2.0, 2.0])
    assert [(f.kind, f.step, f.where) for f in found] == [("gradient_growth", 5, "w")]
    # Control: the same run without the NaN reads the same.
    found = _explosion_after([1.0, 0.5, 0.6, 2.0, 2.0])
    assert [(f.kind, f.step, f.where) for f in found] == [("gradient_growth", 5, "w")]


def test_an_explosion_after_which_the_loss_fell_under_a_thousandth_of_its_lowest_is_none():
    # Control: a loss that fell from its lowest, 0.5, to 2e-4 (under a thousandth of it), a NaN
    # on the way, went to its floor with the gradient: the step solved the task.
    assert _explosion_after([1.0, 0.5, math.nan, 2.0, 2.0], after=2e-4) == []


# -- a deep stack whose outputs rise steadily, one layer's noise breaking every chain ----------


def test_a_deep_relu_stack_initialised_too_large_is_found_though_no_chain_holds(tmp_path):
    # Trigger: twelve ReLU layers at std 2/sqrt(fan_in) (He's sqrt(2), times sqrt(2)) under
    # Adamax, clipped: the outputs rise 24x through the stack, but one layer in four draws a gain
    # under 1.2x, so no chain of five holds; read whole, the stack rises steadily from layers.0.
    ctx, report = held_out_run(tmp_path, "h411_didgeridoo_deep_init_gain")
    induced_or_skip(ctx)
    found = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    assert found and found[0].where[0] == "layers.0" and found[0].first_step == 0


class _Stack(nn.Module):
    def __init__(self, std: float, depth: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(
            [nn.Linear(16, 32)] + [nn.Linear(32, 32) for _ in range(depth - 1)]
        )
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=std / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


def test_a_deep_relu_stack_at_he_init_is_quiet(tmp_path):
    # Control: the same twelve layers at He's std sqrt(2/fan_in) keep the signal's scale.
    model = _Stack(math.sqrt(2.0))
    opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, generator=g)
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for _ in range(60):
            x = torch.randn(64, 16, generator=g)
            loss = F.mse_loss(model(x), torch.tanh(x @ w))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            mon.step(float(loss))
    assert "exploding_gradients" not in [
        d.cause for d in steadygrad.diagnose(tmp_path / "run").diagnoses
    ]


# -- a path left out on some steps is not a frozen layer -----------------------------------


class _TwoColumns(nn.Module):
    """Two columns joined by their mean; in training a step keeps one column alone 80% of the
    time (drop-path, at least one column kept): the dropped column's weights get no gradient
    that step. ``left_out``: the steps column b was dropped."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32))
        self.b = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 3)
        self.drop = torch.Generator().manual_seed(1)
        self.left_out: list[int] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        roll, self.calls = float(torch.rand((), generator=self.drop)), self.calls + 1
        if roll < 0.4:
            self.left_out.append(self.calls - 1)
            joined = self.a(x)
        elif roll < 0.8:
            joined = self.b(x)
        else:
            joined = (self.a(x) + self.b(x)) / 2
        return self.head(F.relu(joined))


def _drop_path_run(tmp_path, column_b_rate: float) -> tuple[list, bool]:
    """The warnings of UpdateRatioOutOfRange, and whether three ratio readings in a row fell
    on steps that left column b out."""
    model = _TwoColumns()
    groups = [
        {"params": [*model.a.parameters(), *model.head.parameters()]},
        {"params": list(model.b.parameters()), "lr": column_b_rate},
    ]
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(3, 8, generator=g) * 2
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for _ in range(200):
            y = torch.randint(0, 3, (64,), generator=g)
            x = centres[y] + torch.randn(64, 8, generator=g)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mon.step(float(loss))
    run = steadygrad.load(tmp_path / "run")
    readings = [int(s) for s in run.series("update_ratio/b.0.weight")[0]]
    dropped = [s in model.left_out for s in readings]
    three = any(all(dropped[i : i + 3]) for i in range(len(dropped) - 2))
    kind = "update_ratio_out_of_range"
    return [f for f in run.findings() if f.kind == kind and f.severity != "info"], three


def test_columns_drop_path_leaves_out_on_some_steps_are_not_frozen(tmp_path):
    # Control: a column left out of a step gets no gradient, and the optimizer skips it: an
    # update ratio of exactly 0 there, at three readings in a row that fell on such steps.
    found, three = _drop_path_run(tmp_path, 0.05)
    assert three
    assert found == []


def test_a_column_whose_group_rate_was_typed_zero_is_frozen(tmp_path):
    # Trigger: the same model with column b's group at lr 0: it has gradients and never moves.
    found, _ = _drop_path_run(tmp_path, 0.0)
    assert found and {f.where for f in found} <= {"b.0.weight", "b.2.weight"}


@pytest.mark.parametrize("used_between", [True, False])
def test_a_tensor_with_no_gradient_at_a_reading(used_between):
    # A tensor with no gradient at three ratio readings: frozen when it had none between them
    # either (requires_grad switched off after attach), a path left out at those steps when it
    # had gradients between them.
    det, found = UpdateRatioOutOfRange(), []
    for step in range(40):
        values = {"loss": 1.0, "grad_norm/head.weight": 0.1}
        if used_between and step % 10:
            values["grad_norm/col.weight"] = 0.1
        if step % 10 == 0:
            values |= {"update_ratio/col.weight": 0.0, "update_ratio/head.weight": 1e-3}
        found += det.update(Record(step, values))
    assert bool([f for f in found if f.where == "col.weight"]) is not used_between


# -- an explosion from the start the run got over does not explain a break long after ----------


def test_an_overflow_when_fp16_began_outranks_a_start_the_run_got_over(tmp_path):
    # Trigger: a Gram-matrix feature far above the input's scale by design made a first
    # gradient 141x the weights; by step 2 the gradient was under a tenth of that and the loss
    # under its first value, and the run trained on in float32. Resumed under fp16 autocast at
    # step 60, the feature overflowed there: the overflow, not the start, broke it.
    ctx, report = held_out_run(tmp_path, "h412_cowbell_pour_fp16_resume")
    induced_or_skip(ctx)
    assert report.top.cause == "amp_overflow" and report.top.where == ["energy"]
    start = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert start.first_step == 0 and "back to normal soon after" in start.why


def test_a_recurrence_exploding_from_the_start_to_its_break_still_explains_it(tmp_path):
    # Control: a tanh RNN whose recurrent gain is too large: its gradient 11x the weights at
    # step 0, never down to a tenth of that, bursting from step 48 into the NaN at step 67.
    ctx, report = held_out_run(tmp_path, "h339_clog_dancing_rnn_tanh_gain")
    induced_or_skip(ctx)
    top = report.top
    assert (top.cause, top.first_step, top.where) == ("exploding_gradients", 0, ["rec"])
    assert "explains what followed" in top.why


# -- a temperature that came at a stroke mid-run ----------------------------------------------


@pytest.mark.parametrize(
    "name", ["h414_curling_curl_temperature_units", "h419_tuvan_khoomei_temperature"]
)
def test_a_temperature_read_in_the_wrong_unit_mid_run_collapses_the_softmax(tmp_path, name):
    # Trigger: from step 60 the logits are divided by a temperature read as 0.01 for 1.0: the
    # logits' scale read 1 at step 50 and 100 from the next reading on; rows collapse at once,
    # and the gradient that grows through the logits 100x is the number's doing.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert (report.top.cause, report.top.where) == ("softmax_collapse", ["head"])
    grown = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    assert all("times 100" in d.consequence_of for d in grown)


class _Scales:
    """A run's readings of the logits' scale, as the rules read them."""

    def __init__(self, steps: list[int], scales: list[float]) -> None:
        self.steps, self.scales = np.array(steps), np.array(scales)

    def series(self, name: str):
        return (self.steps, self.scales) if name == OUTPUT_SCALE.name else None


@pytest.mark.parametrize(
    ("scales", "stroke"),
    [
        ([1.0, 1.0, 100.0, 100.0, 100.0], (25, 50, 100.0)),  # a config's 0.01 for 1.0
        ([1.0, 3.0, 6.0, 12.0, 25.0, 50.0, 100.0], None),  # a schedule annealing it
        ([1.0, 1.0, 30.0, 45.0, 70.0], None),  # a learnt scale that jumped, then grew on
        ([1.0, 1.0, 10.0, 10.0, 10.0], None),  # a temperature of 0.1: no collapse of its own
    ],
)
def test_a_number_multiplying_the_logits_came_at_a_stroke(scales, stroke):
    steps = [0, 25, 50, 75, 100, 125, 150][: len(scales)]
    assert _scaled_at_a_stroke(_Scales(steps, scales), steps[-1]) == stroke


# -- weights multiplied every step grow the curvature past a step size that served ------------


def test_overshooting_steps_in_a_run_whose_weights_a_decay_sign_multiplied_are_its_consequence(
    tmp_path,
):
    # Trigger: a hand-written decoupled decay with its sign flipped multiplies every weight by
    # 1 + lr * wd a step; the loss climbs from step ~200 and the steps overshoot from ~230 at
    # the rate that served the run from the start: the curvature grew with the weights.
    ctx, report = held_out_run(tmp_path, "h414_sourdough_decay_sign")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence"
    assert "at one steady rate" in report.top.summary
    sharp = [d for d in report.diagnoses if d.cause == "sharpness_above_limit"]
    assert all("the curvature grew with the weights" in d.consequence_of for d in sharp)


# -- one batch's gradient spike, and what its update threw -------------------------------------


def test_one_weighted_batch_gradient_spike_is_named_over_what_it_threw(tmp_path):
    # Trigger: one step's BCE weight reloaded as a raw count (500): a gradient 400x the others
    # (clipped), back to 0.6 the step after; SGD's momentum carried the update on, the loss and
    # the gradients rose for a few steps and came back. Steps that overshot for a while at
    # step ~105, after which the loss made its best at 110, were no part of it.
    ctx, report = held_out_run(tmp_path, "h420_tightrope_pos_weight_counts")
    induced_or_skip(ctx)
    assert report.top.cause == "gradient_spike" and report.top.first_step == 120
    grown = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    assert all("one batch's, not a growth" in d.consequence_of for d in grown)
    assert "sharpness_above_limit" not in [d.cause for d in report.diagnoses]


# -- weights a loop put in place of a parameter's own --------------------------------------------


def test_a_parameter_whose_data_the_loop_replaces_is_measured_as_it_now_is(tmp_path):
    # Trigger: knowledge-graph code renorms its entity table by assigning `.data` a new tensor
    # each step; the alias made at attach kept reading the old storage: a norm that never moved
    # and an update ratio of exactly 0, a "frozen" table in a healthy run.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(16, 1))
    table = model[0].weight
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(5)
    norms = []
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for _ in range(60):
            ids = torch.randint(0, 50, (32, 2), generator=g)
            loss = F.mse_loss(model(ids).squeeze(-1), ids.sum(-1).float() / 50)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                table.data = torch.renorm(table.data, 2, 0, 1.0)
            norms.append(float(table.detach().norm()))  # the oracle: the table as it is
            mon.step(float(loss))
    run = steadygrad.load(tmp_path / "run")
    steps, measured = run.series("param_norm/0.weight")
    assert np.allclose(measured, [norms[s] for s in steps], rtol=1e-5)
    _, ratios = run.series("update_ratio/0.weight")
    assert (ratios[1:] > 0).all()
    frozen = [f for f in run.findings() if f.kind == "update_ratio_out_of_range"]
    assert not [f for f in frozen if f.severity != "info"]


# -- a frozen base's leftover gradients, rescaled by a clip over every parameter ----------------


@pytest.mark.parametrize("unfrozen", [False, True])
def test_a_frozen_base_whose_stale_gradients_a_clip_rescales_gets_no_gradients(tmp_path, unfrozen):
    # Control: a base pre-trained outside the Monitor keeps its last gradients; frozen for a
    # low-rank fine-tune, its stale gradients are rescaled in place each step by a clip over
    # model.parameters(): they change, yet no backward pass gives a frozen tensor a gradient.
    # Trigger: the same base unfrozen mid-run, the optimizer built without it, does get them.
    torch.manual_seed(0)
    base, head = nn.Linear(8, 16), nn.Linear(16, 3)
    model = nn.Sequential(base, nn.ReLU(), head)
    F.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 3, (32,))).backward()
    base.requires_grad_(False)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(6)
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for step in range(20):
            if unfrozen and step == 5:
                base.requires_grad_(True)  # a scheduled unfreeze, the optimizer left as built
            x = torch.randn(32, 8, generator=g)
            loss = F.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            opt.step()
            mon.step(float(loss))
    found = steadygrad.load(tmp_path / "run").findings()
    stray = {f.where for f in found if f.evidence.get("direction") == "not_in_optimizer"}
    assert stray == ({"0.weight", "0.bias"} if unfrozen else set())


# -- a deep tanh stack just past the edge of chaos ----------------------------------------------

# Set 427's avalanche regressor, ten tanh layers at std 3/sqrt(fan_in): at step 0 the weight
# gradients rise from layers.9 back to layers.1 8.4x, every layer above the one after it.
AVALANCHE = [0.389, 0.541, 0.401, 0.25, 0.209, 0.159, 0.124, 0.087, 0.0797, 0.0646]


@pytest.mark.parametrize(
    ("norms", "found"),
    [
        (AVALANCHE, 10),
        ([1.0 + 0.2 * i for i in range(10, 0, -1)], 0),  # a stack rising back 2.8x: no explosion
        ([1.0 + 0.05 * (i % 3) for i in range(12)], 0),  # a healthy deep stack: level
    ],
)
def test_a_stack_rising_back_steadily_five_times_or_more_explodes(norms, found):
    from steadygrad.diagnose.detectors.trends import stack_chains

    chains = stack_chains({f"layers.{i}.weight": g for i, g in enumerate(norms)})
    assert max((len(c) for c in chains), default=0) == found


def test_a_tanh_stack_past_the_edge_of_chaos_is_named_from_its_first_layer(tmp_path):
    ctx, report = held_out_run(tmp_path, "h427_avalanche_init_gain")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients" and report.top.where[0] == "layers.0"


# -- weights multiplied every step: the decay of the wrong sign is the fault ------------------


@pytest.mark.parametrize(
    ("name", "grown"),
    [
        # SGD with momentum and an L2 term of the wrong sign: the weights grew 14x at one
        # rate, the loss ended 1.7x its best, no detector called the climb
        ("h434_balafon_l2_sign", 10.0),
    ],
)
def test_weights_multiplied_every_step_name_the_climb_they_make(tmp_path, name, grown):
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence"
    assert report.top.evidence["weights_multiplied"]["growth"] >= grown


# -- a blip the run got over before its weights were put back ----------------------------------


def test_a_blip_got_over_before_a_stale_checkpoint_reload_does_not_explain_the_break(tmp_path):
    # Trigger: a 4x blip at step 109, back within 5 steps; at step 120 a resume loaded the
    # weights of step 5 (their norm moved 30x its usual step, no gradient behind it) and the
    # loss jumped 26x: what broke the run began there, not at the blip.
    ctx, report = held_out_run(tmp_path, "h434_celesta_stale_checkpoint")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_spike"
    blip = next(d for d in report.diagnoses if d.cause == "data_outlier")
    assert "after the weights were put back at step 120" in blip.why
