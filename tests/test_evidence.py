"""Evidence pages through the test client: report (HTML + JSON), timeline SVG, result-page additions,
the public model page, the game, and `flask export-reviewed`."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extensions import db
from models import Analysis, FaceResult, Review
from tests.conftest import csrf_token_from
from utils.timeline import TimelinePoint, render_timeline

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CARD = ROOT / "utils" / "weights" / "model_card.json"


def write_jpeg(path: Path, colour=(200, 120, 90), size=128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path, "JPEG")


@pytest.fixture
def evidence(app, make_analysis):
    """evidence(user_id, faces=[(x,y,w,h,score,frame_index)], review=(decision, usable), **fields) ->
    analysis id, with a face crop and a heatmap JPEG written for every face."""

    def make(user_id: int, *, faces=((100, 80, 120, 120, 0.8, 0),), review=None, reviewer_id=None, **fields):
        analysis_id = make_analysis(user_id, **fields)
        from utils import storage

        with app.app_context():
            analysis = db.session.get(Analysis, analysis_id)
            for n, (x, y, w, h, score, frame_index) in enumerate(faces):
                crop, heat = f"face-{n:03d}.jpg", f"heat-{n:03d}.jpg"
                write_jpeg(storage.derived_path(analysis_id, crop), colour=(40 + n, 120, 90))
                write_jpeg(storage.derived_path(analysis_id, heat), colour=(255, 0, n))
                analysis.faces.append(FaceResult(x=x, y=y, w=w, h=h, score=score, frame_index=frame_index,
                                                 crop_name=crop, heatmap_name=heat))
            analysis.faces_found = len(analysis.faces)
            if review is not None:
                decision, usable = review
                analysis.review = Review(decision=decision, usable_for_game=usable, note="Checked the source.",
                                         reviewer_id=reviewer_id)
            db.session.commit()
        return analysis_id

    return make


VIDEO_FRAMES = [(0, 0.0, 1, 0.2), (10, 0.5, 1, 0.7), (20, 1.0, 0, None), (30, 1.5, 1, 0.9), (40, 2.0, 1, 0.3)]


def video_fields():
    return dict(kind="video", verdict="fake", score=0.9, duration_s=2.0, frames_sampled=5, frames_with_faces=4,
                frames=VIDEO_FRAMES, original_name="clip.mp4")


# --------------------------------------------------------------------------- timeline (pure)

def test_timeline_marks_threshold_band_points_and_faceless_frames():
    points = [TimelinePoint(i, t, n, s) for i, t, n, s in VIDEO_FRAMES]
    svg = render_timeline(points, threshold=0.5, band=(0.4, 0.6), link_for=lambda i: f"/r?frame={i}#faces",
                          duration_s=2.0)
    assert svg.count("<circle") == 4  # one per frame with a face
    assert svg.count('class="timeline-point point-no-face"') == 1
    assert 'href="/r?frame=20#faces"' in svg and "Frame 20 at 1.0 s: no face found" in svg
    # Threshold at 50 %: halfway down the plot area (top 16, height 240 - 16 - 40).
    threshold_line = re.search(r'class="timeline-threshold"[^>]*y1="([\d.]+)"', svg)
    assert float(threshold_line.group(1)) == pytest.approx(16 + 184 * 0.5, abs=0.1)
    # The faceless frame breaks the line into two runs: (0, 10) and (30, 40).
    assert svg.count("<polyline") == 2
    assert "point-fake" in svg and "point-real" in svg
    band = re.search(r'class="timeline-band" x="\d+" y="([\d.]+)" width="\d+" height="([\d.]+)"', svg)
    assert float(band.group(2)) == pytest.approx(184 * 0.2, abs=0.2)


def test_timeline_escapes_links_and_classifies_like_the_verdict():
    svg = render_timeline([TimelinePoint(1, 0.0, 1, 0.55)], threshold=0.5, band=(0.45, 0.6),
                          link_for=lambda i: '/x?a=1&b="<i>"', standalone=True)
    assert '&amp;b=&quot;&lt;i&gt;&quot;' in svg and '"<i>"' not in svg
    assert "point-uncertain" in svg and 'xmlns="http://www.w3.org/2000/svg"' in svg


# --------------------------------------------------------------------------- report

def test_report_shows_everything_and_escapes_the_file_name(client, auth, user, admin_user, evidence):
    analysis_id = evidence(user, original_name='<img src=x onerror=alert(1)>.jpg', review=("fake", False),
                           reviewer_id=admin_user, score=0.8, verdict="fake")
    auth.login()
    page = client.get(f"/analyses/{analysis_id}/report")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;.jpg" in html
    with client.application.app_context():
        sha = db.session.get(Analysis, analysis_id).sha256
    assert sha in html and "test-1" in html  # SHA-256 and model version
    assert "Confirmed fake" in html and "Checked the source." in html
    assert f"/analyses/{analysis_id}/files/heat-000.jpg" in html
    assert "regions that drove the score" in html.lower()
    assert "evidence.css" in html and page.headers["Cache-Control"] == "private, no-store"


def test_report_json_matches_the_row(client, auth, user, evidence):
    analysis_id = evidence(user, faces=[(10, 20, 30, 40, 0.7, 10), (50, 60, 70, 80, 0.95, 30)],
                           **video_fields())
    auth.login()
    data = client.get(f"/analyses/{analysis_id}/report.json").get_json()
    assert data["analysis_id"] == analysis_id and data["file_name"] == "clip.mp4"
    assert data["verdict"] == "fake" and data["threshold"] == 0.5 and data["uncertain_band"] == [0.4, 0.6]
    assert [f["score"] for f in data["faces"]] == [0.7, 0.95]
    assert data["faces"][0]["box"] == [10, 20, 30, 40] and data["faces"][1]["time_s"] == 1.5
    assert data["faces"][1]["heatmap_url"].endswith("/heat-001.jpg")
    assert [f["score"] for f in data["frames"]] == [0.2, 0.7, None, 0.9, 0.3]
    assert data["review"] is None and data["uploaded_at"].endswith("Z")
    assert data["plain_explanation"].startswith("The model estimates a 90 % probability")


def test_report_of_an_unfinished_or_failed_analysis_says_so(client, auth, user, make_analysis):
    running = make_analysis(user, status="running", verdict=None, score=None, stage="finding faces")
    failed = make_analysis(user, status="failed", verdict=None, score=None, error="The video has no frames.")
    auth.login()
    assert "this report is not final" in client.get(f"/analyses/{running}/report").get_data(as_text=True)
    assert "The analysis failed: The video has no frames." in client.get(
        f"/analyses/{failed}/report").get_data(as_text=True)
    data = client.get(f"/analyses/{failed}/report.json").get_json()
    assert data["status"] == "failed" and data["verdict"] is None and data["error"] == "The video has no frames."
    assert data["plain_explanation"] == "" and data["faces"] == []


@pytest.mark.parametrize("path", ["/analyses/{id}/report", "/analyses/{id}/report.json", "/analyses/{id}/timeline.svg"])
def test_per_analysis_evidence_is_owner_or_admin_only(client, auth, user, other_user, admin_user, evidence, path):
    analysis_id = evidence(user, **video_fields())
    url = path.format(id=analysis_id)
    assert client.get(url).status_code == 302  # sign in first
    auth.login("other@example.com")
    assert client.get(url).status_code == 404
    assert client.get(path.format(id=analysis_id + 99)).status_code == 404
    auth.logout()
    auth.login("admin@example.com")
    assert client.get(url).status_code == 200


def test_timeline_svg_route(client, auth, user, evidence):
    analysis_id = evidence(user, **video_fields())
    auth.login()
    response = client.get(f"/analyses/{analysis_id}/timeline.svg")
    assert response.mimetype == "image/svg+xml"
    svg = response.get_data(as_text=True)
    assert svg.startswith("<svg xmlns=") and svg.count("<circle") == 4
    assert f"/analyses/{analysis_id}?frame=30#faces" in svg


# --------------------------------------------------------------------------- result page additions

def test_video_result_page_has_timeline_explanation_and_report_links(client, auth, user, evidence):
    analysis_id = evidence(user, faces=[(10, 20, 30, 40, 0.9, 30)], **video_fields())
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert 'class="timeline"' in html and html.count('class="timeline-point') == 5
    assert "What this means" in html and "above its threshold of 50 %" in html
    assert "Between 40&nbsp;% and 60&nbsp;% the model answers “uncertain”" in html
    assert f"/analyses/{analysis_id}/report" in html and f"/analyses/{analysis_id}/report.json" in html
    # 30 px faces are small: the page says so for this result.
    assert "smaller than 64 pixels" in html
    # A point's link opens that frame: the faces section then shows frame 30.
    framed = client.get(f"/analyses/{analysis_id}?frame=30").get_data(as_text=True)
    assert "Frame at 1.5 s" in framed


def test_image_result_has_no_timeline_and_labels_heatmaps_honestly(client, auth, user, evidence):
    analysis_id = evidence(user, faces=[(100, 80, 120, 120, 0.55, 0)], verdict="uncertain", score=0.55)
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert 'class="timeline"' not in html
    assert "lies in the uncertain band" in html
    assert "Regions that drove the score for face 1" in html and "not “the fake part”" in html


def test_no_face_result_explains_why_there_is_no_verdict(client, auth, user, make_analysis):
    analysis_id = make_analysis(user, verdict="no_face", score=None)
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "No face was found, so there is no verdict" in html


# --------------------------------------------------------------------------- model page

@pytest.fixture
def weights(app, tmp_path):
    """A MODEL_PATH in tmp with the shipped card copied next to it (the model file is not needed)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copyfile(SHIPPED_CARD, folder / "model_card.json")
    app.config["MODEL_PATH"] = str(folder / "detector.keras")
    return folder


def test_model_page_shows_the_card_and_says_when_charts_are_missing(client, weights):
    card = json.loads((weights / "model_card.json").read_text())
    html = client.get("/model").get_data(as_text=True)  # public: no sign-in
    assert card["version"] in html
    for entry in card.get("data", []):
        assert entry["source"] in html
    for source in card.get("validation_metrics", {}):
        assert f'<th scope="row">{source}</th>' in html
    assert "No ROC curve image yet" in html and "No confusion matrix image yet" in html
    assert "Known limits" in html
    assert ("No reviewed uploads were used" in html) == (not card.get("reviewed_data"))
    assert client.get("/model/roc.png").status_code == 404


def test_model_page_lists_the_wider_bands_for_faces_without_detail(client, weights):
    card = json.loads((weights / "model_card.json").read_text())
    card["uncertain_band"] = [0.3, 0.7]
    card["detail_bands"] = {"measure": "a detail measure", "edges": [-1.9, -1.3], "bands": [[0.2, 0.8], [0.25, 0.75]]}
    (weights / "model_card.json").write_text(json.dumps(card))
    html = client.get("/model").get_data(as_text=True)
    assert "Wider band for faces without fine detail" in html and "a detail measure" in html
    assert "<li>detail below -1.90: 20 % – 80 %</li>" in html
    assert "<li>detail -1.90 to -1.30: 25 % – 75 %</li>" in html
    card["detail_bands"]["edges"] = [-1.3, -1.9]  # unreadable: the page still renders, without the list
    (weights / "model_card.json").write_text(json.dumps(card))
    html = client.get("/model").get_data(as_text=True)
    assert "Wider band for faces" not in html and card["version"] in html


def test_model_page_serves_the_evaluation_images(client, weights):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 20, 30)).save(buffer, "PNG")
    (weights / "roc.png").write_bytes(buffer.getvalue())
    (weights / "confusion.png").write_bytes(buffer.getvalue())
    html = client.get("/model").get_data(as_text=True)
    assert 'src="/model/roc.png"' in html and 'src="/model/confusion.png"' in html and "image yet" not in html
    response = client.get("/model/confusion.png")
    assert response.status_code == 200 and response.data == buffer.getvalue()


def test_model_page_shows_per_source_evaluation_plots(client, weights):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (40, 50, 60)).save(buffer, "PNG")
    (weights / "eval" / "dfdc").mkdir(parents=True)
    (weights / "eval" / "dfdc" / "roc.png").write_bytes(buffer.getvalue())
    (weights / "eval" / "dfdc" / "confusion.png").write_bytes(buffer.getvalue())
    (weights / "eval" / "empty").mkdir()
    html = client.get("/model").get_data(as_text=True)
    assert 'src="/model/eval/dfdc/roc.png"' in html and 'src="/model/eval/dfdc/confusion.png"' in html
    assert "/model/eval/empty/" not in html and "image yet" not in html
    response = client.get("/model/eval/dfdc/roc.png")
    assert response.status_code == 200 and response.data == buffer.getvalue()
    assert client.get("/model/eval/empty/roc.png").status_code == 404
    assert client.get("/model/eval/..%2F..%2Fweights/roc.png").status_code == 404


def test_model_page_tolerates_a_sparse_card_and_records_reviewed_data(client, weights):
    (weights / "model_card.json").write_text(json.dumps({
        "version": "v-sparse", "validation_metrics": {"all": {"roc_auc": 0.91, "n": 10}},
        "reviewed_data": {"exported_at": "2026-11-25T12:00:00Z", "faces": {"real": 3, "fake": 4}, "analyses": 5},
        "known_limits": ["Never tested on cartoons."], "measured_limits": ["Soft portraits are often called fake."]}))
    html = client.get("/model").get_data(as_text=True)
    assert "v-sparse" in html and "0.910" in html and "Never tested on cartoons." in html
    assert html.index("Never tested on cartoons.") < html.index("Soft portraits are often called fake.")
    assert "3 real and 4 fake faces" in html and "from 5 analyses" in html
    assert "close to chance" not in html


def test_model_page_shows_the_robustness_table(client, weights):
    card = json.loads((weights / "model_card.json").read_text())
    card["robustness"] = {
        "dfdc": {"none": {"n": 4247, "roc_auc": 0.8153, "accuracy": 0.7309},
                 "jpeg:50": {"n": 4247, "roc_auc": 0.7901, "accuracy": 0.70, "uncertain": 0.671,
                             "right_outside_band": 0.891, "reals_called_fake": 0.0372},
                 "broken": "not a mapping", "blur:1": {"n": 4247, "roc_auc": "n/a"},
                 "h264:42": {"n": 4247, "roc_auc": 0.7}, "scale:0.5 then jpeg:50": {"n": 4247, "roc_auc": 0.78},
                 "gamma:2": {"n": 4247, "roc_auc": 0.8}},
        "weird": ["not", "a", "table"]}
    card["robustness_note"] = "degraded validation faces"
    (weights / "model_card.json").write_text(json.dumps(card))
    html = client.get("/model").get_data(as_text=True)
    section = html[html.index('id="model-robustness"'):html.index('id="model-limits"')]
    # in recorded order, in words; a degradation it cannot read is shown as recorded
    assert (section.index("as stored") < section.index("JPEG quality 50") < section.index("blurred, σ 1 px")
            < section.index("H.264 video frame, quantiser 42") < section.index("shrunk to 50 % and upscaled, then JPEG quality 50")
            < section.index("gamma:2"))
    assert "0.815" in section and "0.790" in section and "-0.025" in section
    assert "broken" not in section and "weird" not in section and "degraded validation faces" in section
    assert "Reals called fake" in section and "67.1 %" in section and "89.1 %" in section and "3.7 %" in section


def test_model_page_without_a_card(client, app, tmp_path):
    app.config["MODEL_PATH"] = str(tmp_path / "nowhere" / "detector.keras")
    response = client.get("/model")
    assert response.status_code == 200 and "model card is not available" in response.get_data(as_text=True)


def test_weak_model_is_called_weak(client, auth, user, weights, evidence):
    (weights / "model_card.json").write_text(json.dumps({"validation_metrics": {"all": {"fused_roc_auc": 0.52}}}))
    assert "close to chance" in client.get("/model").get_data(as_text=True)
    analysis_id = evidence(user)
    auth.login()
    assert "close to chance on its validation data (ROC-AUC 0.52)" in client.get(
        f"/analyses/{analysis_id}").get_data(as_text=True)


# --------------------------------------------------------------------------- game

def test_game_empty_state(client, auth, user, evidence):
    evidence(user, review=("fake", False))  # decided but not released for the game
    evidence(user, review=("cannot_tell", True), game_consent=True)  # released, but no truth to score against
    evidence(user, review=("real", True))  # released and decided, but the owner never consented
    auth.login()
    html = client.get("/game").get_data(as_text=True)
    assert "No faces to play with yet" in html and "<form method=\"post\" action=\"/game\"" not in html


def game_face_id(html: str) -> int:
    return int(re.search(r'name="face_id" type="hidden" value="(\d+)"', html).group(1))


@pytest.mark.csrf
def test_game_round_reveals_model_and_truth_and_keeps_score(client, auth, user, evidence):
    evidence(user, faces=[(0, 0, 100, 100, 0.2, 0)], review=("fake", True), score=0.2, verdict="real",
             game_consent=True)
    auth.login()
    html = client.get("/game").get_data(as_text=True)
    face_id = game_face_id(html)
    image = client.get(f"/game/faces/{face_id}/crop.jpg")
    assert image.status_code == 200 and image.mimetype == "image/jpeg"
    form = {"face_id": face_id, "fake": "Fake", "csrf_token": csrf_token_from(html)}
    assert client.post("/game", data={k: v for k, v in form.items() if k != "csrf_token"}).status_code == 400
    response = client.post("/game", data=form)
    assert response.headers["Location"].endswith("/game/reveal")
    reveal = client.get("/game/reveal").get_data(as_text=True)
    assert re.search(r"You said</dt><dd><strong>Fake</strong> — <span[^>]*>right", reveal)
    assert re.search(r"The model said</dt><dd><strong>Real</strong> \(fake probability 20 %", reveal)
    assert "<strong>Fake</strong>, as decided by a human reviewer" in reveal
    assert "You: <strong>1</strong> of 1" in reveal and "The model: <strong>0</strong> of 1" in reveal
    # The same form again (replay) counts for nothing.
    client.post("/game", data=form)
    assert "You: <strong>1</strong> of 1" in client.get("/game").get_data(as_text=True)


def test_game_guess_for_a_face_not_dealt_is_not_scored(client, auth, user, evidence, app):
    evidence(user, review=("real", True), game_consent=True)
    hidden = evidence(user, review=("fake", False), game_consent=True)
    with app.app_context():
        hidden_face = db.session.scalar(db.select(FaceResult.id).filter_by(analysis_id=hidden))
    auth.login()
    client.get("/game")
    client.post("/game", data={"face_id": hidden_face, "real": "Real"})
    assert "No rounds played yet" in client.get("/game").get_data(as_text=True)
    assert client.get(f"/game/faces/{hidden_face}/crop.jpg").status_code == 404


def test_game_reset_and_sign_in(client, auth, user, evidence):
    assert client.get("/game").status_code == 302
    evidence(user, faces=[(0, 0, 100, 100, 0.9, 0)], review=("fake", True), game_consent=True)
    auth.login()
    face_id = game_face_id(client.get("/game").get_data(as_text=True))
    client.post("/game", data={"face_id": face_id, "real": "Real"})
    assert "You: <strong>0</strong> of 1" in client.get("/game/reveal").get_data(as_text=True)
    client.post("/game/reset", data={})
    assert "No rounds played yet" in client.get("/game").get_data(as_text=True)


def face_ids_of(app, analysis_id: int) -> set[int]:
    with app.app_context():
        return set(db.session.scalars(db.select(FaceResult.id).filter_by(analysis_id=analysis_id)))


def consent_value(app, analysis_id: int, column: str) -> bool:
    with app.app_context():
        return getattr(db.session.get(Analysis, analysis_id), column)


def dealt_faces(client, rounds: int) -> set[int]:
    """Faces dealt over several rounds (a guess moves the game on to the next face)."""
    seen = set()
    for _ in range(rounds):
        html = client.get("/game").get_data(as_text=True)
        if "No faces to play with yet" in html:
            break
        face_id = game_face_id(html)
        seen.add(face_id)
        client.post("/game", data={"face_id": face_id, "real": "Real"})
    return seen


def test_game_deals_only_faces_whose_owner_consented(app, client, auth, user, other_user, evidence):
    consented = evidence(user, faces=[(0, 0, 100, 100, 0.3, 0), (120, 0, 100, 100, 0.4, 0)],
                         review=("real", True), game_consent=True)
    refused = evidence(other_user, faces=[(0, 0, 100, 100, 0.9, 0), (120, 0, 100, 100, 0.8, 0)],
                       review=("fake", True))
    auth.login()
    assert dealt_faces(client, 8) == face_ids_of(app, consented)
    for face_id in face_ids_of(app, refused):
        assert client.get(f"/game/faces/{face_id}/crop.jpg").status_code == 404


def test_withdrawing_consent_removes_the_faces_from_the_game_at_once(app, client, auth, user, evidence):
    analysis_id = evidence(user, review=("fake", True), game_consent=True)
    (face_id,) = face_ids_of(app, analysis_id)
    auth.login()
    html = client.get("/game").get_data(as_text=True)
    assert game_face_id(html) == face_id  # dealt, and the round is open
    response = client.post(f"/analyses/{analysis_id}/game-consent", data={"withdraw": "Withdraw consent"})
    assert response.status_code == 302 and not consent_value(app, analysis_id, "game_consent")
    assert "no longer used in the game" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert client.get(f"/game/faces/{face_id}/crop.jpg").status_code == 404
    client.post("/game", data={"face_id": face_id, "fake": "Fake"})  # the open round no longer counts
    assert "No rounds played yet" in client.get("/game").get_data(as_text=True)
    assert "No faces to play with yet" in client.get("/game").get_data(as_text=True)
    # Given again, the face is back.
    client.post(f"/analyses/{analysis_id}/game-consent", data={"allow": "Allow in the game"})
    assert consent_value(app, analysis_id, "game_consent") and game_face_id(client.get("/game").get_data(as_text=True)) == face_id


def test_result_page_asks_the_owner_only_when_there_are_faces(app, client, auth, user, admin_user, evidence,
                                                              make_analysis):
    with_faces = evidence(user)
    without_faces = make_analysis(user, verdict="no_face", score=None)
    auth.login()
    html = client.get(f"/analyses/{with_faces}").get_data(as_text=True)
    assert 'id="game-consent"' in html and "You can withdraw at any time." in html
    assert "You have not allowed it" in html and f'action="/analyses/{with_faces}/game-consent"' in html
    client.post(f"/analyses/{with_faces}/game-consent", data={"allow": "Allow in the game"})
    html = client.get(f"/analyses/{with_faces}").get_data(as_text=True)
    assert "You allow it." in html and 'value="Withdraw consent"' in html
    assert 'id="game-consent"' not in client.get(f"/analyses/{without_faces}").get_data(as_text=True)
    auth.logout()
    auth.login("admin@example.com")
    admin_view = client.get(f"/analyses/{with_faces}").get_data(as_text=True)
    assert admin_view.count("game-consent") == 0  # the admin sees the result but cannot consent for the owner
    detail = client.get(f"/admin/analyses/{with_faces}").get_data(as_text=True)
    assert "the owner allows its faces" in detail and "(only used if the owner allows it)" in detail


def test_admin_detail_says_when_the_owner_has_not_consented(client, auth, user, admin_user, evidence):
    analysis_id = evidence(user, flagged=True, flag_reason="auto")
    auth.login("admin@example.com")
    assert "the owner has not allowed its faces" in client.get(f"/admin/analyses/{analysis_id}").get_data(as_text=True)


# Both consents (the game, training) work alike: (route, the allow button, the column).
CONSENTS = [("game-consent", {"allow": "Allow in the game"}, "game_consent"),
            ("training-consent", {"allow": "Allow for training"}, "training_consent")]


@pytest.mark.parametrize("route, allow, column", CONSENTS)
@pytest.mark.parametrize("who", ["other@example.com", "admin@example.com", None])
def test_only_the_owner_may_give_or_withdraw_consent(app, client, auth, user, other_user, admin_user, evidence,
                                                     who, route, allow, column):
    analysis_id = evidence(user, review=("fake", True))
    if who:
        auth.login(who)
    response = client.post(f"/analyses/{analysis_id}/{route}", data=allow)
    assert response.status_code == 404 if who else "/login" in response.headers["Location"]
    assert not consent_value(app, analysis_id, column)


@pytest.mark.csrf
@pytest.mark.parametrize("route, allow, column", CONSENTS)
def test_consent_is_csrf_protected(app, client, auth, user, evidence, route, allow, column):
    analysis_id = evidence(user, review=("fake", True))
    auth.login()
    page = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert client.post(f"/analyses/{analysis_id}/{route}", data=allow).status_code == 400
    assert not consent_value(app, analysis_id, column)
    response = client.post(f"/analyses/{analysis_id}/{route}", data={**allow, "csrf_token": csrf_token_from(page)})
    assert response.status_code == 302 and consent_value(app, analysis_id, column)


@pytest.mark.parametrize("route, allow, column", CONSENTS)
def test_consent_needs_a_clear_choice(app, client, auth, user, evidence, route, allow, column):
    analysis_id = evidence(user, review=("fake", True))
    auth.login()
    assert client.post(f"/analyses/{analysis_id}/{route}", data={}).status_code == 400
    both = {**allow, "withdraw": "Withdraw consent"}
    assert client.post(f"/analyses/{analysis_id}/{route}", data=both).status_code == 400
    assert not consent_value(app, analysis_id, column)


# --------------------------------------------------------------------------- export-reviewed

def test_export_reviewed_writes_a_training_folder(app, runner, user, other_user, evidence, tmp_path):
    from utils.dataset import discover_samples

    fake_id = evidence(user, faces=[(0, 0, 90, 90, 0.9, 0), (100, 0, 90, 90, 0.8, 0)], review=("fake", False),
                       sha256="a" * 64, training_consent=True)
    evidence(user, review=("real", True), sha256="b" * 64, training_consent=True)
    evidence(other_user, review=("real", True), sha256="b" * 64,  # same file, another owner: exported once
             training_consent=True)
    evidence(user, review=("cannot_tell", True), sha256="c" * 64, training_consent=True)
    evidence(user, sha256="d" * 64, training_consent=True)  # not reviewed
    evidence(other_user, review=("fake", True), sha256="e" * 64, game_consent=True)  # no training consent
    out = tmp_path / "reviewed"
    result = runner.invoke(args=["export-reviewed", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 1 real and 2 fake face crops from 2 reviewed analyses" in result.output
    assert "skipped 1 decided analyses whose owner has not allowed training" in result.output
    assert sorted(p.name for p in (out / "fake").iterdir()) == ["aaaaaaaaaaaaaaaa-000.jpg", "aaaaaaaaaaaaaaaa-001.jpg"]
    assert [p.name for p in (out / "real").iterdir()] == ["bbbbbbbbbbbbbbbb-000.jpg"]
    with app.app_context():
        from utils import storage
        assert (out / "fake" / "aaaaaaaaaaaaaaaa-000.jpg").read_bytes() == storage.derived_path(
            fake_id, "face-000.jpg").read_bytes()
    manifest = json.loads((out / "reviewed.json").read_text())
    assert manifest["faces"] == {"real": 1, "fake": 2} and manifest["analyses"] == 2
    assert manifest["duplicates_skipped"] == 1 and manifest["source"] == "reviewed"
    assert manifest["skipped_without_consent"] == 1 and "training_consent" in manifest["note"]
    with open(out / "groups.csv", newline="") as fh:
        groups = {row["file"]: row["group"] for row in csv.DictReader(fh)}
    assert groups["fake/aaaaaaaaaaaaaaaa-001.jpg"] == groups["fake/aaaaaaaaaaaaaaaa-000.jpg"]
    # `flask train --data DIR` reads it: labels from the folders, groups from groups.csv.
    samples = discover_samples(out)
    assert sorted((Path(s.path).parent.name, s.label) for s in samples) == [("fake", 1), ("fake", 1), ("real", 0)]
    assert len({s.group for s in samples if s.label == 1}) == 1
    # Running again replaces the earlier export.
    assert runner.invoke(args=["export-reviewed", str(out)]).exit_code == 0
    assert len(list((out / "fake").iterdir())) == 2


def test_export_reviewed_refuses_an_unrelated_folder_and_says_when_empty(runner, tmp_path, user):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.txt").write_text("keep me")
    result = runner.invoke(args=["export-reviewed", str(busy)])
    assert result.exit_code != 0 and "not empty" in result.output and (busy / "thesis.txt").exists()
    result = runner.invoke(args=["export-reviewed", str(tmp_path / "fresh")])
    assert result.exit_code == 0 and "Nothing to export yet" in result.output


def test_export_reviewed_takes_only_uploads_whose_owner_allowed_training(app, client, auth, runner, user,
                                                                         other_user, evidence, tmp_path):
    allowed = evidence(user, review=("fake", False), sha256="a" * 64, training_consent=True)
    evidence(user, review=("real", False), sha256="b" * 64)  # decided, but the owner never allowed it
    # The same file from two owners: only the one who allowed it is exported, from their own crops.
    evidence(user, review=("real", False), sha256="c" * 64)
    shared = evidence(other_user, review=("real", False), sha256="c" * 64, training_consent=True)
    out = tmp_path / "reviewed"
    result = runner.invoke(args=["export-reviewed", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 1 real and 1 fake face crops from 2 reviewed analyses" in result.output
    assert "skipped 2 decided analyses whose owner has not allowed training" in result.output
    assert [p.name for p in (out / "real").iterdir()] == ["cccccccccccccccc-000.jpg"]
    with app.app_context():
        from utils import storage
        assert (out / "real" / "cccccccccccccccc-000.jpg").read_bytes() == storage.derived_path(
            shared, "face-000.jpg").read_bytes()
    assert json.loads((out / "reviewed.json").read_text())["skipped_without_consent"] == 2
    # Withdrawn through the result page: the next export leaves the upload out (and drops its crops here).
    auth.login()
    response = client.post(f"/analyses/{allowed}/training-consent", data={"withdraw": "Withdraw consent"})
    assert response.status_code == 302 and not consent_value(app, allowed, "training_consent")
    result = runner.invoke(args=["export-reviewed", str(out)])
    assert "wrote 1 real and 0 fake face crops from 1 reviewed analyses" in result.output
    assert "skipped 3 decided analyses" in result.output and list((out / "fake").iterdir()) == []


def test_export_reviewed_says_when_no_owner_allowed_training(runner, user, evidence, tmp_path):
    evidence(user, review=("fake", True), game_consent=True)
    result = runner.invoke(args=["export-reviewed", str(tmp_path / "reviewed")])
    assert result.exit_code == 0 and "skipped 1 decided analyses" in result.output
    assert "no owner of a decided analysis has allowed training" in result.output


# --------------------------------------------------------------------------- training consent

def test_owner_allows_and_withdraws_training_on_the_result_page(app, client, auth, user, admin_user, evidence):
    analysis_id = evidence(user)
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert 'id="training-consent"' in html and "Allow this upload to be used to improve the model" in html
    assert f'action="/analyses/{analysis_id}/training-consent"' in html and 'value="Allow for training"' in html
    assert "so this upload is never used for training" in html
    response = client.post(f"/analyses/{analysis_id}/training-consent", data={"allow": "Allow for training"})
    assert response.status_code == 302 and response.headers["Location"].endswith("#training-consent")
    assert consent_value(app, analysis_id, "training_consent") and not consent_value(app, analysis_id, "game_consent")  # the game is separate
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "its face crops may be used to improve the model" in html
    assert "You allow it." in html and 'value="Withdraw consent"' in html and 'id="training-withdraw"' in html
    response = client.post(f"/analyses/{analysis_id}/training-consent", data={"withdraw": "Withdraw consent"})
    assert not consent_value(app, analysis_id, "training_consent")
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "left out of future training data" in html and "cannot be recalled" in html
    assert "so this upload is never used for training" in html
    auth.logout()
    auth.login("admin@example.com")
    assert "training-consent" not in client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
