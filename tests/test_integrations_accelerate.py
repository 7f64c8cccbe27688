"""A plain accelerate loop: the Monitor takes the prepared (wrapped) optimizer as it is.

Oracle: the weights at the start of each accumulation window, and the step's loss and gradient
norm recomputed by hand from them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

import steadygrad  # noqa: E402
from steadygrad.core.optimizer import unwrap_optimizer  # noqa: E402

MICRO, ACCUM, STEPS, CLIP = 4, 2, 8, 0.5


@pytest.fixture
def accelerator():
    acc = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUM)
    yield acc
    accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)
    accelerate.state.GradientState._reset_state()


def data(n: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return torch.utils.data.TensorDataset(x, 2.0 * x[:, :3] + torch.randn(n, 3, generator=g))


@pytest.mark.parametrize("passed", [True, False], ids=["norm_passed", "norm_read_from_the_clip"])
def test_accelerate_loop_records_loss_and_norms_with_the_prepared_optimizer(
    tmp_path, accelerator, passed
):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    dataset = data(STEPS * MICRO * ACCUM)
    loader = torch.utils.data.DataLoader(dataset, batch_size=MICRO, shuffle=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    model, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    assert type(optimizer).__name__ == "AcceleratedOptimizer"
    assert isinstance(unwrap_optimizer(optimizer), torch.optim.SGD)

    mon = steadygrad.Monitor(model, optimizer, tmp_path / "run", progress=False)
    starts, step_loss, norm = [], 0.0, None
    for i, (x, y) in enumerate(loader):
        if i % ACCUM == 0:
            starts.append(copy.deepcopy(net.state_dict()))
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            step_loss = step_loss + loss.detach() / ACCUM
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            if accelerator.sync_gradients:
                mon.step(step_loss, grad_norm_preclip=norm if passed else None)
                step_loss = 0.0
            optimizer.zero_grad()
    mon.close()

    run = steadygrad.load(tmp_path / "run")
    steps, loss = run.series("loss")
    _, preclip = run.series("grad_norm_preclip")
    _, applied = run.series("grad_norm")
    assert list(steps) == list(range(STEPS)) and len(starts) == STEPS
    x_all, y_all = dataset.tensors
    window, clipped = MICRO * ACCUM, 0
    for k in range(STEPS):
        ref = copy.deepcopy(net).double()
        ref.load_state_dict(starts[k])
        xs, ys = x_all[k * window : (k + 1) * window], y_all[k * window : (k + 1) * window]
        want = (
            sum(
                nn.functional.mse_loss(ref(xs[j : j + MICRO].double()), ys[j : j + MICRO].double())
                for j in range(0, window, MICRO)
            )
            / ACCUM
        )
        want.backward()
        want_norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in ref.parameters()])
        ).item()
        assert loss[k] == pytest.approx(want.item(), rel=1e-5)
        assert preclip[k] == pytest.approx(want_norm, rel=1e-5)
        assert applied[k] == pytest.approx(want_norm * min(1, CLIP / (want_norm + 1e-6)), rel=1e-5)
        clipped += want_norm > CLIP
    assert clipped >= 2, "the test must exercise clipping"


def test_accelerate_loop_autopilot_skips_a_nan_batch(tmp_path, accelerator):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    loader = torch.utils.data.DataLoader(data(8 * MICRO), batch_size=MICRO, shuffle=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    model, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    pilot = steadygrad.Autopilot()
    weights = []
    with steadygrad.watch(model, optimizer, tmp_path / "run", autopilot=pilot) as mon:
        for i, (x, y) in enumerate(loader):
            if i == 3:
                x = x * float("nan")
            weights.append(copy.deepcopy(net.state_dict()))
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()  # the AcceleratedOptimizer: a skipped update never raises
            mon.step(loss)
            optimizer.zero_grad()
    assert [(s, k) for s, k, _ in mon.actions] == [(3, "skip_update")]
    for name, value in weights[3].items():  # the update of step 3 left no trace
        assert torch.equal(value, weights[4][name]), name
    assert not torch.equal(weights[2]["0.weight"], weights[3]["0.weight"])
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())
