"""Fault drill against the production server (gunicorn, 2 workers, in-process job runner, loopback):
breaks things on purpose and prints how the service behaved and how long it took to recover.

  1. worker killed mid-job   kill -9 both web workers while an analysis runs; gunicorn starts new
                              ones, the lease sweep re-queues the job, it ends done. Time to done.
  2. restart with work queued stop the server, queue analyses behind its back (rows in the database,
                              files on disk), start it: time until all are done.
  3. database unreachable    (PostgreSQL, when one answers at TEST_POSTGRES_URL) a scratch database
                              refuses connections and its open ones are cut for --outage s while
                              clients poll pages and /healthz: 503 pages vs anything worse, time to a 200.
  4. decode over its limits   an image under the pixel limit but over DECODE_MAX_MEMORY_MB: fails
                              with a reason, the workers stay the same processes.
  5. model missing            restart with MODEL_PATH pointing nowhere: /healthz 503, an upload
                              fails with a reason, and nothing else breaks.

Baseline for the ratios: the time a normal analysis of the same file takes in the same run.
The matching pytest checks are in tests/test_faults.py, tests/test_jobs.py and tests/test_scaleout.py.

Usage: .venv/bin/python benchmarks/faults.py [--lease 8]
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_test import BIN, _jpeg, seed  # noqa: E402  (same seeding and sample images as the load test)


class Server:
    def __init__(self, env: dict, port: int, log: Path):
        self.env, self.port, self.log = env, port, log
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, **extra) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=ROOT,
            env={**os.environ, **self.env, **extra, "PORT": str(self.port), "WEB_CONCURRENCY": "2",
                 "LOG_LEVEL": "warning"},
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.get("/static/style.css").status_code == 200, 60, "gunicorn to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def get(self, path: str, **kw):
        try:
            return requests.get(self.base + path, timeout=10, **kw)
        except requests.RequestException as exc:
            return _Failed(exc)


class _Failed:
    status_code = 0

    def __init__(self, exc):
        self.exc = exc

    def json(self):
        return {}


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def upload(server: Server, token: str, content: bytes, name="x.jpg") -> int:
    response = requests.post(server.base + "/api/v1/analyses", headers={"Authorization": f"Bearer {token}"},
                             files={"file": (name, content, "image/jpeg")}, timeout=60)
    assert response.status_code in (200, 202), response.text
    return response.json()["id"]


def status(server: Server, token: str, analysis_id: int) -> dict:
    return server.get(f"/api/v1/analyses/{analysis_id}", headers={"Authorization": f"Bearer {token}"}).json()


def wait_finished(server, token, analysis_id, timeout=300) -> tuple[dict, float]:
    started = time.monotonic()
    body = wait_for(lambda: (b := status(server, token, analysis_id)).get("status") in ("done", "failed") and b,
                    timeout, f"analysis {analysis_id} to finish")
    return body, time.monotonic() - started


def video(seconds: float = 8.0, fps: int = 25) -> bytes:
    """A clip with a face in every frame, long enough that the job is still running when killed."""
    import av
    import numpy as np
    from skimage import data

    face = data.astronaut()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.roll(face, i * 2, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lease", type=int, default=8, help="JOB_LEASE_SECONDS for the drill (production: 60)")
    parser.add_argument("--outage", type=float, default=5, help="seconds the database refuses connections")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="faults-"))
    db_dir = scratch / "db"
    db_dir.mkdir()
    env = {
        "SECRET_KEY": "faults-secret", "DATABASE_URL": f"sqlite:///{db_dir / 'app.db'}",
        "UPLOAD_FOLDER": str(scratch / "uploads"), "DERIVED_FOLDER": str(scratch / "derived"),
        "REDIS_URL": "", "JOB_WORKERS": "1", "JOB_LEASE_SECONDS": str(args.lease),
        "RATELIMIT_API": "100000 per minute", "RATELIMIT_STORAGE_URI": "memory://", "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    [account] = seed(env, 1, 5)
    token = account["token"]
    server = Server(env, args.port, scratch / "gunicorn.log")
    figures = []
    clip = video()
    server.start()
    try:
        # Baseline: the same clip analysed with nothing going wrong (first run loads TensorFlow).
        upload(server, token, _jpeg(1, face=True), "warm-up.jpg")
        first = upload(server, token, clip, "baseline.mp4")
        body, baseline_s = wait_finished(server, token, first)
        print(f"baseline: an {len(clip) // 1024} KB clip analysed in {baseline_s:.1f} s -> {body['status']}")

        # 1. kill -9 both workers mid-job
        analysis_id = upload(server, token, clip[:-1] + b"\x00", "killed.mp4")
        wait_for(lambda: status(server, token, analysis_id).get("status") == "running", 60, "the job to start")
        victims = server.workers()
        killed_at = time.monotonic()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        body, _ = wait_finished(server, token, analysis_id, timeout=args.lease * 6 + 120)
        recovered = time.monotonic() - killed_at
        replaced = not set(victims) & set(server.workers())
        print(f"1. workers {victims} killed mid-job: new workers {'started' if replaced else 'NOT started'}; "
              f"the job ended {body['status']} {recovered:.1f} s later "
              f"({recovered / baseline_s:.1f}x a normal run; lease {args.lease} s)")
        figures.append(body["status"] == "done" and replaced)

        # 2. restart with work queued
        server.stop()
        queued = queue_behind_the_servers_back(env, account, count=3)
        restarted_at = time.monotonic()
        server.start()
        results = [wait_finished(server, token, i, timeout=300)[0]["status"] for i in queued]
        took = time.monotonic() - restarted_at
        print(f"2. restarted with {len(queued)} analyses queued: {results} within {took:.1f} s of the restart")
        figures.append(all(s == "done" for s in results))

        # 3. the database unreachable for a while (PostgreSQL: connections refused and cut)
        figures.append(database_outage(args, env, scratch))

        # 4. a decode over its memory limit
        server.stop()
        server.start(DECODE_MAX_MEMORY_MB="300")
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (7000, 7000), (40, 40, 40)).save(buffer, "PNG")  # 49 MP: under the pixel limit
        workers_before = server.workers()
        big = upload(server, token, buffer.getvalue(), "huge.png")
        body, took = wait_finished(server, token, big)
        print(f"4. {len(buffer.getvalue()) // 1024} KB PNG needing ~150 MB decoded + working copies, limit 300 MB: "
              f"{body['status']} in {took:.1f} s: {body.get('error')!r}; workers unchanged: "
              f"{server.workers() == workers_before}")
        figures.append(body["status"] in ("failed", "done") and server.workers() == workers_before)

        # 5. the model missing
        server.stop()
        server.start(MODEL_PATH=str(scratch / "no-such-model.keras"))
        health = server.get("/healthz")
        analysis_id = upload(server, token, _jpeg(2, face=True), "no-model.jpg")
        assert status(server, token, analysis_id)["original_name"] == "no-model.jpg"  # not a duplicate
        body, took = wait_finished(server, token, analysis_id)
        print(f"5. model missing: /healthz {health.status_code} {health.json().get('status')}; upload accepted, "
              f"then {body['status']} in {took:.1f} s: {body.get('error')!r}")
        figures.append(health.status_code == 503 and body["status"] == "failed")
    finally:
        server.stop()
    print(f"\n{sum(figures)}/{len(figures)} faults handled as intended (log: {server.log})")
    shutil.rmtree(scratch / "uploads", ignore_errors=True)
    return 0 if all(figures) else 1


def database_outage(args, env: dict, scratch: Path) -> bool:
    """A second server on a scratch PostgreSQL database; for --outage seconds the database refuses
    new connections and its open ones are cut (as when the database host restarts)."""
    from sqlalchemy import create_engine, text

    admin_url = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        print(f"3. database outage: skipped, PostgreSQL not reachable at {admin_url} ({exc.__class__.__name__})")
        return True
    name = f"faults_{os.getpid()}"
    pg_env = {**env, "DATABASE_URL": admin_url.rsplit("/", 1)[0] + "/" + name}
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    server = Server(pg_env, args.port + 1, scratch / "gunicorn-pg.log")
    try:
        [account] = seed(pg_env, 1, 5)
        server.start()
        session = requests.Session()
        page = session.get(server.base + "/login").text
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        session.post(server.base + "/login", data={"email": account["email"], "password": "load test password",
                                                    "csrf_token": csrf})
        assert session.get(server.base + "/history").status_code == 200
        codes: list[int] = []
        stop = threading.Event()

        def poll(path):
            while not stop.is_set():
                try:
                    codes.append(session.get(server.base + path, timeout=60).status_code)
                except requests.RequestException:
                    codes.append(0)

        workers_before = server.workers()
        pollers = [threading.Thread(target=poll, args=(p,)) for p in ("/history", "/healthz", "/")]
        for poller in pollers:
            poller.start()
        time.sleep(1)
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
        time.sleep(args.outage)
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        back_at = time.monotonic()
        wait_for(lambda: session.get(server.base + "/history", timeout=60).status_code == 200, 60, "pages to return")
        back_in = time.monotonic() - back_at
        stop.set()
        for poller in pollers:
            poller.join()
        counts = {code: codes.count(code) for code in sorted(set(codes))}
        bad = sum(n for code, n in counts.items() if code not in (200, 503))
        same = server.workers() == workers_before
        print(f"3. PostgreSQL refusing connections for {args.outage:.0f} s: responses by status {counts} "
              f"({bad} neither 200 nor 503); pages back {back_in:.1f} s after it returned; workers unchanged: {same}")
        return bad == 0 and 503 in counts and same
    finally:
        server.stop()
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def queue_behind_the_servers_back(env: dict, account: dict, count: int) -> list[int]:
    """Analyses committed as queued while no server runs (as after a crash between upload and run)."""
    os.environ.update(env)
    from app import create_app
    from extensions import db
    from models import Analysis, User
    from utils import storage

    app = create_app({"JOB_RUNNER": "sync"})
    ids = []
    with app.app_context():
        user = db.session.scalar(db.select(User).filter_by(email=account["email"]))
        for i in range(count):
            stored = storage.save_upload(io.BytesIO(_jpeg(500 + i, face=i == 0)))
            row = Analysis(user_id=user.id, kind="image", original_name=f"queued-{i}.jpg", sha256=stored.sha256,
                           stored_name=stored.stored_name, size_bytes=stored.size_bytes, status="queued",
                           stage="queued")
            db.session.add(row)
            db.session.commit()
            ids.append(row.id)
        db.engine.dispose()
    return ids


if __name__ == "__main__":
    sys.exit(main())
