"""Sessions, cookies, CSRF, security headers, password limits and rate-limit pages, checked across
every route the app has (enumerated from app.url_map, so new routes are covered without edits).
test_auth.py holds the per-form basics; this module holds what must hold everywhere. CSRF is on."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from werkzeug.routing import AnyConverter, IntegerConverter

from app import create_app
from conftest import PASSWORD, AuthActions, csrf_token_from, jpeg_bytes
from extensions import db
from models import ApiToken, User

pytestmark = pytest.mark.csrf

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def assert_security_headers(response, what: str) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, f"{what}: CSP {csp!r}"
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, what
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, f"{what}: {name}={response.headers.get(name)!r}"


def signed_in(client) -> bool:
    return client.get("/history").status_code == 200


def database_rows() -> dict:
    """Every row of every table, to prove a refused request changed nothing."""
    return {table.name: sorted(map(tuple, db.session.execute(table.select()).all()), key=repr)
            for table in db.metadata.sorted_tables}


def files_under(folder: str) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def owner(app, user, make_analysis):
    """The signed-in user's own analysis (with a file and a thumbnail) and own API token."""
    analysis = make_analysis(user, content=jpeg_bytes(5), verdict="fake", flagged=True, flag_reason="auto",
                             faces=[(1, 1, 20, 20, 0.9)])
    with app.app_context():
        from models import Analysis
        from utils import storage

        row = db.session.get(Analysis, analysis)
        folder = storage.derived_dir(analysis)
        folder.mkdir(parents=True)
        (folder / "frame-000.jpg").write_bytes(jpeg_bytes(6))
        row.frames[0].thumb_name = "frame-000.jpg"
        token, secret = ApiToken.issue(db.session.get(User, user), "cli")
        db.session.add(token)
        db.session.commit()
        return {"analysis_id": analysis, "token_id": token.id, "secret": secret}


def url_for_rule(rule, ids: dict) -> str:
    """A concrete URL for a rule: the caller's own ids for integer parts, a placeholder otherwise."""
    values = {}
    for name in rule.arguments:
        converter = rule._converters[name]
        if isinstance(converter, IntegerConverter):
            values[name] = ids.get(name, 1)
        elif isinstance(converter, AnyConverter):
            values[name] = sorted(converter.items)[0]
        elif name == "filename":
            values[name] = "style.css"
        elif name == "name":
            values[name] = "frame-000.jpg"
        else:
            values[name] = "x"
    return rule.build(values, append_unknown=False)[1]


# ---------------------------------------------------------------- cookies and sessions

def test_production_cookies_are_secure_httponly_lax_and_pages_send_hsts(tmp_path, monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "production-test-key")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'prod.db'}")
    app = create_app({"TESTING": True, "JOB_RUNNER": "sync", "RATELIMIT_ENABLED": False,
                      "UPLOAD_FOLDER": str(tmp_path / "up"), "DERIVED_FOLDER": str(tmp_path / "dv")})
    assert app.config["SESSION_COOKIE_SECURE"] and app.config["REMEMBER_COOKIE_SECURE"]
    with app.app_context():
        db.create_all()
        user = User(email="user@example.com")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    page = client.get("/login", base_url="https://localhost")
    # Over HTTPS, Flask-WTF also wants a same-origin Referer (a second CSRF check).
    response = client.post("/login", base_url="https://localhost", headers={"Referer": "https://localhost/login"},
                           data={"email": "user@example.com", "password": PASSWORD, "remember": "y",
                                 "csrf_token": csrf_token_from(page.get_data(as_text=True))})
    assert response.status_code == 302
    cookies = {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}
    assert set(cookies) >= {"session", "remember_token"}
    for name, cookie in cookies.items():
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie, cookie
    assert "max-age=" in response.headers["Strict-Transport-Security"]
    with app.app_context():
        db.engine.dispose()


def test_development_cookies_are_httponly_and_lax_but_not_secure(client, auth, user):
    response = auth.login(remember="y")
    for cookie in response.headers.getlist("Set-Cookie"):
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "Strict-Transport-Security" not in response.headers


def test_a_session_cookie_from_before_sign_in_stays_anonymous_after_it(app, client, auth, user):
    """Session fixation: a cookie planted before the victim signs in never becomes theirs."""
    client.get("/login")
    planted = client.get_cookie("session").value
    auth.login()
    assert client.get_cookie("session").value != planted
    attacker = app.test_client()
    attacker.set_cookie("session", planted)
    assert not signed_in(attacker)
    assert signed_in(client)


def test_a_copied_cookie_is_useless_after_sign_out(app, client, auth, user):
    auth.login(remember="y")
    stolen = {name: client.get_cookie(name).value for name in ("session", "remember_token")}
    assert auth.logout().status_code == 302
    assert not signed_in(client)
    for name, value in stolen.items():
        thief = app.test_client()
        thief.set_cookie(name, value)
        assert not signed_in(thief), f"the {name} cookie still works after sign-out"


def test_a_copied_cookie_is_useless_after_a_password_change(app, client, auth, user):
    auth.login(remember="y")
    stolen = {name: client.get_cookie(name).value for name in ("session", "remember_token")}
    response = client.post("/account/password", data={
        "current_password": PASSWORD, "new_password": "a brand new passphrase",
        "confirm": "a brand new passphrase", "csrf_token": auth.csrf("/account")})
    assert response.status_code == 302
    assert signed_in(client)  # the device that changed it stays in, with a new cookie
    for name, value in stolen.items():
        thief = app.test_client()
        thief.set_cookie(name, value)
        assert not signed_in(thief), f"the old {name} cookie still works after the password change"


# ---------------------------------------------------------------- CSRF

def state_changing_routes(app):
    """Every POST/PUT/PATCH/DELETE route outside the token-only API."""
    for rule in app.url_map.iter_rules():
        methods = rule.methods & {"POST", "PUT", "PATCH", "DELETE"}
        if methods and not rule.endpoint.startswith("api."):
            yield rule, sorted(methods)


def test_every_state_changing_route_refuses_a_request_without_a_csrf_token(app, client, auth, user, owner):
    auth.login()
    ids = {"analysis_id": owner["analysis_id"], "token_id": owner["token_id"]}
    routes = list(state_changing_routes(app))
    assert len(routes) >= 10  # sanity: the enumeration found the app's forms
    checked = []
    for rule, methods in routes:
        url = url_for_rule(rule, ids)
        for method in methods:
            with app.app_context():
                before = database_rows()
            files_before = files_under(app.config["UPLOAD_FOLDER"])
            response = client.open(url, method=method, data={
                "password": PASSWORD, "current_password": PASSWORD, "new_password": "x" * 20,
                "confirm": "x" * 20, "name": "t", "reason": "wrong verdict", "decision": "fake"})
            assert response.status_code == 400, f"{method} {url} without a CSRF token: {response.status_code}"
            with app.app_context():
                assert database_rows() == before, f"{method} {url} changed the database without a CSRF token"
            assert files_under(app.config["UPLOAD_FOLDER"]) == files_before
            checked.append(f"{method} {url}")
    assert signed_in(client)
    # The same with a token from another session (the attacker's own page).
    attacker = AuthActions(app.test_client())
    foreign_token = attacker.csrf("/login")
    response = client.post(f"/analyses/{owner['analysis_id']}/delete", data={"csrf_token": foreign_token})
    assert response.status_code == 400


def test_csrf_refusal_is_a_clear_page(client, auth, user):
    auth.login()
    response = client.post("/account/tokens", data={"name": "x"})
    assert response.status_code == 400
    assert "expired or was sent from another site" in response.get_data(as_text=True)


def test_every_form_on_every_page_carries_a_csrf_token(app, client, auth, user, owner, make_user):
    make_user("admin@example.com", admin=True)
    pages = ["/", "/upload", "/history", "/account", f"/analyses/{owner['analysis_id']}"]
    for who, extra in (("user@example.com", []), ("admin@example.com", ["/admin/",
                                                                        f"/admin/analyses/{owner['analysis_id']}"])):
        auth.login(who)
        forms_seen = 0
        for path in pages + extra:
            html = client.get(path).get_data(as_text=True)
            for form in re.findall(r"<form\b[^>]*>.*?</form>", html, flags=re.S | re.I):
                if re.search(r'method="post"', form, re.I):
                    forms_seen += 1
                    assert 'name="csrf_token"' in form, f"{path}: a POST form without a CSRF token"
        assert forms_seen >= 3
        auth.logout()
    for path in ("/login", "/register"):
        html = client.get(path).get_data(as_text=True)
        assert 'name="csrf_token"' in html


def test_the_json_api_uses_tokens_and_never_sets_or_reads_cookies(app, client, auth, user, owner):
    headers = {"Authorization": f"Bearer {owner['secret']}"}
    fresh = app.test_client()
    for path in ("/api/v1/analyses", f"/api/v1/analyses/{owner['analysis_id']}"):
        response = fresh.get(path, headers=headers)
        assert response.status_code == 200 and response.headers.getlist("Set-Cookie") == []
    auth.login()  # a signed-in browser: its cookie alone opens nothing in the API
    assert client.get("/api/v1/analyses").status_code == 401


# ---------------------------------------------------------------- headers on every response

def test_security_headers_on_every_route_and_every_error(app, client, auth, user, owner):
    auth.login()
    ids = {"analysis_id": owner["analysis_id"], "token_id": owner["token_id"]}
    seen = 0
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods:
            continue
        url = url_for_rule(rule, ids)
        assert_security_headers(client.get(url), f"GET {url}")
        seen += 1
    assert seen >= 15
    anonymous = app.test_client()
    for response, what in (
        (anonymous.get("/no/such/page"), "404"),
        (anonymous.post("/healthz"), "405"),
        (anonymous.get("/history"), "302 to sign-in"),
        (anonymous.get("/api/v1/analyses"), "API 401"),
        (anonymous.post("/login", data={}), "CSRF 400"),
        (anonymous.get("/static/style.css"), "static file"),
        (client.get(f"/analyses/{owner['analysis_id']}/original"), "original download"),
        (client.get(f"/analyses/{owner['analysis_id']}/thumb"), "thumbnail"),
    ):
        assert_security_headers(response, what)


def test_security_headers_on_500_and_503(app, client, tmp_path, monkeypatch):
    def boom():
        raise RuntimeError("detail")

    app.add_url_rule("/boom", "boom", boom)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert_security_headers(client.get("/boom"), "500")
    monkeypatch.setenv("SECRET_KEY", "x")
    broken = create_app({"TESTING": True, "JOB_RUNNER": "sync", "RATELIMIT_ENABLED": False,
                         "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/missing/db.sqlite"})
    response = broken.test_client().get("/history")
    assert response.status_code in (302, 503)
    response = broken.test_client().post("/login", data={"email": "a@example.com", "password": "p"})
    assert_security_headers(response, "503")


# ---------------------------------------------------------------- passwords

@pytest.mark.parametrize("path, fields", [
    ("/register", ("password", "confirm")),
    ("/account/password", ("current_password", "new_password", "confirm")),
    ("/account/delete", ("password",)),
])
def test_a_megabyte_password_is_refused_fast_everywhere(app, client, auth, user, monkeypatch, path, fields):
    hashed = []
    for module in ("models", "blueprints.auth.routes"):
        mod = __import__(module, fromlist=["x"])
        for name in ("generate_password_hash", "check_password_hash"):
            if hasattr(mod, name):
                original = getattr(mod, name)
                monkeypatch.setattr(mod, name, lambda *a, _o=original, **k: hashed.append(1) or _o(*a, **k))
    if path != "/register":
        auth.login()
        hashed.clear()
    token = auth.csrf("/account" if path != "/register" else "/register")
    data = {"email": "new@example.com", "csrf_token": token, **{f: "p" * 1_000_000 for f in fields}}
    started = time.perf_counter()
    response = client.post(path, data=data)
    elapsed = time.perf_counter() - started
    assert response.status_code in (400, 413)
    assert elapsed < 1.0, f"{elapsed:.2f} s to refuse a 1 MB password"
    assert hashed == [], "a 1 MB password reached the password hash"


def test_password_length_is_bounded_both_ways_on_register_and_change(app, client, auth, user):
    assert auth.register("short@example.com", "7chars!").status_code == 400
    assert auth.register("long@example.com", "p" * 129).status_code == 400
    assert auth.register("max@example.com", "p" * 128).status_code == 302
    auth.logout()
    auth.login()
    token = auth.csrf("/account")
    for new, status in (("s" * 7, 400), ("l" * 129, 400), ("m" * 8, 302)):
        response = client.post("/account/password", data={"current_password": PASSWORD, "new_password": new,
                                                          "confirm": new, "csrf_token": token})
        assert response.status_code == status, new[:3]
    with app.app_context():
        assert db.session.get(User, user).check_password("m" * 8)
        emails = set(db.session.scalars(db.select(User.email)))
    assert "max@example.com" in emails and not emails & {"short@example.com", "long@example.com"}


# ---------------------------------------------------------------- rate limits

@pytest.mark.ratelimit
@pytest.mark.app_config(RATELIMIT_SIGNIN="2 per minute")
def test_password_change_and_account_deletion_are_rate_limited_with_a_clear_page(app, client, auth, user):
    auth.login()
    token = auth.csrf("/account")
    statuses = [client.post("/account/password", data={"current_password": "wrong-guess", "new_password": "x" * 10,
                                                       "confirm": "x" * 10, "csrf_token": token}).status_code
                for _ in range(3)]
    assert statuses == [400, 400, 429]
    response = client.post("/account/password", data={"csrf_token": token})
    page = response.get_data(as_text=True)
    assert response.status_code == 429 and "Too many requests" in page and "2 per 1 minute" in page
    assert int(response.headers["Retry-After"]) > 0
    assert response.mimetype == "text/html"
    assert_security_headers(response, "429")
    deletes = [client.post("/account/delete", data={"password": "guess", "csrf_token": token}).status_code
               for _ in range(3)]
    assert deletes == [400, 400, 429]
    with app.app_context():
        assert db.session.get(User, user) is not None


@pytest.mark.ratelimit
@pytest.mark.app_config(RATELIMIT_API="2 per minute")
def test_api_rate_limit_is_a_json_429(app, client, user, owner):
    headers = {"Authorization": f"Bearer {owner['secret']}"}
    statuses = [client.get("/api/v1/analyses", headers=headers) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    body = statuses[2].get_json()
    assert body["status"] == 429 and "2 per 1 minute" in body["message"]
