"""Shared fixtures: a fresh app per test (temp folders, empty database), clients and sign-in helpers.

Defaults: CSRF off, rate limits off, jobs run inline ("sync"). Turn CSRF on with
`@pytest.mark.csrf` (or `pytestmark = pytest.mark.csrf` in a module), rate limits with
`@pytest.mark.ratelimit`. Set TEST_DATABASE_URL to run against PostgreSQL; its tables are dropped
and created around every test.
"""
from __future__ import annotations

import io
import os
import re

import pytest

from app import create_app
from extensions import db
from models import Analysis, FaceResult, FrameResult, User

PASSWORD = "correct horse battery"


def pytest_configure(config):
    config.addinivalue_line("markers", "csrf: run this test with CSRF protection on")
    config.addinivalue_line("markers", "ratelimit: run this test with rate limits on")
    config.addinivalue_line("markers", "app_config(**settings): extra settings for this test's app")


@pytest.fixture
def app(tmp_path, request, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "test-secret-key")  # so nothing is read from or written to instance/
    instance = tmp_path / "instance"
    instance.mkdir()
    database_url = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'test.db'}"
    for prefix in ("postgres://", "postgresql://"):  # the driver we ship is psycopg 3
        if database_url.startswith(prefix):
            database_url = "postgresql+psycopg://" + database_url[len(prefix):]
    settings = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "UPLOAD_FOLDER": str(instance / "uploads"),
        "DERIVED_FOLDER": str(instance / "derived"),
        "WTF_CSRF_ENABLED": request.node.get_closest_marker("csrf") is not None,
        "RATELIMIT_ENABLED": request.node.get_closest_marker("ratelimit") is not None,
        "RATELIMIT_STORAGE_URI": "memory://",
        "JOB_RUNNER": "sync",
    }
    for marker in reversed(list(request.node.iter_markers("app_config"))):  # closest wins
        settings.update(marker.kwargs)
    app = create_app(settings)
    app.instance_path = str(instance)
    with app.app_context():
        if os.environ.get("TEST_DATABASE_URL"):
            db.drop_all()
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        if os.environ.get("TEST_DATABASE_URL"):
            db.drop_all()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def csrf_token_from(html: str) -> str | None:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html)
    return match.group(1) if match else None


class AuthActions:
    """Register / sign in / sign out through the real forms (works with CSRF on or off)."""

    def __init__(self, client):
        self.client = client

    def csrf(self, path: str = "/login") -> str | None:
        return csrf_token_from(self.client.get(path).get_data(as_text=True))

    def login(self, email: str = "user@example.com", password: str = PASSWORD, next: str | None = None,
              **extra):
        token = self.csrf("/login")
        data = {"email": email, "password": password, **extra}
        if token:
            data["csrf_token"] = token
        url = "/login" + (f"?next={next}" if next is not None else "")
        return self.client.post(url, data=data)

    def register(self, email: str = "user@example.com", password: str = PASSWORD):
        token = self.csrf("/register")
        data = {"email": email, "password": password, "confirm": password}
        if token:
            data["csrf_token"] = token
        return self.client.post("/register", data=data)

    def logout(self):
        token = self.csrf("/")
        return self.client.post("/logout", data={"csrf_token": token} if token else {})


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def make_user(app):
    """make_user(email, password=PASSWORD, admin=False) -> user id (a row created directly)."""

    def make(email: str = "user@example.com", password: str = PASSWORD, admin: bool = False) -> int:
        with app.app_context():
            user = User(email=email, is_admin=admin)
            user.set_password(password)
            db.session.add(user)
            db.session.commit()
            return user.id

    return make


@pytest.fixture
def user(make_user):
    return make_user("user@example.com")


@pytest.fixture
def other_user(make_user):
    return make_user("other@example.com")


@pytest.fixture
def admin_user(make_user):
    return make_user("admin@example.com", admin=True)


@pytest.fixture
def make_analysis(app):
    """make_analysis(user_id, **fields) -> analysis id: a finished (or any state) row without running
    the model, with optional faces=[(x, y, w, h, score)], frames=[(index, time_s, faces, score)],
    and a real file under UPLOAD_FOLDER when content= bytes are given."""
    counter = {"n": 0}

    def make(user_id: int, *, faces=(), frames=None, content: bytes | None = None, **fields) -> int:
        from utils import storage

        counter["n"] += 1
        with app.app_context():
            if content is not None:
                stored = storage.save_upload(io.BytesIO(content))
                fields.setdefault("sha256", stored.sha256)
                fields.setdefault("stored_name", stored.stored_name)
                fields.setdefault("size_bytes", stored.size_bytes)
            values = dict(kind="image", original_name=f"photo-{counter['n']}.jpg",
                          sha256=f"{counter['n']:064x}", status="done", verdict="real", score=0.1,
                          threshold=0.5, uncertain_low=0.4, uncertain_high=0.6, model_version="test-1",
                          width=640, height=480, stage="done", progress=1.0)
            values.update(fields)
            analysis = Analysis(user_id=user_id, **values)
            for x, y, w, h, score in faces:
                analysis.faces.append(FaceResult(x=x, y=y, w=w, h=h, score=score, frame_index=0))
            for index, time_s, count, score in (frames if frames is not None else [(0, 0.0, len(faces), None)]):
                analysis.frames.append(FrameResult(index=index, time_s=time_s, faces_count=count, score=score))
            analysis.faces_found = len(analysis.faces)
            db.session.add(analysis)
            db.session.commit()
            return analysis.id

    return make


@pytest.fixture
def enqueued(monkeypatch):
    """Record enqueue() calls instead of running the pipeline (web tests that need no model)."""
    calls: list[int] = []
    from utils import jobs

    monkeypatch.setattr(jobs, "enqueue", lambda analysis_id: calls.append(analysis_id))
    return calls


def jpeg_bytes(seed: int = 0, size=(64, 48), colour=None) -> bytes:
    """A small valid JPEG whose bytes differ per seed (so uploads are not duplicates)."""
    from PIL import Image

    colour = colour or ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
