"""Faults: the database gone for a moment, the model missing or damaged, and decoders that hang,
eat memory or crash. Each must end in a clear page or a failed analysis with a reason, and the
service must carry on afterwards.

Covered elsewhere, not repeated here:
- a worker killed mid-job: tests/test_jobs.py::test_job_of_a_killed_process_is_rerun_not_left_running
  (in-process runner, kill -9) and tests/test_scaleout.py::test_killed_worker_job_is_rerun_by_the_next_worker
  / ::test_killed_worker_job_fails_with_a_reason_when_attempts_run_out (RQ workers);
- the app restarted with work queued: tests/test_jobs.py::test_restarted_app_picks_up_queued_work_on_its_first_request
  and tests/test_scaleout.py::test_starting_worker_picks_up_queued_rows_whose_jobs_were_lost;
- a database that was never there: tests/test_health.py::test_database_down_gives_503_page_not_a_crash;
- /healthz for a missing, corrupt or card-less model: tests/test_health.py::test_healthz_is_unhealthy_without_a_usable_model.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convert
from app import create_app
from conftest import PASSWORD, AuthActions, jpeg_bytes
from extensions import db
from models import Analysis, User
from utils import storage
from utils.analysis import MODEL_UNAVAILABLE_REASON
from utils.bounded_decode import (DecodeLimits, DecodeOutOfMemory, DecodeTimedOut, DecoderCrashed,
                                  extract_faces_bounded)


def upload(client, content: bytes, filename: str = "photo.jpg"):
    return client.post("/upload", data={"files": [(io.BytesIO(content), filename)]},
                       content_type="multipart/form-data")


def rows(app) -> list[Analysis]:
    with app.app_context():
        found = db.session.scalars(db.select(Analysis).order_by(Analysis.id)).all()
        for row in found:
            db.session.expunge(row)
        return found


def no_children_left() -> bool:
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


# ---------------------------------------------------------------- the database, gone for a moment

@pytest.fixture
def movable_database(tmp_path, monkeypatch):
    """An app whose SQLite file lives in a folder the test can take away and put back."""
    monkeypatch.setenv("SECRET_KEY", "x")
    folder = tmp_path / "db"
    folder.mkdir()
    app = create_app({"TESTING": True, "JOB_RUNNER": "sync", "WTF_CSRF_ENABLED": False,
                      "RATELIMIT_ENABLED": False, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder}/app.db",
                      "UPLOAD_FOLDER": str(tmp_path / "uploads"), "DERIVED_FOLDER": str(tmp_path / "derived")})
    with app.app_context():
        db.create_all()
        user = User(email="user@example.com")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()

    def take_away():
        with app.app_context():
            db.engine.dispose()
        folder.rename(tmp_path / "db-away")

    def put_back():
        (tmp_path / "db-away").rename(folder)

    yield app, take_away, put_back
    with app.app_context():
        db.engine.dispose()


def test_database_outage_gives_503_pages_then_service_resumes_with_the_same_session(movable_database):
    app, take_away, put_back = movable_database
    client = app.test_client()
    AuthActions(client).login()
    assert client.get("/history").status_code == 200

    take_away()
    for path in ("/history", "/", "/upload", "/account"):
        response = client.get(path)
        assert response.status_code == 503, path
        page = response.get_data(as_text=True)
        assert "cannot reach its database" in page and "Traceback" not in page
    api = client.get("/api/v1/analyses", headers={"Authorization": "Bearer whatever"})
    assert api.status_code == 503 and api.get_json()["status"] == 503
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["database"]["ok"] is False
    assert upload(client, jpeg_bytes(1)).status_code == 503
    assert not [p for p in Path(app.config["UPLOAD_FOLDER"]).rglob("*") if p.is_file()] \
        if Path(app.config["UPLOAD_FOLDER"]).exists() else True

    put_back()
    assert client.get("/history").status_code == 200  # the same cookie: still signed in
    assert client.get("/healthz").get_json()["database"]["ok"] is True
    assert upload(client, jpeg_bytes(2)).status_code == 302


# ---------------------------------------------------------------- the model, missing or damaged

@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_without_a_usable_model_the_app_starts_and_jobs_fail_with_that_reason(app, client, auth, user, tmp_path,
                                                                          problem):
    model = tmp_path / "detector.keras"
    if problem == "corrupt":
        model.write_bytes(b"PK\x03\x04 this is not a keras archive" + os.urandom(256))
        (tmp_path / "model_card.json").write_text('{"version": "broken"}')
    app.config["MODEL_PATH"] = str(model)

    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["status"] == "unhealthy"
    assert health.get_json()["model"]["ok"] is False

    auth.login()
    response = upload(client, jpeg_bytes(3))
    assert response.status_code == 302  # the upload itself is kept
    [analysis] = rows(app)
    assert analysis.status == "failed" and analysis.error == MODEL_UNAVAILABLE_REASON
    assert str(tmp_path) not in analysis.error  # no server paths shown to users
    page = client.get(f"/analyses/{analysis.id}").get_data(as_text=True)
    assert "detection model is not available" in page
    # Once the model is back, the same file can be analysed: nothing was lost.
    assert Path(storage_path(app, analysis)).exists()


def storage_path(app, analysis) -> Path:
    with app.app_context():
        return storage.upload_path(analysis.stored_name)


# ---------------------------------------------------------------- decoding under limits

@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.full((120, 160, 3), 100, np.uint8)).save(path, "JPEG")
    return path


@pytest.fixture
def stalled_file(tmp_path) -> Path:
    """A named pipe with no writer: opening it blocks forever, like a decoder that never returns."""
    path = tmp_path / "stalled.jpg"
    os.mkfifo(path)
    return path


def test_bounded_decode_returns_what_the_in_process_decode_returns(photo):
    inside = convert.extract_faces(photo, input_size=64)
    bounded = extract_faces_bounded(photo, input_size=64, decode_limits=DecodeLimits(max_seconds=60))
    assert (bounded.kind, bounded.width, bounded.height) == (inside.kind, inside.width, inside.height)
    assert np.array_equal(bounded.frames[0].image, inside.frames[0].image)
    assert no_children_left()


def test_a_decoder_that_never_returns_is_stopped_at_the_time_limit(stalled_file):
    started = time.monotonic()
    with pytest.raises(DecodeTimedOut) as caught:
        extract_faces_bounded(stalled_file, input_size=64, decode_limits=DecodeLimits(max_seconds=1.5))
    assert 1.4 < time.monotonic() - started < 10
    assert "longer than 2 s" in str(caught.value) or "longer than 1 s" in str(caught.value)
    assert isinstance(caught.value, convert.MediaError)  # the pipeline turns it into a failed analysis
    assert no_children_left()


def test_a_decode_that_needs_too_much_memory_is_stopped(tmp_path):
    path = tmp_path / "large.png"
    Image.new("RGB", (4000, 4000), (1, 2, 3)).save(path, "PNG")  # 48 MB decoded, under the pixel limit
    with pytest.raises(DecodeOutOfMemory) as caught:
        extract_faces_bounded(path, input_size=64, decode_limits=DecodeLimits(max_memory_mb=200))
    assert "more than 200 MB" in str(caught.value)
    assert isinstance(caught.value, convert.MediaTooLarge)
    # The same file decodes with the default limit.
    media = extract_faces_bounded(path, input_size=64)
    assert (media.width, media.height) == (4000, 4000)
    assert no_children_left()


def test_a_decoder_process_that_dies_is_a_clear_failure(photo):
    with pytest.raises((DecoderCrashed, DecodeOutOfMemory)) as caught:
        extract_faces_bounded(photo, input_size=64, decode_limits=DecodeLimits(max_memory_mb=1))
    assert "It may be damaged" in str(caught.value) or "memory" in str(caught.value)
    assert no_children_left()


def test_a_job_time_limit_raised_from_progress_kills_the_decoder(photo):
    class JobStopped(BaseException):
        pass

    def progress(stage, fraction):
        raise JobStopped()

    with pytest.raises(JobStopped):
        extract_faces_bounded(photo, input_size=64, progress=progress)
    assert no_children_left()


@pytest.mark.app_config(DECODE_MAX_SECONDS=2)
def test_a_stalled_upload_fails_with_a_reason_and_the_app_carries_on(app, client, auth, user):
    auth.login()
    assert upload(client, jpeg_bytes(4), "stalls.jpg").status_code == 302
    [analysis] = rows(app)
    # Re-run it with its stored file swapped for a pipe that never delivers a byte.
    path = storage_path(app, analysis)
    path.unlink()
    os.mkfifo(path)
    with app.app_context():
        from utils.analysis import analyse

        started = time.monotonic()
        analyse(analysis.id)
        assert time.monotonic() - started < 15
    [analysis] = rows(app)
    assert analysis.status == "failed" and "longer than 2 s" in analysis.error
    assert upload(client, jpeg_bytes(5), "fine.jpg").status_code == 302
    assert rows(app)[-1].status == "done"
    assert no_children_left()


def test_one_stalled_file_does_not_stall_the_queue(tmp_path, monkeypatch):
    """One in-process worker thread: a file whose decode never returns is failed at the decode
    limit and the next upload is analysed, instead of the only worker hanging forever."""
    from tests.jobs_support import ScratchDatabase, make_app, wait_status, wanted_database

    store = ScratchDatabase(tmp_path, wanted_database())
    app = make_app(store.url, tmp_path, JOB_RUNNER="thread", JOB_WORKERS=1, DECODE_MAX_SECONDS=2,
                   JOB_TARGET="utils.analysis:analyse", JOB_TIMEOUT=120)
    try:
        with app.app_context():
            user = User(email="q@example.com", password_hash="x")
            db.session.add(user)
            db.session.commit()
            ids = []
            for seed in (6, 7):
                stored = storage.save_upload(io.BytesIO(jpeg_bytes(seed)))
                row = Analysis(user_id=user.id, kind="image", original_name=f"{seed}.jpg", sha256=stored.sha256,
                               stored_name=stored.stored_name, size_bytes=stored.size_bytes, status="queued")
                db.session.add(row)
                db.session.commit()
                ids.append(row.id)
            stalled_path = storage.upload_path(db.session.get(Analysis, ids[0]).stored_name)
        stalled_path.unlink()
        os.mkfifo(stalled_path)
        from utils import jobs

        with app.app_context():
            for analysis_id in ids:
                jobs.enqueue(analysis_id)
        first = wait_status(app, ids[0], {"failed"}, timeout=30)
        second = wait_status(app, ids[1], {"done", "failed"}, timeout=60)
        assert "longer than 2 s" in first.error
        assert second.status == "done", second.error
    finally:
        runner = app.extensions["jobs"]
        if runner.started:
            runner.wait_idle(timeout=15)
            runner.stop()
        with app.app_context():
            db.engine.dispose()
        store.drop()


def test_a_connection_dropped_during_the_request_does_not_turn_the_answer_into_a_500(app, client, auth, user,
                                                                                      monkeypatch):
    """PostgreSQL restarting mid-request: the final ROLLBACK fails. The page already made (here the
    history page) must still be sent, and the next request must work."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    auth.login()
    original_close = Session.close
    failures = []

    def close_on_a_dead_connection(self):
        if not failures:
            failures.append(1)
            self.connection().invalidate()  # as the server cutting it would (frees its locks too)
            raise OperationalError("ROLLBACK", {}, Exception("terminating connection due to administrator command"))
        return original_close(self)

    monkeypatch.setattr(Session, "close", close_on_a_dead_connection)
    response = client.get("/history")
    assert failures == [1]
    assert response.status_code == 200 and "Your analyses" in response.get_data(as_text=True)
    assert client.get("/history").status_code == 200
