"""The interactive HTML report in a real headless browser (Debian's chromium, driven by
Playwright): zoom, hover, the layer picker, clickable findings, no console error, no network
request, hostile names shown as text.

Skips on a machine without chromium, but never in CI: with CI=true a missing browser fails.
"""

import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import tiny_mlp, train

import steadygrad
from steadygrad.report import write_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NAME = "<script>alert(1)</script>"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_or_skip():
    if CHROMIUM is None or not _has_playwright():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: install Debian's chromium and playwright")
        pytest.skip("no chromium (apt-get install chromium) or playwright here")
    return CHROMIUM


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    runs = []
    for name, nan_step in ((NAME, 30), ("healthy", None)):
        model = tiny_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        mon = steadygrad.Monitor(
            model,
            opt,
            root / ("a" if nan_step else "b"),
            name=name,
            progress=False,
            autopilot=steadygrad.Autopilot(snapshot_every=10),
        )

        def poison(i, model=model, nan_step=nan_step):
            if i == nan_step:
                model[0].weight.grad.fill_(math.nan)

        train(model, opt, mon, 50, before_step=poison)
        mon.close()
        runs.append(steadygrad.load(mon.run_dir))
    return runs, write_html(runs[0], root / "one.html"), write_html(runs, root / "both.html")


@pytest.fixture(scope="module")
def browser():
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=ARGS)
        yield launched
        launched.close()


def _open(browser, page_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    seen = {"console": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: seen["console"].append((m.type, m.text)))
    page.on("pageerror", lambda e: seen["console"].append(("pageerror", str(e))))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.goto(page_path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page, seen


def _x_range(page, chart=0):
    return page.evaluate(
        f"[steadygradCharts[{chart}].scales.x.min, steadygradCharts[{chart}].scales.x.max]"
    )


def test_one_run_zoom_hover_layer_picker_and_findings(reports, browser):
    runs, one, _ = reports
    run = runs[0]
    page, seen = _open(browser, one)
    text = page.inner_text("body")
    assert NAME in text and "Diagnosis" in text  # the hostile name is text ...
    assert seen["dialogs"] == []  # ... and did not run

    # hover: the tooltip reads the step and the loss stored at that step
    loss = page.locator("section[data-panel='loss'] .u-over")
    box = loss.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2)
    tip = page.locator("section[data-panel='loss'] .sg-tip")
    tip.wait_for(state="visible")
    shown = tip.inner_text()
    step = int(re.search(r"step (\d+)", shown).group(1))
    value = float(re.search(r"loss = ([-0-9.e+]+)", shown).group(1))
    steps, values = run.series("loss")
    assert value == pytest.approx(values[list(steps).index(step)], rel=1e-4)
    assert 10 <= step <= 30  # 40% across 0..49

    # zoom: drag across 20%..50% of the loss chart; every chart follows
    full = _x_range(page)
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 20, steps=8)
    page.mouse.up()
    lo, hi = _x_range(page)
    assert full[0] <= lo < hi <= full[1] and (hi - lo) < 0.5 * (full[1] - full[0])
    n = page.evaluate("steadygradCharts.length")
    assert n >= 6 and all(_x_range(page, i) == [lo, hi] for i in range(n))
    page.click("#sg-reset")
    assert _x_range(page) == full

    # the layer picker: pick one layer of the per-parameter gradient norms
    family = page.locator("section[data-family='grad_norm']")
    family.locator("select").select_option(label="2.weight")
    legend = family.locator(".u-legend").inner_text()
    assert "2.weight (max)" in legend and "0.weight" not in legend
    # ... and the heatmap answers hover with the layer and steps
    canvas = family.locator(".sg-heat canvas")
    canvas.hover(position={"x": canvas.bounding_box()["width"] * 0.5, "y": 3})
    heat_tip = family.locator(".sg-heat .sg-tip").inner_text()
    assert re.search(r"steps \d+-\d+", heat_tip) and "max = " in heat_tip

    # a finding in the table: a click zooms every chart to its step and names it
    page.locator("table.sg-marks tr", has_text="nonfinite").first.click()
    lo, hi = _x_range(page)
    assert lo < 30 < hi and (hi - lo) < 0.5 * (full[1] - full[0])
    assert "nonfinite" in page.inner_text("#sg-detail")

    shot = page.screenshot(full_page=True)
    page.close()
    assert [c for c in seen["console"] if c[0] in ("error", "pageerror", "warning")] == []
    assert seen["requests"] == [one.as_uri()]  # the page itself, nothing else
    assert len(shot) > 50_000  # drawn, not blank


def test_comparison_overlays_runs_without_network(reports, browser):
    runs, _, both = reports
    page, seen = _open(browser, both)
    legend = page.locator("section[data-panel='loss'] .u-legend").inner_text()
    assert f"{NAME}: loss" in legend and "healthy: loss" in legend  # as text, both runs
    assert page.locator("section[data-family]").count() >= 2 * 3  # each run's layer families
    marks = page.locator("table.sg-marks").inner_text()
    assert "skip_update" in marks and NAME in marks
    page.close()
    assert [c for c in seen["console"] if c[0] in ("error", "pageerror", "warning")] == []
    assert seen["requests"] == [both.as_uri()] and seen["dialogs"] == []
    assert np.isfinite(runs[1].series("loss")[1]).all()
