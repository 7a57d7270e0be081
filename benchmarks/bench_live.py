"""Live camera throughput: frames scored per second with one live session and with four at once.

Each session is a thread with its own signed-in test client posting the astronaut photo (480 px JPEG,
one face, as the page sends it) to /live/sessions/<id>/frames, i.e. the whole request path: decode,
face finding, model, rolling verdict. Threads share one process and one model, like the threads of
one web worker. Scenarios:
  baseline      the same work called directly (no HTTP, no session), one thread
  1 session     one client, next frame as soon as the answer is back
  4 sessions    four clients (four users) at once, back to back
  4 paced       four clients sending one frame per second each, as the page does by default
Usage: .venv/bin/python benchmarks/bench_live.py [--seconds 10] [--redis redis://127.0.0.1:6379/15]
(--redis keeps the sessions in Redis, as several web processes need; its keys are deleted afterwards.)
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SECRET_KEY", "bench-live")


def frame_bytes() -> bytes:
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut())
    image.thumbnail((480, 480))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def make_app(folder: Path, redis_url: str | None, prefix: str):
    from app import create_app
    from extensions import db

    app = create_app({
        "TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'bench.db'}",
        "UPLOAD_FOLDER": str(folder / "uploads"), "DERIVED_FOLDER": str(folder / "derived"),
        "WTF_CSRF_ENABLED": False, "RATELIMIT_ENABLED": False, "JOB_RUNNER": "sync",
        **({"LIVE_STORE": "redis", "REDIS_URL": redis_url, "LIVE_REDIS_PREFIX": prefix} if redis_url else {}),
    })
    with app.app_context():
        db.create_all()
    return app


def signed_in_client(app, email: str):
    from extensions import db
    from models import User

    with app.app_context():
        user = User(email=email, password_hash="x")
        db.session.add(user)
        db.session.commit()
        user_id = user.id
    client = app.test_client()
    with client.session_transaction() as session:
        session["_user_id"] = f"{user_id}:1"
        session["_fresh"] = True
    return client


def baseline(app, body: bytes, seconds: float) -> float:
    from utils.live import decode_frame, score_frame
    from utils.model import get_detector

    with app.app_context():
        detector = get_detector(app.config["MODEL_PATH"])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        score_frame(decode_frame(body, 4_000_000), detector)
        n += 1
    return n / (time.perf_counter() - start)


def run_sessions(clients, body: bytes, seconds: float, pace_s: float | None = None) -> dict:
    """Each client starts a session and posts frames for `seconds` (back to back, or one per pace_s)."""
    results = [{"ok": 0, "dropped": 0, "latency": []} for _ in clients]
    barrier = threading.Barrier(len(clients))

    def worker(i, client):
        session = client.post("/live/sessions").get_json()
        barrier.wait()
        start = time.perf_counter()
        next_send = start
        while time.perf_counter() - start < seconds:
            if pace_s is not None:
                delay = next_send - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_send += pace_s
            sent = time.perf_counter()
            response = client.post(session["frame_url"], data=body, headers={"Content-Type": "image/jpeg"})
            if response.status_code == 200:
                results[i]["ok"] += 1
                results[i]["latency"].append(time.perf_counter() - sent)
            elif (response.get_json() or {}).get("dropped"):
                results[i]["dropped"] += 1
            else:
                raise RuntimeError(f"unexpected answer {response.status_code}: {response.get_data(as_text=True)}")

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies = sorted(x for r in results for x in r["latency"])
    return {
        "total_fps": sum(r["ok"] for r in results) / wall,
        "per_session_fps": [round(r["ok"] / wall, 2) for r in results],
        "dropped": sum(r["dropped"] for r in results),
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000 if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each scenario")
    parser.add_argument("--redis", default=None, help="keep sessions in this Redis instead of process memory")
    args = parser.parse_args()
    prefix = f"bench-live-{os.getpid()}:"

    body = frame_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Path(tmp), args.redis, prefix)
        clients = [signed_in_client(app, f"bench{i}@example.com") for i in range(4)]
        # Warm up: TensorFlow import, model load, graph tracing, face finder.
        run_sessions(clients[:1], body, 2.0)
        print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f} "
              f"(other processes share these cores; figures vary run to run)")
        print(f"sessions kept in: {'Redis ' + args.redis if args.redis else 'process memory'}")
        print(f"frame: astronaut photo, {len(body) // 1024} kB JPEG, 480x480, one face; {args.seconds:g} s per scenario")
        base = baseline(app, body, args.seconds)
        print(f"baseline (direct call, no HTTP)   {base:6.1f} frames/s")
        one = run_sessions(clients[:1], body, args.seconds)
        print(f"1 session, back to back           {one['total_fps']:6.1f} frames/s  "
              f"({one['total_fps'] / base:.2f}x baseline)  latency p50 {one['p50_ms']:.0f} ms, p95 {one['p95_ms']:.0f} ms")
        four = run_sessions(clients, body, args.seconds)
        print(f"4 sessions, back to back          {four['total_fps']:6.1f} frames/s in all "
              f"({four['total_fps'] / base:.2f}x baseline), per session {four['per_session_fps']}  "
              f"latency p50 {four['p50_ms']:.0f} ms, p95 {four['p95_ms']:.0f} ms, dropped {four['dropped']}")
        paced = run_sessions(clients, body, args.seconds, pace_s=1.0)
        print(f"4 sessions, 1 frame/s each       {paced['total_fps']:6.1f} frames/s in all, "
              f"per session {paced['per_session_fps']}  latency p50 {paced['p50_ms']:.0f} ms, "
              f"p95 {paced['p95_ms']:.0f} ms, dropped {paced['dropped']}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.redis:
        from redis import Redis

        connection = Redis.from_url(args.redis)
        keys = connection.keys(prefix + "*")
        if keys:
            connection.delete(*keys)


if __name__ == "__main__":
    main()
