"""The watchdog around a browser's close(): kills this run's own Chromium processes only when close()
hangs, and never touches them when it returns in time. Stand-in "browsers" are `sleep` processes
started under a name containing "chrom"; no real browser is needed."""
from __future__ import annotations

import os
import subprocess
import time

from tests.browser.support import browser_closed_within


def fake_browser(tmp_path, name: str) -> subprocess.Popen:
    link = tmp_path / name
    if not link.exists():
        os.symlink("/bin/sleep", link)
    return subprocess.Popen([str(link), "30"])


def test_a_hanging_close_gets_this_runs_chromium_killed(tmp_path):
    chromium, bystander = fake_browser(tmp_path, "chromium-headless"), fake_browser(tmp_path, "sleeper")
    try:
        started = time.monotonic()
        with browser_closed_within(0.3):
            chromium.wait(timeout=10)  # stands for close() blocked until the browser is gone
        assert time.monotonic() - started < 5
        assert chromium.returncode == -9
        assert bystander.poll() is None  # only browser processes are killed
    finally:
        for process in (chromium, bystander):
            process.kill()
            process.wait()


def test_a_close_that_returns_in_time_leaves_everything_alone(tmp_path):
    chromium = fake_browser(tmp_path, "chromium-headless")
    try:
        with browser_closed_within(0.3):
            pass
        time.sleep(0.6)  # past the deadline: the watchdog has stood down
        assert chromium.poll() is None
    finally:
        chromium.kill()
        chromium.wait()
