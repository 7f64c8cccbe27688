"""The command line on a real recorded run."""

import html
import math
import re
import subprocess
import sys

import pytest
import torch
from helpers import tiny_mlp, train

import steadygrad
from steadygrad.cli import main


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, run_dir, name="<script>alert(1)</script>", progress=False)
    train(
        model, opt, mon, 40, before_step=lambda i: i == 30 and model[0].weight.data.fill_(math.nan)
    )
    mon.close()
    return run_dir


def test_report_prints_summary_and_writes_escaped_html(recorded_run, capsys):
    assert main(["report", str(recorded_run)]) == 0
    out = capsys.readouterr().out
    assert "status finished" in out and "nonfinite" in out and "steps 40" in out
    page = (recorded_run / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert "id=sg-data" in page and "uPlot" in page  # the interactive page, uPlot inlined
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert main(["report", str(recorded_run), "--static", "-o", str(recorded_run / "s.html")]) == 0
    page = (recorded_run / "s.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # loss, grad norm, heatmaps
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_report_comparison_of_two_runs(recorded_run, tmp_path):
    out = tmp_path / "cmp.html"
    assert main(["report", str(recorded_run), str(recorded_run), "-o", str(out)]) == 0
    assert out.read_text().count("class=card") == 2


def test_export_csv_and_parquet(recorded_run, tmp_path):
    assert main(["export", str(recorded_run), "-o", str(tmp_path / "a.csv")]) == 0
    assert (tmp_path / "a.csv").read_text().startswith("step,name,value,wall")
    assert main(["export", str(recorded_run), "-o", str(tmp_path / "a.parquet")]) == 0
    assert main(["export", str(recorded_run), "-o", str(tmp_path / "a.txt")]) == 2


def test_missing_run_and_bad_arguments(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "no steadygrad run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--steps", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


def test_help_as_a_real_process():
    result = subprocess.run(
        [sys.executable, "-m", "steadygrad", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    for command in ("report", "demo", "export"):
        assert command in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "steadygrad", "report"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "RUN_DIR" in result.stderr


def test_study_through_the_cli_passes_only_the_options_given(tmp_path, capsys):
    import json

    assert main(["study", "attention-logits", "-o", str(tmp_path), "--steps", "20"]) == 0
    result = json.loads((tmp_path / "attention_logits.json").read_text())
    assert max(max(steps) for steps in result["steps"].values()) <= 20  # --steps reached it
    assert result["config"]["lr"] == 0.03  # the study's own default, untouched
