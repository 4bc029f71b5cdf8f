"""CPU used by an idle dashboard server, with and without Streamlit's file watcher.

Starts ``streamlit run app.py`` twice on free localhost ports (``--server.fileWatcherType none``,
the setting in .streamlit/config.toml, and ``auto``, Streamlit's default), keeps the page open in
headless Chromium (a session is what starts Streamlit's watcher), then reads the server's CPU
seconds over an idle window from ``/proc/<pid>/stat``. Prints both shares of one core and their
ratio, side by side in one run.

    .venv/bin/python bench/idle_cpu.py --idle-seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / TICKS


def wait_healthy(port: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: expected the server on port {port} within {timeout_s} s; none")


@contextlib.contextmanager
def open_page(url: str) -> Iterator[None]:
    """Keep ``url`` open in headless Debian Chromium (a live Streamlit session)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("[data-testid='stSidebar']", timeout=60_000)
        try:
            yield
        finally:
            browser.close()


def idle_share(watcher: str, idle_s: float, settle_s: float) -> float:
    """Share of one core the idle server used with ``fileWatcherType = watcher``."""
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.fileWatcherType", watcher,
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(port)
        with open_page(f"http://127.0.0.1:{port}/"):
            time.sleep(settle_s)
            start = cpu_seconds(server.pid)
            time.sleep(idle_s)
            return (cpu_seconds(server.pid) - start) / idle_s
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--settle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    shares = {w: idle_share(w, args.idle_seconds, args.settle_seconds) for w in ("none", "auto")}
    print(f"idle server CPU over {args.idle_seconds:.0f} s (share of one core):")
    for watcher, share in shares.items():
        print(f"  fileWatcherType={watcher:<5} {100 * share:6.1f} %")
    ratio = shares["auto"] / max(shares["none"], 1e-9)
    print(f"  auto / none = {ratio:.1f}x")
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
