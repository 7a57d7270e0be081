"""Accounts through the real forms, with CSRF protection ON for the whole module."""
import pytest

from conftest import PASSWORD, csrf_token_from
from extensions import db
from models import User

pytestmark = pytest.mark.csrf


def signed_in(client) -> bool:
    return client.get("/account").status_code == 200


def test_register_signs_in_and_hashes_password(app, client, auth):
    response = auth.register("New@Example.com")
    assert response.status_code == 302
    assert signed_in(client)
    with app.app_context():
        user = db.session.scalar(db.select(User).filter_by(email="new@example.com"))
        assert user is not None
        assert user.password_hash != PASSWORD and user.check_password(PASSWORD)


def test_register_refuses_taken_email_and_short_password(client, auth, user):
    response = auth.register("user@example.com")
    assert response.status_code == 400
    assert b"cannot be used to register" in response.data
    response = auth.register("short@example.com", password="abc")
    assert response.status_code == 400
    assert b"Use 8 to 128 characters." in response.data
    assert not signed_in(client)


def test_login_and_logout(client, auth, user):
    response = auth.login()
    assert response.status_code == 302
    assert signed_in(client)
    response = auth.logout()
    assert response.status_code == 302
    assert not signed_in(client)


def test_logout_needs_post_with_csrf(client, auth, user):
    auth.login()
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400  # no CSRF token: refused
    assert signed_in(client)


def test_bad_credentials_message_is_the_same_for_unknown_email_and_wrong_password(client, auth, user):
    wrong_password = auth.login("user@example.com", "not the password").get_data(as_text=True)
    unknown_email = auth.login("nobody@example.com", PASSWORD).get_data(as_text=True)
    assert "Email or password is incorrect." in wrong_password
    assert "Email or password is incorrect." in unknown_email
    assert "nobody@example.com" not in unknown_email.replace('value="nobody@example.com"', "")
    assert not signed_in(client)


def test_login_form_without_csrf_token_is_refused(client, user):
    response = client.post("/login", data={"email": "user@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert not signed_in(client)


def test_register_form_with_wrong_csrf_token_is_refused(client):
    response = client.post("/register", data={"email": "x@example.com", "password": PASSWORD,
                                              "confirm": PASSWORD, "csrf_token": "forged"})
    assert response.status_code == 400
    assert b"expired" in response.data or b"CSRF" in response.data


@pytest.mark.parametrize("target", ["/history", "/analyses/3?x=1"])
def test_next_to_a_local_path_is_followed(client, auth, user, target):
    response = auth.login(next=target)
    assert response.status_code == 302
    assert response.headers["Location"] == target


@pytest.mark.parametrize("target", [
    "//evil.example", "//evil.example/path", "https://evil.example/", "http:evil.example",
    "/\\evil.example", "\\\\evil.example", "javascript:alert(1)", "/%0d%0aevil", "evil.example",
    "///evil.example",
])
def test_next_off_site_is_refused(client, auth, user, target):
    response = auth.login(next=target)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location == "/", location


def test_password_change_ends_other_sessions_but_keeps_this_one(app, client, auth, user):
    other_device = app.test_client()
    from conftest import AuthActions

    AuthActions(other_device).login()
    auth.login()
    assert signed_in(other_device) and signed_in(client)

    token = csrf_token_from(client.get("/account").get_data(as_text=True))
    response = client.post("/account/password", data={
        "csrf_token": token, "current_password": PASSWORD,
        "new_password": "a brand new password", "confirm": "a brand new password"})
    assert response.status_code == 302
    assert signed_in(client)
    assert not signed_in(other_device)
    with app.app_context():
        refreshed = db.session.get(User, user)
        assert refreshed.session_version == 2
        assert refreshed.check_password("a brand new password")


def test_password_change_needs_the_current_password(app, client, auth, user):
    auth.login()
    token = csrf_token_from(client.get("/account").get_data(as_text=True))
    response = client.post("/account/password", data={
        "csrf_token": token, "current_password": "wrong one",
        "new_password": "a brand new password", "confirm": "a brand new password"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.get(User, user).check_password(PASSWORD)


def test_huge_password_is_refused_without_hashing(app, client, auth, user, monkeypatch):
    calls = []
    import models

    original = models.check_password_hash
    monkeypatch.setattr(models, "check_password_hash", lambda *a: calls.append(1) or original(*a))
    token = auth.csrf("/login")
    response = client.post("/login", data={"email": "user@example.com", "password": "x" * 1_000_000,
                                           "csrf_token": token})
    assert response.status_code in (400, 413)
    assert "far more text" in response.get_data(as_text=True) or "128" in response.get_data(as_text=True)
    assert calls == []
    assert not signed_in(client)

    response = auth.register("big@example.com", password="y" * 129)
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(db.select(User).filter_by(email="big@example.com")) is None


def test_cookie_of_an_unknown_or_stale_session_version_is_ignored(app, client, user):
    with client.session_transaction() as session:
        session["_user_id"] = f"{user}:99"
        session["_fresh"] = True
    assert not signed_in(client)
    with client.session_transaction() as session:
        session["_user_id"] = f"{user}:1"
    assert signed_in(client)


def test_sign_in_starts_a_fresh_session(client, auth, user):
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
    auth.login()
    with client.session_transaction() as session:
        assert "planted" not in session


def test_session_cookie_flags(client, auth, user):
    response = auth.login()
    cookie = response.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_security_headers_on_pages_and_errors(client):
    for path in ("/", "/login", "/no-such-page"):
        headers = client.get(path).headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"


def test_pages_have_no_inline_script(client, auth, user):
    auth.login()
    for path in ("/", "/upload", "/history", "/account"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>" not in html and "onclick" not in html.lower()


@pytest.mark.ratelimit
@pytest.mark.app_config(RATELIMIT_SIGNIN="3 per minute", RATELIMIT_REGISTER="2 per minute")
def test_sign_in_and_registration_are_rate_limited(app, client, auth, user):
    responses = [auth.login("user@example.com", "wrong password") for _ in range(4)]
    assert [r.status_code for r in responses] == [400, 400, 400, 429]
    page = responses[3].get_data(as_text=True)
    assert "Too many requests" in page and "3 per 1 minute" in page
    assert auth.login().status_code == 429  # even the right password waits out the window
    from conftest import AuthActions

    fresh_clients = [AuthActions(app.test_client()) for _ in range(3)]  # same address, new browsers
    statuses = [a.register(f"r{i}@example.com").status_code for i, a in enumerate(fresh_clients)]
    assert statuses == [302, 302, 429]


def test_users_create_and_ensure_admin_commands(app, runner):
    result = runner.invoke(args=["users", "create", "cli@example.com", "--admin"], input="cli password 1\n")
    assert result.exit_code == 0, result.output
    first = runner.invoke(args=["users", "ensure-admin"])
    assert first.exit_code == 0, first.output
    assert "admin@example.com /" in first.output
    password = (app.instance_path + "/admin_password.txt")
    with open(password) as fh:
        stored = fh.read().strip()
    again = runner.invoke(args=["users", "ensure-admin"])
    assert f"admin@example.com / {stored}" in again.output
    with app.app_context():
        admin = db.session.scalar(db.select(User).filter_by(email="admin@example.com"))
        assert admin.is_admin and admin.check_password(stored)
        assert db.session.scalar(db.select(User).filter_by(email="cli@example.com")).is_admin
        assert db.session.scalar(db.select(db.func.count(User.id))) == 2
    short = runner.invoke(args=["users", "create", "weak@example.com"], input="abc\n")
    assert short.exit_code != 0


def test_tokens_create_command_prints_a_working_token(app, runner, user, client):
    result = runner.invoke(args=["tokens", "create", "user@example.com"])
    assert result.exit_code == 0, result.output
    secret = result.output.strip()
    response = client.get("/api/v1/analyses", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200


def test_sign_out_all_other_devices(app, client, auth, user):
    from conftest import AuthActions

    other_device = app.test_client()
    AuthActions(other_device).login()
    auth.login()
    token = csrf_token_from(client.get("/account").get_data(as_text=True))
    assert client.post("/account/sessions/end", data={"csrf_token": token}).status_code == 302
    assert signed_in(client) and not signed_in(other_device)


def test_delete_account_removes_analyses_files_and_tokens(app, client, auth, user, other_user, make_analysis):
    from conftest import jpeg_bytes
    from models import Analysis, ApiToken
    from utils import storage

    shared = jpeg_bytes(1)
    mine_only = make_analysis(user, content=jpeg_bytes(2))
    make_analysis(user, content=shared)
    make_analysis(other_user, content=shared)
    with app.app_context():
        token, _ = ApiToken.issue(db.session.get(User, user), "t")
        db.session.add(token)
        db.session.commit()
        own_file = storage.upload_path(db.session.get(Analysis, mine_only).stored_name)
        shared_file = storage.upload_path(__import__("hashlib").sha256(shared).hexdigest())
        derived = storage.derived_dir(mine_only)
    derived.mkdir(parents=True)
    auth.login()
    token = csrf_token_from(client.get("/account").get_data(as_text=True))
    wrong = client.post("/account/delete", data={"csrf_token": token, "password": "not it"})
    assert wrong.status_code == 400 and own_file.exists()
    response = client.post("/account/delete", data={"csrf_token": token, "password": PASSWORD})
    assert response.status_code == 302
    assert not own_file.exists() and not derived.exists() and shared_file.exists()
    with app.app_context():
        assert db.session.get(User, user) is None
        assert db.session.scalars(db.select(Analysis.user_id)).all() == [other_user]
        assert db.session.scalar(db.select(db.func.count(ApiToken.id))) == 0
    assert not signed_in(client)


def test_account_page_has_a_plain_title_and_one_delete_form(client, auth, user):
    auth.login("user@example.com")
    html = client.get("/account").get_data(as_text=True)
    assert "<title>Account · Deepfake check</title>" in html
    assert html.count('id="delete-account"') == 1
