"""Sinks: a run recorded through a real Monitor with TensorBoard, W&B (offline) and MLflow (a file
store) sinks attached, read back with each tool's own reader and compared with the run store,
value for value; and a stored run replayed (``export --to``) giving the same event files."""

import math

import numpy as np
import pytest
import torch
from _wandb_log import history, run_record, summary, wait_until_written
from helpers import tiny_mlp, train

import steadygrad
from steadygrad.core import Finding, Record, RunInfo
from steadygrad.sinks import MLflowSink, TensorBoardSink, WandbSink, replay
from steadygrad.sinks._text import require
from steadygrad.sinks.mlflow import metric_key

NAME = "<b>x|y</b> & 'z'"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """50 SGD steps, every sink live; NaN gradients at step 30, which the autopilot skips."""
    root = tmp_path_factory.mktemp("sinks")
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sinks = {
        "tensorboard": TensorBoardSink(root / "tb"),
        "wandb": WandbSink(project="sinks-test", dir=root / "wandb", mode="offline"),
        "mlflow": MLflowSink(root / "mlruns", experiment="sinks-test"),
    }
    mon = steadygrad.Monitor(
        model,
        opt,
        root / "run",
        name=NAME,
        progress=False,
        autopilot=steadygrad.Autopilot(snapshot_every=10),
        sinks=list(sinks.values()),
    )

    def poison(i):
        if i == 30:
            model[0].weight.grad.fill_(math.nan)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_SILENT", "true")
        train(model, opt, mon, 50, before_step=poison)
        mon.close()
    assert mon.sinks == list(sinks.values())  # none failed and was switched off
    run = steadygrad.load(mon.run_dir)
    assert [a.kind for a in run.actions()] == ["skip_update"] and run.findings()
    return run, sinks, root


def _stored(run):
    """{name: (steps, values)} from the run store: the oracle."""
    return {name: run.series(name) for name in run.names()}


def _tensorboard(path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(path), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return acc


def test_tensorboard_event_reader_reads_back_every_scalar_exactly(recorded):
    from tensorboard.util import tensor_util

    recorded, _, root = recorded
    acc = _tensorboard(root / "tb")
    stored = _stored(recorded)
    assert set(stored) <= set(acc.Tags()["tensors"])
    for name, (steps, values) in stored.items():
        events = acc.Tensors(name)
        assert [e.step for e in events] == steps.tolist()
        got = np.array([tensor_util.make_ndarray(e.tensor_proto).item() for e in events])
        np.testing.assert_array_equal(got, values)  # float64, NaN where NaN
    (finding,) = acc.Tensors("steadygrad/findings/text_summary")
    text = tensor_util.make_ndarray(finding.tensor_proto)[0].decode()
    assert finding.step == 30 and "nonfinite" in text and "0.weight" in text
    (action,) = acc.Tensors("steadygrad/actions/text_summary")
    assert action.step == 30 and "skip_update" in action.tensor_proto.string_val[0].decode()
    (diagnosis,) = acc.Tensors("steadygrad/diagnosis/text_summary")
    text = diagnosis.tensor_proto.string_val[0].decode()
    assert diagnosis.step == 49 and "status: finished" in text and "NaN/Inf" in text


def test_replay_of_the_stored_run_gives_the_same_tensorboard_scalars(recorded, tmp_path):
    from tensorboard.util import tensor_util

    recorded, _, root = recorded
    replay(recorded, [TensorBoardSink(tmp_path)])
    live, replayed = _tensorboard(root / "tb"), _tensorboard(tmp_path)
    tags = sorted(live.Tags()["tensors"])
    assert tags == sorted(replayed.Tags()["tensors"])
    for tag in tags:
        a, b = live.Tensors(tag), replayed.Tensors(tag)
        assert [e.step for e in a] == [e.step for e in b], tag
        if not tag.startswith("steadygrad/"):  # scalars; the text is checked above
            a = [tensor_util.make_ndarray(e.tensor_proto).item() for e in a]
            b = [tensor_util.make_ndarray(e.tensor_proto).item() for e in b]
            np.testing.assert_array_equal(a, b)


def test_wandb_offline_run_reads_back_with_its_own_records(recorded):
    recorded, _, root = recorded
    (log,) = (root / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    wait_until_written(log, recorded.last_step)
    run = run_record(log)
    assert run.display_name == NAME and run.project == "sinks-test"
    rows = history(log)
    by_step = {}
    for row in rows:
        by_step.setdefault(row["_step"], {}).update(row)
    for name, (steps, values) in _stored(recorded).items():
        got = [by_step[s].get(name, "missing") for s in steps.tolist()]
        got = [math.nan if v == "NaN" else v for v in got]  # W&B writes NaN as the string
        np.testing.assert_array_equal(np.array(got, dtype=float), values)
    assert "nonfinite" in by_step[30]["steadygrad/findings"]
    assert "skip_update" in by_step[30]["steadygrad/actions"]
    end = summary(log)
    assert "NaN/Inf" in end["steadygrad/diagnosis"] and end["steadygrad/status"] == "finished"


def test_mlflow_file_store_reads_back_with_mlflow_client(recorded, tmp_path):
    from mlflow.tracking import MlflowClient

    recorded, sinks, _ = recorded
    sink = sinks["mlflow"]
    client = MlflowClient(tracking_uri=sink.tracking_uri)
    run = client.get_run(sink.run_id)
    assert run.info.run_name == NAME and run.info.status == "FINISHED"
    assert run.data.params["optimizer"] == "SGD"
    stored = _stored(recorded)
    families = {n.split("/")[0] for n in stored if "/" in n}
    assert "grad_norm" in stored and "grad_norm" in families  # a total next to its family
    for name, (steps, values) in stored.items():
        key = metric_key(name, families)
        history = sorted(client.get_metric_history(sink.run_id, key), key=_step)
        assert [m.step for m in history] == steps.tolist()
        np.testing.assert_array_equal([m.value for m in history], values)
    (count,) = client.get_metric_history(sink.run_id, "steadygrad.findings")
    assert (count.step, count.value) == (30, 1.0)
    (acted,) = client.get_metric_history(sink.run_id, "steadygrad.actions")
    assert acted.step == 30
    out = client.download_artifacts(sink.run_id, "steadygrad", str(tmp_path / "art"))
    events = (tmp_path / "art" / "steadygrad" / "events.txt").read_text()
    assert "step 30: [critical] nonfinite" in events and "step 30: skip_update" in events
    assert "NaN/Inf" in (tmp_path / "art" / "steadygrad" / "diagnosis.txt").read_text()
    assert out


def _step(metric):
    return metric.step


def test_records_fed_directly_with_hostile_names(tmp_path):
    """Names MLflow refuses are mapped to ones it takes; TensorBoard keeps them verbatim."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    name = "attn_logit_max/h.0:q[k]<script>"
    tb, ml = TensorBoardSink(tmp_path / "tb"), MLflowSink(tmp_path / "ml")
    info = RunInfo("hand", tmp_path, {"lr": 0.1})
    values = [1.5, math.inf, 1e300]
    for sink in (tb, ml):
        sink.open(info)
        for step, value in enumerate(values):
            found = [Finding("loss_spike", step, name, {"z": 9.0})] if step == 1 else []
            sink.write(Record(step, {name: value}, wall_time=1.0 + step), found)
        sink.close("crashed", None)
    acc = ea.EventAccumulator(str(tmp_path / "tb"), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    got = [tensor_util.make_ndarray(e.tensor_proto).item() for e in acc.Tensors(name)]
    assert got == values
    assert metric_key(name) == "attn_logit_max/h.0_q_k__script_"
    client = MlflowClient(tracking_uri=ml.tracking_uri)
    history = client.get_metric_history(ml.run_id, metric_key(name))
    assert sorted((m.step, m.value) for m in history) == list(enumerate(values))
    assert client.get_run(ml.run_id).info.status == "FAILED"  # crashed


def test_missing_package_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'steadygrad\[nope\]'"):
        require("steadygrad_no_such_package", "NopeSink", "nope")
    with pytest.raises(ValueError, match="mode"):
        WandbSink(mode="cloudy")
    with pytest.raises(TypeError, match="log_dir"):
        TensorBoardSink(3)


def test_a_trainers_own_tensorboard_writer_is_written_to_and_left_open(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer=writer)
    sink.open(RunInfo("trainer", tmp_path))
    sink.write(Record(3, {"loss": 0.25}), [])
    sink.close("finished", None)
    writer.add_scalar("trainer/own", 1.0, 4)  # still open: the trainer closes it
    writer.close()
    tags = _tensorboard(tmp_path).Tags()["tensors"] + _tensorboard(tmp_path).Tags()["scalars"]
    assert "loss" in tags and "trainer/own" in tags
