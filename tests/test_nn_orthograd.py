import pytest
import torch

from steadygrad.nn import OrthoGrad, orthogonal_gradient


def test_plain_projection_is_orthogonal_and_descends():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, dtype=torch.float64, generator=g)
    grad = torch.randn(6, 4, dtype=torch.float64, generator=g)
    out = orthogonal_gradient(w, grad, rescale=False)
    assert abs(float((out * w).sum())) < 1e-12
    assert float((out * grad).sum()) >= 0
    assert out.norm() <= grad.norm()
    # by hand: g - (w.g / w.w) w
    wf, gf = w.flatten().tolist(), grad.flatten().tolist()
    c = sum(a * b for a, b in zip(wf, gf, strict=True)) / sum(a * a for a in wf)
    hand = torch.tensor([b - c * a for a, b in zip(wf, gf, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(out.flatten(), hand)


def test_rescaled_projection_keeps_gradient_norm_and_is_orthogonal():
    w, grad = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    out = orthogonal_gradient(w, grad)
    assert abs(float(out @ w)) < 1e-12
    assert float(out.norm()) == pytest.approx(float(grad.norm()), rel=1e-12)


def test_gradient_parallel_to_weights_gives_zero_plain_update():
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert orthogonal_gradient(w, 5 * w, rescale=False).abs().max() < 1e-14


def test_wrapper_projects_per_tensor_before_base_step_and_preserves_norm_to_second_order():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2)).double()
    before = [p.detach().clone() for p in model.parameters()]
    lr = 1e-2
    opt = OrthoGrad(torch.optim.SGD(model.parameters(), lr=lr), rescale=False)
    model(torch.randn(8, 5, dtype=torch.float64)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for w0, g, p in zip(before, grads, model.parameters(), strict=True):
        gp = orthogonal_gradient(w0, g, rescale=False)
        torch.testing.assert_close(p.detach(), w0 - lr * gp)
        # ||w - lr g_perp||^2 = ||w||^2 + lr^2 ||g_perp||^2 exactly
        expect = w0.norm() ** 2 + lr**2 * gp.norm() ** 2
        assert float(p.detach().norm() ** 2) == pytest.approx(float(expect), rel=1e-12)


def test_wrapper_shares_groups_with_schedulers_and_checkpoints():
    model = torch.nn.Linear(3, 1)
    opt = OrthoGrad(torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    sched.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.05)
    state = opt.state_dict()
    assert state["state"] and state == opt.base.state_dict()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_wrapper_rejects_non_optimizers():
    with pytest.raises(TypeError, match="optimizer"):
        OrthoGrad([torch.zeros(2)])
