"""/healthz, error pages, and what the app does when its database or model is missing."""
import json
import subprocess
import sys
import zipfile

import pytest

from app import create_app


def fake_model(tmp_path, with_card=True):
    path = tmp_path / "detector.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"")
    if with_card:
        (tmp_path / "model_card.json").write_text(json.dumps({"version": "t"}))
    return str(path)


def test_healthz_reports_database_model_and_jobs(app, client, tmp_path):
    app.config["MODEL_PATH"] = fake_model(tmp_path)
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True}
    assert body["model"]["ok"] and body["model"]["present"] and body["model"]["loadable"]
    assert body["jobs"]["ok"] and body["jobs"]["runner"] == "sync"
    assert body["jobs"]["queued"] == 0 and body["jobs"]["running"] == 0


def test_healthz_counts_queued_work(app, client, tmp_path, user, make_analysis):
    app.config["MODEL_PATH"] = fake_model(tmp_path)
    make_analysis(user, status="queued", verdict=None)
    make_analysis(user, status="running", verdict=None)
    body = client.get("/healthz").get_json()
    assert body["jobs"]["queued"] == 1 and body["jobs"]["running"] == 1


@pytest.mark.parametrize("problem", ["missing", "corrupt", "no card"])
def test_healthz_is_unhealthy_without_a_usable_model(app, client, tmp_path, problem):
    if problem == "missing":
        app.config["MODEL_PATH"] = str(tmp_path / "nope.keras")
    elif problem == "corrupt":
        (tmp_path / "detector.keras").write_bytes(b"not a zip")
        (tmp_path / "model_card.json").write_text("{}")
        app.config["MODEL_PATH"] = str(tmp_path / "detector.keras")
    else:
        app.config["MODEL_PATH"] = fake_model(tmp_path, with_card=False)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy" and body["model"]["ok"] is False and body["model"]["error"]
    assert body["database"]["ok"] is True
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_healthz_does_not_import_tensorflow():
    code = (
        "import sys, os; os.environ['SECRET_KEY']='x'; from app import create_app;"
        "app = create_app({'TESTING': True, 'SQLALCHEMY_DATABASE_URI': 'sqlite://', 'JOB_RUNNER': 'sync'});"
        "r = app.test_client().get('/healthz'); print(r.status_code, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    assert out.returncode == 0, out.stderr
    status, tf_loaded = out.stdout.split()[-2:]
    assert tf_loaded == "False"


@pytest.fixture
def app_without_database(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "x")
    app = create_app({"TESTING": True, "JOB_RUNNER": "sync", "WTF_CSRF_ENABLED": False,
                      "RATELIMIT_ENABLED": False,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/missing-dir/db.sqlite"})
    return app


def test_database_down_gives_503_page_not_a_crash(app_without_database):
    client = app_without_database.test_client()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["database"]["ok"] is False
    response = client.post("/login", data={"email": "a@example.com", "password": "whatever123"})
    assert response.status_code == 503
    assert "cannot reach its database" in response.get_data(as_text=True)
    with client.session_transaction() as session:
        session["_user_id"] = "1:1"  # a signed-in visitor: loading the user fails too
    response = client.get("/history")
    assert response.status_code == 503
    assert client.get("/api/v1/analyses", headers={"Authorization": "Bearer x"}).status_code == 503


def test_error_pages(app, client):
    def boom():
        raise RuntimeError("secret internal detail")

    app.add_url_rule("/boom", "boom", boom)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get("/no/such/page")
    assert response.status_code == 404 and "Not found" in response.get_data(as_text=True)
    assert client.post("/healthz").status_code == 405
    response = client.get("/boom")
    assert response.status_code == 500
    html = response.get_data(as_text=True)
    assert "Something broke" in html and "secret internal detail" not in html


def test_home_page_for_visitors_and_users(client, auth, user, make_analysis):
    html = client.get("/").get_data(as_text=True)
    assert "Create an account" in html and 'name="viewport"' in html
    make_analysis(user, original_name="latest.jpg")
    auth.login()
    html = client.get("/").get_data(as_text=True)
    assert "latest.jpg" in html and "Sign out" in html
