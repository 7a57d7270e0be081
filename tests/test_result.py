"""The result page, its JSON status, media served only to owner/admin, disputes and decisions shown."""
import re
from pathlib import Path

import pytest

from conftest import jpeg_bytes
from extensions import db
from models import Analysis, Review, utcnow
from utils import storage


def write_derived(app, analysis_id: int, name: str, content: bytes = None) -> bytes:
    content = content or jpeg_bytes(99)
    with app.app_context():
        path = storage.derived_path(analysis_id, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return content


@pytest.fixture
def finished_image(app, user, make_analysis):
    analysis_id = make_analysis(user, verdict="fake", score=0.91, threshold=0.5, model_version="cnn-2026.11",
                                faces=[(100, 80, 120, 140, 0.91), (400, 90, 100, 110, 0.2)],
                                frames=[(0, 0.0, 2, 0.91)], flagged=True, flag_reason="auto")
    with app.app_context():
        a = db.session.get(Analysis, analysis_id)
        a.frames[0].thumb_name = "frame-000.jpg"
        a.faces[0].crop_name, a.faces[0].heatmap_name = "face-000.jpg", "heat-000.jpg"
        db.session.commit()
    for name in ("frame-000.jpg", "face-000.jpg", "heat-000.jpg"):
        write_derived(app, analysis_id, name)
    return analysis_id


def test_finished_image_shows_verdict_score_threshold_model_and_boxes(client, auth, finished_image):
    auth.login()
    html = client.get(f"/analyses/{finished_image}").get_data(as_text=True)
    assert "verdict-fake" in html and ">Fake<" in html
    assert "91&nbsp;%" in html and "threshold 50&nbsp;%" in html
    assert "cnn-2026.11" in html
    rects = re.findall(r'<rect class="box box-(\w+)" x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"', html)
    assert rects == [("fake", "100", "80", "120", "140"), ("real", "400", "90", "100", "110")]
    assert 'viewBox="0 0 640 480"' in html
    assert f"/analyses/{finished_image}/files/frame-000.jpg" in html
    assert "regions that drove the score" in html
    assert "http-equiv=\"refresh\"" not in html and "progress.js" not in html


def test_queued_analysis_shows_progress_and_refreshes(client, auth, user, make_analysis):
    analysis_id = make_analysis(user, status="running", stage="finding faces", progress=0.42, verdict=None,
                                score=None)
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert '<progress id="progress-bar" max="100" value="42">' in html
    assert "finding faces" in html
    assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in html
    assert "/static/progress.js" in html
    status = client.get(f"/analyses/{analysis_id}/status")
    assert status.status_code == 200 and status.headers["Cache-Control"] == "no-store"
    assert status.get_json() == {"id": analysis_id, "status": "running", "stage": "finding faces",
                                 "progress": 0.42, "verdict": None, "error": None, "finished": False}


def test_failed_analysis_shows_the_reason(client, auth, user, make_analysis):
    analysis_id = make_analysis(user, status="failed", verdict=None, score=None,
                                error="The video could not be decoded.")
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "The video could not be decoded." in html and "Failed" in html
    assert client.get(f"/analyses/{analysis_id}/status").get_json()["error"] == "The video could not be decoded."


def test_video_shows_per_frame_scores_and_can_pick_a_frame(app, client, auth, user, make_analysis):
    analysis_id = make_analysis(user, kind="video", verdict="uncertain", score=0.55, duration_s=4.0,
                                frames=[(0, 0.0, 1, 0.3), (30, 1.0, 0, None), (60, 2.0, 1, 0.7)],
                                faces=[(10, 10, 50, 50, 0.3)])
    with app.app_context():
        a = db.session.get(Analysis, analysis_id)
        a.faces.append(a.faces[0].__class__(frame_index=60, x=20, y=20, w=60, h=60, score=0.7))
        for fr in a.frames:
            fr.thumb_name = f"frame-{fr.index:03d}.jpg"
        db.session.commit()
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "Per-frame scores" in html
    assert html.count("<tr") == 4  # header + three frames
    assert "no face" in html and 'value="0.7"' in html
    assert 'x="20" y="20" width="60"' in html  # the most suspicious frame is shown by default
    html = client.get(f"/analyses/{analysis_id}?frame=0").get_data(as_text=True)
    assert 'x="10" y="10" width="50"' in html


def test_another_users_analysis_is_404_everywhere(client, auth, other_user, finished_image):
    auth.login("other@example.com")
    for path in ("", "/status", "/files/frame-000.jpg", "/thumb", "/original"):
        assert client.get(f"/analyses/{finished_image}{path}").status_code == 404, path
    assert client.post(f"/analyses/{finished_image}/dispute", data={"reason": "mine?"}).status_code == 404
    assert client.get("/analyses/999999").status_code == 404


def test_anonymous_is_sent_to_sign_in(client, finished_image):
    for path in ("", "/status", "/files/frame-000.jpg", "/thumb"):
        response = client.get(f"/analyses/{finished_image}{path}")
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_media_is_served_to_owner_and_admin_with_nosniff(app, client, auth, admin_user, finished_image):
    auth.login()
    response = client.get(f"/analyses/{finished_image}/files/face-000.jpg")
    assert response.status_code == 200
    assert response.mimetype == "image/jpeg"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "private" in response.headers["Cache-Control"]
    assert client.get(f"/analyses/{finished_image}/thumb").status_code == 200
    auth.logout()
    auth.login("admin@example.com")
    assert client.get(f"/analyses/{finished_image}/files/heat-000.jpg").status_code == 200


@pytest.mark.parametrize("name", ["../frame-000.jpg", "..%2Fsecret_key", "frame-000.html", "x.svg",
                                  "missing.jpg", "%2e%2e"])
def test_media_names_outside_the_pattern_are_404(client, auth, finished_image, name):
    auth.login()
    assert client.get(f"/analyses/{finished_image}/files/{name}").status_code == 404


def test_media_is_never_under_static(app, finished_image):
    static = Path(app.static_folder)
    assert not any(p.suffix == ".jpg" for p in static.rglob("*"))
    assert Path(app.config["UPLOAD_FOLDER"]).resolve() not in static.resolve().parents


def test_original_is_a_download(app, client, auth, user, make_analysis):
    content = jpeg_bytes(7)
    analysis_id = make_analysis(user, content=content, original_name="<x>.jpg")
    auth.login()
    response = client.get(f"/analyses/{analysis_id}/original")
    assert response.status_code == 200 and response.data == content
    assert response.mimetype == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_dispute_flags_the_analysis_for_review(app, client, auth, user, make_analysis):
    analysis_id = make_analysis(user, verdict="real", score=0.1)
    auth.login()
    page = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "Think the verdict is wrong?" in page
    response = client.post(f"/analyses/{analysis_id}/dispute", data={"reason": "It is a face swap"})
    assert response.status_code == 302
    with app.app_context():
        a = db.session.get(Analysis, analysis_id)
        assert a.flagged and a.flag_reason == "dispute" and a.dispute_reason == "It is a face swap"
        assert a.disputed_at is not None
    page = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "You asked for a review" in page and "It is a face swap" in page


def test_dispute_needs_a_reason_and_a_finished_analysis(app, client, auth, user, make_analysis):
    done = make_analysis(user)
    running = make_analysis(user, status="running", verdict=None)
    auth.login()
    client.post(f"/analyses/{done}/dispute", data={"reason": ""})
    client.post(f"/analyses/{running}/dispute", data={"reason": "wrong"})
    with app.app_context():
        assert not db.session.get(Analysis, done).flagged
        assert not db.session.get(Analysis, running).flagged


def test_reviewer_decision_is_shown_to_the_owner(app, client, auth, user, admin_user, make_analysis):
    analysis_id = make_analysis(user, verdict="uncertain", score=0.5, flagged=True, flag_reason="auto")
    with app.app_context():
        db.session.add(Review(analysis_id=analysis_id, reviewer_id=admin_user, decision="real",
                              note="Checked the source: an original press photo.", created_at=utcnow()))
        db.session.commit()
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "Human review" in html and "Actually real" in html
    assert "an original press photo" in html
    assert "admin@example.com" not in html  # the owner sees the decision, not who made it
    assert "Think the verdict is wrong?" not in html


def test_scores_near_the_threshold_keep_a_decimal_and_get_the_uncertain_colour(app, client, auth, user,
                                                                               make_analysis):
    analysis_id = make_analysis(user, verdict="uncertain", score=0.4937, threshold=0.5, uncertain_low=0.49,
                                uncertain_high=0.51, faces=[(1, 2, 30, 40, 0.4937)], frames=[(0, 0.0, 1, 0.4937)])
    with app.app_context():
        db.session.get(Analysis, analysis_id).frames[0].thumb_name = "frame-000.jpg"
        db.session.commit()
    auth.login()
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "49.4&nbsp;%" in html and "threshold 50&nbsp;%" in html and "between 49&nbsp;% and 51&nbsp;%" in html
    assert '<rect class="box box-uncertain" x="1" y="2"' in html
