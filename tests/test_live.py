"""Live camera endpoints: sign-in and CSRF, frame checks, back-pressure, rate limit, nothing stored
unless saved, and a saved session as an ordinary analysis. Scores come from the shipped model."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from extensions import db
from models import Analysis, FrameResult
from tests.conftest import csrf_token_from
from utils import live as live_module
from utils.detail import DetailBands


def _jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def face_jpeg() -> bytes:
    """The astronaut photo downscaled as the page would send it (one face)."""
    from skimage import data

    image = Image.fromarray(data.astronaut())
    image.thumbnail((480, 480))
    return _jpeg(np.asarray(image))


@pytest.fixture(scope="module")
def blank_jpeg() -> bytes:
    return _jpeg(np.full((240, 320, 3), 127, np.uint8))


def start_session(client, token: str | None = None) -> dict:
    headers = {"X-CSRFToken": token} if token else {}
    response = client.post("/live/sessions", headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def send(client, session: dict, body: bytes, token: str | None = None, content_type="image/jpeg"):
    headers = {"Content-Type": content_type}
    if token:
        headers["X-CSRFToken"] = token
    return client.post(session["frame_url"], data=body, headers=headers)


def files_under(folder) -> list:
    from pathlib import Path

    root = Path(folder)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# --------------------------------------------------------------------------- access

def test_page_requires_sign_in(client):
    response = client.get("/live")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


@pytest.mark.parametrize("path", ["/live/sessions", "/live/sessions/abc/frames", "/live/sessions/abc/save",
                                  "/live/sessions/abc/discard"])
def test_endpoints_answer_401_json_without_sign_in(client, path):
    response = client.post(path, data=b"x", headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


def test_page_has_settings_in_data_attributes_and_no_inline_script(client, user, auth):
    auth.login()
    html = client.get("/live").get_data(as_text=True)
    assert 'data-start-url="/live/sessions"' in html
    assert 'data-interval-ms="1000"' in html
    assert "live.js" in html
    assert "<script>" not in html and "onclick" not in html


@pytest.mark.csrf
def test_csrf_required_and_accepted_as_header(client, user, auth, face_jpeg):
    auth.login()
    response = client.post("/live/sessions")
    assert response.status_code == 400
    assert response.get_json()["error"] == "csrf"
    token = csrf_token_from(client.get("/live").get_data(as_text=True)) or _data_token(client)
    session = start_session(client, token)
    refused = send(client, session, face_jpeg)  # no header
    assert refused.status_code == 400 and refused.get_json()["error"] == "csrf"
    accepted = send(client, session, face_jpeg, token)
    assert accepted.status_code == 200, accepted.get_data(as_text=True)


def _data_token(client) -> str:
    import re

    html = client.get("/live").get_data(as_text=True)
    return re.search(r'data-csrf-token="([^"]+)"', html).group(1)


def test_other_users_session_is_unknown(client, app, user, other_user, auth, face_jpeg):
    auth.login()
    session = start_session(client)
    auth.logout()
    auth.login("other@example.com")
    response = send(client, session, face_jpeg)
    assert response.status_code == 404
    assert response.get_json()["error"] == "unknown_session"
    assert client.post(session["save_url"]).status_code == 404


# --------------------------------------------------------------------------- frames

def test_frame_with_a_face_is_scored_with_boxes_and_rolling_verdict(client, user, auth, face_jpeg):
    auth.login()
    session = start_session(client)
    answer = send(client, session, face_jpeg).get_json()
    assert answer["no_face"] is False
    assert len(answer["faces"]) == 1
    x, y, w, h = answer["faces"][0]["box"]
    # The astronaut's face sits in the upper middle of the photo.
    assert 0 < x < answer["width"] and 0 <= y < answer["height"] / 2 and w > 40 and h > 40
    assert 0.0 <= answer["score"] <= 1.0
    assert answer["rolling"]["verdict"] in ("real", "fake", "uncertain")
    assert answer["rolling"]["frames"] == 1 and answer["rolling"]["frames_with_faces"] == 1
    # the band each answer used: the card's, or wider for a face that lost its fine detail
    low, high = answer["uncertain_band"]
    for band in (answer["faces"][0]["uncertain_band"], answer["rolling"]["uncertain_band"]):
        assert band[0] <= low and band[1] >= high
    assert answer["rolling"]["uncertain_band"] == answer["faces"][0]["uncertain_band"]  # one face, one person
    assert answer["rates"]["scored"] == 1 and answer["rates"]["dropped"] == 0
    second = send(client, session, face_jpeg).get_json()
    assert second["seq"] == 1 and second["rolling"]["frames"] == 2


def test_no_face_is_said_honestly(client, user, auth, blank_jpeg):
    auth.login()
    session = start_session(client)
    answer = send(client, session, blank_jpeg).get_json()
    assert answer["no_face"] is True and answer["faces"] == [] and answer["score"] is None
    assert answer["rolling"]["verdict"] == "no_face"
    assert answer["rolling"]["score"] is None
    assert "No face" in answer["rolling"]["explanation"]


@pytest.mark.parametrize("body, content_type, status, code", [
    (b"", "image/jpeg", 400, "bad_frame"),
    (b"hello, this is text", "image/jpeg", 415, "unsupported_frame"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", 400, "bad_frame"),  # truncated JPEG
])
def test_bad_frames_get_a_clear_4xx_json(client, user, auth, body, content_type, status, code):
    auth.login()
    session = start_session(client)
    response = send(client, session, body, content_type=content_type)
    assert response.status_code == status
    payload = response.get_json()
    assert payload["error"] == code and payload["message"]
    # A refused frame is neither scored nor dropped.
    fine = send(client, session, _jpeg(np.zeros((64, 64, 3), np.uint8))).get_json()
    assert fine["rates"]["scored"] == 1 and fine["rates"]["dropped"] == 0


@pytest.mark.app_config(LIVE_MAX_FRAME_BYTES=20_000)
def test_oversize_frame_is_refused_before_decoding(client, user, auth):
    auth.login()
    session = start_session(client)
    noisy = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    body = _jpeg(noisy, quality=95)
    assert len(body) > 20_000
    response = send(client, session, body)
    assert response.status_code == 413
    assert response.get_json()["error"] == "frame_too_large"


@pytest.mark.app_config(LIVE_MAX_FRAME_PIXELS=10_000)
def test_frame_with_too_many_pixels_is_refused(client, user, auth):
    auth.login()
    session = start_session(client)
    response = send(client, session, _jpeg(np.zeros((200, 200, 3), np.uint8)))
    assert response.status_code == 413
    assert "megapixels" in response.get_json()["message"]


# --------------------------------------------------------------------------- back-pressure and limits

def _hold_scoring(monkeypatch):
    """Make scoring wait on an event, so a second frame arrives while the first is being scored."""
    entered, release = threading.Event(), threading.Event()
    real = live_module.score_frame

    def slow_score(rgb, detector, **kwargs):
        entered.set()
        assert release.wait(30)
        return real(rgb, detector, **kwargs)

    monkeypatch.setattr("blueprints.live.routes.score_frame", slow_score)
    return entered, release


def test_frame_arriving_while_one_is_scored_is_dropped_not_queued(app, user, auth, client, face_jpeg, monkeypatch):
    auth.login()
    session = start_session(client)
    entered, release = _hold_scoring(monkeypatch)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", send(client, session, face_jpeg)))
    first.start()
    assert entered.wait(60)
    second = send(client, session, face_jpeg)
    release.set()
    first.join(60)
    assert second.status_code == 409
    body = second.get_json()
    assert body["dropped"] is True and body["error"] == "busy"
    assert results["first"].status_code == 200
    answer = send(client, session, face_jpeg).get_json()
    assert answer["rates"]["scored"] == 2 and answer["rates"]["dropped"] == 1
    assert answer["rates"]["dropped_fps"] > 0


@pytest.mark.app_config(LIVE_MAX_IN_FLIGHT_PER_USER=1)
def test_one_user_cannot_score_more_frames_at_once_than_allowed(app, user, auth, client, face_jpeg, monkeypatch):
    auth.login()
    one, two = start_session(client), start_session(client)
    entered, release = _hold_scoring(monkeypatch)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", send(client, one, face_jpeg)))
    first.start()
    assert entered.wait(60)
    other_session = send(client, two, face_jpeg)
    release.set()
    first.join(60)
    assert other_session.status_code == 429
    assert other_session.get_json()["dropped"] is True
    assert results["first"].status_code == 200


@pytest.mark.ratelimit
@pytest.mark.app_config(RATELIMIT_LIVE="3 per minute")
def test_rate_limit_per_user_answers_json(client, user, other_user, auth, blank_jpeg):
    auth.login()
    session = start_session(client)
    statuses = [send(client, session, blank_jpeg).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = send(client, session, blank_jpeg)
    assert limited.get_json()["error"] == "rate_limited" and limited.get_json()["dropped"] is True
    # The limit is per user, not per address: another account from the same address still gets through.
    auth.logout()
    auth.login("other@example.com")
    assert send(client, start_session(client), blank_jpeg).status_code == 200


def test_session_limit_replaces_the_oldest(client, user, auth, blank_jpeg):
    auth.login()
    sessions = [start_session(client) for _ in range(4)]  # default LIVE_MAX_SESSIONS_PER_USER = 3
    assert send(client, sessions[0], blank_jpeg).status_code == 404
    assert send(client, sessions[3], blank_jpeg).status_code == 200


def test_sessions_expire_after_idle_time():
    now = [1000.0]
    store = live_module.LiveStore(clock=lambda: now[0])
    settings = live_module.LiveSettings(idle_seconds=60)
    session = store.create(7, settings)
    assert store.get(session.id, 7) is session
    assert store.get(session.id, 8) is None
    now[0] += 61
    assert store.get(session.id, 7) is None and store.count() == 0


def test_rolling_verdict_widens_its_band_for_faces_without_detail():
    class FakeDetector:
        threshold, uncertain_band = 0.5, (0.45, 0.55)
        detail_bands = DetailBands((-1.5,), ((0.1, 0.9),), (0.45, 0.55))

    answers = {}
    for detail in (-1.0, -2.0):
        session = live_module.LiveSession(1, live_module.LiveSettings(window_seconds=5), clock=lambda: 0.0)
        session.add_frame(100, 100, [live_module.LiveFace(box=(10, 10, 40, 40), score=0.8, detail=detail)], None)
        answers[detail] = session.rolling_verdict(FakeDetector()).to_json()
    assert answers[-1.0]["verdict"] == "fake" and answers[-1.0]["uncertain_band"] == [0.45, 0.55]
    assert answers[-2.0]["verdict"] == "uncertain" and answers[-2.0]["uncertain_band"] == [0.1, 0.9]
    assert "lost fine detail" in answers[-2.0]["explanation"]


def test_rolling_verdict_only_looks_at_the_window():
    class FakeDetector:
        threshold, uncertain_band = 0.5, (0.45, 0.55)
        detail_bands = DetailBands((), (), (0.45, 0.55))  # a card without detail bands

    now = [0.0]
    session = live_module.LiveSession(1, live_module.LiveSettings(window_seconds=5), clock=lambda: now[0])
    for second in range(10):
        now[0] = float(second)
        score = 0.95 if second < 5 else 0.05  # fake for 5 s, then real
        session.add_frame(100, 100, [live_module.LiveFace(box=(10, 10, 40, 40), score=score)], None)
    rolling = session.rolling_verdict(FakeDetector())
    assert rolling.verdict == "real" and rolling.frames == 5
    whole = live_module.aggregate_frames(list(session.frames), FakeDetector())
    assert whole.frames_with_faces == 10


# --------------------------------------------------------------------------- storage

def test_nothing_is_stored_unless_saved(app, client, user, auth, face_jpeg):
    auth.login()
    session = start_session(client)
    for _ in range(3):
        assert send(client, session, face_jpeg).status_code == 200
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Analysis.id))) == 0
    assert files_under(app.config["UPLOAD_FOLDER"]) == []
    assert files_under(app.config["DERIVED_FOLDER"]) == []
    assert client.post(session["discard_url"]).status_code == 204
    assert send(client, session, face_jpeg).status_code == 404


def test_save_creates_a_live_analysis_in_history(app, client, user, auth, face_jpeg, blank_jpeg):
    auth.login()
    session = start_session(client)
    for body in (face_jpeg, blank_jpeg, face_jpeg):
        assert send(client, session, body).status_code == 200
    response = client.post(session["save_url"])
    assert response.status_code == 201, response.get_data(as_text=True)
    saved = response.get_json()
    assert saved["frames"] == 3
    with app.app_context():
        analysis = db.session.get(Analysis, saved["analysis_id"])
        assert analysis.kind == "live" and analysis.status == "done" and analysis.user_id == user
        assert analysis.stored_name is None
        assert analysis.frames_sampled == 3 and analysis.frames_with_faces == 2 and analysis.faces_found == 2
        assert analysis.verdict in ("real", "fake", "uncertain")
        assert analysis.flagged == (analysis.verdict in ("fake", "uncertain"))
        frames = db.session.scalars(db.select(FrameResult).filter_by(analysis_id=analysis.id)
                                    .order_by(FrameResult.index)).all()
        assert [f.faces_count for f in frames] == [1, 0, 1]
        assert frames[1].score is None
        assert all(f.thumb_name for f in frames)
        assert len(files_under(app.config["DERIVED_FOLDER"])) == 3 + 2  # frame thumbnails + face crops
    # Saving again returns the same analysis.
    assert client.post(session["save_url"]).get_json()["analysis_id"] == saved["analysis_id"]
    history = client.get("/history?kind=live").get_data(as_text=True)
    assert f"/analyses/{saved['analysis_id']}" in history
    page = client.get(saved["url"])
    assert page.status_code == 200
    assert "Per-frame scores" in page.get_data(as_text=True)
    thumb = client.get(f"/analyses/{saved['analysis_id']}/thumb")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"


def test_saved_session_can_be_disputed_for_review(app, client, user, auth, face_jpeg):
    auth.login()
    session = start_session(client)
    send(client, session, face_jpeg)
    analysis_id = client.post(session["save_url"]).get_json()["analysis_id"]
    response = client.post(f"/analyses/{analysis_id}/dispute", data={"reason": "That was me on a real call."})
    assert response.status_code == 302
    with app.app_context():
        analysis = db.session.get(Analysis, analysis_id)
        assert analysis.flagged and analysis.flag_reason == "dispute"


def test_saving_an_empty_session_is_refused(client, user, auth):
    auth.login()
    session = start_session(client)
    response = client.post(session["save_url"])
    assert response.status_code == 409
    assert response.get_json()["error"] == "empty_session"


@pytest.mark.app_config(LIVE_KEY_FRAMES=4)
def test_long_session_keeps_thumbnails_for_key_frames_including_the_worst(app, client, user, auth, face_jpeg,
                                                                           blank_jpeg):
    auth.login()
    session = start_session(client)
    for i in range(9):
        send(client, session, face_jpeg if i == 4 else blank_jpeg)
    analysis_id = client.post(session["save_url"]).get_json()["analysis_id"]
    with app.app_context():
        frames = db.session.scalars(db.select(FrameResult).filter_by(analysis_id=analysis_id)).all()
        assert len(frames) == 9
        with_thumb = [f for f in frames if f.thumb_name]
        assert len(with_thumb) == 4
        assert any(f.index == 4 for f in with_thumb)  # the only scored frame opens the result page


# --------------------------------------------------------------------------- several web processes (Redis)

@pytest.fixture
def shared_redis():
    """A key prefix on the test Redis nobody else uses; its keys are deleted afterwards. Skips when
    Redis is unreachable (fails under REQUIRE_SERVICES=1)."""
    import uuid

    from redis import Redis

    from tests.jobs_support import redis_url

    url = redis_url()
    prefix = f"test-live-{uuid.uuid4().hex[:10]}:"
    yield url, prefix
    connection = Redis.from_url(url)
    keys = connection.keys(prefix + "*")
    if keys:
        connection.delete(*keys)


@pytest.fixture
def two_processes(app, user, shared_redis):
    """Two app instances on one database and one Redis, as two gunicorn workers are: a signed-in
    client for each."""
    from app import create_app
    from utils.live import make_store

    url, prefix = shared_redis
    live = {"LIVE_STORE": "redis", "REDIS_URL": url, "LIVE_REDIS_PREFIX": prefix}
    app.config.update(live)
    app.extensions["live"] = make_store(app.config)
    keys = ("TESTING", "SECRET_KEY", "SQLALCHEMY_DATABASE_URI", "UPLOAD_FOLDER", "DERIVED_FOLDER",
            "WTF_CSRF_ENABLED", "RATELIMIT_ENABLED", "RATELIMIT_STORAGE_URI", "JOB_RUNNER")
    other = create_app({**{k: app.config[k] for k in keys}, **live})
    clients = []
    for instance in (app, other):
        client = instance.test_client()
        with client.session_transaction() as session:
            session["_user_id"] = f"{user}:1"
            session["_fresh"] = True
        clients.append(client)
    yield clients
    with other.app_context():
        db.engine.dispose()


def test_a_session_is_shared_by_every_process_through_redis(app, two_processes, shared_redis, face_jpeg,
                                                          blank_jpeg):
    from redis import Redis

    first, second = two_processes
    session = start_session(first)
    answers = [send(client, session, body).get_json()
               for client, body in ((first, face_jpeg), (second, face_jpeg), (first, blank_jpeg), (second, face_jpeg))]
    assert [a["seq"] for a in answers] == [0, 1, 2, 3]
    assert answers[-1]["rolling"]["frames"] == 4 and answers[-1]["rolling"]["frames_with_faces"] == 3
    assert answers[-1]["rates"]["scored"] == 4
    url, prefix = shared_redis
    connection = Redis.from_url(url)
    assert 0 < connection.ttl(f"{prefix}{session['id']}:meta") <= 300  # forgotten when idle
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Analysis.id))) == 0
    assert files_under(app.config["DERIVED_FOLDER"]) == []

    saved = second.post(session["save_url"])
    assert saved.status_code == 201
    assert first.post(session["save_url"]).get_json()["analysis_id"] == saved.get_json()["analysis_id"]
    with app.app_context():
        analysis = db.session.get(Analysis, saved.get_json()["analysis_id"])
        assert analysis.kind == "live" and analysis.frames_sampled == 4 and analysis.frames_with_faces == 3
        assert all(f.thumb_name for f in analysis.frames)
        assert sum(1 for f in analysis.faces if f.crop_name) == 3

    assert first.post(session["discard_url"]).status_code == 204
    assert send(second, session, face_jpeg).status_code == 404
    assert connection.keys(f"{prefix}{session['id']}*") == []


def test_back_pressure_holds_across_processes(two_processes, face_jpeg, monkeypatch):
    first, second = two_processes
    session = start_session(first)
    entered, release = _hold_scoring(monkeypatch)
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("first", send(first, session, face_jpeg)))
    worker.start()
    assert entered.wait(60)
    dropped = send(second, session, face_jpeg)
    release.set()
    worker.join(60)
    assert dropped.status_code == 409 and dropped.get_json()["dropped"] is True
    assert results["first"].status_code == 200
    rates = send(second, session, face_jpeg).get_json()["rates"]
    assert rates["scored"] == 2 and rates["dropped"] == 1


def test_redis_session_keeps_only_the_most_recent_frames(app, two_processes, shared_redis, face_jpeg):
    from redis import Redis

    app.config["LIVE_MAX_SESSION_FRAMES"] = 3
    first, _ = two_processes
    session = start_session(first)
    for _ in range(5):
        assert send(first, session, face_jpeg).status_code == 200
    url, prefix = shared_redis
    connection = Redis.from_url(url)
    key = f"{prefix}{session['id']}"
    assert connection.llen(key + ":frames") == 3
    assert sorted(int(k) for k in connection.hkeys(key + ":img")) == [2, 3, 4]
    assert sorted(k.decode() for k in connection.hkeys(key + ":crop")) == ["2:0", "3:0", "4:0"]


def test_unreachable_redis_is_a_503_json_not_a_crash(app, client, user, auth):
    from utils.live import make_store

    app.config.update(LIVE_STORE="redis", REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    app.extensions["live"] = make_store(app.config)
    auth.login()
    response = client.post("/live/sessions")
    assert response.status_code == 503
    assert response.get_json()["error"] == "store_unavailable"


def test_rolling_window_counts_every_frame_of_a_fast_sender():
    """The window reads the newest frames first; a sender faster than that tail still gets them all."""
    class FakeDetector:
        threshold, uncertain_band = 0.5, (0.45, 0.55)
        detail_bands = DetailBands((), (), (0.45, 0.55))  # a card without detail bands

    now = [0.0]
    session = live_module.LiveSession(1, live_module.LiveSettings(window_seconds=10), clock=lambda: now[0])
    for i in range(150):
        now[0] = i * 0.05  # 20 frames a second for 7.5 s
        session.add_frame(100, 100, [live_module.LiveFace(box=(10, 10, 40, 40), score=0.9)], None)
    assert session.rolling_verdict(FakeDetector()).frames == 150
    now[0] = 14.0
    session.add_frame(100, 100, [], None)  # 14 s: frames before 4 s have left the window
    assert session.rolling_verdict(FakeDetector()).frames == 150 - 81 + 1
