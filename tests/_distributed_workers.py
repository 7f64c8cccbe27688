"""Training loops run by tests/test_distributed.py in 2 processes (gloo, CPU).

Each rank writes what it saw by its own means (local losses, local and applied gradients, the
weights, the autopilot's decision) to ``<out>/rank<r>.json``; the test compares it with the run
that rank 0 wrote.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

STEPS = 10
NAN_STEP = 3  # rank 1 alone produces a non-finite value at this step
SPIKE_STEP = 9  # rank 1 alone gets targets 30 times too large (the last step: no aftermath)


def _model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)  # each rank its own data
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
    return x, (30 * y if rank == 1 and step == SPIKE_STEP else y)


class _Fail(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            raise AssertionError(f"steadygrad warned: {record.getMessage()}")


def _detectors() -> list:
    """The defaults, with a per-rank spike detector that warms up within this short run."""
    from steadygrad.diagnose.detectors import RankSpikeDetector, default_detectors

    defaults = [d for d in default_detectors() if not isinstance(d, RankSpikeDetector)]
    return [*defaults, RankSpikeDetector(warmup=4)]


def run(rank: int, world: int, port: int, out: str, kind: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    # Anything steadygrad logs as a warning is a failure here (e.g. a rank without a store
    # tripping over a store method).
    logging.getLogger("steadygrad").addHandler(_Fail())
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        (_ddp if kind == "ddp" else _fsdp)(rank, Path(out))
    finally:
        dist.destroy_process_group()


def _ddp(rank: int, out: Path) -> None:
    import steadygrad

    plain = _model()
    model = nn.parallel.DistributedDataParallel(plain)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pilot = steadygrad.Autopilot(rollback=False, spike_clipping=False)
    mon = steadygrad.Monitor(
        model, optimizer, out / "run", autopilot=pilot, progress=False, detectors=_detectors()
    )
    seen: dict = {"losses": [], "local_grads": [], "applied_norm": [], "skipped": [], "w": []}
    seen["input_ms"] = []
    for step in range(STEPS):
        x, y = _batch(rank, step)
        seen["input_ms"].append(float(x.double().square().mean()))
        # The oracle: this rank's own gradient, by autograd on the unwrapped module (no DDP).
        local = torch.autograd.grad(nn.functional.mse_loss(plain(x), y), list(plain.parameters()))
        seen["local_grads"].append([g.reshape(-1).tolist() for g in local])
        loss = nn.functional.mse_loss(model(x), y)
        hook = None
        if rank == 1 and step == NAN_STEP:
            hook = plain[0].weight.register_hook(lambda g: g * math.nan)
        loss.backward()
        if hook is not None:
            hook.remove()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        # What DDP applied: the averaged gradients, read here, before they are zeroed.
        seen["applied_norm"].append(
            math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()))
        )
        seen["skipped"].append(
            all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
        )
        mon.step(loss)
        optimizer.zero_grad()
        seen["losses"].append(float(loss.detach()))
        seen["w"].append([p.detach().reshape(-1).tolist() for p in model.parameters()])
    mon.close()
    seen["collectives"], seen["bytes"] = mon.reducer.collectives, mon.reducer.bytes
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


def _fsdp(rank: int, out: Path) -> None:
    from torch.distributed.fsdp import fully_shard

    import steadygrad

    model = _model()
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pilot = steadygrad.Autopilot(rollback=False, spike_clipping=False)
    mon = steadygrad.Monitor(
        model,
        optimizer,
        out / "run",
        autopilot=pilot,
        progress=False,
        activation_every=1,
        detectors=_detectors(),
    )
    seen: dict = {"losses": [], "applied_norm": [], "param_norm": [], "skipped": [], "w": []}
    hook = None
    for step in range(STEPS):
        x, y = _batch(rank, step)
        if rank == 1 and step == NAN_STEP:  # this rank's first layer emits a NaN
            # prepend: before the Monitor's own hook, which must see the NaN it made
            hook = model[0].register_forward_hook(lambda m, a, o: o * math.nan, prepend=True)
        loss = nn.functional.mse_loss(model(x), y)
        if hook is not None:
            hook.remove()
            hook = None
        loss.backward()
        before = [p.detach().full_tensor() for p in model.parameters()]
        optimizer.step()
        # The oracle: whole tensors gathered by DTensor itself, normed here.
        full_grads = [p.grad.full_tensor().double() for p in model.parameters()]
        seen["applied_norm"].append(math.sqrt(sum(float(g.square().sum()) for g in full_grads)))
        after = [p.detach().full_tensor() for p in model.parameters()]
        seen["param_norm"].append(math.sqrt(sum(float(w.double().square().sum()) for w in after)))
        seen["skipped"].append(all(torch.equal(b, a) for b, a in zip(before, after, strict=True)))
        mon.step(loss)
        optimizer.zero_grad()
        seen["losses"].append(float(loss.detach()))
        seen["w"].append([w.reshape(-1).tolist() for w in after])
    mon.close()
    seen["collectives"], seen["bytes"] = mon.reducer.collectives, mon.reducer.bytes
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
