"""Shared helpers for the job and scale-out tests: real services (or a clear skip), a fresh
database per test (a SQLite file, or its own PostgreSQL schema), apps wired to a runner, and
worker / gunicorn subprocesses."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))


def services_required() -> bool:
    """REQUIRE_SERVICES=1 (set by CI) turns 'server unreachable' skips into failures."""
    return os.environ.get("REQUIRE_SERVICES", "").strip().lower() in {"1", "true", "yes", "on"}


def skip_or_fail(reason: str):
    if services_required():
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1, so this must run)", pytrace=False)
    pytest.skip(reason)


def redis_url() -> str:
    """A Redis URL on the test DB number, or skip/fail with the reason it is unreachable."""
    from redis import Redis
    from redis.exceptions import RedisError

    url = f"{REDIS_BASE.rstrip('/')}/{REDIS_DB}"
    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except RedisError as exc:
        skip_or_fail(f"Redis is not reachable at {url}: {exc}")
    return url


def postgres_reachable(url: str = PG_URL) -> str | None:
    """None when PostgreSQL answers, else why not."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL is not reachable at {url}: {exc.__class__.__name__}: {exc}"


def wanted_database() -> str:
    """JOBS_TEST_DATABASE (sqlite | postgresql) picks the store the job tests share with their
    worker processes; default: TEST_DATABASE_URL's engine, else SQLite."""
    choice = os.environ.get("JOBS_TEST_DATABASE")
    if choice:
        return choice
    return "postgresql" if os.environ.get("TEST_DATABASE_URL", "").startswith("postgres") else "sqlite"


class ScratchDatabase:
    """A database nobody else uses: a SQLite file in tmp, or a new PostgreSQL schema (dropped after)."""

    def __init__(self, tmp_path: Path, engine: str):
        self.engine = engine
        self.schema = None
        if engine == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'jobs.db'}"
            return
        base = os.environ.get("TEST_DATABASE_URL") or PG_URL
        base = base.replace("postgresql://", "postgresql+psycopg://", 1) if base.startswith("postgresql://") else base
        reason = postgres_reachable(base)
        if reason:
            skip_or_fail(reason)
        self.base = base
        self.schema = f"jobs_{uuid.uuid4().hex[:10]}"
        self._execute(f'CREATE SCHEMA "{self.schema}"')
        sep = "&" if "?" in base else "?"
        self.url = f"{base}{sep}options={quote(f'-csearch_path={self.schema}')}"

    def _execute(self, sql: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.base)
        with engine.begin() as conn:
            conn.execute(text(sql))
        engine.dispose()

    def drop(self) -> None:
        if self.schema:
            self._execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def make_app(db_url: str, tmp_path: Path, **config):
    """An app on db_url with its tables created; config overrides the job settings."""
    from app import create_app
    from extensions import db

    settings = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": db_url,
        "UPLOAD_FOLDER": str(tmp_path / "uploads"),
        "DERIVED_FOLDER": str(tmp_path / "derived"),
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "REDIS_URL": "",
        "JOB_RECOVER_ON_START": False,
        "JOB_LEASE_SECONDS": 2,
        "JOB_HEARTBEAT_SECONDS": 0.3,
        "JOB_SWEEP_SECONDS": 0.5,
        "JOB_TIMEOUT": 30,
        "JOB_TIMEOUT_GRACE": 2,
        "JOB_TARGET": "tests.job_targets:staged",
    }
    settings.update(config)
    app = create_app(settings)
    with app.app_context():
        db.create_all()
    return app


def add_user(app, email: str = "owner@example.com") -> int:
    from extensions import db
    from models import User

    with app.app_context():
        user = User(email=email)
        user.set_password("correct horse battery staple")
        db.session.add(user)
        db.session.commit()
        return user.id


def add_queued(app, user_id: int, n: int = 1, **values) -> list[int]:
    """Analysis rows as the upload code leaves them: committed and queued."""
    from extensions import db
    from models import Analysis

    ids = []
    with app.app_context():
        for _ in range(n):
            row = Analysis(user_id=user_id, kind="image", original_name="face.jpg",
                           sha256=uuid.uuid4().hex * 2, stored_name=None, status="queued",
                           stage="queued", progress=0.0)
            for key, value in values.items():
                setattr(row, key, value)
            db.session.add(row)
            db.session.commit()
            ids.append(row.id)
    return ids


def row(app, analysis_id: int):
    """A fresh read of one row (detached), so tests see other threads' and processes' writes."""
    from extensions import db
    from models import Analysis

    with app.app_context():
        db.session.expire_all()
        found = db.session.get(Analysis, analysis_id)
        db.session.expunge(found)
        return found


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_status(app, analysis_id: int, statuses: tuple[str, ...], timeout: float):
    return wait_for(lambda: (r := row(app, analysis_id)).status in statuses and r,
                    timeout, what=f"analysis {analysis_id} to reach {statuses}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process (worker, gunicorn) whose output goes to a log file shown on failure."""

    def __init__(self, argv: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def flask_env(db_url: str, tmp_path: Path, **extra) -> dict:
    """The environment a worker or web process on another machine would get."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "FLASK_"))}
    env.update({
        "DATABASE_URL": db_url,
        "UPLOAD_FOLDER": str(tmp_path / "uploads"),
        "DERIVED_FOLDER": str(tmp_path / "derived"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(db_url: str, tmp_path: Path, name: str, **extra) -> Process:
    env = flask_env(db_url, tmp_path, **extra)
    flask = str(Path(sys.executable).parent / "flask")
    return Process([flask, "--app", "app", "worker", "--name", name], env, tmp_path / f"{name}.log")
