"""The README's "one line" section runs as written: the plain loop, the Hugging Face Trainer,
Lightning and accelerate, each block executed here (the plain loop for fewer steps)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import steadygrad

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> dict[str, str]:
    """The python blocks of the section, by the heading above them."""
    text = README.read_text()
    section = text.split("## One line in your training loop", 1)[1].split("\n## ", 1)[0]
    found, heading = {}, "plain loop"
    for part in re.split(r"^(### .*)$", section, flags=re.M):
        if part.startswith("### "):
            heading = part[4:].strip()
            continue
        code = re.findall(r"```python\n(.*?)```", part, flags=re.S)
        if code:
            found[heading] = code[0]
    return found


def run_block(name: str, tmp_path, monkeypatch, replace=()) -> None:
    code = blocks()[name]
    for old, new in replace:
        assert old in code, f"{old!r} is no longer in the README's {name} block"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README: {name}", "exec"), {"__name__": "__readme__"})


def test_the_section_shows_all_four():
    assert {"plain loop", "Hugging Face Trainer", "Lightning", "accelerate"} <= set(blocks())


def test_plain_loop(tmp_path, monkeypatch):
    run_block("plain loop", tmp_path, monkeypatch, [("range(200)", "range(4)")])
    assert len(steadygrad.load(tmp_path / "runs/first").series("loss")[0]) == 4


def test_hugging_face_trainer(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    run_block("Hugging Face Trainer", tmp_path, monkeypatch)
    steps, norms = steadygrad.load(tmp_path / "out/gpt2/steadygrad").series("grad_norm_preclip")
    assert list(steps) == list(range(10)) and all(math.isfinite(x) for x in norms)


def test_lightning(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    run_block("Lightning", tmp_path, monkeypatch)
    steps, _ = steadygrad.load(tmp_path / "out/lit/steadygrad").series("loss")
    assert list(steps) == list(range(10))


def test_accelerate(tmp_path, monkeypatch):
    accelerate = pytest.importorskip("accelerate")
    try:
        run_block("accelerate", tmp_path, monkeypatch)
    finally:
        accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)
        accelerate.state.GradientState._reset_state()
    steps, _ = steadygrad.load(tmp_path / "out/acc").series("loss")
    assert list(steps) == list(range(16))
