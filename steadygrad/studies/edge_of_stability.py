"""Study: gradient descent at the edge of stability (Cohen, Kaur, Li, Kolter, Talwalkar; ICLR 2021).

Full-batch gradient descent on a tanh MLP fitted to a subset of scikit-learn's digits with the
square loss, at a few step sizes. Sharpness (the top Hessian eigenvalue of the training loss) is
measured every few steps by warm-started Lanczos. The published result: sharpness rises
(progressive sharpening) until it reaches 2/lr, then hovers there while the loss keeps falling,
non-monotonically. The study reports, per step size, the mean ratio sharpness / (2/lr) over the
last part of training.

``optimizer="adam"`` runs the adaptive version (Cohen et al. 2022, "Adaptive gradient methods at
the edge of stability"): full-batch Adam (beta1 = 0.9, beta2 = 0.999), probing the preconditioned
sharpness lambda_max(P^-1 H) (P Adam's diagonal preconditioner, from its state) against
(2 + 2 beta1) / ((1 - beta1) lr) = 38/lr; it rises to that limit and hovers there.

Example:
    >>> result = run_edge_of_stability("eos-out", step_sizes=(0.4,), steps=300)  # doctest: +SKIP
    >>> result.runs[0.4].final_ratio  # doctest: +SKIP
    1.02...
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metrics import CURVATURE_MATVECS, LOSS, PRECONDITIONED_SHARPNESS, SHARPNESS
from steadygrad.curvature.preconditioned import adam_limit
from steadygrad.curvature.probe import SharpnessProbe
from steadygrad.data import load_digits
from steadygrad.models import MLP
from steadygrad.monitor import Monitor
from steadygrad.store import load

OPTIMIZERS = ("gd", "adam")
GD_STEP_SIZES = (0.4, 0.27, 0.2)
ADAM_STEP_SIZES = (2e-3, 1e-3)


@dataclass
class EdgeOfStabilityRun:
    """One step size: the measured series and the summary."""

    lr: float
    limit: float  # 2 / lr (GD) or 38 / lr (Adam, for the preconditioned sharpness)
    probe_steps: list[int]
    sharpness: list[float]
    loss_steps: list[int]
    loss: list[float]
    initial_ratio: float  # sharpness / limit at step 0
    final_ratio: float  # mean sharpness / limit over the last ``tail`` of training
    first_step_at_limit: int | None  # first probe with sharpness >= 0.95 * limit
    loss_increases: int  # steps where the loss went up (non-monotone descent)
    matvecs: int
    optimizer: str = "gd"


@dataclass
class EdgeOfStabilityResult:
    runs: dict[float, EdgeOfStabilityRun]
    tail: float
    plot: Path | None
    seconds: float
    settings: dict = field(default_factory=dict)

    def ratios(self) -> dict[float, float]:
        """``{lr: mean sharpness / limit over the last part of training}`` (limit 2/lr for GD;
        preconditioned sharpness / (38/lr) for Adam)."""
        return {lr: run.final_ratio for lr, run in self.runs.items()}


def _data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _, _ = load_digits()
    x, y = x[:samples], y[:samples]
    return x, F.one_hot(y, 10).to(x.dtype)


def _square_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, target = batch
    return 0.5 * ((model(x) - target) ** 2).sum(dim=1).mean()


def _train(
    lr: float,
    batch: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    probe_every: int,
    hidden: int,
    seed: int,
    tail: float,
    run_dir: Path,
    optimizer_name: str = "gd",
) -> EdgeOfStabilityRun:
    torch.manual_seed(seed)
    model = MLP(64, [hidden, hidden], 10, activation=torch.nn.Tanh)
    adam = optimizer_name == "adam"
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
        if adam
        else torch.optim.SGD(model.parameters(), lr=lr)
    )
    limit = adam_limit(optimizer) if adam else 2.0 / lr
    shutil.rmtree(run_dir, ignore_errors=True)  # a study re-run records afresh
    # For Adam the probe also measures the preconditioned sharpness against 38/lr.
    probe = SharpnessProbe(_square_loss, batch, every=probe_every, tol=1e-3)
    with Monitor(model, optimizer, run_dir, signals=[probe], progress=False) as mon:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = _square_loss(model, batch)
            loss.backward()
            optimizer.step()
            mon.step(loss)
            if not torch.isfinite(loss):
                break
    # The measured curves, read back from the run as a user would.
    run = load(run_dir)
    measured = PRECONDITIONED_SHARPNESS if adam else SHARPNESS
    probe_steps, sharp = (a.tolist() for a in run.series(measured.name))
    if adam and len(sharp) > 1:
        # After Adam's first update its preconditioner holds one gradient's square: P^-1 H is
        # then meaningless (many times the limit); the series starts at the next probe.
        probe_steps, sharp = probe_steps[1:], sharp[1:]
    loss_steps, losses = (a.tolist() for a in run.series(LOSS.name))
    matvecs = int(run.series(CURVATURE_MATVECS.name)[1].sum())
    start = int(len(sharp) * (1 - tail))
    last = sharp[start:] or sharp[-1:]
    reached = [s for s, v in zip(probe_steps, sharp, strict=True) if v >= 0.95 * limit]
    return EdgeOfStabilityRun(
        lr=lr,
        limit=limit,
        probe_steps=probe_steps,
        sharpness=sharp,
        loss_steps=loss_steps,
        loss=losses,
        initial_ratio=sharp[0] / limit,
        final_ratio=sum(last) / len(last) / limit,
        first_step_at_limit=reached[0] if reached else None,
        loss_increases=sum(b > a for a, b in zip(losses[:-1], losses[1:], strict=True)),
        matvecs=matvecs,
        optimizer=optimizer_name,
    )


def _plot(runs: dict[float, EdgeOfStabilityRun], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plots are an extra
        return None
    adam = any(run.optimizer == "adam" for run in runs.values())
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for i, (lr, run) in enumerate(runs.items()):
        color = f"C{i}"
        top.plot(run.probe_steps, run.sharpness, color=color, label=f"lr = {lr:g}")
        top.axhline(run.limit, color=color, linestyle="--", linewidth=1)
        bottom.plot(run.loss_steps, run.loss, color=color, linewidth=1)
    if adam:
        top.set_ylabel("preconditioned sharpness (top eigenvalue of P^-1 H)")
        top.set_title("Full-batch Adam: preconditioned sharpness rises to 38/lr (dashed)")
    else:
        top.set_ylabel("sharpness (top Hessian eigenvalue)")
        top.set_title("Full-batch GD: sharpness rises to 2/lr (dashed) and hovers there")
    top.legend()
    bottom.set_yscale("log")
    bottom.set_ylabel("training loss")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_edge_of_stability(
    out_dir: str | Path,
    step_sizes: Sequence[float] | None = None,
    steps: int = 2000,
    *,
    optimizer: str = "gd",
    probe_every: int = 20,
    samples: int = 500,
    hidden: int = 64,
    tail: float = 0.3,
    seed: int = 0,
    progress: bool = True,
) -> EdgeOfStabilityResult:
    """Run the study, write ``edge_of_stability.png`` and ``edge_of_stability.json`` to
    ``out_dir``, and return the per-step-size ratios of sharpness to 2/lr.

    ``optimizer="adam"``: full-batch Adam, preconditioned sharpness against 38/lr (default step
    sizes ADAM_STEP_SIZES)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if step_sizes is None:
        step_sizes = ADAM_STEP_SIZES if optimizer == "adam" else GD_STEP_SIZES
    if not step_sizes:
        raise ValueError("step_sizes must hold at least one learning rate")
    lrs = [finite_float("step_sizes", lr, low=0.0, low_open=True) for lr in step_sizes]
    steps = positive_int("steps", steps)
    probe_every = positive_int("probe_every", probe_every)
    tail = finite_float("tail", tail, low=0.0, high=1.0, low_open=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = _data(positive_int("samples", samples))
    started = time.perf_counter()
    runs = {}
    for lr in lrs:
        hidden = positive_int("hidden", hidden)
        run_dir = out / "runs" / (f"lr{lr:g}" if optimizer == "gd" else f"adam-lr{lr:g}")
        runs[lr] = _train(lr, batch, steps, probe_every, hidden, seed, tail, run_dir, optimizer)
        if progress:
            run = runs[lr]
            print(
                f"{optimizer} lr={lr:g}: limit={run.limit:.3g}, "
                f"sharpness/limit at start {run.initial_ratio:.2f}, "
                f"over the last {tail:.0%} {run.final_ratio:.3f}; final loss {run.loss[-1]:.4g}, "
                f"{run.loss_increases} loss increases"
            )
    plot = _plot(runs, out / "edge_of_stability.png")
    result = EdgeOfStabilityResult(
        runs,
        tail,
        plot,
        time.perf_counter() - started,
        settings=dict(
            steps=steps,
            probe_every=probe_every,
            samples=samples,
            hidden=hidden,
            seed=seed,
            optimizer=optimizer,
        ),
    )
    summary = {
        "settings": result.settings,
        "tail": tail,
        "ratios": {str(lr): r for lr, r in result.ratios().items()},
        "runs": {str(lr): asdict(run) for lr, run in runs.items()},
    }
    (out / "edge_of_stability.json").write_text(json.dumps(summary))
    return result
