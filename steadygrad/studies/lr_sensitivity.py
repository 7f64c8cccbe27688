"""Study: learning-rate sensitivity of small transformers, with and without the mitigations.

After Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities" (arXiv 2309.14322): train TinyGPT at a few sizes over a learning-rate grid, with
and without qk-layernorm + z-loss, and compare the final validation loss against the LR and the
paper's LR-sensitivity metric. Their result: the mitigations flatten the curve at high LRs.

Setup as in the paper, scaled down: AdamW (0.9, 0.95, eps 1e-8), linear warmup + cosine decay
to an LR of 1e-5, global-norm clipping at 1, independent weight decay 1e-4, z-loss 1e-4, head
dimension fixed while width, depth and heads grow together. Byte-level text from the Python
standard library instead of C4, and a few hundred steps instead of 1e5.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.studies.sweep import run_sweep

PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)

# name -> (n_layer, n_head, n_embd); head dimension 16 throughout.
SIZES: dict[str, tuple[int, int, int]] = {
    "xs": (1, 2, 32),
    "s": (2, 4, 64),
    "m": (3, 6, 96),
}

BASELINE, MITIGATED = "baseline", "qk-norm + z-loss"


def lr_sensitivity(final_losses: Sequence[float | None], initial_loss: float) -> float:
    """The LR-sensitivity metric of Wortsman et al. 2023 (Sec. 3.2) over one LR grid.

    ``E_lr[min(loss(lr), initial_loss)] - min_lr loss(lr)``: the average gap to the best LR,
    with diverged runs (``None``, NaN or inf) and runs worse than initialisation counted as the
    loss at initialisation. A flat curve scores 0 (so does a model that is at the initial loss
    everywhere: read it next to the curve).

    Example:
        >>> round(lr_sensitivity([4.5, 4.0, 9.0], initial_loss=7.0), 4)
        1.1667
    """
    initial_loss = finite_float("initial_loss", initial_loss)
    if len(final_losses) == 0:
        raise ValueError("final_losses must not be empty")
    capped = []
    for loss in final_losses:
        if loss is None or not math.isfinite(loss):
            capped.append(initial_loss)
        else:
            capped.append(min(float(loss), initial_loss))
    best = min(capped)
    return sum(loss - best for loss in capped) / len(capped)  # exactly 0 for a flat curve


def _train_one(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one model at one LR, recorded by a Monitor into ``run_dir``; return its initial and
    final validation loss (a sweep run)."""
    import torch
    import torch.nn.functional as F

    from steadygrad.data import TextData
    from steadygrad.models import TinyGPT
    from steadygrad.monitor import Monitor
    from steadygrad.optim.clipping import clip_grad_norm
    from steadygrad.optim.schedules import WarmupCosine

    torch.set_num_threads(1)  # one core per trial; the sweep runs trials side by side
    data = TextData.from_stdlib()
    n_layer, n_head, n_embd = config["shape"]
    block, batch, lr = config["block_size"], config["batch_size"], config["lr"]
    extra = {"qk_norm": True, "z_loss": config["z_loss"]} if config["mitigated"] else {}
    model = TinyGPT(data.vocab_size, n_layer, n_head, n_embd, block, seed=config["seed"], **extra)

    eval_gen = torch.Generator().manual_seed(10_000 + config["seed"])
    eval_batches = [
        data.batch(batch, block, "val", generator=eval_gen) for _ in range(config["eval_batches"])
    ]

    @torch.no_grad()
    def validation_loss() -> float:  # cross-entropy only, without the z-loss term
        model.eval()
        total = 0.0
        for x, y in eval_batches:
            logits = model(x)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))
        model.train()
        return total / len(eval_batches)

    initial = validation_loss()
    # Independent weight decay: torch's AdamW shrinks by lr_t * wd = s_t * lr * wd per step, so
    # wd = lambda / lr gives the paper's s_t * lambda, whatever the peak LR.
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=config["weight_decay"] / lr,
    )
    steps = config["steps"]
    schedule = WarmupCosine(
        optimizer, config["warmup_steps"], steps, min_lr_ratio=min(1.0, config["min_lr"] / lr)
    )
    train_gen = torch.Generator().manual_seed(config["seed"])
    diverged_at = None
    train_losses = []
    monitor = Monitor(
        model,
        optimizer,
        run_dir,
        name=f"{_label(config)} lr={lr:.0e}",
        config=config,
        progress=False,
    )
    with monitor:
        for step in range(steps):
            x, y = data.batch(batch, block, "train", generator=train_gen)
            loss = model.loss(x, y)
            value = float(loss.detach())
            if not math.isfinite(value):
                diverged_at = step
                monitor.step(loss)  # the run records where it diverged
                break
            train_losses.append(value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            preclip = clip_grad_norm(model.parameters(), 1.0)
            optimizer.step()
            monitor.step(loss, grad_norm_preclip=preclip)
            schedule.step()
    final = validation_loss() if diverged_at is None else float("nan")
    return {
        "initial_loss": initial,
        "final_loss": final if math.isfinite(final) else None,
        "diverged_at": diverged_at,
        "final_train_loss": sum(train_losses[-10:]) / max(1, len(train_losses[-10:])),
    }


@dataclass
class LRSensitivityResult:
    """Final validation loss per (size, variant) and LR, and the LR sensitivity of each curve.

    Keys of ``curves``, ``initial_loss`` and ``sensitivity`` are labels ``"<size>/<variant>"``
    with variant ``baseline`` or ``qk-norm + z-loss``; ``curves[label][i]`` is the final loss
    at ``lrs[i]`` (``None`` if the run diverged).
    """

    lrs: list[float]
    curves: dict[str, list[float | None]]
    initial_loss: dict[str, float]
    sensitivity: dict[str, float]
    out_dir: Path
    plot_path: Path | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        """A plain-text table: one row per curve, final loss per LR, and the sensitivity."""
        head = ["config".ljust(24), "init".rjust(6)]
        head += [f"{lr:.0e}".rjust(7) for lr in self.lrs] + ["LR sens.".rjust(9)]
        lines = [" ".join(head)]
        for label, losses in self.curves.items():
            row = [label.ljust(24), f"{self.initial_loss[label]:6.3f}"]
            row += ["    div" if x is None else f"{x:7.3f}" for x in losses]
            row.append(f"{self.sensitivity[label]:9.3f}")
            lines.append(" ".join(row))
        return "\n".join(lines)


def _check_sizes(sizes: Sequence[str] | Mapping[str, Sequence[int]]) -> dict[str, tuple]:
    if isinstance(sizes, str):
        raise TypeError("sizes must be a sequence of size names or a mapping, not a str")
    if isinstance(sizes, Mapping):
        chosen = {str(k): tuple(v) for k, v in sizes.items()}
    else:
        unknown = [s for s in sizes if s not in SIZES]
        if unknown:
            raise ValueError(f"sizes must be names from {sorted(SIZES)}, got {unknown}")
        chosen = {s: SIZES[s] for s in sizes}
    if not chosen:
        raise ValueError("sizes must not be empty")
    for name, shape in chosen.items():
        if len(shape) != 3:
            raise ValueError(f"sizes[{name!r}] must be (n_layer, n_head, n_embd), got {shape}")
        for value in shape:
            positive_int(f"sizes[{name!r}]", value)
    return chosen


def _model_supports_mitigations() -> bool:
    from steadygrad.models import TinyGPT

    parameters = inspect.signature(TinyGPT).parameters
    return "qk_norm" in parameters and "z_loss" in parameters


def run_lr_sensitivity(
    out_dir: str | os.PathLike[str],
    *,
    sizes: Sequence[str] | Mapping[str, Sequence[int]] = ("xs", "s", "m"),
    lrs: Sequence[float] = PAPER_LRS,
    steps: int = 400,
    warmup_fraction: float = 0.1,
    batch_size: int = 16,
    block_size: int = 64,
    mitigations: bool = True,
    z_loss: float = 1e-4,
    weight_decay: float = 1e-4,
    min_lr: float = 1e-5,
    eval_batches: int = 8,
    seed: int = 0,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> LRSensitivityResult:
    """Run the LR-sensitivity study; write results, a plot and a table to ``out_dir``.

    Trains TinyGPT at each size in ``sizes`` (names from :data:`SIZES` or a mapping
    ``name -> (n_layer, n_head, n_embd)``) at every peak LR in ``lrs``, as the baseline and,
    if ``mitigations``, with qk-layernorm and z-loss (coefficient ``z_loss``). Runs go through
    :func:`~steadygrad.studies.sweep.run_sweep` as Ray Tune trials: ``workers`` at once
    (default: CPU count) on local Ray, or on the cluster at ``address``; resumable (re-run with
    the same ``out_dir`` and arguments to finish an interrupted study). Each run is recorded by
    a :class:`~steadygrad.Monitor` in ``out_dir/runs/<run id>`` (``steadygrad report`` reads
    it). Writes ``results.jsonl``, ``summary.json``, ``table.txt`` and (with matplotlib)
    ``lr_sensitivity.png``; prints the table when ``progress`` is true.

    Example:
        >>> result = run_lr_sensitivity("runs/lr", sizes=["xs"], lrs=[1e-3, 1e-1],
        ...                             steps=50, progress=False)  # doctest: +SKIP
        >>> result.sensitivity  # doctest: +SKIP
        {'xs/baseline': ..., 'xs/qk-norm + z-loss': ...}
    """
    chosen = _check_sizes(sizes)
    lrs = [finite_float("lrs", lr, low=0.0, low_open=True) for lr in lrs]
    if not lrs:
        raise ValueError("lrs must not be empty")
    if len(set(lrs)) != len(lrs):
        raise ValueError("lrs must not contain duplicates")
    lrs = sorted(lrs)
    steps = positive_int("steps", steps)
    warmup_fraction = finite_float(
        "warmup_fraction", warmup_fraction, low=0.0, high=1.0, high_open=True
    )
    if mitigations and not _model_supports_mitigations():
        raise RuntimeError(
            "TinyGPT has no qk_norm / z_loss switches in this version; pass mitigations=False"
        )
    base = {
        "steps": steps,
        "warmup_steps": int(round(warmup_fraction * steps)),
        "batch_size": positive_int("batch_size", batch_size),
        "block_size": positive_int("block_size", block_size),
        "z_loss": finite_float("z_loss", z_loss, low=0.0),
        "weight_decay": finite_float("weight_decay", weight_decay, low=0.0),
        "min_lr": finite_float("min_lr", min_lr, low=0.0),
        "eval_batches": positive_int("eval_batches", eval_batches),
        "seed": non_negative_int("seed", seed),
    }
    variants = [False, True] if mitigations else [False]
    configs = [
        base | {"size": name, "shape": list(shape), "mitigated": mitigated, "lr": lr}
        for name, shape in chosen.items()
        for mitigated in variants
        for lr in lrs
    ]
    out = Path(out_dir)
    start = time.perf_counter()
    records = run_sweep(
        _train_one,
        configs,
        out,
        workers=workers,
        address=address,
        progress=progress,
        description="LR sensitivity",
    )
    result = _summarise(records, lrs, out)
    (out / "table.txt").write_text(result.table() + "\n")
    result.plot_path = _plot(result)
    _write_summary(result, time.perf_counter() - start)
    if progress:
        print(result.table())
        if result.plot_path is not None:
            print(f"plot: {result.plot_path}")
    return result


def _label(config: dict[str, Any]) -> str:
    return f"{config['size']}/{MITIGATED if config['mitigated'] else BASELINE}"


def _summarise(records: list[dict[str, Any]], lrs: list[float], out: Path) -> LRSensitivityResult:
    curves: dict[str, list[float | None]] = {}
    initial: dict[str, list[float]] = {}
    runs = []
    for record in records:
        config, outcome = record["config"], record["result"]
        label = _label(config)
        curves.setdefault(label, [None] * len(lrs))[lrs.index(config["lr"])] = outcome["final_loss"]
        initial.setdefault(label, []).append(outcome["initial_loss"])
        runs.append(
            {
                "label": label,
                "lr": config["lr"],
                **outcome,
                "seconds": record["seconds"],
                "run_dir": record.get("run_dir"),
            }
        )
    # Every run of one curve starts from the same seeded initialisation; average the (equal)
    # initial losses anyway so a different seed per LR would still be handled.
    initial_loss = {label: sum(v) / len(v) for label, v in initial.items()}
    sensitivity = {label: lr_sensitivity(curves[label], initial_loss[label]) for label in curves}
    return LRSensitivityResult(lrs, curves, initial_loss, sensitivity, out, runs=runs)


def _write_summary(result: LRSensitivityResult, seconds: float) -> None:
    import json

    summary = {
        "lrs": result.lrs,
        "curves": result.curves,
        "initial_loss": result.initial_loss,
        "sensitivity": result.sensitivity,
        "plot": None if result.plot_path is None else str(result.plot_path),
        "seconds_this_call": seconds,
        "runs": result.runs,
    }
    (result.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _plot(result: LRSensitivityResult) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = list(dict.fromkeys(label.split("/")[0] for label in result.curves))
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(4.5 * len(sizes), 3.8), squeeze=False, sharey=True
    )
    for ax, size in zip(axes[0], sizes, strict=True):
        l0 = None
        for variant, style in ((BASELINE, "o-"), (MITIGATED, "s-")):
            label = f"{size}/{variant}"
            if label not in result.curves:
                continue
            l0 = result.initial_loss[label]
            capped = [l0 if x is None else min(x, l0) for x in result.curves[label]]
            ax.plot(
                result.lrs,
                capped,
                style,
                label=f"{variant} (sens. {result.sensitivity[label]:.3f})",
            )
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        # The loss at init is far above the curves unless a run diverged: name it, don't draw it.
        ax.set_title(f"TinyGPT {size} (loss at init {l0:.2f})")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("final validation loss (diverged = init)")
    fig.tight_layout()
    path = result.out_dir / "lr_sensitivity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
