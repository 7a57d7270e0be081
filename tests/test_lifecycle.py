"""Data lifecycle: deleting an account takes its media and analyses with it; the retention purge
(`flask --app app purge-media`, RETENTION_DAYS) deletes old media files and face images but keeps
verdicts. test_auth.py checks the account-deletion form itself; this module checks what is left on
disk and in the database afterwards."""
from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import PASSWORD, jpeg_bytes
from extensions import db
from models import Analysis, ApiToken, FaceResult, FrameResult, Review, User, utcnow
from utils import storage
from utils.retention import purge_media


def add_derived_files(app, analysis_id: int) -> Path:
    """Give an analysis a thumbnail, a face crop and a heatmap on disk, as the pipeline would."""
    with app.app_context():
        analysis = db.session.get(Analysis, analysis_id)
        folder = storage.derived_dir(analysis_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("frame-000.jpg", "face-000.jpg", "heat-000.jpg"):
            (folder / name).write_bytes(jpeg_bytes(analysis_id))
        for frame in analysis.frames:
            frame.thumb_name = "frame-000.jpg"
        for face in analysis.faces:
            face.crop_name, face.heatmap_name = "face-000.jpg", "heat-000.jpg"
        db.session.commit()
        return folder


def upload_file(app, stored_name: str) -> Path:
    with app.app_context():
        return storage.upload_path(stored_name)


def row(app, analysis_id: int) -> Analysis | None:
    with app.app_context():
        analysis = db.session.get(Analysis, analysis_id)
        if analysis is not None:
            db.session.expunge(analysis)
        return analysis


def age(app, analysis_id: int, days: float) -> None:
    with app.app_context():
        db.session.get(Analysis, analysis_id).created_at = utcnow() - timedelta(days=days)
        db.session.commit()


def all_files(folder: str) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---------------------------------------------------------------- account deletion

def delete_account(client, auth, email="user@example.com"):
    auth.login(email)
    return client.post("/account/delete", data={"password": PASSWORD})


def test_deleting_an_account_leaves_no_file_row_or_session_of_it(app, client, auth, user, other_user,
                                                                  make_analysis):
    mine = make_analysis(user, content=jpeg_bytes(1), faces=[(1, 2, 30, 30, 0.9)], verdict="fake",
                         flagged=True, flag_reason="auto")
    shared_bytes = jpeg_bytes(2)
    mine_shared = make_analysis(user, content=shared_bytes)
    theirs_shared = make_analysis(other_user, content=shared_bytes)
    folder = add_derived_files(app, mine)
    other_folder = add_derived_files(app, theirs_shared)
    with app.app_context():
        db.session.add(Review(analysis_id=mine, decision="fake", reviewer_id=other_user))
        db.session.add(ApiToken.issue(db.session.get(User, user), "laptop")[0])
        db.session.commit()
    own_file = upload_file(app, row(app, mine).stored_name)
    shared_file = upload_file(app, row(app, mine_shared).stored_name)

    second_device = app.test_client()
    auth.__class__(second_device).login()
    assert second_device.get("/history").status_code == 200

    response = delete_account(client, auth)
    assert response.status_code == 302

    with app.app_context():
        assert db.session.get(User, user) is None
        assert db.session.scalars(db.select(Analysis).filter_by(user_id=user)).all() == []
        assert db.session.scalar(db.select(db.func.count(FaceResult.id)).where(
            FaceResult.analysis_id.in_([mine, mine_shared]))) == 0
        assert db.session.scalar(db.select(db.func.count(FrameResult.id)).where(
            FrameResult.analysis_id.in_([mine, mine_shared]))) == 0
        assert db.session.scalar(db.select(db.func.count(Review.id))) == 0
        assert db.session.scalar(db.select(db.func.count(ApiToken.id))) == 0
    assert not own_file.exists() and not folder.exists()
    # The other user's analysis of the same bytes keeps its file and its images.
    assert shared_file.exists() and other_folder.exists()
    assert row(app, theirs_shared) is not None
    # No stray file is left: what remains is exactly the other user's upload.
    assert all_files(app.config["UPLOAD_FOLDER"]) == [shared_file]
    # The other device's session died with the account.
    assert second_device.get("/history").status_code == 302


def test_deleting_an_admin_keeps_the_decisions_they_recorded(app, client, auth, user, make_user,
                                                             make_analysis):
    reviewer = make_user("reviewer@example.com", admin=True)
    analysis = make_analysis(user, verdict="fake", flagged=True, flag_reason="auto")
    with app.app_context():
        db.session.add(Review(analysis_id=analysis, decision="fake", reviewer_id=reviewer))
        db.session.commit()
    assert delete_account(client, auth, "reviewer@example.com").status_code == 302
    with app.app_context():
        review = db.session.scalar(db.select(Review).filter_by(analysis_id=analysis))
        assert review is not None and review.decision == "fake" and review.reviewer_id is None


def test_account_deletion_with_a_wrong_password_deletes_nothing(app, client, auth, user, make_analysis):
    analysis = make_analysis(user, content=jpeg_bytes(3))
    auth.login()
    response = client.post("/account/delete", data={"password": "not the password"})
    assert response.status_code == 400
    assert row(app, analysis) is not None
    assert upload_file(app, row(app, analysis).stored_name).exists()


# ---------------------------------------------------------------- retention purge

@pytest.fixture
def aged(app, user, other_user, make_analysis):
    """An old finished analysis with media, a recent one, an old queued one, and an old one whose
    bytes a newer analysis (another user's) shares."""
    ids = {
        "old": make_analysis(user, content=jpeg_bytes(10), faces=[(5, 6, 40, 40, 0.8)], verdict="fake",
                             score=0.8),
        "old_failed": make_analysis(user, content=jpeg_bytes(11), status="failed", verdict=None,
                                    error="The image is damaged or truncated and cannot be decoded."),
        "recent": make_analysis(user, content=jpeg_bytes(12)),
        "old_queued": make_analysis(user, content=jpeg_bytes(13), status="queued", verdict=None),
        "old_shared": make_analysis(user, content=jpeg_bytes(14)),
        "new_shared": make_analysis(other_user, content=jpeg_bytes(14)),
    }
    for name in ("old", "recent", "old_shared", "new_shared"):
        add_derived_files(app, ids[name])
    for name in ("old", "old_failed", "old_queued", "old_shared"):
        age(app, ids[name], days=40)
    age(app, ids["recent"], days=5)
    return ids


def test_purge_deletes_old_media_and_face_images_but_keeps_verdicts(app, aged):
    files = {name: upload_file(app, row(app, i).stored_name) for name, i in aged.items()}
    with app.app_context():
        report = purge_media(30)
    assert sorted(report.analyses) == sorted([aged["old"], aged["old_failed"], aged["old_shared"]])
    assert report.files_deleted == 2  # the shared file stays for the newer analysis

    old = row(app, aged["old"])
    assert old.media_purged_at is not None and old.stored_name is None
    assert (old.verdict, old.score, old.status, old.sha256) == ("fake", 0.8, "done", row(app, aged["old"]).sha256)
    with app.app_context():
        face = db.session.scalar(db.select(FaceResult).filter_by(analysis_id=aged["old"]))
        frame = db.session.scalar(db.select(FrameResult).filter_by(analysis_id=aged["old"]))
        assert (face.x, face.y, face.w, face.h, face.score) == (5, 6, 40, 40, 0.8)
        assert face.crop_name is None and face.heatmap_name is None and frame.thumb_name is None
        assert not storage.derived_dir(aged["old"]).exists()
        assert not storage.derived_dir(aged["old_shared"]).exists()
        assert storage.derived_dir(aged["recent"]).exists()
        assert storage.derived_dir(aged["new_shared"]).exists()
    assert not files["old"].exists() and not files["old_failed"].exists()
    assert files["recent"].exists() and files["old_queued"].exists()
    assert files["new_shared"].exists()
    assert row(app, aged["old_failed"]).error.startswith("The image is damaged")
    assert row(app, aged["recent"]).media_purged_at is None
    assert row(app, aged["old_queued"]).media_purged_at is None

    # A second run finds nothing more to do.
    with app.app_context():
        assert purge_media(30).analyses == []


def test_purged_analysis_pages_keep_the_verdict_and_link_no_missing_file(app, client, auth, aged):
    with app.app_context():
        purge_media(30)
    auth.login()
    analysis_id = aged["old"]
    html = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "deleted on" in html and "retention" in html
    assert f"/analyses/{analysis_id}/files/" not in html and f"/analyses/{analysis_id}/original" not in html
    assert client.get(f"/analyses/{analysis_id}/original").status_code == 404
    assert client.get(f"/analyses/{analysis_id}/thumb").status_code == 404
    assert client.get(f"/analyses/{analysis_id}/files/face-000.jpg").status_code == 404
    history = client.get("/history").get_data(as_text=True)
    assert f"/analyses/{analysis_id}/thumb" not in history
    assert f"/analyses/{aged['recent']}/thumb" in history
    exported = client.get("/history/export.json").get_json()["analyses"]
    assert {a["id"]: a["verdict"] for a in exported}[analysis_id] == "fake"


def test_uploading_purged_bytes_again_shows_the_earlier_verdict_and_keeps_no_orphan(app, client, auth, aged,
                                                                                   enqueued):
    with app.app_context():
        purge_media(30)
    before = all_files(app.config["UPLOAD_FOLDER"])
    auth.login()
    response = client.post("/upload", data={"files": [(io.BytesIO(jpeg_bytes(10)), "again.jpg")]},
                           content_type="multipart/form-data")
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/analyses/{aged['old']}")
    assert enqueued == []
    assert all_files(app.config["UPLOAD_FOLDER"]) == before  # the new copy belonged to no row


def test_a_rerun_of_a_purged_analysis_fails_with_a_reason(app, aged):
    from utils.analysis import analyse

    with app.app_context():
        purge_media(30)
        analyse(aged["old"])
    purged = row(app, aged["old"])
    assert purged.status == "failed" and "removed" in purged.error


def test_purge_media_command_uses_retention_days_and_can_dry_run(app, runner, aged):
    app.config["RETENTION_DAYS"] = 0
    result = runner.invoke(args=["purge-media"])
    assert result.exit_code == 0 and "Retention is off" in result.output
    assert row(app, aged["old"]).media_purged_at is None

    app.config["RETENTION_DAYS"] = 30
    result = runner.invoke(args=["purge-media", "--dry-run"])
    assert result.exit_code == 0 and "Would purge the media of 3 analyses" in result.output
    assert row(app, aged["old"]).media_purged_at is None

    result = runner.invoke(args=["purge-media", "--days", "60"])
    assert "of 0 analyses" in result.output

    result = runner.invoke(args=["purge-media"])
    assert result.exit_code == 0 and "of 3 analyses" in result.output and "2 uploaded files deleted" in result.output
    assert row(app, aged["old"]).media_purged_at is not None


def test_purge_media_is_registered_on_the_real_cli(app):
    assert "purge-media" in app.cli.list_commands(None)


def test_an_analysis_deleted_while_it_runs_writes_no_face_images(app, user, make_analysis):
    """Account deletion does not wait for running jobs. A job whose row is deleted while it decodes
    and scores must not then write face crops and heatmaps (personal data of a deleted account).
    (Once the job stores its results it holds the row's write lock, so a deletion waits for it and
    then removes the files itself.)"""
    from PIL import Image
    from skimage import data

    from utils.analysis import analyse

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "JPEG")
    analysis_id = make_analysis(user, content=buffer.getvalue(), status="queued", verdict=None)
    deleted = []

    def delete_the_account_meanwhile(stage, fraction):
        if stage == "scoring" and fraction == 1.0:  # decoded and scored; results not stored yet
            with db.engine.begin() as conn:
                conn.execute(db.text("DELETE FROM analysis WHERE id = :id"), {"id": analysis_id})
                conn.execute(db.text('DELETE FROM "user" WHERE id = :id'), {"id": user})
            deleted.append(stage)

    with app.app_context():
        try:
            analyse(analysis_id, progress=delete_the_account_meanwhile)
        except Exception:
            pass  # the job runner logs what escapes; what matters here is what is left on disk
        assert deleted, "the pipeline never reached scoring: the test tested nothing"
        assert db.session.get(Analysis, analysis_id) is None
        assert not storage.derived_dir(analysis_id).exists(), "face images of a deleted analysis were written"
