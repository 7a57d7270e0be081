"""Load test: the production server (gunicorn, 2 workers, loopback) under a mix of page views, API
status polls and uploads from concurrent signed-in clients; then a check that no upload was lost.

What it does
1. Seeds a scratch SQLite database: --clients accounts (one per client), each with --analyses
   finished analyses (images and videos with frames, faces and thumbnails) and an API token.
2. Starts `gunicorn -c gunicorn.conf.py` (WEB_CONCURRENCY=2) with one of two job runners:
     --runner thread  (default) the in-process runner: analyses of the uploads run in the web
                      workers (JOB_WORKERS=1 thread each, at JOB_THREAD_NICENESS), as in the default
                      single-machine set-up
     --runner rq      REDIS_URL on a spare Redis database (--redis-url, flushed at start and end) and
                      --rq-workers `flask --app app worker` processes started by this script under
                      `nice -n 19` (--worker-niceness): the scale-out set-up with the workers on the
                      same machine at low priority; the web workers never run an analysis
   Rate limits stay on (in memory, for both runners) but are raised far above the offered load, so
   the limiter's cost is measured, not its refusals.
3. Phases, each with --clients threads (one account each, keep-alive connections):
     baseline  GET /static/style.css (what the server costs with no app work): the ratio's base
     mixed     --seconds of: history pages 40 %, result pages 30 %, API status polls 25 %,
               API uploads 5 % (small JPEGs, some with a face, so TensorFlow runs too)
     history   --history-seconds of history pages only (the >= 200 req/s target)
   A --warmup of the mixed load runs first and is not counted (first TensorFlow load per worker).
4. Waits up to --drain-seconds for every accepted upload to end `done` or `failed` (asked through
   the API, so the check is the same for both runners).
5. Stops gunicorn and the RQ workers (also on Ctrl+C, SIGTERM or an error): SIGTERM, then SIGKILL
   for anything left in their process groups, so no process outlives the script.

Prints requests/s, p50 / p99 latency and errors per kind, and the targets: >= 200 req/s on history
pages, p99 <= 100 ms for page views, 0 errors, 0 lost uploads.

Usage: .venv/bin/python benchmarks/load_test.py [--seconds 60] [--clients 8] [--history-seconds 20]
                                                [--runner thread|rq] [--rq-workers 1]
"""
from __future__ import annotations

import argparse
import io
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
PASSWORD = "load test password"
MIX = (("history", 40), ("result", 30), ("status", 25), ("upload", 5))
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"  # a database number nothing else here uses
PAGE_KINDS = ("history", "result")


# ---------------------------------------------------------------- set-up

def seed(env: dict, users: int, analyses: int) -> list[dict]:
    """Accounts with finished analyses and tokens, written straight into the scratch database."""
    os.environ.update(env)
    from werkzeug.security import generate_password_hash

    from app import create_app
    from extensions import db
    from models import Analysis, ApiToken, FaceResult, FrameResult, User
    from utils import storage

    app = create_app({"JOB_RUNNER": "sync"})
    password_hash = generate_password_hash(PASSWORD)
    accounts = []
    with app.app_context():
        db.create_all()
        thumb = _jpeg(1, (160, 120))
        for u in range(users):
            user = User(email=f"load{u}@example.com", password_hash=password_hash)
            db.session.add(user)
            db.session.flush()
            token, secret = ApiToken.issue(user, "load")
            db.session.add(token)
            ids = []
            for i in range(analyses):
                video = i % 5 == 0
                a = Analysis(user_id=user.id, kind="video" if video else "image", original_name=f"file-{u}-{i}.jpg",
                             sha256=f"{u:08x}{i:056x}", stored_name=None, size_bytes=1000, status="done",
                             stage="done", progress=1.0, verdict=("real", "fake", "uncertain", "no_face")[i % 4],
                             score=None if i % 4 == 3 else 0.1 + (i % 9) / 10, threshold=0.5, uncertain_low=0.45,
                             uncertain_high=0.55, model_version="load-1", width=640, height=480,
                             frames_sampled=16 if video else 1, flagged=i % 4 in (1, 2),
                             flag_reason="auto" if i % 4 in (1, 2) else None)
                for f in range(16 if video else 1):
                    a.frames.append(FrameResult(index=f * 10, time_s=f * 0.4, faces_count=1, score=0.3,
                                                thumb_name=f"frame-{f:03d}.jpg"))
                    a.faces.append(FaceResult(frame_index=f * 10, person=0, x=100, y=80, w=120, h=140, score=0.3,
                                              crop_name=f"face-{f:03d}.jpg", heatmap_name=f"heat-{f:03d}.jpg"))
                a.faces_found = len(a.faces)
                db.session.add(a)
                db.session.flush()
                ids.append(a.id)
                folder = storage.derived_dir(a.id)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "frame-000.jpg").write_bytes(thumb)
            db.session.commit()
            accounts.append({"email": user.email, "token": secret, "analyses": ids,
                             "pages": max(1, -(-analyses // int(app.config["HISTORY_PAGE_SIZE"])))})
        db.engine.dispose()
    return accounts


def _jpeg(seed: int, size=(64, 48), face=False) -> bytes:
    import numpy as np
    from PIL import Image

    if face:
        from skimage import data

        rgb = data.astronaut()[::2, ::2].copy()
        # A corner patch coloured from the seed: distinct after JPEG quantisation, so no upload is a duplicate.
        rgb[:16, :16] = [seed % 251, (seed // 251) % 251, (seed // 63001) % 251]
        image = Image.fromarray(rgb)
    else:
        rng = np.random.default_rng(seed)
        image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def app_env(args, scratch: Path) -> dict:
    """The environment of every process the script starts (and of its own seeding)."""
    env = {
        "SECRET_KEY": "load-test-secret", "APP_ENV": "development",
        "DATABASE_URL": f"sqlite:///{scratch / 'app.db'}",
        "UPLOAD_FOLDER": str(scratch / "uploads"), "DERIVED_FOLDER": str(scratch / "derived"),
        "REDIS_URL": "", "JOB_RUNNER": "thread", "JOB_WORKERS": "1",
        "RATELIMIT_STORAGE_URI": "memory://",
        "RATELIMIT_SIGNIN": "100000 per minute", "RATELIMIT_REGISTER": "100000 per minute",
        "RATELIMIT_UPLOAD": "100000 per minute", "RATELIMIT_API": "100000 per minute",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if args.thread_niceness is not None:
        env["JOB_THREAD_NICENESS"] = str(args.thread_niceness)
    if args.runner == "rq":
        env.update({"REDIS_URL": args.redis_url, "JOB_RUNNER": "rq", "JOB_QUEUE": "analyses"})
    return env


def worker_command(niceness: int, index: int) -> list[str]:
    return ["nice", "-n", str(niceness), str(BIN / "flask"), "--app", "app", "worker",
            "--name", f"load-test-{os.getpid()}-{index}"]


def reset_redis(url: str) -> None:
    """Empty the load test's own Redis database (queue, job records, worker registrations)."""
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        connection = Redis.from_url(url, socket_connect_timeout=3)
        connection.flushdb()
        connection.close()
    except RedisError as exc:
        raise SystemExit(f"--runner rq needs Redis at {url}: {exc}")


def start_workers(env: dict, count: int, niceness: int, scratch: Path, workers: list) -> None:
    """Appends each worker to `workers` as soon as it exists, so an interrupt stops it too."""
    for i in range(count):
        with (scratch / f"worker-{i}.log").open("wb") as log:
            workers.append(subprocess.Popen(worker_command(niceness, i), cwd=ROOT, env={**os.environ, **env},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))


def wait_for_workers(url: str, queue_name: str, workers: list[subprocess.Popen], seconds: float) -> None:
    """Until every worker has loaded the model and registered on the queue (its first analysis
    then costs no model load, as after the web workers' warm-up with the in-process runner)."""
    from redis import Redis
    from rq import Queue, Worker

    connection = Redis.from_url(url, socket_connect_timeout=3)
    queue = Queue(queue_name, connection=connection)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if any(w.poll() is not None for w in workers):
                raise SystemExit("an RQ worker exited during start-up; see worker-*.log in the scratch folder")
            if Worker.count(queue=queue) >= len(workers):
                return
            time.sleep(0.5)
        raise SystemExit(f"the RQ workers did not register within {seconds:.0f} s")
    finally:
        connection.close()


def start_server(env: dict, port: int, log: Path, servers: list) -> None:
    """Appends gunicorn to `servers` as soon as it exists, then waits until it answers."""
    with log.open("wb") as output:
        server = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=ROOT,
                                  env={**os.environ, **env, "PORT": str(port), "WEB_CONCURRENCY": "2",
                                       "LOG_LEVEL": "warning"},
                                  stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    servers.append(server)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited at start-up; see {log}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/static/style.css", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.3)
    raise SystemExit(f"gunicorn did not start; see {log}")


def stop(process: subprocess.Popen, name: str, grace: float) -> None:
    """SIGTERM (gunicorn: graceful stop; RQ worker: finish the current job), a second SIGTERM
    after `grace` seconds (RQ: hand the job back), SIGKILL after that; then SIGKILL whatever is
    left in its process group (each was started in a session of its own: web workers, decoding
    fork servers, resource trackers), so nothing outlives the script."""
    steps = (("SIGTERM", signal.SIGTERM, grace), ("a second SIGTERM", signal.SIGTERM, 10),
             ("SIGKILL", signal.SIGKILL, 10))
    for label, sig, wait in steps:
        if process.poll() is not None:
            break
        try:
            process.send_signal(sig)
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            print(f"  {name} (pid {process.pid}) still running {wait:.0f} s after {label}", flush=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anything left in the group?
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
    try:
        os.killpg(process.pid, signal.SIGKILL)
        print(f"  killed processes left in the group of {name} (pid {process.pid})", flush=True)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------- clients

@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    accepted: list[tuple[str, int]] = field(default_factory=list)  # (token, analysis id)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if error:
                self.errors[kind].append(error)


class Client:
    """One signed-in browser (session cookie) that also holds its account's API token."""

    upload_counter = 0
    counter_lock = threading.Lock()

    def __init__(self, base: str, account: dict, rng: random.Random):
        self.base, self.account, self.rng = base, account, rng
        self.http = requests.Session()
        page = self.http.get(f"{base}/login").text
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        response = self.http.post(f"{base}/login", data={"email": account["email"], "password": PASSWORD,
                                                         "csrf_token": token}, allow_redirects=False)
        if response.status_code != 302:
            raise SystemExit(f"sign-in failed for {account['email']}: {response.status_code}")
        self.api = {"Authorization": f"Bearer {account['token']}"}
        self.own_uploads: list[int] = []

    def request(self, kind: str):
        """(response, expected statuses) for one request of this kind."""
        a = self.account
        if kind == "baseline":
            return self.http.get(f"{self.base}/static/style.css"), (200,)
        if kind == "history":
            return self.http.get(f"{self.base}/history", params={"page": self.rng.randint(1, a["pages"])}), (200,)
        if kind == "result":
            return self.http.get(f"{self.base}/analyses/{self.rng.choice(a['analyses'])}"), (200,)
        if kind == "status":
            pool = self.own_uploads[-5:] if self.own_uploads and self.rng.random() < 0.5 else a["analyses"]
            return self.http.get(f"{self.base}/api/v1/analyses/{self.rng.choice(pool)}", headers=self.api), (200,)
        with Client.counter_lock:
            Client.upload_counter += 1
            n = Client.upload_counter
        content = _jpeg(100_000 + n, face=n % 5 == 0)
        response = self.http.post(f"{self.base}/api/v1/analyses", headers=self.api,
                                  files={"file": (f"upload-{n}.jpg", content, "image/jpeg")})
        return response, (202,)


def run_phase(clients: list[Client], seconds: float, mix, results: Results | None) -> float:
    kinds = [k for k, _ in mix]
    weights = [w for _, w in mix]
    stop_at = time.monotonic() + seconds

    def loop(client: Client):
        while time.monotonic() < stop_at:
            kind = client.rng.choices(kinds, weights)[0]
            started = time.perf_counter()
            error = None
            try:
                response, expected = client.request(kind)
                if response.status_code not in expected:
                    error = f"{response.status_code} {response.request.method} {response.url}"
                elif kind == "upload":
                    analysis_id = response.json()["id"]
                    client.own_uploads.append(analysis_id)
                    if results is not None:
                        with results.lock:
                            results.accepted.append((client.account["token"], analysis_id))
            except requests.RequestException as exc:
                error = f"{exc.__class__.__name__}: {exc}"
            if results is not None:
                results.record(kind, time.perf_counter() - started, error)

    # Daemon threads: a Ctrl+C stops the script (and its servers) without waiting out the phase.
    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began


def drain(base: str, accepted: list[tuple[str, int]], seconds: float) -> dict[str, int]:
    """Final status of every accepted upload, polling until each is done or failed."""
    pending = dict((analysis_id, token) for token, analysis_id in accepted)
    final: dict[int, str] = {}
    deadline = time.monotonic() + seconds
    http = requests.Session()
    while pending and time.monotonic() < deadline:
        for analysis_id, token in list(pending.items()):
            body = http.get(f"{base}/api/v1/analyses/{analysis_id}",
                            headers={"Authorization": f"Bearer {token}"}).json()
            if body.get("status") in ("done", "failed"):
                final[analysis_id] = body["status"]
                del pending[analysis_id]
        if pending:
            time.sleep(1)
    counts = defaultdict(int)
    for status in final.values():
        counts[status] += 1
    counts["unfinished"] = len(pending)
    return dict(counts)


# ---------------------------------------------------------------- report

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def table(title: str, results: Results, elapsed: float, kinds) -> dict[str, float]:
    print(f"\n{title} ({elapsed:.0f} s)")
    print(f"  {'kind':10} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    rates = {}
    total = 0
    for kind in kinds:
        lat = results.latencies.get(kind, [])
        total += len(lat)
        rates[kind] = len(lat) / elapsed
        print(f"  {kind:10} {len(lat):9d} {rates[kind]:8.1f} {pct(lat, 0.5):8.1f} {pct(lat, 0.99):8.1f} "
              f"{len(results.errors.get(kind, [])):7d}")
    print(f"  {'all':10} {total:9d} {total / elapsed:8.1f}")
    for kind, errors in results.errors.items():
        for error in errors[:3]:
            print(f"  error ({kind}): {error}")
    return rates


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of the mixed phase")
    parser.add_argument("--history-seconds", type=float, default=20, help="length of the history-only phase")
    parser.add_argument("--baseline-seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--analyses", type=int, default=200, help="finished analyses per account")
    parser.add_argument("--drain-seconds", type=float, default=180)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--runner", choices=("thread", "rq"), default="thread",
                        help="thread: analyses in the web workers (default); rq: on RQ worker processes")
    parser.add_argument("--rq-workers", type=int, default=1, help="RQ worker processes (--runner rq)")
    parser.add_argument("--worker-niceness", type=int, default=19,
                        help="`nice -n` of the RQ workers (--runner rq; default 19)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="a Redis database of its own: flushed at start and end (--runner rq)")
    parser.add_argument("--thread-niceness", type=int, default=None,
                        help="JOB_THREAD_NICENESS for the in-process runner (default: the app's, 5)")
    return parser


def runner_line(args, env: dict) -> str:
    if args.runner == "rq":
        return (f"runner: rq ({args.rq_workers} `flask --app app worker` process"
                f"{'es' if args.rq_workers != 1 else ''} under nice -n {args.worker_niceness}, "
                f"Redis {args.redis_url}; the web workers run no analysis)")
    niceness = env.get("JOB_THREAD_NICENESS") or os.environ.get("JOB_THREAD_NICENESS") or "5 (the app's default)"
    return (f"runner: thread (in-process: JOB_WORKERS={env['JOB_WORKERS']} thread per web worker, "
            f"JOB_THREAD_NICENESS {niceness})")


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM: leave through the same clean-up as Ctrl+C


def main() -> int:
    args = arguments().parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each table as it is done, also through `| tee`
    signal.signal(signal.SIGTERM, _interrupted)
    scratch = Path(tempfile.mkdtemp(prefix="load-test-"))
    env = app_env(args, scratch)
    if args.runner == "rq":
        reset_redis(args.redis_url)
    print(f"seeding {args.clients} accounts x {args.analyses} analyses in {scratch} ...", flush=True)
    accounts = seed(env, args.clients, args.analyses)
    log = scratch / "gunicorn.log"
    base = f"http://127.0.0.1:{args.port}"
    servers: list[subprocess.Popen] = []
    workers: list[subprocess.Popen] = []
    try:
        if args.runner == "rq":
            start_workers(env, args.rq_workers, args.worker_niceness, scratch, workers)
        start_server(env, args.port, log, servers)
        if workers:
            wait_for_workers(args.redis_url, env["JOB_QUEUE"], workers, 300)
        clients = [Client(base, account, random.Random(i)) for i, account in enumerate(accounts)]
        print(runner_line(args, env), flush=True)
        print(f"gunicorn: 2 workers on {base}; {args.clients} concurrent clients; "
              f"{os.cpu_count()} CPU cores; load average before: {os.getloadavg()[0]:.1f}", flush=True)

        baseline = Results()
        elapsed = run_phase(clients, args.baseline_seconds, [("baseline", 1)], baseline)
        base_rate = table("baseline: static file", baseline, elapsed, ["baseline"])["baseline"]

        if args.warmup:
            warm = Results()
            run_phase(clients, args.warmup, MIX, warm)
            drain(base, warm.accepted, args.drain_seconds)

        mixed = Results()
        elapsed = run_phase(clients, args.seconds, MIX, mixed)
        rates = table("mixed load", mixed, elapsed, [k for k, _ in MIX])
        pages = [x for k in PAGE_KINDS for x in mixed.latencies.get(k, [])]
        print(f"  page views (history + result): p50 {pct(pages, 0.5):.1f} ms, p99 {pct(pages, 0.99):.1f} ms")

        print(f"\nwaiting for {len(mixed.accepted)} accepted uploads to finish ...", flush=True)
        started = time.monotonic()
        outcome = drain(base, mixed.accepted, args.drain_seconds)
        lost = outcome.get("unfinished", 0)
        print(f"  uploads: {len(mixed.accepted)} accepted -> {outcome} ({time.monotonic() - started:.0f} s to drain)")

        history = Results()  # after the drain, so no analysis competes with the pages
        elapsed = run_phase(clients, args.history_seconds, [("history", 1)], history)
        history_rate = table("history pages only", history, elapsed, ["history"])["history"]

        errors = sum(len(v) for r in (mixed, history) for v in r.errors.values())
        print("\ntargets")
        checks = [
            (">= 200 req/s on history pages (history-only phase)", history_rate >= 200, f"{history_rate:.0f} req/s"),
            ("p99 <= 100 ms for page views (mixed phase)", pct(pages, 0.99) <= 100, f"{pct(pages, 0.99):.0f} ms"),
            ("0 errors", errors == 0, str(errors)),
            ("0 lost uploads", lost == 0, str(lost)),
        ]
        for label, ok, value in checks:
            print(f"  [{'met' if ok else 'MISSED'}] {label}: {value}")
        print(f"  history throughput is {history_rate / base_rate:.2f}x the static-file baseline "
              f"({base_rate:.0f} req/s) of this run; mixed total {sum(rates.values()):.0f} req/s")
        return 0 if all(ok for _, ok, _ in checks) else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers ...", flush=True)
        return 130
    finally:
        # A second Ctrl+C must not cut the clean-up short and leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in servers:
            stop(server, "gunicorn", 35)
        # All at once, so no worker takes more jobs while another one is being stopped.
        stoppers = [threading.Thread(target=stop, args=(w, "RQ worker", 60)) for w in workers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        if args.runner == "rq":
            try:
                reset_redis(args.redis_url)
            except SystemExit as exc:
                print(f"(could not empty the Redis database: {exc})")
        print(f"(server log: {log}{'; worker logs: worker-*.log there' if workers else ''})")


if __name__ == "__main__":
    sys.exit(main())
