"""SteadygradCallback under a real lightning.Trainer, CPU, a few dozen micro-batches.

The oracle: the weights are copied at the start of every accumulation window; after training,
each step's loss (the mean of its micro-batch losses, as Lightning accumulates them) and its
gradient norm before and after clipping are recomputed by hand and compared with the run.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings

import pytest
import torch
from torch import nn

lightning = pytest.importorskip("lightning")

import steadygrad  # noqa: E402
from steadygrad.diagnose.detectors.training import LOSS_SPIKE  # noqa: E402
from steadygrad.integrations.lightning import SteadygradCallback  # noqa: E402
from steadygrad.monitor.findings_log import SteadygradWarning  # noqa: E402

MICRO, ACCUM, STEPS, CLIP = 4, 2, 8, 0.3


def regression_data(n: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return torch.utils.data.TensorDataset(x, 3.0 * x[:, :3] + torch.randn(n, 3, generator=g))


class Regressor(lightning.LightningModule):
    def __init__(self, lr: float = 0.05, poison_step: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.lr = lr
        self.poison_step = poison_step

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == self.poison_step:
            x = x * float("nan")  # a bad batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class WeightsAtWindowStart(lightning.Callback):
    def __init__(self):
        self.states, self.lrs = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % ACCUM == 0:
            self.states.append(copy.deepcopy(pl_module.net.state_dict()))
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit(
    tmp_path, module, callbacks, steps=STEPS, ckpt_path=None, data_steps=None, **trainer_options
):
    options = dict(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        accumulate_grad_batches=ACCUM,
        gradient_clip_val=CLIP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    trainer = lightning.Trainer(**{**options, **trainer_options})
    data = regression_data((data_steps or steps) * MICRO * ACCUM)
    loader = torch.utils.data.DataLoader(data, batch_size=MICRO, shuffle=False)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, data


def by_hand(net, state, x, y):
    """The window's loss (mean of its micro-batch means) and its gradient norm, in float64."""
    net = copy.deepcopy(net).double()
    net.load_state_dict(state)
    losses = [
        nn.functional.mse_loss(net(x[i : i + MICRO].double()), y[i : i + MICRO].double())
        for i in range(0, len(x), MICRO)
    ]
    loss = sum(losses) / len(losses)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    return loss.item(), norm.item()


def test_lightning_records_step_loss_and_grad_norms_with_accumulation_and_clipping(tmp_path):
    module = Regressor()
    witness = WeightsAtWindowStart()
    fit(tmp_path, module, [witness, SteadygradCallback()])

    run = steadygrad.load(tmp_path / "steadygrad")
    assert run.status == "finished"
    steps, loss = run.series("loss")
    assert list(steps) == list(range(STEPS)) and len(witness.states) == STEPS
    _, preclip = run.series("grad_norm_preclip")
    _, applied = run.series("grad_norm")
    x, y = regression_data(STEPS * MICRO * ACCUM).tensors
    window = MICRO * ACCUM
    clipped = 0
    for k in range(STEPS):
        part = slice(k * window, (k + 1) * window)
        want_loss, want_norm = by_hand(module.net, witness.states[k], x[part], y[part])
        assert loss[k] == pytest.approx(want_loss, rel=1e-5)
        assert preclip[k] == pytest.approx(want_norm, rel=1e-5)
        want_applied = want_norm * min(1.0, CLIP / (want_norm + 1e-6))
        assert applied[k] == pytest.approx(want_applied, rel=1e-5)
        clipped += want_norm > CLIP
    assert clipped >= 3, "the test must exercise clipping"
    # the rate each update used (the scheduler steps after the update, before the batch ends)
    _, lr = run.series("lr/0")
    assert list(lr) == pytest.approx(witness.lrs, rel=1e-12)
    assert witness.lrs[0] > witness.lrs[1]


class LazyRegressor(Regressor):
    """The regressor with a lazy first layer: its shapes come from the first batch, after the
    Trainer has called configure_optimizers and the callbacks' on_fit_start."""

    def __init__(self) -> None:
        super().__init__()
        self.net[0] = nn.LazyLinear(16)


class WeightsOnceInitialised(lightning.Callback):
    """The weights at the start of every batch (no accumulation), once there are any."""

    def __init__(self):
        self.states = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lazy = any(torch.nn.parameter.is_lazy(p) for p in pl_module.parameters())
        self.states.append(None if lazy else copy.deepcopy(pl_module.net.state_dict()))


def test_lightning_attaches_to_a_module_with_lazy_layers_once_the_first_batch_shaped_them(
    tmp_path,
):
    # Before: the Monitor read the lazy layer's uninitialised weights at fit start and raised,
    # stopping the user's training. Now the callback attaches after the first backward.
    module = LazyRegressor()
    witness = WeightsOnceInitialised()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SteadygradWarning)
        fit(tmp_path, module, [witness, SteadygradCallback()], accumulate_grad_batches=1)
    run = steadygrad.load(tmp_path / "steadygrad")
    steps, loss = run.series("loss")
    assert list(steps) == list(range(STEPS))  # the first batch's step too
    _, norms = run.series("grad_norm/net.0.weight")
    assert len(norms) == STEPS
    x, y = regression_data(STEPS * MICRO * ACCUM).tensors  # the data fit() trained on
    for k in range(1, STEPS):
        part = slice(k * MICRO, (k + 1) * MICRO)
        want_loss, _ = by_hand(module.net, witness.states[k], x[part], y[part])
        assert loss[k] == pytest.approx(want_loss, rel=1e-5)


def test_lightning_autopilot_skips_a_nan_batch_and_training_goes_on(tmp_path):
    """The bad batch is seen only inside Lightning's closure (forward and backward run inside
    optimizer.step): the autopilot must decide after it and skip without raising."""
    witness = WeightsAtWindowStart()
    pilot = steadygrad.Autopilot()
    trainer, _ = fit(
        tmp_path, Regressor(poison_step=4), [witness, SteadygradCallback(autopilot=pilot)]
    )
    assert trainer.global_step == STEPS
    run = steadygrad.load(tmp_path / "steadygrad")
    assert [(a.step, a.kind) for a in run.actions()] == [(4, "skip_update")]
    for name, value in witness.states[4].items():  # the skipped update left no trace
        assert torch.equal(value, witness.states[5][name]), name
    assert not torch.equal(witness.states[3]["0.weight"], witness.states[4]["0.weight"])
    _, loss = run.series("loss")
    assert math.isnan(loss[4]) and all(math.isfinite(x) for k, x in enumerate(loss) if k != 4)


def test_lightning_resume_from_a_checkpoint_continues_the_run(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    fit(
        tmp_path,
        Regressor(),
        [SteadygradCallback(), saver],
        steps=6,
        data_steps=8,
        enable_checkpointing=True,
    )
    at_3 = next((tmp_path / "ckpt").glob("*step=3.ckpt"))
    cb = SteadygradCallback()
    fit(tmp_path, Regressor(), [cb], steps=8, ckpt_path=at_3, data_steps=8)
    run = steadygrad.load(tmp_path / "steadygrad")
    steps, loss = run.series("loss")
    assert list(steps) == list(range(8)) and run.status == "finished"
    # the detectors went on from the checkpoint: the loss-spike baseline holds every step
    spike = next(d for d in cb.monitor.detectors if d.kind == LOSS_SPIKE)
    assert list(spike.baseline.values) == pytest.approx(list(loss), rel=1e-12)


def test_lightning_findings_reach_logging_and_warnings(tmp_path, caplog):
    cb = SteadygradCallback(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="steadygrad"), pytest.warns(SteadygradWarning):
        fit(tmp_path, Regressor(poison_step=4), [cb], steps=6)
    found = [f for f in steadygrad.load(tmp_path / "run").findings() if f.severity != "info"]
    ours = [r.getMessage() for r in caplog.records if r.name == "steadygrad"]
    assert found and found[0].kind == "nonfinite" and found[0].step == 4
    assert len(ours) == len(found)
    for f, message in zip(found, ours, strict=True):
        assert f"step {f.step}: {f.kind}" in message and "What to do" in message


class ManualModule(Regressor):
    """Manual optimization, the gradients zeroed right after the step, as Lightning's docs
    write it; what the step applied is noted by hand (the oracle)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.losses, self.norms = [], []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        self.losses.append(loss.item())
        grads = [p.grad.double().norm() for p in self.parameters()]
        self.norms.append(torch.linalg.vector_norm(torch.stack(grads)).item())
        opt.step()
        opt.zero_grad()


class TinyGan(lightning.LightningModule):
    """Two optimizers stepped by hand, the discriminator first: each step's generator loss and
    both learning rates are noted (the oracle)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
        self.disc = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.g_losses = []

    def training_step(self, batch, batch_idx):
        real, _ = batch
        g_opt, d_opt = self.optimizers()
        fake = self.gen(torch.randn(len(real), 4))
        bce = nn.functional.binary_cross_entropy_with_logits
        d_loss = bce(self.disc(real), torch.ones(len(real), 1)) + bce(
            self.disc(fake.detach()), torch.zeros(len(real), 1)
        )
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        g_loss = bce(self.disc(fake), torch.ones(len(real), 1))
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self.g_losses.append(g_loss.item())

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.gen.parameters(), lr=2e-3, betas=(0.5, 0.999)),
            torch.optim.SGD(self.disc.parameters(), lr=0.05),
        )


def test_lightning_manual_optimization_records_each_step_it_applied(tmp_path):
    module = ManualModule()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(
            tmp_path,
            module,
            [SteadygradCallback(tmp_path / "run")],
            steps=12,
            accumulate_grad_batches=1,
            gradient_clip_val=None,
        )
    assert not [w for w in caught if "steadygrad" in str(w.message)]  # no lost step, no advice
    run = steadygrad.Run(tmp_path / "run")
    steps, losses = run.series("loss")
    assert list(steps) == list(range(12))
    assert losses == pytest.approx(module.losses, rel=1e-6)
    # read before the update, though the module zeroed them right after it
    assert run.series("grad_norm")[1] == pytest.approx(module.norms, rel=1e-5)


def test_lightning_manual_gan_records_the_watched_optimizers_steps(tmp_path):
    data = dict(steps=10, accumulate_grad_batches=1, gradient_clip_val=None)
    with pytest.raises(ValueError, match="returned 2: pass optimizer=<index>"):
        fit(tmp_path, TinyGan(), [SteadygradCallback(tmp_path / "no")], **data)
    with pytest.raises(ValueError, match="optimizer=2, but configure_optimizers returned 2"):
        fit(tmp_path, TinyGan(), [SteadygradCallback(tmp_path / "no", optimizer=2)], **data)
    with pytest.raises(ValueError, match="optimizer"):
        SteadygradCallback(optimizer=-1)
    module = TinyGan()
    fit(tmp_path, module, [SteadygradCallback(tmp_path / "run", optimizer=0)], **data)
    run = steadygrad.Run(tmp_path / "run")
    steps, losses = run.series("loss")
    # the generator's loss, not the discriminator's backpropagated before it; its rate.
    # (Lightning's max_steps counts both optimizers' steps: 5 batches.)
    assert list(steps) == list(range(5)) and len(module.g_losses) == 5
    assert losses == pytest.approx(module.g_losses, rel=1e-6)
    assert set(run.series("lr/0")[1]) == {2e-3}
    assert "update_ratio/gen.0.weight" in run.names()


def test_a_gradscalers_scale_is_taken_off_the_loss_the_backward_hook_sees():
    from steadygrad.integrations.lightning import _unscaled

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    loss = torch.tensor(0.731)
    assert _unscaled(scaler.scale(loss), scaler).item() == pytest.approx(0.731)
    assert _unscaled(loss, None) is loss


def test_lightning_callback_rejects_unknown_options():
    with pytest.raises(TypeError, match="unknown Monitor option.*detector"):
        SteadygradCallback(detector=[])
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        SteadygradCallback(every=0)


def tensorboard_events(log_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()
    return acc


def tensorboard_series(acc, tag):
    from tensorboard.util import tensor_util

    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]


def tensorboard_text(acc, tag):
    from tensorboard.util import tensor_util

    return {
        e.step: tensor_util.make_ndarray(e.tensor_proto).item().decode()
        for e in acc.Tensors(f"{tag}/text_summary")
    }


def test_lightning_writes_into_the_trainers_tensorboard_logger(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "tb", name="lit", version=0)
    witness = WeightsAtWindowStart()
    cb = SteadygradCallback(tmp_path / "run")
    with pytest.warns(SteadygradWarning):
        fit(tmp_path, Regressor(poison_step=4), [witness, cb], steps=6, logger=logger)

    acc = tensorboard_events(logger.log_dir)  # the logger's own folder: no folder of ours
    assert list((tmp_path / "run").glob("tensorboard")) == []
    loss = tensorboard_series(acc, "loss")
    assert [s for s, _ in loss] == list(range(6))
    x, y = regression_data(6 * MICRO * ACCUM).tensors
    window = MICRO * ACCUM
    for k in range(4):  # the loss by hand, from the weights at the window's start
        want, _ = by_hand(
            Regressor().net, witness.states[k], x[k * window :][:window], y[k * window :][:window]
        )
        assert loss[k][1] == pytest.approx(want, rel=1e-5)
    assert math.isnan(loss[4][1])
    run = steadygrad.load(tmp_path / "run")
    assert [v for _, v in tensorboard_series(acc, "grad_norm")] == pytest.approx(
        list(run.series("grad_norm")[1]), rel=0, abs=0, nan_ok=True
    )
    findings = tensorboard_text(acc, "steadygrad/findings")
    assert "nonfinite" in findings[4] and all(s >= 4 for s in findings)
    diagnosis = tensorboard_text(acc, "steadygrad/diagnosis")[5]
    assert "status: finished" in diagnosis and "NaN/Inf from step 4" in diagnosis


def test_lightning_trainer_logger_false_or_a_given_sink_leaves_the_logger_alone(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from steadygrad.sinks import TensorBoardSink

    off = TensorBoardLogger(tmp_path / "tb", name="off", version=0)
    fit(
        tmp_path,
        Regressor(),
        [SteadygradCallback(tmp_path / "a", trainer_logger=False)],
        steps=2,
        logger=off,
    )
    given = TensorBoardLogger(tmp_path / "tb", name="given", version=0)
    own = TensorBoardSink(tmp_path / "own")
    fit(
        tmp_path,
        Regressor(),
        [SteadygradCallback(tmp_path / "b", sinks=[own])],
        steps=2,
        logger=given,
    )
    for logger in (off, given):
        assert "loss" not in tensorboard_events(logger.log_dir).Tags()["tensors"]
    assert [s for s, _ in tensorboard_series(tensorboard_events(tmp_path / "own"), "loss")] == [
        0,
        1,
    ]
    with pytest.raises(TypeError, match="trainer_logger must be a bool"):
        SteadygradCallback(trainer_logger="yes")


def test_lightning_writes_into_the_trainers_mlflow_and_wandb_loggers(
    tmp_path, monkeypatch, request
):
    import mlflow
    from _wandb_log import history, summary, wait_until_written
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    # MLFlowLogger sets the process-wide tracking URI: unset it for the tests that follow
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))
    mlflow_logger = MLFlowLogger(tracking_uri=(tmp_path / "mlruns").as_uri())
    wandb_logger = WandbLogger(project="lit", save_dir=str(tmp_path / "wb"), offline=True)
    fit(
        tmp_path,
        Regressor(),
        [SteadygradCallback(tmp_path / "run")],
        steps=3,
        logger=[mlflow_logger, wandb_logger],
    )
    run = steadygrad.load(tmp_path / "run")
    steps, loss = run.series("loss")
    assert list(steps) == [0, 1, 2]

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    got = sorted((m.step, m.value) for m in client.get_metric_history(mlflow_logger.run_id, "loss"))
    assert got == list(zip(steps.tolist(), loss.tolist(), strict=True))
    assert client.get_run(mlflow_logger.run_id).data.tags["steadygrad.status"] == "finished"

    (log,) = (tmp_path / "wb").glob("wandb/offline-run-*/run-*.wandb")
    wandb_logger.experiment.finish()  # the logger's run: Lightning leaves it open
    wait_until_written(log, 2)
    by_step = {row["_step"]: row["loss"] for row in history(log) if "loss" in row}
    assert by_step == dict(zip(steps.tolist(), loss.tolist(), strict=True))
    assert summary(log)["steadygrad/status"] == "finished"
