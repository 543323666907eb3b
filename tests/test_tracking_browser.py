"""A cross-validation in TensorBoard, seen in a real headless browser: the scalars page served by
`python -m trainer tensorboard` lists one run per fold; a screenshot is saved.

    .venv/bin/python -m pytest tests/test_tracking_browser.py

Chromium is the system's (/usr/bin/chromium, installed by .ci/run), driven by Playwright; no
browser is downloaded. The README's picture (docs/img/tensorboard-cv.png) comes from this test
run on a real cross-validation of the demo data instead of the tiny one made here:

    TRACKING_CV=runs/cv TRACKING_SCREENSHOT=docs/img/tensorboard-cv.png \\
        .venv/bin/python -m pytest tests/test_tracking_browser.py
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from trainer.cli import main
from util import FAST, ctrl_c_default, tiny_demo

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def served_cv(tmp_path):
    """A cross-validation folder served by `python -m trainer tensorboard`: (url, fold names)."""
    cv = Path(os.environ.get("TRACKING_CV") or tmp_path / "cv")
    if "TRACKING_CV" not in os.environ:
        data = tiny_demo(tmp_path / "data", speakers=6, clips_per_speaker=6)
        assert main(["cv", "--data", str(data), "--out", str(cv), "--folds", "2", "--seeds",
                     "0,1", "--epochs", "2", *FAST]) == 0
    folds = sorted(p.name for p in cv.iterdir() if (p / "tb").is_dir())
    assert folds
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "tensorboard", str(cv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_default)
    try:
        url = re.search(r"TensorBoard on (\S+) serving", proc.stdout.readline()).group(1)
        yield url, folds
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_scalars_page_of_a_cross_validation_shows_a_run_per_fold_and_seed(served_cv,
                                                                              tmp_path):
    url, folds = served_cv
    if "TRACKING_CV" not in os.environ:
        assert folds == [f"fold-{k}-seed-{s}" for k in (1, 2) for s in (0, 1)]
    shot = Path(os.environ.get("TRACKING_SCREENSHOT") or tmp_path / "tensorboard-cv.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(url + "#scalars&tagFilter=val%2F", wait_until="networkidle")
            for fold in folds:  # the run selector names each run by its folder
                page.get_by_text(f"{fold}/tb", exact=True).first.wait_for(timeout=60_000)
            # the charts of the filtered tags are drawn
            page.get_by_text("val/macro_f1").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
