"""End-to-end journeys in real Chromium against the live app (shipped model, real job threads):
the image journey from sign-up to a reviewer's decision and the game, a video with its progress
bar and timeline, and the upload form driven by keyboard alone. Each page visited is checked for
labels, alt text, link names and text contrast, and screenshotted."""
from __future__ import annotations

import os
import re
import uuid

from playwright.sync_api import expect

from tests.browser.support import (ANALYSIS_TIMEOUT_MS, PASSWORD, ROOT, SCREENSHOTS, assert_focus_visible,
                                    check_accessibility, screenshot)

DOCS_SCREENSHOT = ROOT / "docs" / "screenshot.png"


def register(page, email: str) -> None:
    page.goto("/register")
    check_accessibility(page)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password (8 to 128 characters)").fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/upload")


def sign_in(page, email: str) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: not url.endswith("/login"))


def upload(page, path) -> None:
    page.goto("/upload")
    page.get_by_label("Photos or videos").set_input_files(str(path))
    page.get_by_role("button", name="Upload and analyse").click()
    page.wait_for_url(re.compile(r"/analyses/\d+$"))


def wait_until_finished(page) -> None:
    """progress.js reloads the page when the job ends; the summary then has no progress box."""
    page.wait_for_selector("#summary .verdict-line, #summary .error-text", timeout=ANALYSIS_TIMEOUT_MS)


def save_docs_screenshot(page) -> None:
    """The README's picture of a result page: written when missing (or with UPDATE_DOCS_SCREENSHOT=1),
    so an ordinary test run leaves the committed file alone. Scaled and palettised to stay small."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    width = 760
    image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.convert("P", palette=Image.ADAPTIVE, colors=256).save(DOCS_SCREENSHOT, optimize=True)


def test_image_journey_from_upload_to_review_decision_and_game(new_page, media):
    owner_email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    owner = new_page()
    register(owner, owner_email)
    check_accessibility(owner)
    upload(owner, media["image"])
    result_url = owner.url
    wait_until_finished(owner)

    # The result: a verdict, the face with its heatmap labelled honestly, the explanation, report links.
    expect(owner.locator("#summary .badge").first).to_be_visible()
    heatmap = owner.get_by_role("img", name=re.compile(r"^Regions that drove the score for face 1"))
    heatmap.wait_for()
    assert owner.evaluate("(img) => img.complete && img.naturalWidth > 0", heatmap.element_handle())
    assert "not “the fake part”" in owner.locator("#faces").inner_text()
    expect(owner.locator("#meaning").get_by_text("What lowers reliability in general")).to_be_visible()
    check_accessibility(owner)
    screenshot(owner, "result-image")
    if not DOCS_SCREENSHOT.exists() or os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        save_docs_screenshot(owner)

    # The printable report, and the same as a PDF the way a browser saves it.
    owner.get_by_role("link", name="Printable report").click()
    owner.wait_for_url("**/report")
    assert "astronaut.jpg" in owner.locator("h1").inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", owner.locator("code.hash").inner_text())
    check_accessibility(owner)
    screenshot(owner, "report")
    owner.emulate_media(media="print")
    expect(owner.locator("header.site")).to_be_hidden()
    expect(owner.locator("#report-faces")).to_be_visible()
    screenshot(owner, "report-print")
    owner.pdf(path=str(SCREENSHOTS / "report.pdf"))
    owner.emulate_media(media="screen")
    assert (SCREENSHOTS / "report.pdf").read_bytes().startswith(b"%PDF")

    # History lists it; the owner opens it again and disputes the verdict.
    owner.get_by_role("link", name="History").click()
    owner.wait_for_url("**/history*")
    check_accessibility(owner)
    screenshot(owner, "history")
    owner.get_by_role("link", name="astronaut.jpg", exact=True).click()
    owner.wait_for_url(result_url)
    owner.get_by_label("Why do you think the verdict is wrong?").fill("This is a NASA portrait, not a fake.")
    with owner.expect_navigation():
        owner.get_by_role("button", name="Ask for a human review").click()
    expect(owner.get_by_text("An admin will review this analysis").first).to_be_visible()
    # The owner allows the faces in the game (an admin's pick alone is not enough).
    consent = owner.locator("#game-consent")
    assert "You can withdraw at any time." in consent.inner_text()
    with owner.expect_navigation():
        consent.get_by_role("button", name="Allow in the game").click()
    expect(owner.locator("#game-consent").get_by_text("You allow it.")).to_be_visible()
    expect(owner.locator("#game-consent").get_by_role("button", name="Withdraw consent")).to_be_visible()
    check_accessibility(owner)

    # An admin signs in, finds it in the queue and decides; the face becomes game material.
    admin = new_page()
    sign_in(admin, "admin@example.com")
    admin.get_by_role("link", name="Review queue").click()
    admin.wait_for_url("**/admin/")
    check_accessibility(admin)
    screenshot(admin, "review-queue")
    admin.get_by_role("link", name="astronaut.jpg").first.click()
    admin.wait_for_url(re.compile(r"/admin/analyses/\d+$"))
    expect(admin.get_by_text("This is a NASA portrait, not a fake.").first).to_be_visible()
    expect(admin.locator("#owner-game-consent")).to_contain_text("the owner allows its faces")
    admin.get_by_label("Actually real").check()
    admin.get_by_label("Usable for the “beat the model” game").check()
    admin.get_by_label("Note (shown to the owner)").fill("Known public-domain photo.")
    check_accessibility(admin)
    admin.get_by_role("button", name="Record decision").click()
    admin.wait_for_url("**/admin/")
    expect(admin.get_by_text("Decision recorded")).to_be_visible()

    # The owner sees the decision on the result page and in the report.
    owner.goto(result_url)
    review = owner.locator("#review")
    assert "Actually real" in review.inner_text() and "Known public-domain photo." in review.inner_text()
    screenshot(owner, "result-reviewed")
    owner.goto(result_url + "/report")
    assert "Actually real" in owner.locator("#report-review").inner_text()

    # The game: the reviewed face is dealt; the player answers; model and truth are revealed.
    owner.get_by_role("link", name="Can you beat the model?").click()
    owner.wait_for_url("**/game")
    face = owner.get_by_role("img", name="A face to judge")
    assert owner.evaluate("(img) => img.complete && img.naturalWidth > 0", face.element_handle())
    check_accessibility(owner)
    screenshot(owner, "game")
    owner.get_by_role("button", name="Real", exact=True).click()
    owner.wait_for_url("**/game/reveal")
    reveal = owner.locator("#reveal").inner_text()
    assert re.search(r"You said\s+Real — right", reveal)
    assert re.search(r"The model said\s+(Real|Fake|Uncertain) \(fake probability", reveal)
    assert re.search(r"The truth\s+Real, as decided by a human reviewer", reveal)
    assert "You: 1 of 1" in owner.locator("#score").inner_text()
    check_accessibility(owner)
    screenshot(owner, "game-reveal")


def test_video_shows_progress_then_timeline(new_page, media, job_gate):
    page = new_page()
    register(page, f"video-{uuid.uuid4().hex[:8]}@example.com")
    job_gate.close()  # hold the job so the progress bar is certain to be on screen
    try:
        upload(page, media["video"])
        bar = page.locator("progress#progress-bar")
        expect(bar).to_be_visible()
        assert page.locator("#status-text").inner_text() in ("Queued", "Running")
        screenshot(page, "video-progress")
    finally:
        job_gate.open()
    wait_until_finished(page)  # progress.js polled the status and reloaded the page

    timeline = page.locator("svg.timeline")
    timeline.wait_for()
    points = page.locator("svg.timeline a.timeline-point")
    frames_sampled = int(page.locator("dt:has-text('Frames sampled') + dd").inner_text().split()[0])
    assert points.count() == frames_sampled > 0
    assert page.locator("svg.timeline .point-no-face").count() >= 1  # the grey tail has no face
    assert page.locator("svg.timeline .timeline-threshold").count() == 1
    check_accessibility(page)
    screenshot(page, "video-timeline")

    scored = page.locator("svg.timeline a.timeline-point:not(.point-no-face)")
    assert scored.count() >= 1
    label = scored.last.get_attribute("aria-label")  # "Frame N at T s: fake probability ..."
    frame_index, seconds = re.match(r"Frame (\d+) at ([\d.]+) s", label).groups()
    scored.last.click()
    page.wait_for_url(re.compile(rf"\?frame={frame_index}#faces$"))
    assert page.locator("#faces h2").inner_text() == f"Frame at {seconds} s"


def test_upload_form_by_keyboard_alone(new_page, media):
    page = new_page()
    # Playwright turns on the browser's file-chooser interception only when a listener exists, by a
    # message it does not wait for; the Space press could overtake it (the headless chooser then
    # opens uncaught and the wait times out: seen once in CI). A listener from here on means the
    # interception is on long before Space is pressed.
    page.on("filechooser", lambda chooser: None)
    register(page, f"keys-{uuid.uuid4().hex[:8]}@example.com")
    page.goto("/upload")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.type") == "file":
            break
    else:
        raise AssertionError("Tab never reached the file input")
    assert_focus_visible(page)
    screenshot(page, "keyboard-file-input", full_page=False)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(media["faceless"]))
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.type") == "submit"
    focus = assert_focus_visible(page)
    assert focus["tag"] == "BUTTON" or focus["type"] == "submit"
    screenshot(page, "keyboard-submit", full_page=False)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/analyses/\d+$"), timeout=60_000)  # upload + redirect on a busy CPU
    wait_until_finished(page)
    assert "No face found" in page.locator("#summary").inner_text()
    assert "No face was found, so there is no verdict" in page.locator("#meaning").inner_text()


def test_model_page_in_the_browser(new_page):
    page = new_page()
    page.goto("/")
    page.get_by_role("link", name="About the model").click()
    page.wait_for_url("**/model")
    expect(page.get_by_role("heading", name="The model behind the verdicts")).to_be_visible()
    assert page.locator("#model-limits li").count() >= 3
    check_accessibility(page)
    screenshot(page, "model")
