"""The search page in a real browser: Debian's chromium, driven headless by playwright.

The demo test split (the same clips `make demo` evaluates: they depend only on the seed and the
val/test sizes) is indexed with a model trained by `make demo` (tests/fixtures/demo_model,
float16); the test types a caption the model ranks right, and checks that the right clip is the
first result, its thumbnail loads and a click plays it. With TEMPSTOP_SCREENSHOT=FILE the page
is saved there (docs/images/search_page.png is made that way).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from servers import serving

from tempstop_pipelines.serve.app import create_app
from tempstop_pipelines.serve.engine import EngineHolder, load_engine

FIXTURE = Path(__file__).parents[1] / "fixtures" / "demo_model" / "best_model.pth"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = "Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
        if os.environ.get("TEMPSTOP_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    """The demo test split indexed with the fixture model; returns (index dir, annotations)."""
    import json

    from tempstop.config import DemoConfig
    from tempstop.data.demo import generate_demo
    from tempstop_pipelines import cli

    base = tmp_path_factory.mktemp("page")
    generate_demo(base / "demo", DemoConfig(train_quadruples=1), progress=False)
    out = base / "index"
    args = ["index", "--checkpoint", str(FIXTURE), "--videos", str(base / "demo" / "test" / "videos"),
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    items = json.loads((base / "demo" / "test" / "annotations.json").read_text())
    return out, items


def _a_query_the_model_gets_right(index: Path, items: list[dict]) -> tuple[str, str]:
    """(caption, video path) of the first test clip whose caption ranks that clip first."""
    from tempstop.collection import open_collection

    engine = open_collection(index)
    for item in items:
        top = engine.search([item["captions"][0]], top_k=1)[0][0]
        if top["path"] == item["video"]:
            return item["captions"][0], item["video"]
    pytest.fail("the fixture model ranks no test caption's clip first")


@pytest.fixture(scope="module")
def service(demo_index):
    index, _ = demo_index
    with serving(create_app(EngineHolder(index, load_engine(index)), watch_interval_s=None)) as url:
        yield url


@pytest.mark.slow
def test_typing_a_caption_shows_the_right_clip_first(demo_index, service):
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    caption, video = _a_query_the_model_gets_right(*demo_index)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(service)
            page.wait_for_function("document.getElementById('status').textContent.includes('300 videos indexed')")
            page.fill("#query", caption)
            page.press("#query", "Enter")
            page.wait_for_selector(".hit")
            first = page.locator(".hit").first
            assert first.get_attribute("data-rank") == "1"
            assert first.locator(".path").inner_text().startswith(video)
            page.wait_for_function("() => { const i = document.querySelector('.hit img'); "
                                   "return i.complete && i.naturalWidth > 0; }")  # fmt: skip
            assert page.locator(".hit").count() == 12
            if os.environ.get("TEMPSTOP_SCREENSHOT"):
                page.screenshot(path=os.environ["TEMPSTOP_SCREENSHOT"])
            first.click()
            page.wait_for_function("() => { const v = document.querySelector('.hit video'); "
                                   "return v && v.readyState >= 1 && v.duration > 3.5; }")  # fmt: skip
        finally:
            browser.close()
