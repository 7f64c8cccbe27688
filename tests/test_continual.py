"""Continual evaluation, min-ACC / WC-ACC, the stability-gap detector, rule and study, each
against values computed independently in the test."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steadygrad
from steadygrad.continual import ContinualEvaluation, GapTracker, ReplayBuffer, WorstCaseScores
from steadygrad.continual.metrics import (
    CONTINUAL_METRICS,
    MIN_ACCURACY,
    STABILITY_GAP,
    TASK,
    TASK_ACCURACY,
    TASK_LOSS,
    WORST_CASE_ACCURACY,
)
from steadygrad.core import declaration_of
from steadygrad.core.record import Record
from steadygrad.diagnose.detectors import StabilityGap, default_detectors
from steadygrad.diagnose.detectors.continual import STABILITY_GAP_FOUND


def _two_tasks(n=40):
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g) + 1.0
    ya, yb = (xa[:, 0] > 0).long(), 2 + (xb[:, 1] > 1).long()
    return {"a": (xa, ya), "b": (xb, yb)}


def _brute_force_scores(trace):
    """min-ACC and WC-ACC at every evaluation, straight from De Lange et al.'s definitions."""
    out = []
    for t, (current, _) in enumerate(trace):
        trained = []
        for c, _ in trace[: t + 1]:
            if c not in trained:
                trained.append(c)
        minima = []
        for task in trained:
            if task == current:
                continue
            ended = max(s for s in range(t + 1) if trace[s][0] == task)  # its last training eval
            after = [trace[s][1][task] for s in range(ended + 1, t + 1)]
            minima.append(min(after))
        k = len(trained)
        min_acc = sum(minima) / len(minima) if minima else math.nan
        current_acc = trace[t][1][current]
        wc = current_acc if not minima else current_acc / k + (1 - 1 / k) * min_acc
        out.append((min_acc, wc))
    return out


def test_min_and_worst_case_accuracy_follow_their_definitions():
    trace = [
        ("a", {"a": 0.5}),
        ("a", {"a": 0.9}),
        ("b", {"a": 0.6, "b": 0.3}),
        ("b", {"a": 0.8, "b": 0.7}),
        ("c", {"a": 0.4, "b": 0.5, "c": 0.2}),
        ("c", {"a": 0.7, "b": 0.9, "c": 0.6}),
    ]
    scores = WorstCaseScores()
    for (current, accs), (min_acc, wc) in zip(trace, _brute_force_scores(trace), strict=True):
        scores.update(current, accs)
        got = scores.min_accuracy()
        assert (math.isnan(got) and math.isnan(min_acc)) or got == pytest.approx(min_acc)
        assert scores.worst_case_accuracy(current, accs[current]) == pytest.approx(wc)
    # The numbers by hand: min a = 0.4, min b = 0.5; WC-ACC = 0.6/3 + (2/3) 0.45.
    assert scores.min_accuracy() == pytest.approx(0.45)
    assert scores.worst_case_accuracy("c", 0.6) == pytest.approx(0.5)


def test_gap_tracker_measures_size_time_to_minimum_and_length():
    tracker = GapTracker(min_drop=0.2, recovery=0.5)
    trace = [(0, 0, 0.9), (10, 1, 0.5), (20, 1, 0.3), (30, 1, 0.5), (40, 1, 0.7), (50, 1, 0.8)]
    closed = []
    for step, task, acc in trace:
        closed += tracker.update(step, task, {"a": acc} if task == 0 else {"a": acc, "b": 0.5})
    (gap,) = closed
    assert gap.task == "a" and gap.switch_step == 10
    assert gap.size == pytest.approx(0.9 - 0.3)
    assert gap.steps_to_minimum == 10
    assert gap.length == 30  # 0.7 is the first value >= 0.3 + 0.5 * 0.6
    assert gap.recovered == pytest.approx(0.8 - 0.3)


def test_continual_evaluation_matches_a_hand_loop_that_evaluates_every_step(tmp_path):
    tasks = _two_tasks()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    evaluator = ContinualEvaluation(tasks, every=1, subset=1000)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", signals=[evaluator], progress=False)
    hand_trace, at_switch = [], {}
    for step in range(12):
        name = "a" if step < 6 else "b"
        evaluator.start_task(name)
        if step == 6:
            at_switch = dict(hand_trace[-1][1])
        x, y = tasks[name]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        record = mon.step(loss)
        assert model.training  # the evaluator restored train mode
        model.eval()
        with torch.no_grad():  # the hand loop: every task seen so far, all its examples
            seen = ["a"] if step < 6 else ["a", "b"]
            accs = {
                t: (model(tasks[t][0]).argmax(1) == tasks[t][1]).float().mean().item() for t in seen
            }
            losses = {t: F.cross_entropy(model(tasks[t][0]), tasks[t][1]).item() for t in seen}
        model.train()
        hand_trace.append((name, accs))
        assert record.values[TASK.name] == (0 if step < 6 else 1)
        for t in seen:
            assert record.values[TASK_ACCURACY.key(t)] == pytest.approx(accs[t], abs=1e-6)
            assert record.values[TASK_LOSS.key(t)] == pytest.approx(losses[t], rel=1e-5)
        if step >= 6:
            assert record.values[STABILITY_GAP.key("a")] == pytest.approx(
                at_switch["a"] - accs["a"], abs=1e-6
            )
        min_acc, wc = _brute_force_scores(hand_trace)[-1]
        assert record.values[WORST_CASE_ACCURACY.name] == pytest.approx(wc, abs=1e-6)
        if step >= 6:
            assert record.values[MIN_ACCURACY.name] == pytest.approx(min_acc, abs=1e-6)
        else:
            assert MIN_ACCURACY.name not in record.values
    mon.close()
    run = steadygrad.load(tmp_path / "run")
    recorded = {m.name for m in CONTINUAL_METRICS}
    assert recorded <= {n.partition("/")[0] for n in run.names()}
    undeclared = [n for n in run.names() if declaration_of(n, run.metrics()) is None]
    assert not undeclared


def test_continual_evaluation_cadence_schedule_and_bad_input(tmp_path):
    tasks = _two_tasks()
    model = nn.Sequential(nn.Linear(6, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    evaluator = ContinualEvaluation(tasks, every=5, schedule={0: "a", 7: "b"})
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", signals=[evaluator], progress=False)
    evaluated = []
    for step in range(12):
        x, y = tasks["a" if step < 7 else "b"]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if TASK.name in mon.step(loss).values:
            evaluated.append(step)
    mon.close()
    assert evaluated == [0, 5, 7, 10]  # the cadence, plus the first step of task b
    with pytest.raises(ValueError, match="unknown task"):
        evaluator.start_task("z")
    with pytest.raises(ValueError, match="task name"):
        ContinualEvaluation({"a/b": tasks["a"]})
    with pytest.raises(TypeError, match="tasks"):
        ContinualEvaluation({})


def test_stability_gap_detector_fires_on_a_transient_drop_only():
    drop_then_recover = [(0, 0, 0.95), (5, 1, 0.40), (10, 1, 0.35), (15, 1, 0.75), (20, 1, 0.8)]
    small_dip = [(0, 0, 0.95), (5, 1, 0.90), (10, 1, 0.93)]
    forgotten = [(0, 0, 0.95), (5, 1, 0.30), (10, 1, 0.10), (15, 1, 0.05)]

    def run(trace):
        det = StabilityGap(min_drop=0.1)
        found = []
        for step, task, acc in trace:
            values = {TASK.name: task, TASK_ACCURACY.key("old"): acc}
            if task:
                values[TASK_ACCURACY.key("new")] = 0.5
            found += det.update(Record(step, values))
        return found

    (finding,) = run(drop_then_recover)
    assert finding.kind == STABILITY_GAP_FOUND.name and finding.where == "old"
    assert finding.step == 15
    assert finding.evidence["size"] == pytest.approx(0.60)
    assert finding.evidence["steps_to_minimum"] == 5 and finding.evidence["length"] == 10
    assert run(small_dip) == []  # healthy: under min_drop
    assert run(forgotten) == []  # forgetting without recovery is not a *gap*
    assert StabilityGap().update(Record(3, {"loss": 1.0})) == []  # silent without its metrics
    assert any(isinstance(d, StabilityGap) for d in default_detectors())
    assert StabilityGap.reads == (TASK, TASK_ACCURACY)
    assert StabilityGap.emits == (STABILITY_GAP_FOUND,)


def test_healthy_run_has_no_stability_gap(tmp_path):
    # Two tasks drawn from one distribution: training the second cannot hurt the first.
    x, y = _two_tasks(80)["a"]
    tasks = {"first": (x[:40], y[:40]), "second": (x[40:], y[40:])}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    evaluator = ContinualEvaluation(tasks, every=1)
    with steadygrad.watch(model, opt, tmp_path / "run", signals=[evaluator], progress=False) as mon:
        for step in range(80):
            name = "first" if step < 40 else "second"
            evaluator.start_task(name)
            loss = F.cross_entropy(model(tasks[name][0]), tasks[name][1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    report = steadygrad.diagnose(tmp_path / "run")
    assert "stability_gap" not in report.causes()
    run = steadygrad.load(tmp_path / "run")
    assert TASK_ACCURACY.key("first") in run.names()  # evaluated: silence is a verdict
    assert STABILITY_GAP_FOUND.name not in {f.kind for f in run.findings()}


def test_stability_gap_study_claim_on_a_reduced_run(tmp_path):
    from steadygrad.studies.stability_gap import run_stability_gap

    result = run_stability_gap(
        tmp_path,
        steps_per_task=60,
        replay_sizes=(0, 4, 32),
        subset=60,
        progress=False,
        plot=False,
    )
    claims = result.claims()
    assert all(claims.values()), claims
    # Read back as a user would: the replay run is diagnosed with the gap and its fixes.
    report = steadygrad.diagnose(result.run_dirs["replay_4"])
    (gap,) = [d for d in report.diagnoses if d.cause == "stability_gap"]
    assert gap.evidence["worst"]["size"] >= 0.1
    replay = next(f for f in gap.fixes if "ReplayBuffer" in f.code)
    space = {"steadygrad": steadygrad, "x": torch.randn(8, 64), "y": torch.randint(10, (8,))}
    once, each_step = replay.code.split("#")[0], replay.code.split("each step:")[1].strip()
    exec(once + "\n" + each_step, space)
    assert space["x"].shape == (40, 64)  # the fix as printed: 8 new + 32 replayed
    assert (tmp_path / "stability_gap.json").exists()


def test_cli_runs_both_new_studies(tmp_path, capsys):
    from steadygrad.cli import main

    out = tmp_path / "gap"
    assert (
        main(
            [
                "study",
                "stability-gap",
                "-o",
                str(out),
                "--steps-per-task",
                "20",
                "--replay-sizes",
                "0",
                "8",
            ]
        )
        == 0
    )
    assert (out / "stability_gap.json").exists() and (out / "replay_8" / "run.db").exists()
    out = tmp_path / "est"
    assert (
        main(
            [
                "study",
                "gradient-estimators",
                "-o",
                str(out),
                "--steps",
                "20",
                "--estimators",
                "backprop",
                "dfa",
            ]
        )
        == 0
    )
    assert (out / "gradient_estimators.json").exists()
    assert "claims" in capsys.readouterr().out
    assert main(["study", "gradient-estimators", "--estimators", "nope"]) == 2


def test_replay_buffer_is_a_uniform_reservoir():
    """Every example of a stream is kept with probability capacity / seen (Vitter's reservoir),
    checked by counting over many independent buffers."""
    stream = torch.arange(60).float().unsqueeze(1)
    kept = torch.zeros(60)
    trials = 600
    for seed in range(trials):
        buffer = ReplayBuffer(capacity=12, seed=seed)
        for start in range(0, 60, 7):  # uneven batches
            buffer.add(stream[start : start + 7], stream[start : start + 7, 0].long())
        assert len(buffer) == 12 and buffer.seen == 60
        kept[buffer._x[:, 0].long()] += 1
    p = 12 / 60
    se = math.sqrt(p * (1 - p) / trials)
    z = (kept / trials - p) / se
    assert z.abs().max() < 4.5 and (z.abs() < 2).float().mean() > 0.85
    x, y = ReplayBuffer(4).mix(torch.ones(3, 1), torch.ones(3).long(), k=2)
    assert x.shape == (3, 1)  # empty buffer: the batch unchanged
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4).sample(2)
