"""The one-line attach watches mechanisms: the loss's logits and targets, dead ReLU units per
layer (functional ReLUs too), attention logits; signals that do not apply stay off.

Oracles: the same quantities computed by hand from the step's own tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import steadygrad


class FunctionalNet(nn.Module):
    """ReLUs called as functions, and a head whose logits are upcast before the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.conv = nn.Conv1d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)
        self.head = nn.Linear(8 * 3, 5)

    def forward(self, x):
        h = F.relu(self.fc1(x))  # (N, 8)
        c = torch.relu(self.bn(self.conv(h[:, None, :])))  # (N, 3, 8): channels are units
        return self.head(c.flatten(1))


def _run(tmp_path, model, loss_fn, steps=3, **kwargs):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    records, hand = [], []
    with steadygrad.watch(
        model, opt, tmp_path / "run", progress=False, activation_every=1, **kwargs
    ) as mon:
        for _ in range(steps):
            out = model(x)
            loss = loss_fn(out, y)
            with torch.no_grad():
                hand.append(out.detach().clone())
            loss.backward()
            opt.step()
            records.append(mon.step(loss))
            opt.zero_grad()
    return records, hand, x, y


def test_output_statistics_come_from_the_loss_call(tmp_path):
    model = FunctionalNet()
    records, hand, _, y = _run(tmp_path, model, lambda z, t: F.cross_entropy(z.float(), t))
    for record, logits in zip(records, hand, strict=True):
        assert record.values["logit_lse_mean"] == pytest.approx(
            torch.logsumexp(logits, 1).mean().item(), rel=1e-5
        )
        assert record.values["output_logit_max"] == pytest.approx(logits.abs().max().item())
        assert record.values["output_logit_rms"] == pytest.approx(
            logits.pow(2).mean().sqrt().item(), rel=1e-5
        )
        assert record.values["softmax_collapse"] == 0.0
        assert record.meta["output_module"] == "head"
        assert record.meta["output_classes"] == logits.shape[-1]


@pytest.mark.parametrize("as_module", [False, True])
def test_binary_cross_entropy_reads_each_logit_as_a_two_class_softmax(tmp_path, as_module):
    # sigmoid(z) is the softmax over the two logits [-z/2, z/2]: its log Z is log(2 cosh(z/2));
    # labels of weight 0 are masked out; two classes' logits have no common shift to record
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    model.add_module("head", nn.Linear(8, 4))
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    labels = (torch.arange(16 * 4).reshape(16, 4) % 3 == 0).float()
    if as_module:
        loss_fn = lambda z, t: nn.BCEWithLogitsLoss(weight=mask)(z, labels)  # noqa: E731
    else:
        loss_fn = lambda z, t: F.binary_cross_entropy_with_logits(z, labels, mask)  # noqa: E731
    records, hand, _, _ = _run(tmp_path, model, loss_fn, steps=2)
    for record, z in zip(records, hand, strict=True):
        kept = z[:, mask.bool()].double()
        two = torch.stack([-kept / 2, kept / 2])
        assert record.values["logit_lse_mean"] == pytest.approx(
            torch.logsumexp(two, 0).mean().item(), rel=1e-5
        )
        assert record.values["output_logit_max"] == pytest.approx(kept.abs().max().item() / 2)
        assert record.values["output_logit_rms"] == pytest.approx(
            (kept / 2).pow(2).mean().sqrt().item(), rel=1e-5
        )
        assert "output_logit_mean" not in record.values
        assert "softmax_collapse" not in record.values
        assert record.values["output_targets_outside"] == 0.0
        assert record.meta["output_module"] == "head"
        assert record.meta["output_classes"] == 2
    assert steadygrad.load(tmp_path / "run").config["signals"]["CrossEntropyOutputSignal"] == "on"


def test_binary_targets_outside_zero_one_are_counted_among_the_kept_labels(tmp_path):
    # smoothing typed with the wrong sign: 1.05 and -0.05; a label of weight 0 is not counted
    model = nn.Linear(6, 4)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    targets = torch.tensor([[1.05, -0.05, 0.5, 7.0]] * 8 + [[1.0, 0.0, 0.5, 7.0]] * 8)
    loss_fn = lambda z, t: F.binary_cross_entropy_with_logits(z, targets, mask)  # noqa: E731
    records, _, _, _ = _run(tmp_path, model, loss_fn, steps=1)
    assert records[0].values["output_targets_outside"] == pytest.approx(16 / 48)


def test_ignored_targets_are_left_out_and_collapse_uses_the_true_targets(tmp_path):
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([40.0, 0.0, 0.0]))  # every row one-hot on class 0
    targets = torch.tensor([0, 0, 1, -100] * 4)

    records, hand, _, _ = _run(tmp_path, model, lambda z, t: F.cross_entropy(z, targets), steps=1)
    # rows with target 0 are collapsed, target 1 is not, ignored rows do not count: 8/12
    assert records[0].values["softmax_collapse"] == pytest.approx(8 / 12)
    keep = targets != -100
    assert records[0].values["logit_lse_mean"] == pytest.approx(
        torch.logsumexp(hand[0][keep], 1).mean().item()
    )


def test_a_batch_whose_every_target_is_ignored_records_no_logit_statistics(tmp_path):
    # Rows are masked on the device, not selected (no host read): with none left, the step
    # records no logit statistics rather than 0/0.
    model = nn.Linear(6, 3)
    targets = torch.full((16,), -100)
    loss_fn = lambda z, t: F.cross_entropy(z, targets) + 0.0 * z.sum()  # noqa: E731
    records, _, _, _ = _run(tmp_path, model, loss_fn, steps=1)
    names = ("logit_lse_mean", "output_logit_max", "output_logit_rms", "output_logit_mean")
    assert not [n for n in names if n in records[0].values]
    assert "softmax_collapse" not in records[0].values


@pytest.mark.parametrize("log_target", [False, True])
def test_distillation_with_one_hot_teacher_rows_reads_softmax_collapse(tmp_path, log_target):
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([40.0, 0.0, 0.0]))  # every row one-hot on class 0
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    teacher = teacher.repeat(4, 1)  # one-hot on 0 (collapsed), on 1 (not), soft (not counted)
    target = teacher.clamp_min(1e-30).log() if log_target else teacher

    def kl(z, _):
        return F.kl_div(F.log_softmax(z, -1), target, reduction="batchmean", log_target=log_target)

    records, hand, _, _ = _run(tmp_path, model, kl, steps=1)
    one_hot = teacher.amax(1) == 1
    by_hand = (
        torch.softmax(hand[0], -1)[one_hot].gather(1, teacher[one_hot].argmax(1)[:, None]) == 1
    )
    assert records[0].values["softmax_collapse"] == pytest.approx(by_hand.float().mean().item())
    assert records[0].values["softmax_collapse"] == pytest.approx(8 / 12)
    # the logit scale comes from the log_softmax the log-probabilities were made by
    assert records[0].values["logit_lse_mean"] == pytest.approx(
        torch.logsumexp(hand[0], -1).mean().item()
    )


@pytest.mark.parametrize(
    "log_softmax",
    [torch.log_softmax, F.log_softmax, lambda z, dim: z.log_softmax(dim)],
    ids=["torch", "functional", "method"],
)
def test_nll_after_log_softmax_reads_like_cross_entropy(tmp_path, log_softmax):
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([40.0, 0.0, 0.0]))  # every row one-hot on class 0
    targets = torch.tensor([0, 0, 1, -100] * 4)

    def nll(z, _):
        return F.nll_loss(log_softmax(z, -1), targets)

    records, hand, _, _ = _run(tmp_path, model, nll, steps=1)
    ce, hand_ce, _, _ = _run(tmp_path / "ce", model, lambda z, _: F.cross_entropy(z, targets), 1)
    # collapse with the true targets, ignored rows left out: 8/12, as cross-entropy reads it
    assert records[0].values["softmax_collapse"] == pytest.approx(8 / 12)
    assert ce[0].values["softmax_collapse"] == pytest.approx(8 / 12)
    # the statistics are those of every row the log_softmax saw
    assert records[0].values["logit_lse_mean"] == pytest.approx(
        torch.logsumexp(hand[0], -1).mean().item()
    )
    assert records[0].values["output_logit_max"] == pytest.approx(hand[0].abs().max().item())
    assert records[0].meta["output_classes"] == 3


def test_a_loss_written_by_hand_on_log_softmax_reads_the_logits_not_collapse(tmp_path):
    # A preference loss written by hand: log-probabilities gathered, no loss call names the
    # targets. The logits' scale is read from the log_softmax; collapse is not (a row exactly
    # one-hot at its largest logit may be a right answer held with certainty).
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([40.0, 0.0, 0.0]))
    picks = torch.tensor([0, 1] * 8)

    def by_hand(z, _):
        return -torch.log_softmax(z.float(), -1).gather(1, picks[:, None]).mean()

    records, hand, _, _ = _run(tmp_path, model, by_hand, steps=1)
    assert records[0].values["logit_lse_mean"] == pytest.approx(
        torch.logsumexp(hand[0], -1).mean().item()
    )
    assert "softmax_collapse" not in records[0].values


class PointerScores(nn.Module):
    """Dot-product scores of a query against keys: a module with children that computes its
    output itself (no leaf outputs the scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)

    def forward(self, d, keys):
        return (self.k(keys) @ self.q(d)[..., None]).squeeze(-1)


class PointerNet(nn.Module):
    """Scores over 5 inputs at each of 3 decoding steps, stacked: the logits a pointer network
    hands the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 6)
        self.pointer = PointerScores()

    def forward(self, x):
        keys = self.embed(x).reshape(-1, 1, 6).expand(-1, 5, 6) * torch.arange(1.0, 6.0)[:, None]
        return torch.stack([self.pointer(keys[:, t], keys) for t in range(3)], 1)


def test_logits_stacked_from_a_module_with_children_name_that_module(tmp_path):
    model = PointerNet()

    def loss(z, y):
        return F.cross_entropy(z.reshape(-1, 5), y.repeat_interleave(3) % 5)

    records, hand, _, _ = _run(tmp_path, model, loss)
    for record, scores in zip(records, hand, strict=True):
        assert record.meta["output_module"] == "pointer"
        assert record.values["logit_lse_mean"] == pytest.approx(
            torch.logsumexp(scores.reshape(-1, 5), 1).mean().item(), rel=1e-5
        )


def test_distillation_on_soft_targets_reads_nothing(tmp_path):
    model = nn.Linear(6, 3)
    soft = torch.softmax(torch.randn(16, 3), -1)
    records, _, _, _ = _run(
        tmp_path, model, lambda z, _: F.kl_div(F.log_softmax(z, -1), soft, reduction="batchmean")
    )
    assert not any("softmax_collapse" in r.values for r in records)


def test_dead_units_per_layer_with_functional_relus(tmp_path):
    model = FunctionalNet()
    with torch.no_grad():
        model.fc1.bias[:3] = -100.0  # three of fc1's eight units never pass the ReLU
    fc1 = copy.deepcopy(model.fc1)  # as the step's forward pass used it
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    values = records[0].values
    with torch.no_grad():
        pre = model.fc1(x)  # weights moved by one SGD step; the -100 biases keep them dead
    assert values["dead_units/fc1"] == pytest.approx(3 / 8)
    assert (pre[:, :3] <= 0).all()
    with torch.no_grad():  # the share the ReLU passed, from the step's own activations
        share = (fc1(x) > 0).float().mean().item()
    assert values["relu_active/fc1"] == pytest.approx(share)
    assert "dead_units/bn" in values and 0.0 <= values["dead_units/bn"] <= 1.0


class RecurrentNet(nn.Module):
    """A cell stepped over 4 time steps by the model's own loop, then a layer over the sequence:
    both apply their nonlinearity inside torch's kernel, where no functional call shows it."""

    def __init__(self, nonlinearity: str) -> None:
        super().__init__()
        self.cell = nn.RNNCell(6, 8, nonlinearity=nonlinearity)
        self.rnn = nn.RNN(8, 8, nonlinearity=nonlinearity, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h, states = torch.zeros(x.shape[0], 8), []
        for t in range(4):
            h = self.cell(x * (t + 1) / 4, h)
            states.append(h)
        return self.head(self.rnn(torch.stack(states, 1))[0][:, -1])


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_dead_units_of_recurrent_layers_whose_relu_runs_inside_torch(tmp_path, nonlinearity):
    model = RecurrentNet(nonlinearity)
    with torch.no_grad():
        model.cell.bias_ih[:3] = -100.0  # three of the cell's eight units never fire
        model.rnn.bias_ih_l0[:5] = -100.0  # five of the layer's
    cell, rnn = copy.deepcopy(model.cell), copy.deepcopy(model.rnn)
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    values = records[0].values
    if nonlinearity == "tanh":  # no ReLU anywhere: no dead units to count
        assert not any(k.startswith("dead_units/") for k in values)
        return
    with torch.no_grad():  # by hand, with the weights the step's forward used
        h, states = torch.zeros(16, 8), []
        for t in range(4):
            h = cell(x * (t + 1) / 4, h)
            states.append(h)
        seq = torch.stack(states, 1)
        out = rnn(seq)[0]
    cell_dead = (seq <= 0).reshape(-1, 8).all(0).float().mean().item()
    rnn_dead = (out <= 0).reshape(-1, 8).all(0).float().mean().item()
    assert cell_dead == pytest.approx(3 / 8) and rnn_dead == pytest.approx(5 / 8)
    assert values["dead_units/cell"] == pytest.approx(cell_dead)
    assert values["dead_units/rnn"] == pytest.approx(rnn_dead)
    assert values["relu_active/cell"] == pytest.approx((seq > 0).float().mean().item())
    assert values["zeroed_units/cell"] == 0.0  # an output of 0 does not say its input was 0


class WrittenOutNet(nn.Module):
    """A ReLU recurrence written out in the model's own forward (``relu(hh(h) + ih(x))``, as an
    IRNN is), then a residual block whose ReLU takes ``x + fc(x)``: the units are ``hh``'s and
    ``block.fc``'s, not the model's or the block's."""

    def __init__(self) -> None:
        super().__init__()
        self.ih, self.hh = nn.Linear(6, 8), nn.Linear(8, 8)
        self.block = nn.ModuleDict({"fc": nn.Linear(8, 8)})
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 8)
        for t in range(3):
            h = F.relu(self.hh(h) + self.ih(x * (t + 1) / 3))
        return self.head(self.residual(h))

    def residual(self, h):
        return F.relu(h + self.block["fc"](h))


def test_dead_units_of_a_recurrence_written_out_are_its_recurrent_layers(tmp_path):
    model = WrittenOutNet()
    with torch.no_grad():
        model.hh.bias[:3] = -100.0  # three of hh's eight units never pass the ReLU
    hh, ih = copy.deepcopy(model.hh), copy.deepcopy(model.ih)
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    values = records[0].values
    with torch.no_grad():  # by hand, with the weights the step's forward used
        h, pre = torch.zeros(16, 8), []
        for t in range(3):
            pre.append(hh(h) + ih(x * (t + 1) / 3))
            h = F.relu(pre[-1])
    dead = (torch.cat(pre) <= 0).all(0).float().mean().item()
    assert dead >= 3 / 8
    assert values["dead_units/hh"] == pytest.approx(dead)
    assert "dead_units/<root>" not in values
    assert "dead_units/block.fc" in values  # the residual's ReLU: block.fc's units


class ClippedNet(nn.Module):
    """ReLU6 as a module and a function, and a hardtanh that is not a ReLU (floor -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.act = nn.ReLU6()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu6(self.fc2(self.act(self.fc1(x))))
        return self.head(F.hardtanh(self.fc3(h)))  # floor -1: a unit below 0 still learns


def test_relu6_and_a_hardtanh_clipped_at_zero_count_as_relus(tmp_path):
    model = ClippedNet()
    with torch.no_grad():
        model.fc1.bias[:2] = -100.0  # two of fc1's units never pass ReLU6
        model.fc2.bias[:5] = -100.0  # five of fc2's never pass F.relu6
        model.fc3.bias[:] = -100.0  # all below hardtanh's floor of 0: yet not ReLU units
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    values = records[0].values
    with torch.no_grad():  # by hand, from the pre-activations
        pre1 = model.fc1(x)
    assert (pre1[:, :2] <= 0).all() and (pre1[:, 2:] > 0).any(0).all()
    assert values["dead_units/fc1"] == pytest.approx(2 / 8)
    assert values["dead_units/fc2"] >= 5 / 8
    assert not any(k.startswith(("dead_units/", "relu_active/")) and "fc3" in k for k in values)


class SquashingNet(nn.Module):
    """nn.Tanh after fc1, Tensor.sigmoid after fc2, torch.tanh inside a leaf without children."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 5)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.head(self.fc2(self.act(self.fc1(x))).sigmoid())


def test_tanh_and_sigmoid_saturation_per_layer_by_hand(tmp_path):
    model = SquashingNet()
    with torch.no_grad():
        model.fc1.weight.mul_(40.0)  # most of fc1's tanh inputs far out in the tails
    fc1, fc2 = copy.deepcopy(model.fc1), copy.deepcopy(model.fc2)
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    values = records[0].values
    with torch.no_grad():  # from the step's own pre-activations: slope under 2% of its peak
        pre1 = fc1(x)
        pre2 = fc2(torch.tanh(pre1))
        tanh_share = ((1 - torch.tanh(pre1) ** 2) < 0.02).float().mean().item()
        s = torch.sigmoid(pre2)
        sigmoid_share = (s * (1 - s) < 0.02 * 0.25).float().mean().item()
    assert tanh_share > 0.5  # the case is the one built
    assert values["saturated/fc1"] == pytest.approx(tanh_share)
    assert values["saturated/fc2"] == pytest.approx(sigmoid_share)


def test_a_regression_head_gets_no_output_logit_or_softmax_signal(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    records, _, _, _ = _run(
        tmp_path, model, lambda z, t: F.mse_loss(z.squeeze(1), t.float()), steps=2
    )
    assert not any(k.startswith(("logit_lse", "softmax_collapse")) for k in records[-1].values)
    signals = steadygrad.load(tmp_path / "run").config["signals"]
    assert signals["CrossEntropyOutputSignal"].startswith("off")
    assert signals["DeadUnitSignal"] == "on"  # the tanh's saturation: it applies
    assert signals["AttentionLogitSignal"].startswith("off")
    report = steadygrad.diagnose(tmp_path / "run")
    assert "softmax_collapse" not in report.causes()
    assert "output_logit_divergence" not in report.causes()


def test_a_hardswish_unit_is_dead_only_below_minus_three(tmp_path):
    # hardswish's slope is exactly 0 below -3 (a dead unit) but not between -3 and 0, where its
    # output is negative and its gradient is not: two units are pushed below -3 (dead), two
    # only below 0 (alive), and the rest left as they are
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Hardswish(), nn.Linear(8, 5))
    with torch.no_grad():
        model[0].weight.mul_(0.1)
        model[0].bias[:2] = -50.0
        model[0].bias[2:4] = -1.5
    first = copy.deepcopy(model[0])
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    with torch.no_grad():
        pre = first(x)  # the step's own pre-activations
    dead_by_hand = (pre <= -3).all(0).float().mean().item()
    assert (pre[:, 2:4] < 0).all() and (pre[:, 2:4] > -3).all()  # negative, yet alive
    assert dead_by_hand == pytest.approx(2 / 8)
    assert records[0].values["dead_units/0"] == pytest.approx(dead_by_hand)
    assert records[0].values["relu_active/0"] == pytest.approx((pre > -3).float().mean().item())


def test_units_whose_input_never_varies_are_dead_even_above_zero(tmp_path):
    # torch's structured pruning masks half of the first layer's rows: those units' inputs are
    # their bias alone, the same for every example, positive or not; they take no part
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        model[0].bias.fill_(0.5)  # every unit passes the ReLU somewhere: none dead by sign
    prune.ln_structured(model[0], "weight", amount=0.5, n=2, dim=0)
    masked = (model[0].weight_mask.sum(1) == 0).float().mean().item()
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    assert masked == pytest.approx(0.5)  # the oracle: the mask torch applied
    assert records[0].values["dead_units/0"] == pytest.approx(masked)


def test_without_the_mask_the_same_units_are_alive(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
    records, _, x, _ = _run(tmp_path, model, F.cross_entropy, steps=1)
    with torch.no_grad():
        by_hand = (F.relu(model[0](x)) > 0).any(0).logical_not().float().mean().item()
    assert records[0].values["dead_units/0"] == pytest.approx(by_hand)


def test_nan_activations_do_not_count_as_dead_units(tmp_path):
    model = FunctionalNet()
    x = torch.randn(16, 6)
    x[0, 0] = math.nan
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.watch(model, opt, tmp_path / "nan", progress=False, activation_every=1) as mon:
        loss = F.cross_entropy(model(x), torch.randint(0, 5, (16,)))
        loss.backward()
        record = mon.step(loss)
    assert record.nonfinite
    assert record.values["dead_units/fc1"] == 0.0


def test_mechanisms_can_be_switched_off_and_a_given_signal_replaces_its_default(tmp_path):
    model = FunctionalNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path / "a", mechanisms=False, progress=False)
    names = {type(s).__name__ for s in mon.signals}
    mon.close()
    assert not names & {"CrossEntropyOutputSignal", "DeadUnitSignal", "AttentionLogitSignal"}
    given = steadygrad.OutputLogitSignal(module="head")
    mon = steadygrad.Monitor(model, opt, tmp_path / "b", signals=[given], progress=False)
    names = [type(s).__name__ for s in mon.signals]
    mon.close()
    assert "CrossEntropyOutputSignal" not in names and "OutputLogitSignal" in names


def test_an_output_signal_that_guesses_its_module_defers_to_the_loss_call(tmp_path):
    # The last Linear of this model is not its output: the logits are scaled after it. The
    # guessing OutputLogitSignal() reads the unscaled Linear; the loss call sees the real logits.
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(6, 5)

        def forward(self, x):
            return 30.0 * self.head(x)

    model = Scaled()
    guess = steadygrad.OutputLogitSignal()
    records, hand, _, _ = _run(tmp_path, model, F.cross_entropy, steps=3, signals=[guess])
    assert steadygrad.load(tmp_path / "run").config["signals"]["CrossEntropyOutputSignal"] == "on"
    for record, logits in zip(records[1:], hand[1:], strict=True):
        assert record.values["logit_lse_mean"] == pytest.approx(
            torch.logsumexp(logits, 1).mean().item(), rel=1e-5
        )
        assert record.meta["output_module"] == "head"


def test_a_one_wide_output_is_no_softmax_even_for_an_explicit_signal(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    signals = [steadygrad.SoftmaxCollapseSignal(), steadygrad.OutputLogitSignal()]
    records, _, _, _ = _run(
        tmp_path, model, lambda z, t: F.mse_loss(z.squeeze(1), t.float()), signals=signals
    )
    assert not any(k.startswith(("logit_lse", "softmax_collapse")) for k in records[-1].values)


def test_a_plasticity_signal_on_every_activation_leaves_relus_to_the_dead_unit_signal(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # two of the first layer's units never pass the ReLU
    records, _, _, _ = _run(
        tmp_path, model, F.cross_entropy, steps=1, signals=[steadygrad.PlasticitySignal(every=1)]
    )
    values = records[0].values
    assert values["dead_units/0"] == pytest.approx(2 / 8)  # named by the layer that fed it
    assert "dead_units/1" not in values and "effective_rank/1" in values
    named = steadygrad.PlasticitySignal(every=1, modules=["1"])  # asked for: it counts them
    records, _, _, _ = _run(tmp_path / "named", model, F.cross_entropy, steps=1, signals=[named])
    assert records[0].values["dead_units/1"] == pytest.approx(2 / 8)
    assert "dead_units/0" not in records[0].values


def test_a_failing_probe_is_switched_off_with_a_warning_and_training_goes_on(tmp_path):
    """A sharpness probe on NaN weights, or any signal that raises, never stops training."""

    class Broken(steadygrad.Signal):
        metrics = ()

        def collect(self, step):
            raise RuntimeError("boom")

    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    probe = steadygrad.SharpnessProbe(
        lambda m, b: F.mse_loss(m(b[0]), b[1]), (x, y), every=1, max_matvecs=5
    )
    with pytest.warns(RuntimeWarning, match="switched off"):
        with steadygrad.watch(
            model, opt, tmp_path / "run", signals=[probe, Broken()], progress=False
        ) as mon:
            for step in range(4):
                if step == 2:
                    with torch.no_grad():
                        model.weight.fill_(float("nan"))
                loss = F.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                mon.step(loss)
                opt.zero_grad()
    run = steadygrad.load(tmp_path / "run")
    assert run.status == "finished" and run.num_steps == 4
    assert "nonfinite" in steadygrad.diagnose(run).causes()


def test_nll_loss_given_a_layers_raw_scores_reads_them_as_the_logits(tmp_path):
    # Set 147's raga classifier: class weights added by switching cross_entropy to nll_loss,
    # the log_softmax forgotten. nll_loss(z, y) = -z[y] is unbounded below: the scores are the
    # logits, and their statistics and the loss's push along their common shift are read
    # (every row's gradient is -1 at its target: all of it along the shift). Control: nll_loss
    # on log-probabilities made otherwise than by a layer (a log of a softmax) reads nothing.
    model = nn.Linear(6, 5)
    records, hand, _, _ = _run(tmp_path, model, lambda z, y: F.nll_loss(z, y), steps=2)
    for record, logits in zip(records, hand, strict=True):
        assert record.values["logit_lse_mean"] == pytest.approx(
            torch.logsumexp(logits, 1).mean().item(), rel=1e-5
        )
        assert record.values["output_logit_max"] == pytest.approx(logits.abs().max().item())
        assert record.values["output_shift_gradient"] == pytest.approx(-1.0, rel=1e-4)
    logged, _, _, _ = _run(
        tmp_path / "log", nn.Linear(6, 5), lambda z, y: F.nll_loss(torch.log(z.softmax(-1)), y)
    )
    assert "logit_lse_mean" not in logged[0].values


class _CosineHead(nn.Module):
    """Set 148's cosine classifier: the head's weight used by the forward itself,
    ``scale * F.linear(h, F.normalize(head.weight))``; ``tied`` scores against part of the
    input layer's weight instead (an output layer tied to it, written by hand); ``biased``
    adds the head's bias (the product's first input is then a leaf that is no matrix);
    ``root`` scores against class keys the model itself holds (set 112's memory bank)."""

    def __init__(self, weights: str = "head") -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(6, 8), nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)
        self.keys = nn.Parameter(torch.randn(5, 8))
        self.weights = weights

    def forward(self, x):
        h = self.norm(self.embed(x))
        if self.weights == "tied":
            return h @ self.embed.weight[:, :5]
        if self.weights == "root":
            return h @ F.normalize(self.keys, dim=1).T / 0.1
        bias = self.head.bias if self.weights == "biased" else None
        return 16.0 * F.linear(h, F.normalize(self.head.weight, dim=-1), bias)


@pytest.mark.parametrize(
    ("weights", "named"),
    [("head", "head"), ("biased", "head"), ("tied", "embed"), ("root", "norm")],
)
def test_a_head_whose_weight_the_forward_uses_itself_is_named(tmp_path, weights, named):
    # Trigger: set 148's softmax collapse was placed at the LayerNorm before the product (the
    # last module whose output the logits came from); the module whose weight made them is the
    # head. Both fail on the code before; a head that is a leaf module's output is named as
    # before (test_output_statistics_come_from_the_loss_call). Control: a matrix the root
    # model holds names no module, and the input's maker is named as before (set 112).
    records, _, _, _ = _run(tmp_path, _CosineHead(weights), F.cross_entropy, steps=1)
    assert records[0].meta["output_module"] == named


@pytest.mark.parametrize("written", ["divided", "scaled", "learnt", "none"])
def test_a_plain_number_the_logits_are_scaled_by_is_read(tmp_path, written):
    # The loss divides the head's output by a temperature written as a number (T = 0.05: read
    # 20, and 2 * 10 / 0.5 = 40 through a view); a learnt temperature is a parameter, no plain
    # number (its own reading names it); a head used as it is has none to read.
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    temperature = nn.Parameter(torch.tensor(0.05))
    model.register_parameter("temperature", temperature)
    loss_of = {
        "divided": lambda z, t: F.cross_entropy(z / 0.05, t),
        "scaled": lambda z, t: F.cross_entropy((2 * z).view(16, 5) * 10 / 0.5, t),
        "learnt": lambda z, t: F.cross_entropy(z / temperature, t),
        "none": lambda z, t: F.cross_entropy(z, t),
    }[written]
    records, _, _, _ = _run(tmp_path, model, loss_of, steps=1)
    expected = {"divided": 20.0, "scaled": 40.0}.get(written)
    if expected is None:
        assert "output_scale" not in records[0].values
    else:
        assert records[0].values["output_scale"] == pytest.approx(expected)


def test_a_loss_taken_again_after_backward_is_still_read(tmp_path):
    # A cross-entropy logged after backward (its logits' graph freed, a number divided in):
    # reading the number must not cost the call's statistics, which equal those by hand.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        z = model(x) / 0.05
        (z**2).mean().backward()
        F.cross_entropy(z, y)  # logged after backward
        opt.step()
        record = mon.step(torch.tensor(1.0))
    expected = torch.logsumexp(z.detach(), 1).mean().item()
    assert record.values["logit_lse_mean"] == pytest.approx(expected, rel=1e-5)
