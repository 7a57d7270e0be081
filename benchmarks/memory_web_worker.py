"""Resident memory per gunicorn web worker (and per RQ worker), read from /proc.

Starts the documented production command (`gunicorn -c gunicorn.conf.py`, 2 workers, loopback,
a scratch SQLite database) in two set-ups and prints RSS and PSS (PSS splits shared pages between
the processes that share them, so it is what each extra worker really costs):
  web-only     REDIS_URL set: analyses run on RQ workers, the web never imports TensorFlow
  in-process   no Redis: one web worker runs an analysis itself and keeps TF + the model loaded
and, when Redis answers, an RQ worker (`flask --app app worker`) after it ran one analysis.
Baseline for the ratios: the gunicorn master process of the same run (Python + gunicorn, no app).

Usage: .venv/bin/python benchmarks/memory_web_worker.py [--requests 200]
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def kib(pid: int, field: str, source: str) -> int:
    for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB."""
    return kib(pid, "VmRSS", "status") / 1024, kib(pid, "Pss", "smaps_rollup") / 1024


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return sorted(found)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def prepare_database(workdir: Path, with_upload: bool) -> tuple[dict, int | None]:
    """Tables, one user and (optionally) one queued analysis of a real photo with a face."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "UPLOAD_FOLDER": str(workdir / "uploads"),
        "DERIVED_FOLDER": str(workdir / "derived"),
        "SECRET_KEY": "benchmark-secret-key-benchmark-secret-key",
        "APP_ENV": "production",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "UPLOAD_FOLDER", "DERIVED_FOLDER", "SECRET_KEY")})
    from app import create_app
    from extensions import db
    from models import Analysis, User
    from utils import storage

    app = create_app({"TESTING": True})
    analysis_id = None
    with app.app_context():
        db.create_all()
        user = User.query.filter_by(email="bench@example.com").first()
        if user is None:
            user = User(email="bench@example.com")
            user.set_password("benchmark password")
            db.session.add(user)
            db.session.commit()
        if with_upload:
            from PIL import Image
            from skimage import data

            photo = io.BytesIO()
            Image.fromarray(data.astronaut()).save(photo, "JPEG", quality=88 + len(os.listdir(workdir)) % 5)
            photo.seek(0)
            stored = storage.save_upload(photo)
            row = Analysis(user_id=user.id, kind="image", original_name="astronaut.jpg", sha256=stored.sha256,
                           stored_name=stored.stored_name, size_bytes=stored.size_bytes, status="queued")
            db.session.add(row)
            db.session.commit()
            analysis_id = row.id
        db.engine.dispose()
    return env, analysis_id


def analysis_status(analysis_id: int) -> str:
    import sqlite3

    path = os.environ["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute("select status from analysis where id = ?", (analysis_id,)).fetchone()[0]


def run_gunicorn(env: dict, requests: int, analysis_id: int | None, workdir: Path, label: str) -> dict:
    port = free_port()
    env = {**env, "PORT": str(port), "WEB_CONCURRENCY": "2", "LOG_LEVEL": "warning"}
    log = open(workdir / f"gunicorn-{label}.log", "wb")
    server = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(base + "/healthz") in (200, 503), 60, "gunicorn")
        paths = ["/healthz", "/login", "/register", "/"]
        for i in range(requests):
            get(base + paths[i % len(paths)])
        if analysis_id is not None:
            wait_until(lambda: analysis_status(analysis_id) in ("done", "failed"), 180, "the analysis")
            result = analysis_status(analysis_id)
            for i in range(requests):
                get(base + paths[i % len(paths)])
        else:
            result = None
        time.sleep(0.5)
        workers = {pid: memory(pid) for pid in children(server.pid)}
        return {"master": memory(server.pid), "workers": workers, "analysis": result}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def run_rq_worker(env: dict, analysis_id: int, workdir: Path) -> tuple[float, float] | None:
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except RedisError as exc:
        print(f"(RQ worker not measured: Redis unreachable at {REDIS_URL}: {exc})")
        return None
    queue = f"bench-{os.getpid()}"
    env = {**env, "REDIS_URL": REDIS_URL, "JOB_QUEUE": queue, "JOB_RUNNER": "rq"}
    log = open(workdir / "worker.log", "wb")
    worker = subprocess.Popen([str(BIN / "flask"), "--app", "app", "worker"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        # The worker's start-up sweep hands the queued row (no RQ job yet) to the queue after 10 s.
        wait_until(lambda: analysis_status(analysis_id) in ("done", "failed"), 240, "the RQ analysis")
        time.sleep(0.5)
        return memory(worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
        connection = Redis.from_url(REDIS_URL)
        for key in list(connection.scan_iter("rq:job:*")):
            if connection.hget(key, "origin") == queue.encode():
                job_id = key.decode().split(":", 2)[2]
                connection.delete(key, *connection.scan_iter(f"rq:*{job_id}*"))
        for key in list(connection.scan_iter(f"*{queue}*")):
            connection.delete(key)
        connection.srem("rq:queues", f"rq:queue:{queue}")


def show(label: str, sample: dict, baseline_pss: float) -> list[float]:
    print(f"\n{label}: master RSS {sample['master'][0]:.0f} MiB / PSS {sample['master'][1]:.0f} MiB"
          + (f"; analysis {sample['analysis']}" if sample["analysis"] else ""))
    for pid, (rss, pss) in sample["workers"].items():
        print(f"  web worker {pid}: RSS {rss:7.1f} MiB   PSS {pss:7.1f} MiB   "
              f"({pss / baseline_pss:.1f}x the master's PSS)")
    return [rss for rss, _ in sample["workers"].values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per phase (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        workdir = Path(tmp)
        env, _ = prepare_database(workdir, with_upload=False)
        web_only = run_gunicorn({**env, "JOB_RUNNER": "rq", "REDIS_URL": REDIS_URL}, args.requests, None,
                                workdir, "web-only")
        env, analysis_id = prepare_database(workdir, with_upload=True)
        in_process = run_gunicorn({**env, "JOB_RUNNER": "thread", "JOB_RECOVER_ON_START": "1"},
                                  args.requests, analysis_id, workdir, "in-process")
        env, rq_analysis_id = prepare_database(workdir, with_upload=True)
        rq_worker = run_rq_worker(env, rq_analysis_id, workdir)

    baseline = web_only["master"][1]
    print(f"gunicorn -c gunicorn.conf.py, WEB_CONCURRENCY=2, {args.requests} requests per phase; "
          f"baseline = gunicorn master PSS {baseline:.0f} MiB")
    web_rss = show("web-only (REDIS_URL: analyses on RQ workers)", web_only, baseline)
    show("in-process runner (no Redis), after one analysis", in_process, baseline)
    if rq_worker:
        print(f"\nRQ worker (`flask --app app worker`, model preloaded) after one analysis: "
              f"RSS {rq_worker[0]:.0f} MiB / PSS {rq_worker[1]:.0f} MiB "
              f"({rq_worker[1] / baseline:.1f}x the master's PSS)")
    ran = max(in_process["workers"].values())
    print(f"\nsummary: web worker RSS {min(web_rss):.0f}-{max(web_rss):.0f} MiB without TensorFlow; "
          f"{ran[0]:.0f} MiB for a web worker that ran an analysis in-process "
          f"({ran[0] / max(web_rss):.1f}x)")


if __name__ == "__main__":
    main()
