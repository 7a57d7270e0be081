"""The live camera page in a real Chromium with a fake camera fed by a video made here from the
astronaut photo: frames get scored, boxes and the strip chart are drawn, a rolling verdict shows,
and a saved session appears in the history as a live analysis.

The server and browser fixtures are this module's own (the camera flags are browser-wide). Skips
with the reason when Chromium or Playwright is missing; under REQUIRE_SERVICES=1 that fails instead.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser.support import browser_closed_within
from tests.jobs_support import skip_or_fail

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"  # git-ignored
PASSWORD = "correct horse battery"
EMAIL = "camera@example.com"
FIRST_SCORE_TIMEOUT_S = 120  # the first frame may wait for TensorFlow to warm up


def write_y4m(path: Path, frames: int = 20, width: int = 480, height: int = 360) -> Path:
    """A YUV4MPEG2 clip (what Chromium's fake camera plays in a loop): the astronaut, drifting."""
    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut(), (height, height), interpolation=cv2.INTER_AREA)
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            canvas = np.full((height, width, 3), 110, np.uint8)
            x = (width - height) // 2 + (i % 10) - 5
            canvas[:, x:x + height] = face
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def camera_server(tmp_path_factory):
    """The app on a loopback port (CSRF on, rate limits off), a user, and a warmed-up detector."""
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
    from utils.model import get_detector

    tmp = tmp_path_factory.mktemp("camera")
    saved_secret = os.environ.get("SECRET_KEY")
    os.environ["SECRET_KEY"] = "camera-test-secret"  # so create_app writes no key into instance/
    try:
        app = create_app({
            "TESTING": True, "SECRET_KEY": "camera-test-secret",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp / 'camera.db'}",
            "UPLOAD_FOLDER": str(tmp / "uploads"), "DERIVED_FOLDER": str(tmp / "derived"),
            "WTF_CSRF_ENABLED": True, "RATELIMIT_ENABLED": False, "RATELIMIT_STORAGE_URI": "memory://",
            "JOB_RUNNER": "sync", "LIVE_FRAME_INTERVAL_MS": 500,
        })
    finally:
        if saved_secret is None:
            os.environ.pop("SECRET_KEY", None)
        else:
            os.environ["SECRET_KEY"] = saved_secret
    app.instance_path = str(tmp)
    with app.app_context():
        db.create_all()
        user = User(email=EMAIL)
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        detector = get_detector(app.config["MODEL_PATH"])
        detector.score(np.zeros((1, detector.input_size, detector.input_size, 3), np.uint8))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="camera-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()
    thread.join(timeout=10)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def camera_page(camera_server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    base_url, _ = camera_server
    clip = write_y4m(tmp_path_factory.mktemp("clip") / "astronaut.y4m")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={clip}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 1000})
        context.grant_permissions(["camera"], origin=base_url)
        context.set_default_timeout(20_000)
        page = context.new_page()
        page.console_messages_seen = []
        page.on("console", lambda message: page.console_messages_seen.append(message.text))
        yield page
        with browser_closed_within(60):
            context.close()
            browser.close()


def sign_in(page) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: not url.endswith("/login"))


def wait_for_scored(page, frames: int, timeout_s: float = FIRST_SCORE_TIMEOUT_S) -> None:
    """Poll from Python: wait_for_function would evaluate a string, which the page's CSP forbids."""
    deadline = time.monotonic() + timeout_s
    while int(page.locator("#live").get_attribute("data-scored") or 0) < frames:
        assert time.monotonic() < deadline, f"fewer than {frames} frames scored: {page.locator('#live-message').inner_text()}"
        page.wait_for_timeout(200)


def drawn_pixels(page, selector: str) -> int:
    """How many pixels of a canvas have been painted (alpha > 0)."""
    return page.evaluate("""(selector) => {
        const canvas = document.querySelector(selector);
        if (!canvas.width || !canvas.height) return 0;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
        return n;
    }""", selector)


def test_camera_frames_are_scored_verdict_shown_and_session_saved(camera_page, camera_server):
    from models import Analysis

    page = camera_page
    _, app = camera_server
    sign_in(page)
    page.goto("/live")
    assert page.locator("#live-verdict").inner_text() == "Waiting"
    chart_before = drawn_pixels(page, "#live-chart")
    page.get_by_role("button", name="Start camera").click()

    # Several frames scored: the page publishes the server's count of scored frames.
    wait_for_scored(page, 3)
    verdict = page.locator("#live-verdict").inner_text()
    assert verdict in ("Likely real", "Likely fake", "Uncertain")
    assert "over the last 10 s" in page.locator("#live-score").inner_text()
    assert page.locator("#live-face").inner_text().startswith("1 face in the latest frame")
    rate = page.locator("#live-rate").inner_text()
    assert rate.startswith("Scored ") and "frames/s" in rate
    scored_fps = float(rate.split()[1])
    assert 0.3 <= scored_fps <= 3.0  # one frame every 0.5 s, give or take scoring time
    assert drawn_pixels(page, "#live-overlay") > 0  # the face box
    assert drawn_pixels(page, "#live-chart") > chart_before  # points and line added to the chart
    assert not [m for m in page.console_messages_seen if "Content Security Policy" in m]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "live-camera.png"), full_page=True)

    with app.app_context():
        assert Analysis.query.count() == 0  # nothing stored before "save"

    page.get_by_role("button", name="Save this session").click()
    link = page.locator("#live-saved-link")
    link.wait_for()
    assert "Saved to your history" in link.inner_text()
    link.click()
    page.wait_for_url("**/analyses/*")
    assert "Live camera session" in page.locator("h1").inner_text()
    assert page.locator("#frames").is_visible()  # per-frame scores table
    assert page.locator("svg.frame rect.box").count() >= 1  # the key frame with its face box

    page.goto("/history")
    assert page.get_by_text("Live camera session").count() >= 1
    with app.app_context():
        saved = Analysis.query.one()
        assert saved.kind == "live" and saved.status == "done" and saved.frames_with_faces >= 3
