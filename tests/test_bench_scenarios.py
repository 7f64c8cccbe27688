"""The diagnosis yardstick (bench/scenarios, bench/diagnosis_accuracy.py) is itself sound:
its truth uses the rules' cause names, its matching and divergence rules do what they say, and
one scenario runs end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import diagnosis_accuracy as bench  # noqa: E402
from scenarios import CAUSES, SCENARIOS  # noqa: E402

import steadygrad  # noqa: E402
from steadygrad.diagnose.rules import RULES  # noqa: E402

NEW_CAUSES = {"healthy"}


def test_truth_uses_the_rules_cause_names_or_a_declared_new_one():
    rule_causes = {r.cause for r in RULES}
    assert set(CAUSES) - NEW_CAUSES <= rule_causes
    for sc in SCENARIOS.values():
        assert sc.cause in rule_causes | NEW_CAUSES, sc.name


def test_the_collection_covers_what_issue_10_asks():
    sick = [s for s in SCENARIOS.values() if not s.healthy]
    healthy = [s for s in SCENARIOS.values() if s.healthy]
    assert len(sick) >= 24 and len(healthy) >= 8
    assert {s.family for s in SCENARIOS.values()} >= {"mlp", "cnn", "rnn", "gpt", "hf", "modular"}
    assert sum(s.heldout for s in SCENARIOS.values()) >= 3
    optimizers = {s.optimizer for s in SCENARIOS.values()}
    assert {"sgd", "sgd_mom"} <= optimizers and optimizers & {"adam", "adamw"}
    assert any(o.startswith("sg_") for o in optimizers)  # one of steadygrad's optimizers
    # the second held-out set (cases_heldout.py) is registered, and every one of it held out
    second = [s for s in SCENARIOS.values() if s.run.__module__.endswith(".cases_heldout")]
    assert len(second) >= 12 and all(s.heldout for s in second)
    assert sum(s.healthy for s in second) >= 4


def test_the_third_held_out_set_is_registered_and_selectable(capsys):
    third = [s for s in SCENARIOS.values() if s.run.__module__.endswith(".cases_heldout3")]
    assert all(s.heldout and s.name.startswith("h3_") for s in third)
    assert sum(not s.healthy for s in third) == 12 and sum(s.healthy for s in third) == 4
    # every cause of the collection but AMP overflow, gradient and loss spikes
    assert {s.cause for s in third} == set(CAUSES) - {
        "amp_overflow",
        "gradient_spike",
        "loss_spike",
    }
    assert len({s.optimizer for s in third}) >= 10 and len({s.family for s in third}) >= 9
    # a family of the other case files is not reused
    others = {s.family for s in SCENARIOS.values() if s not in third}
    assert not {s.family for s in third} & others
    for s in third:
        if s.healthy or s.cause in ("data_outlier", "loss_divergence"):
            assert s.where == (), s.name
        assert s.diverges in (None, "auto") or s.diverges >= s.onset, s.name
    assert bench.main(["--file", "cases_heldout3", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(listed) == sorted(s.name for s in third)


def test_the_fourth_held_out_file_is_registered_and_selectable(capsys):
    fourth = [s for s in SCENARIOS.values() if s.run.__module__.endswith(".cases_heldout4")]
    assert all(s.heldout and s.name.startswith("h4_") for s in fourth)
    assert sum(not s.healthy for s in fourth) == 10 and sum(s.healthy for s in fourth) == 4
    assert len({s.cause for s in fourth} - {"healthy"}) >= 8 and "amp_overflow" not in {
        s.cause for s in fourth
    }
    assert len({s.optimizer for s in fourth}) >= 10 and len({s.family for s in fourth}) >= 10
    # a family of the other case files is not reused
    others = {s.family for s in SCENARIOS.values() if s not in fourth}
    assert not {s.family for s in fourth} & others
    for s in fourth:
        if s.healthy or s.cause in ("data_outlier", "loss_divergence", "sharpness_above_limit"):
            assert s.where == (), s.name
        assert s.diverges in (None, "auto") or s.diverges >= s.onset, s.name
    assert bench.main(["--file", "cases_heldout4", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(listed) == sorted(s.name for s in fourth)


def test_same_place_matches_parents_and_children_only_on_dot_boundaries():
    assert bench.same_place("h.0.attn", "h.0.attn.c_attn")
    assert bench.same_place("2.weight", "2")
    assert not bench.same_place("h.1", "h.10")
    assert not bench.same_place("", "h.1")


def test_measured_divergence():
    assert bench.measured_divergence([2.0, 1.0, math.nan]) == 2
    steady = [1.0] * 20
    assert bench.measured_divergence(steady) is None
    # median of 5 must pass max(2 x best, best + 1): best 1.0 -> above 2.0 from index 9
    rising = [1.0] * 5 + [1.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    assert bench.measured_divergence(rising) == 8


def test_one_scenario_end_to_end(tmp_path):
    row = bench.run_one("nan_log_one_sample_mlp", "default", str(tmp_path))
    assert row["error"] is None and row["induced"]
    assert row["diverge_step"] == 137 and row["steps"] == 170
    assert "nonfinite" in [d["cause"] for d in row["diagnoses"]]
    assert row["lead"] is not None and row["lead"] >= 0


def test_kept_runs_judged_again_read_as_they_were_judged_when_run(tmp_path, capsys):
    # A rules-only change is measured by judging the kept runs again: with the rules unchanged
    # the rows must come back as the run itself judged them (and the finding kinds map to the
    # same causes whichever order they are asked in: each kind is judged on its own).
    row = bench.run_one("nan_log_one_sample_mlp", "default", str(tmp_path / "kept"))
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"rows": [row]}, default=str))
    out = tmp_path / "again.json"
    assert bench.rejudge(saved, tmp_path / "kept", ["default"], out) == 0
    (again,) = json.loads(out.read_text())["rows"]
    assert {k: again[k] for k in row} == json.loads(json.dumps(row, default=str))
    assert "1 of 1 rows judged again" in capsys.readouterr().out
    run = steadygrad.load(tmp_path / "kept" / "default" / "nan_log_one_sample_mlp")
    kinds = {f.kind for f in run.findings()}
    together = bench.kind_causes(run, kinds)
    assert together == {k: bench.kind_causes(run, {k})[k] for k in kinds}


@pytest.mark.parametrize("name", ["healthy_mlp_sgd"])
def test_a_healthy_control_has_no_truth_to_locate(tmp_path, name):
    row = bench.run_one(name, "default", str(tmp_path))
    assert row["error"] is None and "warned" in row and "first" not in row


# (case file, name prefix, faults, distinct causes at least, families at least)
HELD_OUT_FILES = [
    ("cases_heldout5", "h5_", 13, 12, 8),
    ("cases_heldout12", "h12_", 12, 11, 12),
    ("cases_heldout13", "h13_", 12, 11, 12),
    ("cases_heldout14", "h14_", 12, 12, 16),
    ("cases_heldout15", "h15_", 12, 11, 13),
    ("cases_heldout16", "h16_", 12, 11, 15),
    ("cases_heldout17", "h17_", 12, 11, 12),
    ("cases_heldout18", "h18_", 12, 11, 12),
    ("cases_heldout19", "h19_", 12, 11, 12),
    ("cases_heldout20", "h20_", 12, 11, 12),
    ("cases_heldout21", "h21_", 12, 11, 12),
    ("cases_heldout22", "h22_", 12, 11, 12),
    ("cases_heldout23", "h23_", 12, 11, 12),
    ("cases_heldout24", "h24_", 12, 11, 12),
    ("cases_heldout25", "h25_", 12, 11, 12),
    ("cases_heldout26", "h26_", 12, 11, 12),
    ("cases_heldout27", "h27_", 12, 11, 12),
    ("cases_heldout28", "h28_", 12, 11, 12),
    ("cases_heldout29", "h29_", 12, 11, 12),
    ("cases_heldout30", "h30_", 12, 11, 12),
    ("cases_heldout31", "h31_", 12, 11, 12),
    ("cases_heldout32", "h32_", 12, 11, 12),
    ("cases_heldout33", "h33_", 12, 11, 12),
    ("cases_heldout34", "h34_", 12, 11, 12),
    ("cases_heldout35", "h35_", 12, 11, 12),
    ("cases_heldout36", "h36_", 12, 11, 12),
    ("cases_heldout37", "h37_", 12, 11, 12),
    ("cases_heldout38", "h38_", 12, 11, 12),
    ("cases_heldout39", "h39_", 12, 11, 12),
    ("cases_heldout40", "h40_", 12, 11, 12),
    ("cases_heldout41", "h41_", 12, 11, 12),
    ("cases_heldout42", "h42_", 12, 11, 12),
    ("cases_heldout43", "h43_", 12, 11, 12),
    ("cases_heldout44", "h44_", 12, 11, 12),
    ("cases_heldout45", "h45_", 12, 11, 12),
    ("cases_heldout46", "h46_", 12, 11, 12),
    ("cases_heldout47", "h47_", 12, 11, 12),
    ("cases_heldout48", "h48_", 12, 11, 12),
    ("cases_heldout49", "h49_", 12, 11, 12),
    ("cases_heldout50", "h50_", 12, 11, 12),
    ("cases_heldout51", "h51_", 12, 11, 12),
    ("cases_heldout52", "h52_", 12, 11, 12),
    ("cases_heldout53", "h53_", 12, 11, 12),
    ("cases_heldout54", "h54_", 12, 11, 12),
    ("cases_heldout55", "h55_", 12, 11, 12),
    ("cases_heldout56", "h56_", 12, 11, 12),
    ("cases_heldout57", "h57_", 12, 11, 12),
    ("cases_heldout58", "h58_", 12, 11, 12),
    ("cases_heldout59", "h59_", 12, 11, 12),
    ("cases_heldout60", "h60_", 12, 11, 12),
    ("cases_heldout61", "h61_", 12, 11, 12),
    ("cases_heldout62", "h62_", 12, 11, 12),
    ("cases_heldout63", "h63_", 12, 11, 12),
    ("cases_heldout64", "h64_", 12, 11, 12),
    ("cases_heldout65", "h65_", 12, 11, 12),
    ("cases_heldout66", "h66_", 12, 11, 12),
    ("cases_heldout68", "h68_", 12, 11, 12),
    ("cases_heldout69", "h69_", 12, 11, 12),
    ("cases_heldout67", "h67_", 12, 11, 12),
    ("cases_heldout70", "h70_", 12, 11, 12),
    ("cases_heldout71", "h71_", 12, 11, 12),
    ("cases_heldout72", "h72_", 12, 11, 12),
    ("cases_heldout73", "h73_", 12, 11, 12),
    ("cases_heldout74", "h74_", 12, 11, 12),
    ("cases_heldout75", "h75_", 12, 11, 12),
    ("cases_heldout76", "h76_", 12, 11, 12),
    # written over 11 causes; one frozen layer each relabelled to the collection's cause
    ("cases_heldout77", "h77_", 12, 10, 12),
    ("cases_heldout78", "h78_", 12, 10, 12),
    ("cases_heldout79", "h79_", 12, 11, 12),
    ("cases_heldout80", "h80_", 12, 11, 12),
    ("cases_heldout81", "h81_", 12, 11, 12),
    ("cases_heldout82", "h82_", 11, 11, 12),  # its writer ran out of time: 11 faults, 3 healthy
    ("cases_heldout83", "h83_", 12, 11, 12),
    ("cases_heldout84", "h84_", 12, 11, 12),
    ("cases_heldout85", "h85_", 12, 11, 12),
    ("cases_heldout86", "h86_", 9, 9, 13),  # its writer ran out of time: 9 faults, 4 healthy
    ("cases_heldout87", "h87_", 12, 11, 12),
    ("cases_heldout88", "h88_", 12, 11, 12),
    ("cases_heldout89", "h89_", 12, 11, 12),
    ("cases_heldout90", "h90_", 12, 11, 12),
    ("cases_heldout91", "h91_", 10, 10, 12),  # its writer ran out of time: 10 faults, 4 healthy
    ("cases_heldout92", "h92_", 12, 11, 12),
    ("cases_heldout93", "h93_", 11, 10, 12),  # its writer ran out of time: 11 faults, 4 healthy
    ("cases_heldout94", "h94_", 12, 11, 12),
    ("cases_heldout96", "h96_", 12, 12, 13),
    ("cases_heldout97", "h97_", 12, 12, 16),
    ("cases_heldout98", "h98_", 12, 12, 12),
    ("cases_heldout99", "h99_", 12, 11, 14),
    ("cases_heldout100", "h100_", 12, 12, 12),
    # its writer ran out of time: 10 faults over 10 causes, 3 healthy
    ("cases_heldout101", "h101_", 10, 10, 12),
    ("cases_heldout127", "h127_", 12, 12, 16),
    ("cases_heldout102", "h102_", 12, 12, 14),
    ("cases_heldout103", "h103_", 12, 12, 13),
    ("cases_heldout104", "h104_", 12, 12, 14),
    ("cases_heldout105", "h105_", 12, 12, 13),
    ("cases_heldout106", "h106_", 12, 12, 14),
    ("cases_heldout107", "h107_", 12, 12, 14),
    ("cases_heldout108", "h108_", 12, 12, 15),
    ("cases_heldout109", "h109_", 12, 12, 12),
    ("cases_heldout110", "h110_", 12, 12, 13),
    ("cases_heldout111", "h111_", 12, 12, 14),
    ("cases_heldout112", "h112_", 12, 12, 12),
    ("cases_heldout113", "h113_", 12, 12, 12),
    ("cases_heldout114", "h114_", 12, 12, 12),
    ("cases_heldout115", "h115_", 12, 12, 12),
    ("cases_heldout116", "h116_", 12, 12, 14),
    ("cases_heldout117", "h117_", 12, 12, 14),
    ("cases_heldout118", "h118_", 12, 12, 13),
    ("cases_heldout119", "h119_", 12, 12, 15),
    ("cases_heldout120", "h120_", 12, 12, 16),
    ("cases_heldout121", "h121_", 12, 12, 14),
    ("cases_heldout122", "h122_", 12, 12, 14),
    ("cases_heldout123", "h123_", 12, 12, 16),
    ("cases_heldout124", "h124_", 12, 12, 14),
    ("cases_heldout125", "h125_", 12, 12, 13),
    ("cases_heldout126", "h126_", 12, 12, 12),
    ("cases_heldout128", "h128_", 12, 12, 16),
    ("cases_heldout129", "h129_", 12, 12, 13),
    ("cases_heldout130", "h130_", 12, 12, 12),
    ("cases_heldout131", "h131_", 12, 12, 12),
    ("cases_heldout132", "h132_", 12, 12, 12),
    ("cases_heldout133", "h133_", 12, 12, 13),
    ("cases_heldout134", "h134_", 12, 12, 16),
    ("cases_heldout135", "h135_", 12, 12, 12),
    ("cases_heldout136", "h136_", 12, 12, 12),
    ("cases_heldout137", "h137_", 12, 12, 13),
    ("cases_heldout138", "h138_", 12, 12, 14),
]


# Healthy controls of a file that has not four (its writer stopped short).
SHORT_OF_HEALTHY = {"cases_heldout82": 3, "cases_heldout101": 3}


@pytest.mark.parametrize("module, prefix, faults, causes, families", HELD_OUT_FILES)
def test_a_held_out_file_is_registered_and_selectable(
    capsys, module, prefix, faults, causes, families
):
    mine = [s for s in SCENARIOS.values() if s.run.__module__.endswith("." + module)]
    assert all(s.heldout and s.name.startswith(prefix) for s in mine)
    healthy = SHORT_OF_HEALTHY.get(module, 4)
    assert sum(not s.healthy for s in mine) == faults and sum(s.healthy for s in mine) == healthy
    assert len({s.cause for s in mine} - {"healthy"}) >= causes
    assert len({s.optimizer for s in mine}) >= 10 and len({s.family for s in mine}) >= families
    # a family of the other case files is not reused
    others = {s.family for s in SCENARIOS.values() if s not in mine}
    assert not {s.family for s in mine} & others
    for s in mine:
        if s.healthy or s.cause in ("data_outlier", "loss_divergence", "sharpness_above_limit"):
            assert s.where == (), s.name
        assert s.diverges in (None, "auto") or s.diverges >= s.onset, s.name
    assert bench.main(["--file", module, "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(listed) == sorted(s.name for s in mine)
