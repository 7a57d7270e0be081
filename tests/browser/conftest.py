"""Browser fixtures: the app served on a free loopback port from a thread (real HTTP, CSRF on,
in-process job threads, the shipped model), Debian's Chromium driven by Playwright, test media made
here (skimage's astronaut photo and a short video of it).

Skips with the reason when Chromium or Playwright is missing; under REQUIRE_SERVICES=1 (CI) that
is a failure instead. Screenshots go to test-artifacts/screenshots/ (git-ignored)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.browser.support import PASSWORD, browser_closed_within
from tests.jobs_support import skip_or_fail

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


class JobGate:
    """Holds analyses before they start while closed, so a test can see the progress bar."""

    def __init__(self):
        self._open = threading.Event()
        self._open.set()

    def close(self):
        self._open.clear()

    def open(self):
        self._open.set()

    def wait(self, timeout: float = 120.0):
        self._open.wait(timeout)


@pytest.fixture(scope="session")
def job_gate():
    return JobGate()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, job_gate):
    """Base URL of the app served in a thread for the whole browser session."""
    if not CHROMIUM.exists():
        skip_or_fail(f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"The playwright package is missing: {exc}")
    from werkzeug.serving import make_server

    from app import create_app
    from extensions import db
    from models import User
    from utils.analysis import analyse

    def gated_analyse(analysis_id, progress=None):
        job_gate.wait()
        analyse(analysis_id, progress=progress)

    tmp = tmp_path_factory.mktemp("live")
    saved_secret = os.environ.get("SECRET_KEY")
    os.environ["SECRET_KEY"] = "browser-test-secret"  # so create_app writes no key into instance/
    app = create_app({
        "TESTING": True, "SECRET_KEY": "browser-test-secret",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp / 'live.db'}",
        "UPLOAD_FOLDER": str(tmp / "uploads"), "DERIVED_FOLDER": str(tmp / "derived"),
        "WTF_CSRF_ENABLED": True, "RATELIMIT_ENABLED": False, "RATELIMIT_STORAGE_URI": "memory://",
        "JOB_RUNNER": "thread", "JOB_WORKERS": 1, "JOB_TARGET": gated_analyse, "JOB_RECOVER_ON_START": False,
        "VIDEO_FRAMES": 12,
    })
    if saved_secret is None:
        del os.environ["SECRET_KEY"]
    else:
        os.environ["SECRET_KEY"] = saved_secret
    app.instance_path = str(tmp)
    with app.app_context():
        db.create_all()
        admin = User(email="admin@example.com", is_admin=True)
        admin.set_password(PASSWORD)
        db.session.add(admin)
        db.session.commit()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    job_gate.open()
    server.shutdown()
    thread.join(timeout=10)
    runner = app.extensions["jobs"]
    if runner.started:
        runner.stop()
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def browser(live_server):
    """Per module: one sync Playwright may run at a time, and other browser modules start their own."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # the machine may be busy (model training alongside)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        with browser_closed_within(60):
            browser.close()


@pytest.fixture
def new_page(browser, live_server):
    """new_page() -> a page in its own browser context (own cookies), base URL set. Fails the test
    if any page broke the Content Security Policy (inline script or style) or threw a script error."""
    contexts, problems = [], []

    def make():
        context = browser.new_context(base_url=live_server, viewport={"width": 1100, "height": 900})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: problems.append(f"{page.url}: {m.text}")
                if m.type == "error" and "Content Security Policy" in m.text else None)
        page.on("pageerror", lambda exc: problems.append(f"{page.url}: {exc}"))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- media made here

@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """astronaut.jpg (one face), grey.jpg (no face) and astronaut.mp4 (a slowly panning face, then
    grey frames without one)."""
    import cv2
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("media")
    astronaut = data.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.jpg", "JPEG", quality=92)
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(folder / "grey.jpg", "JPEG", quality=92)

    size, fps = 320, 10
    small = cv2.resize(astronaut, (size + 24, size + 24), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(folder / "astronaut.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for i in range(30):
        if i < 22:
            shift = i  # the camera pans slowly across the face
            frame = small[shift // 2: shift // 2 + size, shift: shift + size]
        else:
            frame = np.full((size, size, 3), 90, np.uint8)
        writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return {"image": folder / "astronaut.jpg", "faceless": folder / "grey.jpg", "video": folder / "astronaut.mp4"}


