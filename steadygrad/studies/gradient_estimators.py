"""Study: gradient estimators beyond backpropagation, against backprop, on digits.

Each estimator trains a model on scikit-learn's digits under a real Monitor with an
:class:`~steadygrad.estimators.EstimatorAlignment` signal; the study reads the cosine and norm
ratio of each update against the true gradient back from the run store, with the test accuracy
reached. It checks the published qualitative results:

- forward gradient (Baydin et al. 2022): unbiased, but one draw's cosine with the true gradient
  is about ``sqrt(2 / (pi n))`` for ``n`` parameters: it falls as ``1/sqrt(n)`` (measured at
  initialisation over several widths), so it learns far slower per step than backprop;
- direct feedback alignment (Nokland 2016): the hidden layers' updates start nearly orthogonal
  to the true gradient and their cosine rises as the forward weights come to align with the
  fixed feedback;
- Forward-Forward (Hinton 2022): every layer separates positive from negative data by its own
  goodness; its update is exact for the last layer and differs from backprop of the same loss
  in the earlier ones;
- ReSTE (Wu et al. 2023), with ``o`` annealed from 1 to 3: at ``o = 1`` (the identity STE) the
  latent update is a rescaled ``dL/dW_b`` (cosine 1); as ``o`` grows it reweights coordinates.

Example:
    >>> result = run_gradient_estimators("studies/gradient-estimators", progress=False)  # doctest: +SKIP
    >>> result.claims()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from steadygrad.core.checks import positive_int
from steadygrad.data.digits import load_digits
from steadygrad.estimators import (
    ESTIMATOR_COSINE,
    ESTIMATOR_NORM_RATIO,
    Backprop,
    DirectFeedbackAlignment,
    EstimatorAlignment,
    ForwardForward,
    ForwardForwardMLP,
    ForwardGradient,
    GradientEstimator,
    ReSTE,
    expected_cosine,
)
from steadygrad.estimators.forward_forward import GOODNESS_NEGATIVE, GOODNESS_POSITIVE
from steadygrad.models.mlp import MLP
from steadygrad.nn.reste import BinaryLinear, reste_power_schedule
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads

ESTIMATORS = ("backprop", "forward_gradient", "dfa", "forward_forward", "reste")


@dataclass
class GradientEstimatorsResult:
    """Per estimator: alignment curves read back from its run, and the accuracy reached.

    ``cosine[e]`` / ``norm_ratio[e]``: over every parameter; ``layer_cosine[e]``: per weight
    matrix. ``dimension``: forward gradient's mean cosine at initialisation against the number
    of parameters, with the exact expectation; ``dimension_slope``: the log-log slope.
    ``goodness[l]``: Forward-Forward's final positive and negative goodness per layer.
    """

    config: dict
    steps: dict[str, list[int]] = field(default_factory=dict)
    cosine: dict[str, list[float]] = field(default_factory=dict)
    norm_ratio: dict[str, list[float]] = field(default_factory=dict)
    layer_cosine: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    dimension: dict[str, list[float]] = field(default_factory=dict)
    dimension_slope: float = math.nan
    goodness: dict[str, dict[str, float]] = field(default_factory=dict)
    run_dirs: dict[str, str] = field(default_factory=dict)
    plot_path: Path | None = None

    def claims(self) -> dict[str, bool]:
        """The published qualitative results, checked on this run (for the estimators run)."""
        out: dict[str, bool] = {}
        if self.dimension.get("parameters"):
            measured, expected = self.dimension["measured"], self.dimension["expected"]
            out["forward_gradient_cosine_falls_as_inverse_sqrt_n"] = (
                -0.6 < self.dimension_slope < -0.4
                and all(abs(m / e - 1) < 0.25 for m, e in zip(measured, expected, strict=True))
            )
        if "dfa" in self.layer_cosine:
            hidden = list(self.layer_cosine["dfa"].values())[0]
            k = max(1, len(hidden) // 5)
            out["dfa_alignment_rises"] = np.mean(hidden[-k:]) > np.mean(hidden[:1]) + 0.2
        if "forward_forward" in self.layer_cosine:
            layers = list(self.layer_cosine["forward_forward"].values())
            out["forward_forward_layers_separate_goodness"] = all(
                g["positive"] > g["negative"] for g in self.goodness.values()
            )
            out["forward_forward_last_layer_exact"] = (
                all(abs(c - 1) < 1e-4 for c in layers[-1]) and min(layers[0]) < 0.99
            )
        if "reste" in self.layer_cosine:
            binary = self.layer_cosine["reste"]["0.weight"]
            out["reste_rescales_at_o_1_and_reweights_as_o_grows"] = (
                binary[0] > 0.999 and binary[-1] < binary[0] - 0.01
            )
        if "backprop" in self.cosine:
            out["backprop_exact"] = all(abs(c - 1) < 1e-5 for c in self.cosine["backprop"])
        out["every_estimator_learns"] = all(a > 0.3 for a in self.accuracy.values())
        return out

    def summary(self) -> str:
        lines = [f"gradient-estimators study: {self.config}"]
        for e in self.steps:
            cos = self.cosine[e]
            lines.append(
                f"  {e:16s} test acc {self.accuracy[e]:.3f}; cosine with backprop "
                f"first {cos[0]:.3f} last {cos[-1]:.3f}; norm ratio last "
                f"{self.norm_ratio[e][-1]:.3g} ({self.seconds[e]:.0f} s)"
            )
        if self.dimension.get("parameters"):
            pairs = zip(
                self.dimension["parameters"],
                self.dimension["measured"],
                self.dimension["expected"],
                strict=True,
            )
            shown = ", ".join(f"n={int(n)}: {m:.4f} (exact {e:.4f})" for n, m, e in pairs)
            lines.append(
                f"  forward gradient cosine at init: {shown}; slope {self.dimension_slope:.3f}"
            )
        for layer, g in self.goodness.items():
            lines.append(
                f"  forward-forward {layer}: goodness positive {g['positive']:.3f}, "
                f"negative {g['negative']:.3f}"
            )
        lines.append("  claims: " + ", ".join(f"{k} {v}" for k, v in self.claims().items()))
        return "\n".join(lines)


def _build(
    name: str, hidden: int, steps: int, seed: int
) -> tuple[nn.Module, GradientEstimator, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    if name == "forward_forward":
        model: nn.Module = ForwardForwardMLP(64, [hidden, hidden], 10)
        return model, ForwardForward(model, seed=seed), torch.optim.Adam(model.parameters(), 0.01)
    if name == "reste":
        model = nn.Sequential(BinaryLinear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        estimator: GradientEstimator = ReSTE(model)
    else:
        model = MLP(64, [hidden], 10)
        if name == "forward_gradient":
            estimator = ForwardGradient(model, seed=seed)
        elif name == "dfa":
            estimator = DirectFeedbackAlignment(model, seed=seed)
        else:
            estimator = Backprop(model)
    # Forward gradient's variance grows with n: it needs a much smaller step (Baydin et al.).
    lr = 3e-4 if name == "forward_gradient" else 0.05
    return model, estimator, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def forward_gradient_dimension(
    widths: Sequence[int] = (8, 32, 128, 512), draws: int = 200, seed: int = 0
) -> dict[str, list[float]]:
    """Forward gradient's mean cosine with the true gradient at initialisation, for MLPs of
    several widths on one digits batch, with its exact expectation for their parameter count.

    Example:
        >>> out = forward_gradient_dimension(widths=(8,), draws=20)  # doctest: +SKIP
    """
    draws = positive_int("draws", draws)
    x, y, _, _ = load_digits(seed=seed)
    batch = (x[:128], y[:128])
    out: dict[str, list[float]] = {"parameters": [], "measured": [], "expected": []}
    for width in widths:
        torch.manual_seed(seed)
        model = MLP(64, [positive_int("widths", width)], 10)
        estimator = ForwardGradient(model, seed=seed)
        true = torch.cat([g.reshape(-1) for g in estimator.true_gradient(batch)])
        cosines = []
        for _ in range(draws):
            _, update = estimator.estimate(batch)
            flat = torch.cat([u.reshape(-1) for u in update])
            cosines.append(float(flat @ true / (flat.norm() * true.norm())))
        n = sum(p.numel() for p in model.parameters())
        out["parameters"].append(float(n))
        out["measured"].append(float(np.mean(cosines)))
        out["expected"].append(expected_cosine(n))
    return out


@on_cpu_threads
def run_gradient_estimators(
    out_dir: str | Path,
    steps: int = 600,
    hidden: int = 128,
    batch_size: int = 64,
    compare_every: int = 20,
    estimators: Sequence[str] = ESTIMATORS,
    widths: Sequence[int] = (8, 32, 128, 512),
    draws: int = 200,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> GradientEstimatorsResult:
    """Train with each estimator under a Monitor; write ``gradient_estimators.json`` (and
    ``.png``) and one run directory per estimator under ``out_dir``.

    Default size: 600 steps of batch 64 per estimator, alignment every 20 steps, and the
    dimension sweep: well under a minute on one CPU thread.

    Example:
        >>> result = run_gradient_estimators("out", steps=100, progress=False)  # doctest: +SKIP
    """
    import steadygrad

    steps = positive_int("steps", steps)
    hidden = positive_int("hidden", hidden)
    batch_size = positive_int("batch_size", batch_size)
    compare_every = positive_int("compare_every", compare_every)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise ValueError(f"estimators must be a non-empty subset of {ESTIMATORS}, got {estimators}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits(seed=seed)
    config = dict(
        steps=steps,
        hidden=hidden,
        batch_size=batch_size,
        compare_every=compare_every,
        estimators=list(estimators),
        widths=list(widths),
        draws=draws,
        seed=seed,
    )
    result = GradientEstimatorsResult(config=config)
    for name in estimators:
        start = time.perf_counter()
        model, estimator, optimizer = _build(name, hidden, steps, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        run_dir = out_dir / name
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a rerun of the study replaces its own earlier runs
        signal = EstimatorAlignment(estimator, every=compare_every)
        binary = [m for m in model.modules() if isinstance(m, BinaryLinear)]
        with steadygrad.watch(
            model,
            optimizer,
            run_dir,
            signals=[signal],
            progress=False,
            config={"study": "gradient-estimators", "estimator": name, **config},
        ) as mon:
            for step in range(steps):
                for m in binary:
                    m.o = reste_power_schedule(step, steps)
                idx = torch.randint(len(x_train), (batch_size,), generator=generator)
                loss = estimator.backward((x_train[idx], y_train[idx]))
                optimizer.step()
                mon.step(loss)
                optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.eval()
            result.accuracy[name] = float((model(x_test).argmax(1) == y_test).float().mean())
        _read_back(result, name, run_dir)
        result.seconds[name] = time.perf_counter() - start
        if progress:
            print(f"[gradient-estimators:{name}] test accuracy {result.accuracy[name]:.3f}")
    if "forward_gradient" in estimators and widths:
        result.dimension = forward_gradient_dimension(widths, draws, seed)
        slope = np.polyfit(
            np.log(result.dimension["parameters"]), np.log(result.dimension["measured"]), 1
        )[0]
        result.dimension_slope = float(slope)
    return save_result(result, out_dir, "gradient_estimators", _plot, plot, progress)


def _read_back(result: GradientEstimatorsResult, name: str, run_dir: Path) -> None:
    import steadygrad

    run = steadygrad.load(run_dir)
    steps, cosine = run.series(ESTIMATOR_COSINE.key())
    result.steps[name] = [int(s) for s in steps]
    result.cosine[name] = [float(c) for c in cosine]
    result.norm_ratio[name] = [float(r) for r in run.series(ESTIMATOR_NORM_RATIO.key())[1]]
    result.layer_cosine[name] = {
        param: [float(c) for c in values]
        for param, (_, values) in run.family(ESTIMATOR_COSINE.name).items()
        if param.endswith("weight")
    }
    if name == "forward_forward":
        positive = run.family(GOODNESS_POSITIVE.name)
        negative = run.family(GOODNESS_NEGATIVE.name)
        result.goodness = {
            layer: {"positive": float(positive[layer][1][-1]), "negative": float(v[-1])}
            for layer, (_, v) in negative.items()
        }
    result.run_dirs[name] = str(run_dir)
    run.close()


def _plot(result: GradientEstimatorsResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, layers) in enumerate(result.layer_cosine.items()):
        for j, (param, values) in enumerate(layers.items()):
            left.plot(
                result.steps[name],
                values,
                color=f"C{i}",
                ls=("-", "--", ":")[j % 3],
                label=f"{name} {param}",
            )
    left.set_xlabel("step")
    left.set_ylabel("cosine with the backprop gradient")
    left.legend(fontsize=6)
    if result.dimension.get("parameters"):
        n = result.dimension["parameters"]
        right.loglog(n, result.dimension["measured"], "o", label="forward gradient, measured")
        right.loglog(n, result.dimension["expected"], "-", label="exact E[cos] ~ sqrt(2/(pi n))")
        right.set_xlabel("parameters n")
        right.set_ylabel("mean cosine at initialisation")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
