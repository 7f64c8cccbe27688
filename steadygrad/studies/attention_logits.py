"""Study: attention-logit growth at a high learning rate, and QK-norm as its fix (Wortsman et al.).

TinyGPT on byte-level text from the Python standard library, trained with AdamW (betas 0.9/0.95,
no weight decay, global-norm clipping at 1 as in the paper's setup) at a high learning rate,
once plain and once with ``qk_norm=True``. The :class:`~steadygrad.monitor.attention_logits.
AttentionLogitSignal` records the largest attention logit per layer every ``eval_every`` steps
and the :class:`~steadygrad.diagnose.detectors.transformer.AttentionLogitGrowth` detector reads
it. Expected: the plain model's logits grow into the hundreds or thousands and the detector fires;
with QK-norm they stay near ``sqrt(head_dim)`` times the learned scales, the detector stays quiet,
and the validation loss ends lower.

Example:
    >>> result = run_attention_logits("runs/attn", steps=100, progress=False)  # doctest: +SKIP
    >>> result.detector_fired  # doctest: +SKIP
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.finding import Finding
from steadygrad.core.metrics import ATTN_LOGIT_MAX
from steadygrad.data import TextData
from steadygrad.diagnose.detectors.transformer import ATTENTION_LOGIT_GROWTH, AttentionLogitGrowth
from steadygrad.diagnose.diagnosis import diagnose
from steadygrad.models import TinyGPT
from steadygrad.monitor import AttentionLogitSignal, Monitor
from steadygrad.store import load
from steadygrad.studies._results import save_result
from steadygrad.studies._threads import on_cpu_threads

VARIANTS = ("plain", "qk_norm")


@dataclass
class AttentionLogitResult:
    """Curves per variant and the headline comparison.

    ``attn_logit_max[v][layer]`` is the series the run recorded at ``logit_steps[v]``;
    ``val_loss[v]`` the validation loss at ``steps[v]``; ``final_val_loss[v]`` the last one;
    ``detector_fired[v]`` whether :class:`AttentionLogitGrowth` raised any finding.
    """

    config: dict
    steps: dict[str, list[int]] = field(default_factory=dict)
    train_loss: dict[str, list[float]] = field(default_factory=dict)
    val_loss: dict[str, list[float]] = field(default_factory=dict)
    attn_logit_max: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    logit_steps: dict[str, list[int]] = field(default_factory=dict)
    diagnosis: dict[str, list[str]] = field(default_factory=dict)
    run_dirs: dict[str, str] = field(default_factory=dict)
    final_val_loss: dict[str, float] = field(default_factory=dict)
    peak_attn_logit: dict[str, float] = field(default_factory=dict)
    detector_fired: dict[str, bool] = field(default_factory=dict)
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    plot_path: Path | None = None

    def summary(self) -> str:
        lines = [f"attention-logit study: {self.config}"]
        for v in self.steps:
            first = self.findings[v][0].describe() if self.findings[v] else "none"
            lines.append(
                f"  {v:8s} final val loss {self.final_val_loss[v]:.3f}, peak attention logit "
                f"{self.peak_attn_logit[v]:.1f}, first finding: {first}, {self.seconds[v]:.0f} s"
            )
        return "\n".join(lines)


@torch.no_grad()
def _val_loss(model: TinyGPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    losses = [
        float(
            torch.nn.functional.cross_entropy(model(x).reshape(-1, model.vocab_size), y.reshape(-1))
        )
        for x, y in batches
    ]
    model.train()
    return sum(losses) / len(losses)


@on_cpu_threads
def run_attention_logits(
    out_dir: str | Path,
    lr: float = 3e-2,
    steps: int = 300,
    n_layer: int = 2,
    n_head: int = 4,
    n_embd: int = 64,
    block_size: int = 64,
    batch_size: int = 16,
    eval_every: int = 20,
    eval_batches: int = 4,
    max_bytes: int | None = None,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    num_threads: int | None = 1,
) -> AttentionLogitResult:
    """Train TinyGPT plain and with QK-norm at ``lr``; write ``attention_logits.json`` (+ png).

    Example:
        >>> result = run_attention_logits("out", steps=60, progress=False)  # doctest: +SKIP
    """
    lr = finite_float("lr", lr, low=0.0, low_open=True)
    steps, eval_every = positive_int("steps", steps), positive_int("eval_every", eval_every)
    eval_batches = positive_int("eval_batches", eval_batches)
    batch_size, block_size = (
        positive_int("batch_size", batch_size),
        positive_int("block_size", block_size),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = TextData.from_stdlib(max_bytes=max_bytes)
    eval_gen = torch.Generator().manual_seed(seed + 1)
    held = [data.batch(batch_size, block_size, "val", eval_gen) for _ in range(eval_batches)]
    config = dict(
        lr=lr,
        steps=steps,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        block_size=block_size,
        batch_size=batch_size,
        optimizer="AdamW(0.9, 0.95), no weight decay, clip 1.0",
        seed=seed,
    )
    result = AttentionLogitResult(config=config)
    for variant in VARIANTS:
        start = time.perf_counter()
        model = TinyGPT(
            vocab_size=data.vocab_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            block_size=block_size,
            seed=seed,
            qk_norm=variant == "qk_norm",
        )
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0
        )
        gen = torch.Generator().manual_seed(seed)
        run_dir = out_dir / "runs" / variant
        shutil.rmtree(run_dir, ignore_errors=True)  # a study re-run records afresh
        record_steps, train_losses, val_losses = [], [], []
        signals = [AttentionLogitSignal(every=eval_every)]
        with Monitor(
            model, optimizer, run_dir, signals=signals, progress=False, config=config
        ) as mon:
            for step in range(steps + 1):
                x, y = data.batch(batch_size, block_size, generator=gen)
                loss = model.loss(x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                mon.step(loss, grad_norm_preclip=norm)
                if step % eval_every and step != steps:
                    continue
                record_steps.append(step)
                train_losses.append(loss.item())
                finite = math.isfinite(loss.item())
                val_losses.append(_val_loss(model, held) if finite else math.nan)
                if progress:
                    print(
                        f"[attention-logits:{variant}] step {step:4d} loss {loss.item():.3f} "
                        f"val {val_losses[-1]:.3f}",
                        flush=True,
                    )
        # What the study claims, read back from the run as a user would.
        run = load(run_dir)
        family = run.family(ATTN_LOGIT_MAX.name)
        logits = {m: v.tolist() for m, (_, v) in family.items()}
        result.logit_steps[variant] = next(iter(family.values()))[0].tolist()
        findings = [f for f in run.findings() if f.kind == ATTENTION_LOGIT_GROWTH]
        result.diagnosis[variant] = [d.cause for d in diagnose(run).diagnoses]
        result.steps[variant] = record_steps
        result.train_loss[variant] = train_losses
        result.val_loss[variant] = val_losses
        result.attn_logit_max[variant] = logits
        result.final_val_loss[variant] = val_losses[-1]
        result.peak_attn_logit[variant] = max(max(v) for v in logits.values())
        result.run_dirs[variant] = str(run_dir)
        result.detector_fired[variant] = bool(findings)
        result.findings[variant] = findings
        result.seconds[variant] = time.perf_counter() - start

    return save_result(result, out_dir, "attention_logits", _plot, plot, progress)


def _plot(result: AttentionLogitResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for v in result.steps:
        for layer, series in result.attn_logit_max[v].items():
            top.plot(result.logit_steps[v], series, label=f"{v} {layer}")
        bottom.plot(result.steps[v], result.val_loss[v], label=v)
    top.axhline(AttentionLogitGrowth().threshold, color="grey", ls="--", lw=0.8)
    top.set_yscale("log")
    top.set_ylabel("max |q.k| / sqrt(d)")
    top.legend(fontsize=7)
    bottom.set_ylabel("validation loss")
    bottom.set_xlabel("step")
    bottom.legend(fontsize=7)
    fig.suptitle(f"TinyGPT at lr {result.config['lr']}: plain vs QK-norm")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
