"""Run shapes the sixteenth wave's held-out sets showed, each a trigger and a control: a gradient
spike too small to have damped an optimizer's steps as much as they shrank."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import diagnose_stored

import steadygrad
from steadygrad.core import Finding
from steadygrad.core.optimizer import SECOND_MOMENT_DECAY, second_moment_decay
from steadygrad.diagnose.rules import MOMENTUM_MEMORY, _strongest_damping
from steadygrad.optim import SPAM, AdaBelief, Lion

OPTIMIZERS = {  # beta1 = 0: the first moment forgets the spike at once, the square is measured
    "adam": lambda p: torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.999), eps=1e-12),
    "adam_beta2_0.95": lambda p: torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.95), eps=1e-12),
    "rmsprop": lambda p: torch.optim.RMSprop([p], lr=1e-3, alpha=0.99, eps=1e-12),
    "adagrad": lambda p: torch.optim.Adagrad([p], lr=1e-3, eps=1e-12),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(("ratio", "step"), [(13.0, 21), (300.0, 79)])
def test_the_damping_bound_is_what_the_optimizer_does_to_a_spread_spike(name, ratio, step):
    # Oracle: the real optimizer, run with and without one spike `ratio` times the gradient at
    # `step`, every coordinate alike; the step size where the rule reads it, over the one
    # without the spike.
    k = MOMENTUM_MEMORY + 25

    def step_size(spike: bool) -> float:
        p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
        opt = OPTIMIZERS[name](p)
        for i in range(step + k + 1):
            before = p.detach().clone()
            p.grad = torch.full_like(p, 0.5 * (ratio if spike and i == step else 1.0))
            opt.step()
        return float((p.detach() - before).norm())

    decay = second_moment_decay(OPTIMIZERS[name](torch.nn.Parameter(torch.zeros(1))))
    spike = Finding("grad_norm_spike", step, None, {"ratio": ratio}, "warning")
    bound = _strongest_damping(SimpleNamespace(second_moment_decay=decay), spike)
    assert bound == pytest.approx(step_size(True) / step_size(False), rel=1e-6)


def test_only_a_plain_average_of_the_squared_gradient_has_a_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    assert second_moment_decay(torch.optim.AdamW([p])) == 0.999
    assert second_moment_decay(torch.optim.Adadelta([p])) == 0.9
    assert second_moment_decay(SPAM([p], lr=1e-3)) == 0.999
    # a max (Adamax, AMSGrad) or a centred variance (AdaBelief, centred RMSprop) can be damped
    # far more by one spike; SGD and Lion keep no square at all
    for opt in (
        torch.optim.Adamax([p]),
        torch.optim.Adam([p], amsgrad=True),
        torch.optim.RMSprop([p], centered=True),
        AdaBelief([p], lr=1e-3),
        torch.optim.SGD([p], lr=0.1),
        Lion([p], lr=1e-4),
    ):
        assert second_moment_decay(opt) is None, type(opt).__name__


def test_the_monitor_records_the_decay(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.RMSprop(model.parameters(), alpha=0.95)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        loss = model(torch.ones(3, 2)).pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss)
    assert steadygrad.load(tmp_path / "run").config[SECOND_MOMENT_DECAY] == 0.95


@pytest.mark.parametrize("ratio", [13.0, 1000.0])
def test_a_spike_too_small_to_damp_rmsprop_that_much_did_not_poison_it(tmp_path, ratio):
    # A healthy MobileViT under RMSprop: a 13x spike at step 22, and the updates 20-70 steps
    # later are 1/50 of those before, as RMSprop's uncorrected square fills up and the loss
    # falls. Spread over every coordinate the spike could damp them to 0.56 at most there: the
    # shrink is not its doing. Trigger: a 1000x spike, which can damp them to 0.008.
    rows = []
    for t in range(160):
        row = {"loss": 2.3 - t / 160}
        if t % 5 == 0:
            row["update_ratio/conv.weight"] = 0.05 if t < 22 else 0.001
        rows.append(row)
    spike = ("grad_norm_spike", 22, None, {"ratio": ratio}, "warning")
    config = {"optimizer": "RMSprop", "optimizer_family": "adaptive", SECOND_MOMENT_DECAY: 0.99}
    report = diagnose_stored(tmp_path, str(ratio), rows, [spike], config=config)
    assert ("adam_second_moment_poisoned" in report.causes()) is (ratio > 100)


# -- the output layer, found in the autograd graph --------------------------------------------


def test_the_output_layer_is_the_weight_matrix_nearest_the_output():
    from steadygrad.monitor.output_layer import nearest_weight, output_tensor

    class Head(torch.nn.Module):  # a learnt temperature after the head, a tied embedding
        def __init__(self, tied: bool) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 8)
            self.body = torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, 10)
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.tied = tied

        def forward(self, x):
            h = torch.relu(self.body(self.emb(x)))
            z = h @ self.emb.weight.t() if self.tied else self.head(h)
            return {"loss": None, "logits": (z * self.scale).squeeze(0)}

    for tied, name in [(False, "head.weight"), (True, "emb.weight")]:
        model = Head(tied)
        names = {id(p): n for n, p in model.named_parameters()}
        out = output_tensor(model(torch.tensor([[1, 2, 3]])))
        assert nearest_weight(out, names) == name
    with torch.no_grad():  # no graph: nothing to tell
        assert nearest_weight(output_tensor(model(torch.tensor([[1]]))), names) is None
    # a hashing-trick classifier: the bag's table is as many nodes from the output as the
    # head's weight is through its transpose, which is no step (set 63)
    bag, head = torch.nn.EmbeddingBag(64, 8), torch.nn.Linear(8, 5)
    names = {id(bag.weight): "bag.weight", id(head.weight): "head.weight"}
    assert nearest_weight(head(bag(torch.randint(0, 64, (4, 6)))), names) == "head.weight"


def test_the_output_layer_hook_waits_for_a_graph_and_leaves_with_the_monitor(tmp_path):
    from helpers import no_hooks_left

    from steadygrad.core.metrics import OUTPUT_LAYER

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, opt, tmp_path / "eval", progress=False) as mon:
        with torch.no_grad():
            loss = model(torch.ones(2, 3)).pow(2).mean()  # an evaluation first: no graph
        opt.step()
        mon.step(loss)
    assert no_hooks_left(model, opt)  # never found, still removed at close
    assert OUTPUT_LAYER not in steadygrad.load(tmp_path / "eval").config
    with steadygrad.watch(model, opt, tmp_path / "train", progress=False) as mon:
        for _ in range(2):
            loss = model(torch.ones(2, 3)).pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    assert steadygrad.load(tmp_path / "train").config[OUTPUT_LAYER] == "2"
    assert no_hooks_left(model, opt)


def _head_decay_run(tmp_path, decayed: str):
    """An MLP classifier trained with a hand-written softmax loss (no F.cross_entropy: the
    logits are read from its log_softmax) and, from step 20, a weight decay of the wrong sign on
    ``decayed``."""
    from steadygrad.core.metrics import OUTPUT_LAYER

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU()
    )
    model.add_module("head", torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(256, 16)
    y = (x[:, :4].argmax(1) + (torch.rand(256) < 0.2).long()) % 4  # 20% label noise
    with steadygrad.watch(model, opt, tmp_path / decayed, progress=False) as mon:
        for step in range(200):
            idx = torch.randint(0, 256, (32,))
            logp = torch.log_softmax(model(x[idx]), dim=-1)
            loss = -logp.gather(1, y[idx, None]).mean()
            loss.backward()
            opt.step()
            if step >= 20:
                with torch.no_grad():
                    dict(model.named_modules())[decayed].weight.mul_(1.03)
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path / decayed)
    assert run.config[OUTPUT_LAYER] == "head"
    return steadygrad.diagnose(run)


@pytest.mark.parametrize("decayed", ["head", "2"])
def test_an_output_layer_whose_weights_run_away_makes_the_logits_diverge(tmp_path, decayed):
    # The head's weights grow 3% a step: the logits grow with them, the loss on the noisy
    # labels climbs, and the gradients into the body grow too; the cause is the logits (set
    # 63's hashing-trick head, set 59's distilled head, set 60's ListNet). Control: the same
    # decay on a hidden layer is that layer's runaway first; the logits, read from the
    # log_softmax, grow with it much later, and are no cause ranked above it.
    report = _head_decay_run(tmp_path, decayed)
    if decayed == "head":
        assert report.top.cause == "output_logit_divergence"
        assert report.top.where[0] == "head" and report.top.first_step < 60
    else:
        assert report.top.cause == "exploding_gradients" and report.top.where[0] == "2"
        logits = [d for d in report.diagnoses if d.cause == "output_logit_divergence"]
        assert all(d.first_step > report.top.first_step + 100 for d in logits)


@pytest.mark.parametrize("recurrent", [False, True])
def test_an_output_layer_applied_in_a_recurrence_explodes_through_time(tmp_path, recurrent):
    # The output layer's weights grow 4% a step from step 60 and the loss climbs from 140. A
    # head applied once makes the logits run away; the last layer of an ODE function, applied
    # at every Euler step (set 34's CNF), is no head of logits: its growth explodes through
    # the steps, and it is not called an output-logit divergence.
    from steadygrad.core.metrics import OUTPUT_LAYER, RECURRENT_MODULES

    rows = []
    for t in range(200):
        loss = 1.0 - 0.002 * min(t, 140) + (0.05 * (t - 140) if t > 140 else 0.0)
        grown = 1.04 ** max(t - 60, 0)
        row = {"loss": loss, "param_norm/out.weight": grown, "param_norm/inp.weight": 1.0}
        if t % 25 == 0:  # the outputs read as logits (a cross-entropy on them)
            row["logit_lse_mean"] = 2.3
        rows.append(row)
    config = {OUTPUT_LAYER: "out", RECURRENT_MODULES: ["out"] if recurrent else []}
    climb = ("loss_divergence", 150, None, {"ratio": 3.0, "best_level_step": 140}, "critical")
    report = diagnose_stored(tmp_path, str(recurrent), rows, [climb], config=config)
    if recurrent:
        assert "output_logit_divergence" not in report.causes()
    else:
        assert report.top.cause == "output_logit_divergence" and report.top.where == ["out"]
