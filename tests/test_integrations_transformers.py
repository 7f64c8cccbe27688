"""SteadygradCallback under a real Hugging Face Trainer: a tiny GPT-2 built from a config, CPU.

The oracle: the model's weights are copied at the start of every optimizer step; after training,
each step's loss and gradient are recomputed by hand from that copy and the step's micro-batches
(the Trainer's definition: token-weighted over the whole accumulation window), and compared with
what the run recorded. The Trainer's own log (logging_steps=1) is a second, independent witness.
"""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

import steadygrad  # noqa: E402
from steadygrad.diagnose.detectors.training import LOSS_SPIKE  # noqa: E402
from steadygrad.integrations.transformers import STATE_NAME, SteadygradCallback  # noqa: E402
from steadygrad.monitor.findings_log import SteadygradWarning  # noqa: E402

VOCAB, SEQ, MICRO, ACCUM, STEPS = 48, 12, 4, 2, 10
MAX_NORM = 0.5


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def token_data(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random tokens; a leading run of label positions is ignored (-100), of a different length
    in each example, so the step's token-weighted loss differs from the mean of its micro-batch
    means. (The first position is always ignored: it is never a prediction target, and this
    Trainer version counts unshifted labels for GPT-2.)"""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: 1 + (i * 5) % (SEQ - 2)] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def training_args(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM,
        max_steps=STEPS,
        learning_rate=3e-3,
        warmup_steps=3,
        lr_scheduler_type="linear",
        max_grad_norm=MAX_NORM,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        seed=0,
    )
    base.update(overrides)
    return transformers.TrainingArguments(**base)


class WeightsAtStepStart(transformers.TrainerCallback):
    """The oracle's input: the weights each optimizer step starts from."""

    def __init__(self):
        self.states = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.states.append(copy.deepcopy(model.state_dict()))


def loss_and_grad_norm_by_hand(model, state, batch):
    """The step's loss as the Trainer defines it (summed token losses over the whole window,
    divided by its token count) and the norm of its gradient, in float64."""
    model = copy.deepcopy(model).double()
    model.load_state_dict(state)
    model.zero_grad()
    ids = torch.stack([b["input_ids"] for b in batch])
    labels = torch.stack([b["labels"] for b in batch])
    logits = model(input_ids=ids).logits[:, :-1]
    target = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    loss = total / target.ne(-100).sum()
    loss.backward()
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    )
    return loss.item(), norm.item()


def test_trainer_records_the_step_loss_preclip_norm_and_lr(tmp_path):
    data = token_data(STEPS * MICRO * ACCUM)
    model = tiny_gpt2()
    witness = WeightsAtStepStart()
    cb = SteadygradCallback()  # run dir: <output_dir>/steadygrad
    trainer = transformers.Trainer(
        model=model, args=training_args(tmp_path), train_dataset=data, callbacks=[witness, cb]
    )
    trainer.train()

    run = steadygrad.load(tmp_path / "out" / "steadygrad")
    assert run.status == "finished"
    steps, loss = run.series("loss")
    assert list(steps) == list(range(STEPS))
    _, preclip = run.series("grad_norm_preclip")
    _, applied = run.series("grad_norm")
    _, lr = run.series("lr/0")

    window = MICRO * ACCUM
    logged = [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    assert len(logged) == STEPS and len(witness.states) == STEPS
    clipped_steps = 0
    for k in range(STEPS):
        want_loss, want_norm = loss_and_grad_norm_by_hand(
            model, witness.states[k], data[k * window : (k + 1) * window]
        )
        assert loss[k] == pytest.approx(want_loss, rel=2e-5)
        assert preclip[k] == pytest.approx(want_norm, rel=2e-5)
        # what the optimizer applied: torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6)
        want_applied = want_norm * min(1.0, MAX_NORM / (want_norm + 1e-6))
        assert applied[k] == pytest.approx(want_applied, rel=2e-5)
        clipped_steps += want_norm > MAX_NORM
        # the Trainer's own log agrees (it logs the loss and the pre-clip norm of each step)
        assert loss[k] == pytest.approx(logged[k]["loss"], rel=1e-6)
        assert preclip[k] == pytest.approx(logged[k]["grad_norm"], rel=1e-6)
        assert lr[k] == pytest.approx(logged[k]["learning_rate"], rel=1e-9)
    assert clipped_steps >= 3, "the test must exercise clipping"
    assert lr[0] < lr[2]  # warm-up: the rate used, not the next step's


def test_trainer_bf16_records_finite_losses_matching_the_trainer_log(tmp_path):
    data = token_data(4 * MICRO * ACCUM)
    cb = SteadygradCallback(tmp_path / "run")
    args = training_args(tmp_path, bf16=True, max_steps=4)
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    run = steadygrad.load(tmp_path / "run")
    _, loss = run.series("loss")
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    assert len(loss) == 4 and all(math.isfinite(x) for x in loss)
    assert list(loss) == pytest.approx(logged, rel=1e-6)


class PoisonWeights(transformers.TrainerCallback):
    """Turns the token embedding to NaN at the start of one step: a critical finding."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at_step:
            with torch.no_grad():
                model.transformer.wte.weight.fill_(float("nan"))


def test_trainer_findings_reach_logging_once_and_critical_ones_warn(tmp_path, caplog):
    data = token_data(6 * MICRO * ACCUM)
    cb = SteadygradCallback(tmp_path / "run")
    args = training_args(tmp_path, max_steps=6, logging_nan_inf_filter=False)
    trainer = transformers.Trainer(
        model=tiny_gpt2(), args=args, train_dataset=data, callbacks=[PoisonWeights(3), cb]
    )
    with caplog.at_level(logging.WARNING, logger="steadygrad"), pytest.warns(SteadygradWarning):
        trainer.train()
    ours = [r.getMessage() for r in caplog.records if r.name == "steadygrad"]
    found = [f for f in steadygrad.load(tmp_path / "run").findings() if f.severity != "info"]
    assert [f.kind for f in found][:1] == ["nonfinite"] and found[0].step == 3
    # each finding logged exactly once, with its step, where to look and what to do
    assert len(ours) == len(found)
    for f, message in zip(found, ours, strict=True):
        assert f"step {f.step}: {f.kind}" in message
        assert "What to do" in message and str(tmp_path / "run") in message
    first = next(r for r in caplog.records if r.name == "steadygrad")
    assert first.levelno == logging.ERROR  # critical


def embedding_data(n: int, nan_in_step: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Inputs given as embeddings, so a batch can hold a NaN: the first example of one step."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        embeds = torch.randn(SEQ, 16, generator=g)
        if i == nan_in_step * MICRO * ACCUM:
            embeds[0, 0] = float("nan")
        out.append(
            {"inputs_embeds": embeds, "labels": torch.randint(0, VOCAB, (SEQ,), generator=g)}
        )
    return out


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_trainer_autopilot_skips_a_nan_batch_and_training_goes_on(tmp_path, optim):
    """adamw_torch: skipped on the host (one read, the update undone); adamw_torch_fused: on the
    device, through the optimizer's found_inf flag, with no host read."""
    steps = 6
    witness = WeightsAtStepStart()
    pilot = steadygrad.Autopilot()
    cb = SteadygradCallback(tmp_path / "run", autopilot=pilot)
    args = training_args(tmp_path, max_steps=steps, optim=optim)
    trainer = transformers.Trainer(
        model=tiny_gpt2(),
        args=args,
        train_dataset=embedding_data(steps * MICRO * ACCUM, 3),
        callbacks=[witness, cb],
    )
    trainer.train()
    assert trainer.state.global_step == steps
    assert pilot._skipper.device_side == (optim == "adamw_torch_fused")
    run = steadygrad.load(tmp_path / "run")
    assert [(a.step, a.kind) for a in run.actions()] == [(3, "skip_update")]
    for name, value in witness.states[3].items():  # the skipped update left no trace
        assert torch.equal(value, witness.states[4][name]), name
    assert not torch.equal(
        witness.states[2]["transformer.h.0.mlp.c_fc.weight"],
        witness.states[3]["transformer.h.0.mlp.c_fc.weight"],
    )
    _, loss = run.series("loss")
    assert math.isnan(loss[3]) and all(math.isfinite(x) for k, x in enumerate(loss) if k != 3)


def test_trainer_resume_from_checkpoint_continues_the_run(tmp_path):
    data = token_data(8 * MICRO * ACCUM)
    first = training_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    transformers.Trainer(
        model=tiny_gpt2(), args=first, train_dataset=data, callbacks=[SteadygradCallback()]
    ).train()
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert (checkpoint / STATE_NAME).exists()
    cb = SteadygradCallback()
    trainer = transformers.Trainer(
        model=tiny_gpt2(),
        args=training_args(tmp_path, max_steps=8),
        train_dataset=data,
        callbacks=[cb],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    run = steadygrad.load(tmp_path / "out" / "steadygrad")
    steps, loss = run.series("loss")
    assert list(steps) == list(range(8)) and run.status == "finished"
    # the detectors went on from the checkpoint: the loss-spike baseline holds every step
    spike = next(d for d in cb.monitor.detectors if d.kind == LOSS_SPIKE)
    assert list(spike.baseline.values) == pytest.approx(list(loss), rel=1e-12)


def test_callback_rejects_unknown_options_and_bad_values():
    with pytest.raises(TypeError, match="unknown Monitor option.*evry"):
        SteadygradCallback(evry=2)
    with pytest.raises(TypeError, match="run_dir"):
        SteadygradCallback(run_dir=3)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        SteadygradCallback(every=0)


class NotATorchOptimizer:
    """An optimizer-like object the Monitor cannot hook (no torch step hooks)."""

    def __init__(self, params, lr=0.1):
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.state = {}
        self.defaults = {"lr": lr}

    def step(self, closure=None):
        pass

    def zero_grad(self, set_to_none=True):
        pass

    def state_dict(self):
        return {"state": {}, "param_groups": []}

    def load_state_dict(self, state):
        pass


def test_trainer_with_an_optimizer_the_monitor_cannot_hook_fails_clearly(tmp_path):
    model = tiny_gpt2()
    optimizer = NotATorchOptimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters()), lambda s: 1)
    trainer = transformers.Trainer(
        model=model,
        args=training_args(tmp_path, max_steps=2),
        train_dataset=token_data(16),
        callbacks=[SteadygradCallback(tmp_path / "run")],
        optimizers=(optimizer, scheduler),
    )
    with pytest.raises(TypeError, match="SteadygradCallback can only watch a torch.optim"):
        trainer.train()


def test_trainer_writes_into_its_own_tensorboard_writer(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    data = token_data(6 * MICRO * ACCUM)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))  # TensorBoardCallback's
    args = training_args(
        tmp_path,
        max_steps=6,
        report_to=["tensorboard"],
        logging_nan_inf_filter=False,
    )
    cb = SteadygradCallback(tmp_path / "run")
    trainer = transformers.Trainer(
        model=tiny_gpt2(), args=args, train_dataset=data, callbacks=[PoisonWeights(3), cb]
    )
    with pytest.warns(SteadygradWarning):
        trainer.train()

    acc = ea.EventAccumulator(str(tmp_path / "tb"), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()  # every event file in the Trainer's logging_dir
    assert list((tmp_path / "run").glob("tensorboard")) == []

    def series(tag):
        return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]

    def text(tag):
        return {s: v.decode() for s, v in series(f"{tag}/text_summary")}

    # the Trainer's own loss curve (logging_steps=1, its step counted from 1) in the same files
    theirs = {e.step - 1: e.value for e in acc.Scalars("train/loss")}
    ours = dict(series("loss"))
    assert sorted(ours) == list(range(6))
    for step in range(3):
        assert ours[step] == pytest.approx(theirs[step], abs=1e-3)
    assert math.isnan(ours[3]) and math.isnan(theirs[3])
    run = steadygrad.load(tmp_path / "run")
    assert [v for _, v in series("grad_norm")] == pytest.approx(
        list(run.series("grad_norm")[1]), rel=0, abs=0, nan_ok=True
    )
    assert "nonfinite" in text("steadygrad/findings")[3]
    assert "status: finished" in text("steadygrad/diagnosis")[5]


def test_trainer_writes_into_its_own_mlflow_run(tmp_path, monkeypatch, request):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)  # process-wide (MLflowCallback keeps it): unset at the end
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    data = token_data(3 * MICRO * ACCUM)
    args = training_args(tmp_path, max_steps=3, report_to=["mlflow"])
    trainer = transformers.Trainer(
        model=tiny_gpt2(), args=args, train_dataset=data, callbacks=[SteadygradCallback()]
    )
    trainer.train()
    steps, loss = steadygrad.load(tmp_path / "out" / "steadygrad").series("loss")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    ours = list(zip(steps.tolist(), loss.tolist(), strict=True))
    assert set(ours) <= set(got)  # exactly, at steps 0..2
    # the Trainer's own "loss" in the same run (logged at steps 1..3, rounded) agrees
    theirs = [(s, v) for s, v in got if (s, v) not in set(ours)]
    assert [s for s, _ in theirs] == [1, 2, 3]
    for (_, mine), (_, trainer_loss) in zip(ours, theirs, strict=True):
        assert mine == pytest.approx(trainer_loss, abs=1e-3)
    assert run.data.tags["steadygrad.status"] == "finished"
