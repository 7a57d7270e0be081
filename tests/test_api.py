"""JSON API: bearer tokens only, 202 on upload, own data only, JSON errors, revoked tokens refused."""
import io
import re

import pytest

from conftest import AuthActions, jpeg_bytes
from extensions import db
from models import Analysis, ApiToken, User, utcnow


def issue_token(app, user_id: int, name: str = "test") -> str:
    with app.app_context():
        token, secret = ApiToken.issue(db.session.get(User, user_id), name)
        db.session.add(token)
        db.session.commit()
        return secret


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def post_file(client, secret, content, filename="x.jpg"):
    return client.post("/api/v1/analyses", headers=bearer(secret),
                       data={"file": (io.BytesIO(content), filename)}, content_type="multipart/form-data")


def test_upload_returns_202_with_id_and_url(app, client, user, enqueued):
    secret = issue_token(app, user)
    response = post_file(client, secret, jpeg_bytes(1), "../evil/name.jpg")
    assert response.status_code == 202
    body = response.get_json()
    assert body["url"] == f"http://localhost/api/v1/analyses/{body['id']}"
    assert response.headers["Location"] == body["url"]
    assert body["duplicate"] is False and enqueued == [body["id"]]
    with app.app_context():
        analysis = db.session.get(Analysis, body["id"])
        assert analysis.user_id == user and analysis.original_name == "name.jpg"


def test_duplicate_upload_answers_the_existing_id(app, client, user, enqueued):
    secret = issue_token(app, user)
    first = post_file(client, secret, jpeg_bytes(2)).get_json()
    second = post_file(client, secret, jpeg_bytes(2))
    assert second.status_code == 200
    assert second.get_json()["id"] == first["id"] and second.get_json()["duplicate"] is True
    assert len(enqueued) == 1


def test_bad_uploads_are_json_errors(app, client, user, enqueued):
    secret = issue_token(app, user)
    missing = client.post("/api/v1/analyses", headers=bearer(secret), data={},
                          content_type="multipart/form-data")
    assert missing.status_code == 400 and "'file'" in missing.get_json()["message"]
    not_media = post_file(client, secret, b"#!/bin/sh\necho hi\n", "x.jpg")
    assert not_media.status_code == 422
    assert not_media.get_json()["error"] == "unsupported_media" and not_media.get_json()["message"]
    assert enqueued == []


@pytest.mark.app_config(MAX_CONTENT_LENGTH=1000)
def test_too_large_is_a_json_413(app, client, user, enqueued):
    response = post_file(client, issue_token(app, user), b"\xff\xd8\xff" + b"0" * 5000)
    assert response.status_code == 413
    assert response.is_json and "limit" in response.get_json()["message"]


def test_get_analysis_returns_the_result(app, client, user, make_analysis):
    analysis_id = make_analysis(user, verdict="fake", score=0.87, threshold=0.5, model_version="m-1",
                                faces=[(5, 6, 7, 8, 0.87)], frames=[(0, 0.0, 1, 0.87)])
    body = client.get(f"/api/v1/analyses/{analysis_id}", headers=bearer(issue_token(app, user))).get_json()
    assert body["status"] == "done" and body["verdict"] == "fake" and body["score"] == 0.87
    assert body["threshold"] == 0.5 and body["model_version"] == "m-1" and body["error"] is None
    assert body["faces"] == [{"frame": 0, "person": 0, "box": [5, 6, 7, 8], "score": 0.87}]
    assert body["frames"] == [{"index": 0, "time_s": 0.0, "faces": 1, "score": 0.87}]


def test_token_of_user_a_cannot_read_user_b(app, client, user, other_user, make_analysis):
    theirs = make_analysis(other_user)
    response = client.get(f"/api/v1/analyses/{theirs}", headers=bearer(issue_token(app, user)))
    assert response.status_code == 404 and response.is_json
    listing = client.get("/api/v1/analyses", headers=bearer(issue_token(app, user))).get_json()
    assert listing["items"] == [] and listing["total"] == 0


def test_list_is_own_newest_first_and_paginated(app, client, user, other_user, make_analysis):
    from datetime import timedelta

    now = utcnow()
    ids = [make_analysis(user, created_at=now + timedelta(minutes=i)) for i in range(3)]
    make_analysis(other_user)
    secret = issue_token(app, user)
    page1 = client.get("/api/v1/analyses?per_page=2", headers=bearer(secret)).get_json()
    assert [i["id"] for i in page1["items"]] == [ids[2], ids[1]]
    assert page1["total"] == 3 and page1["pages"] == 2 and "page=2" in page1["next"]
    page2 = client.get("/api/v1/analyses?per_page=2&page=2", headers=bearer(secret)).get_json()
    assert [i["id"] for i in page2["items"]] == [ids[0]] and page2["next"] is None


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not-a-token", "Basic dXNlcjpwdw=="])
def test_missing_or_bad_token_is_401_json(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/analyses", headers=headers)
    assert response.status_code == 401 and response.is_json
    assert response.get_json()["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_is_refused(app, client, auth, user):
    secret = issue_token(app, user)
    assert client.get("/api/v1/analyses", headers=bearer(secret)).status_code == 200
    auth.login()
    with app.app_context():
        token_id = db.session.scalar(db.select(ApiToken.id))
    assert client.post(f"/account/tokens/{token_id}/revoke").status_code == 302
    response = client.get("/api/v1/analyses", headers=bearer(secret))
    assert response.status_code == 401 and "revoked" in response.get_json()["message"]


def test_session_cookie_does_not_authenticate_the_api(client, auth, user):
    auth.login()
    assert client.get("/account").status_code == 200
    assert client.get("/api/v1/analyses").status_code == 401


def test_account_page_creates_a_token_shown_once(app, client, auth, user):
    auth.login()
    response = client.post("/account/tokens", data={"name": "my script"})
    assert response.status_code == 201
    secret = re.search(r'<code class="token" id="new-token">([^<]+)</code>', response.get_data(as_text=True)).group(1)
    assert client.get("/api/v1/analyses", headers=bearer(secret)).status_code == 200
    assert secret not in client.get("/account").get_data(as_text=True)
    with app.app_context():
        token = db.session.scalar(db.select(ApiToken))
        assert token.token_hash == ApiToken.hash(secret) != secret  # only the hash is stored
        assert token.last_used_at is not None


def test_cannot_revoke_another_users_token(app, client, auth, user, other_user):
    issue_token(app, other_user)
    auth.login()
    with app.app_context():
        token_id = db.session.scalar(db.select(ApiToken.id))
    assert client.post(f"/account/tokens/{token_id}/revoke").status_code == 404
    with app.app_context():
        assert db.session.get(ApiToken, token_id).revoked_at is None


@pytest.mark.csrf
def test_api_needs_no_csrf_token(app, client, user, enqueued):
    response = post_file(client, issue_token(app, user), jpeg_bytes(3))
    assert response.status_code == 202


def test_unknown_api_paths_answer_json(client):
    response = client.get("/api/v1/nothing")
    assert response.status_code == 404 and response.is_json


@pytest.mark.ratelimit
@pytest.mark.app_config(RATELIMIT_API="3 per minute")
def test_api_is_rate_limited_per_token(app, client, user, other_user):
    mine, theirs = issue_token(app, user), issue_token(app, other_user)
    statuses = [client.get("/api/v1/analyses", headers=bearer(mine)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/api/v1/analyses", headers=bearer(mine))
    assert limited.is_json and "limit" in limited.get_json()["message"]
    assert client.get("/api/v1/analyses", headers=bearer(theirs)).status_code == 200
