"""Uploading through the HTML form: storage by content hash, type by content, duplicates, refusals."""
import io
import os
from pathlib import Path

import pytest

from conftest import jpeg_bytes
from extensions import db
from models import Analysis


def upload(client, *files, name="files"):
    """POST files given as (bytes, filename) pairs."""
    data = {name: [(io.BytesIO(content), filename) for content, filename in files]}
    return client.post("/upload", data=data, content_type="multipart/form-data")


def stored_files(app) -> list[Path]:
    root = Path(app.config["UPLOAD_FOLDER"])
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def rows(app) -> list[Analysis]:
    with app.app_context():
        return db.session.scalars(db.select(Analysis).order_by(Analysis.id)).all()


def test_anonymous_upload_redirects_to_sign_in(client, app):
    response = client.get("/upload")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")
    response = upload(client, (jpeg_bytes(), "a.jpg"))
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert rows(app) == [] and stored_files(app) == []


def test_upload_form_page(client, auth, user):
    auth.login()
    html = client.get("/upload").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html and "multiple" in html
    assert "200 MB" in html


def test_upload_stores_by_content_hash_and_queues(client, auth, user, app, enqueued):
    auth.login()
    content = jpeg_bytes(1)
    response = upload(client, (content, "../../etc/holiday <img src=x onerror=alert(1)>.jpg"))
    assert response.status_code == 302
    [analysis] = rows(app)
    assert response.headers["Location"] == f"/analyses/{analysis.id}"
    assert enqueued == [analysis.id]
    assert analysis.status == "queued" and analysis.kind == "image"
    assert analysis.original_name == "holiday <img src=x onerror=alert(1)>.jpg"
    [path] = stored_files(app)
    import hashlib

    assert path.name == hashlib.sha256(content).hexdigest() == analysis.stored_name
    assert path.read_bytes() == content
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "holiday &lt;img src=x onerror=alert(1)&gt;.jpg" in page and "<img src=x" not in page


def test_type_is_decided_by_content_not_name(client, auth, user, app, enqueued):
    auth.login()
    upload(client, (jpeg_bytes(2), "clip.mp4"))
    assert rows(app)[0].kind == "image"
    response = upload(client, (b"<html><script>alert(1)</script></html>", "photo.jpg"))
    assert response.status_code == 400
    assert "was not accepted" in response.get_data(as_text=True)
    assert len(rows(app)) == 1 and len(stored_files(app)) == 1 and enqueued == [rows(app)[0].id]


def test_video_content_is_recognised(client, auth, user, app, enqueued):
    auth.login()
    fake_mp4_header = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64
    upload(client, (fake_mp4_header, "video.bin"))
    assert rows(app)[0].kind == "video"


def test_empty_file_is_refused_and_leaves_nothing(client, auth, user, app, enqueued):
    auth.login()
    response = upload(client, (b"", "empty.jpg"))
    assert response.status_code == 400
    assert "empty" in response.get_data(as_text=True)
    assert rows(app) == [] and stored_files(app) == [] and enqueued == []


def test_no_file_chosen(client, auth, user, app):
    auth.login()
    response = client.post("/upload", data={}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "Choose at least one" in response.get_data(as_text=True)


def test_several_files_in_one_form(client, auth, user, app, enqueued):
    auth.login()
    response = upload(client, (jpeg_bytes(3), "one.jpg"), (jpeg_bytes(4), "two.png"),
                      (b"not media at all", "three.jpg"))
    assert response.status_code == 302 and response.headers["Location"] == "/history"
    names = sorted(a.original_name for a in rows(app))
    assert names == ["one.jpg", "two.png"]
    assert len(stored_files(app)) == 2 and len(enqueued) == 2
    history = client.get("/history").get_data(as_text=True)
    assert "“three.jpg” was not accepted" in history


def test_duplicate_upload_goes_to_the_existing_analysis(client, auth, user, app, enqueued):
    auth.login()
    content = jpeg_bytes(5)
    first = upload(client, (content, "first.jpg"))
    second = upload(client, (content, "renamed copy.jpg"))
    assert second.status_code == 302
    assert second.headers["Location"] == first.headers["Location"]
    assert len(rows(app)) == 1 and rows(app)[0].original_name == "first.jpg"
    assert len(stored_files(app)) == 1 and len(enqueued) == 1
    page = client.get(second.headers["Location"]).get_data(as_text=True)
    assert "already analysed" in page


def test_same_bytes_from_two_users_share_one_file(client, auth, user, other_user, app, enqueued):
    content = jpeg_bytes(6)
    auth.login()
    upload(client, (content, "mine.jpg"))
    auth.logout()
    auth.login("other@example.com")
    upload(client, (content, "theirs.jpg"))
    assert [a.user_id for a in rows(app)] == [user, other_user]
    assert len(stored_files(app)) == 1


def test_refused_bytes_do_not_delete_another_users_file(client, auth, user, other_user, app, make_analysis,
                                                        enqueued):
    # The other user's analysis refers to these bytes (even if they were stored before type checks).
    content = b"plain text that is not media"
    make_analysis(other_user, content=content)
    auth.login()
    response = upload(client, (content, "x.jpg"))
    assert response.status_code == 400
    assert len(stored_files(app)) == 1 and len(rows(app)) == 1


@pytest.mark.app_config(MAX_CONTENT_LENGTH=1024 * 1024)
def test_too_large_upload_answers_413_naming_the_limit(client, auth, user, app, enqueued):
    auth.login()
    response = upload(client, (b"\xff\xd8\xff" + os.urandom(1024 * 1024 + 10), "big.jpg"))
    assert response.status_code == 413
    assert "limit of 1 MB" in response.get_data(as_text=True)
    assert rows(app) == [] and stored_files(app) == []


def test_rejected_upload_leaves_no_temp_file(client, auth, user, app, enqueued):
    auth.login()
    upload(client, (b"\x00\x01garbage", "x.gif"))
    root = Path(app.config["UPLOAD_FOLDER"])
    assert [p for p in root.rglob("*") if p.is_file()] == []


@pytest.mark.ratelimit
@pytest.mark.app_config(RATELIMIT_UPLOAD="2 per minute")
def test_uploads_are_rate_limited(client, auth, user, app, enqueued):
    auth.login()
    statuses = [upload(client, (jpeg_bytes(10 + i), f"{i}.jpg")).status_code for i in range(3)]
    assert statuses == [302, 302, 429]
    assert len(rows(app)) == 2


MODEL_PATH = Path(__file__).resolve().parent.parent / "utils" / "weights" / "detector.keras"


@pytest.mark.skipif(not MODEL_PATH.exists(), reason="needs the trained model (utils/weights/detector.keras)")
@pytest.mark.parametrize("picture, expected", [("astronaut", "face"), ("grey", "no_face")])
def test_real_upload_end_to_end(client, auth, user, app, picture, expected):
    """The whole journey with the shipped model: form -> storage -> job (inline) -> result page."""
    import numpy as np
    from PIL import Image

    if picture == "astronaut":
        from skimage import data

        image = Image.fromarray(data.astronaut())
    else:
        image = Image.fromarray(np.full((240, 320, 3), 128, np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    app.config["MODEL_PATH"] = str(MODEL_PATH)
    auth.login()
    response = upload(client, (buffer.getvalue(), f"{picture}.jpg"))
    assert response.status_code == 302
    [analysis] = rows(app)
    assert analysis.status == "done", analysis.error
    assert analysis.model_version and analysis.threshold is not None
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    if expected == "no_face":
        assert analysis.verdict == "no_face" and analysis.faces_found == 0 and analysis.score is None
        assert "No face found" in page
    else:
        assert analysis.verdict in ("real", "fake", "uncertain") and analysis.faces_found >= 1
        assert 0.0 <= analysis.score <= 1.0
        assert '<rect class="box' in page
        thumb = client.get(f"/analyses/{analysis.id}/thumb")
        assert thumb.status_code == 200 and thumb.data[:2] == b"\xff\xd8"
    status = client.get(f"/analyses/{analysis.id}/status").get_json()
    assert status["status"] == "done" and status["verdict"] == analysis.verdict
