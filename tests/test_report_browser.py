"""The HTML report in a real headless browser (Debian's chromium, driven by Playwright).

Skips on a machine without chromium, but never in CI: with CI=true a missing browser fails.
"""

import math
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import tiny_mlp, train

import steadygrad
from steadygrad.report import write_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NAME = "<script>alert(1)</script>"


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
def report(tmp_path_factory):
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
    return write_html(runs[0], root / "one.html"), write_html(runs, root / "both.html")


@pytest.mark.parametrize("which", [0, 1])
def test_report_in_a_real_browser(report, which, tmp_path):
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    page_path = report[which]
    console, requests, dialogs = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        text = page.inner_text("body")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
        )
        shot = tmp_path / "shot.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    assert [c for c in console if c[0] in ("error", "pageerror")] == []
    assert requests == [page_path.as_uri()]  # the page itself, nothing from the network
    assert dialogs == []  # the run named <script>alert(1)</script> did not run
    assert NAME in text  # ... it is shown as text
    assert len(images) >= 4 and all(w > 100 and h > 100 for w, h in images)  # plots rendered
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not blank
    assert len(np.unique((pixels * 255).astype(int).reshape(-1, 3)[::97], axis=0)) > 50
    assert "Diagnosis" in text and "skip_update" in text  # diagnosis and actions are shown
