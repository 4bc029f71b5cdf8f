"""The dashboard driven in headless Chromium, from a fresh DROPINF_HOME to an exported review.

Starts ``streamlit run app.py`` on a free localhost port and walks the analyst's path: load the
demo, start a run and wait for it, open a test example (proponent and opponent thumbnails), open
the label-issues page, relabel one example and download the export, compute the gradient map and
box-select on it, and reopen the explore view from its URL. Screenshots of each page are saved to
``assets/screenshots/`` (they illustrate docs/dashboard.md). Timings are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "assets" / "screenshots"
LONG = 300_000  # ms: the demo training and the run on a 2-core machine
VIEWPORT = {"width": 1440, "height": 1500}
FINISHED = re.compile("The run finished|already ran")
FIRST_GALLERY = re.compile(r"Proponents \(supported this prediction|Pushed toward the predicted")

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout_s} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("browser-home")) as url:
        yield url


@contextlib.contextmanager
def serve(home: Path) -> Iterator[str]:
    """A freshly started ``streamlit run app.py`` on ``home`` (nothing requested yet): its URL."""
    port = free_port()
    env = {**os.environ, "DROPINF_HOME": str(home), "DROPINF_SYNC_JOBS": "0"}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    log = (home / "streamlit.log").open("wb")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """A headless Chromium shared by the module's tests (one sync Playwright per process)."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield browser
        browser.close()


def new_page(chromium: object) -> object:
    """A page in a new browser context (its own cookies and session)."""
    context = chromium.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


@pytest.fixture(scope="module")
def page(app_url: str, chromium: object) -> object:
    return new_page(chromium)


def shot(page: object, name: str, anchor: object | None = None) -> None:
    """Save a screenshot once the app has settled, scrolled to ``anchor`` (default the title)."""
    settle(page)
    (anchor or page.locator("h1").first).scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def settle(page: object, timeout_ms: int = LONG) -> None:
    """Wait until streamlit is not running a script and lazy elements have rendered."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stSkeleton"]', state="detached", timeout=timeout_ms)


def go(page: object, title: str) -> None:
    """Open a page by its sidebar link."""
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    settle(page)


def test_analyst_path(page: object, app_url: str) -> None:
    started = time.monotonic()
    page.goto(app_url)
    page.get_by_text("Load a model and its data").wait_for()

    page.get_by_role("button", name="Load the demo").click()
    page.get_by_text("Train accuracy").wait_for(timeout=LONG)
    shot(page, "load")

    go(page, "Compute")
    page.get_by_text("Compressed dimension k").wait_for(timeout=LONG)
    page.get_by_role("button", name="Start").click()
    page.get_by_text("Examples / s").or_(page.get_by_text(FINISHED)).first.wait_for()
    if page.get_by_text("Examples / s").count():
        busy = page.get_by_text(re.compile(r"Capturing|Fitting|self-influence|Scoring"))
        with contextlib.suppress(playwright_api.TimeoutError):
            busy.first.wait_for(timeout=60_000)
        shot(page, "compute_running")
    page.get_by_text(FINISHED).wait_for(timeout=LONG)
    shot(page, "compute")

    go(page, "Explore")
    page.get_by_text(FIRST_GALLERY).first.wait_for(timeout=LONG)
    thumbnails = page.locator('[data-testid="stImage"] img')
    thumbnails.nth(12).wait_for()
    assert thumbnails.count() > 12
    first_proponents_s = time.monotonic() - started
    shot(page, "explore")
    page.locator('[class*="st-key-gallery1-"] button').first.click()
    detail = page.get_by_text("Training example #")
    detail.wait_for()
    shot(page, "explore_detail", anchor=detail)

    go(page, "Label issues")
    page.get_by_text("Review queue").wait_for(timeout=LONG)
    page.get_by_role("button", name="Relabel").click()
    page.get_by_text("Decisions (1)").wait_for(timeout=LONG)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export CSV").click()
    exported = Path(download_info.value.path()).read_text()
    assert "relabel" in exported
    shot(page, "label_issues")

    go(page, "Gradient map")  # the map job started on its own when the run finished
    plot = page.locator(".js-plotly-plot .nsewdrag").first
    plot.wait_for(timeout=LONG)
    settle(page)
    box_select(page, plot)
    page.get_by_text("selected").first.wait_for(timeout=LONG)
    page.get_by_role("button", name="Flag").wait_for()
    shot(page, "gradient_map")

    run_url = page.url
    reopened = time.monotonic()
    page.goto(run_url.replace("/gradient_map", "/explore"))
    page.get_by_text(FIRST_GALLERY).first.wait_for(timeout=LONG)
    cached_open_s = time.monotonic() - reopened
    print(
        f"\nfresh start to first proponents: {first_proponents_s:.1f} s; "
        f"cached run reopened from its URL: {cached_open_s:.1f} s"
    )


def box_select(page: object, plot: object) -> None:
    """Drag a box over the middle of a plotly plot area."""
    box = plot.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2
    x1, y1 = box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.8
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * step / 10, y0 + (y1 - y0) * step / 10)
    page.mouse.up()


# ---------------------------------------------------------------------------------------------
# A fresh server whose first request is a deep link to a run of a dataset with hostile names
# ---------------------------------------------------------------------------------------------

HOSTILE_CLASSES = ["<img src=x onerror=1>", "<b>bold"]
HOSTILE_DATA = "<u>set"
RUN_KEY = "hostile-run"
ROUTER_PAGES = ["Load", "Compute", "Explore", "Gradient map", "Label issues", "Compare runs"]


def write_hostile_images(root: Path) -> None:
    """An ImageFolder of 8×8 grey images, 20 per class, whose class folders are markup."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(HOSTILE_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(20):
            pixels = rng.integers(0, 80, (8, 8)) + 150 * label * (np.arange(8) < 4)  # (8, 8)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")


def cli(home: Path, *args: str) -> None:
    env = {**os.environ, "DROPINF_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "dropinf", *args], cwd=ROOT, env=env, check=True)


@pytest.fixture(scope="module")
def hostile_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh server over a home holding one complete run of the hostile dataset."""
    home = tmp_path_factory.mktemp("hostile-home")
    data, checkpoint = home / HOSTILE_DATA, home / "model.safetensors"
    write_hostile_images(data)
    cli(home, "train", "--data", str(data), "--out", str(checkpoint), "--epochs", "3")
    cli(home, "compute", "--model", str(checkpoint), "--data", str(data),
        "--out", str(home / "runs" / RUN_KEY))  # fmt: skip
    with serve(home) as url:
        yield url


def open_hostile_run(chromium: object, hostile_url: str) -> object:
    """A new session opened on ``/explore?run=<the hostile run>``, settled on its galleries."""
    page = new_page(chromium)
    page.goto(f"{hostile_url}/explore?run={RUN_KEY}")
    page.get_by_text(FIRST_GALLERY).first.wait_for(timeout=120_000)
    settle(page)
    return page


def test_a_deep_link_on_a_fresh_server_goes_through_the_router(
    hostile_url: str, chromium: object
) -> None:
    page = open_hostile_run(chromium, hostile_url)  # the server's very first request
    links = page.get_by_test_id("stSidebarNav").get_by_test_id("stSidebarNavLink")
    titles = [text.splitlines()[-1].strip() for text in links.all_inner_texts()]  # after the icon
    assert titles == ROUTER_PAGES
    assert page.get_by_text("No run selected").count() == 0


def test_names_from_data_are_shown_as_text(hostile_url: str, chromium: object) -> None:
    page = open_hostile_run(chromium, hostile_url)
    injected = page.locator('img[src="x"], img[onerror], u, b:text-is("bold")')
    assert injected.count() == 0, "no element made from a class or folder name"
    for name in [*HOSTILE_CLASSES, HOSTILE_DATA]:
        assert page.get_by_text(name).count() > 0, f"{name!r} shown as text"
    sidebar = page.get_by_test_id("stSidebar").inner_text()
    assert HOSTILE_DATA in sidebar and RUN_KEY in sidebar
