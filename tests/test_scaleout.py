"""Scale-out against the real servers: RQ on Redis with real `flask --app app worker` processes,
a shared database (SQLite file by default; PostgreSQL with JOBS_TEST_DATABASE=postgresql), and the
gunicorn production start. Skips with the reason when Redis/PostgreSQL are unreachable, fails
instead under REQUIRE_SERVICES=1 (CI)."""
from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from tests.jobs_support import (ROOT, Process, ScratchDatabase, add_queued, add_user, flask_env, free_port,
                                make_app, redis_url, row, start_worker, wait_for, wait_status, wanted_database)

MODEL_FILE = ROOT / "utils" / "weights" / "detector.keras"


@pytest.fixture
def store(tmp_path):
    database = ScratchDatabase(tmp_path, wanted_database())
    yield database
    database.drop()


@pytest.fixture
def rq_setup(store, tmp_path):
    """A queue name nobody else uses on the test Redis DB; its keys are deleted afterwards."""
    from redis import Redis

    url = redis_url()
    queue_name = f"test-{uuid.uuid4().hex[:10]}"
    processes: list[Process] = []
    apps = []

    class Setup:
        redis = url
        queue = queue_name

        def app(self, **config):
            settings = dict(JOB_RUNNER="rq", REDIS_URL=url, JOB_QUEUE=queue_name)
            settings.update(config)
            app = make_app(store.url, tmp_path, **settings)
            apps.append(app)
            return app

        def worker(self, name: str, **env) -> Process:
            settings = dict(REDIS_URL=url, JOB_QUEUE=queue_name, JOB_LEASE_SECONDS=2,
                            JOB_HEARTBEAT_SECONDS=0.3, JOB_SWEEP_SECONDS=0.5,
                            JOB_TARGET="tests.job_targets:staged")
            settings.update(env)
            process = start_worker(store.url, tmp_path, f"{queue_name}-{name}", **settings)
            processes.append(process)
            return process

    yield Setup()

    from extensions import db

    for process in processes:
        process.stop()
    for app in apps:
        if app.extensions["jobs"].started:
            app.extensions["jobs"].stop()
        with app.app_context():
            db.engine.dispose()
    connection = Redis.from_url(url)
    for key in list(connection.scan_iter("rq:job:*")):
        if connection.hget(key, "origin") == queue_name.encode():
            job_id = key.decode().split(":", 2)[2]
            connection.delete(key, *connection.scan_iter(f"rq:*{job_id}*"))
    for key in list(connection.scan_iter(f"*{queue_name}*")):
        connection.delete(key)
    connection.srem("rq:queues", f"rq:queue:{queue_name}")
    for member in connection.smembers("rq:workers"):
        if queue_name.encode() in member:
            connection.srem("rq:workers", member)


def enqueue(app, analysis_id):
    from utils import jobs

    with app.app_context():
        jobs.enqueue(analysis_id)


def rq_job(setup, job_id):
    from redis import Redis
    from rq.job import Job

    return Job.fetch(job_id, connection=Redis.from_url(setup.redis))


def settle(app, ids, timeout, workers):
    """Wait for every row to finish; on a timeout show what the workers said."""
    try:
        return [wait_status(app, i, ("done", "failed"), timeout=timeout) for i in ids]
    except AssertionError:
        for worker in workers:
            print(f"--- {worker.log_path.name}\n{worker.output()[-4000:]}")
        raise


def test_rq_worker_takes_queued_analyses_to_done(rq_setup):
    app = rq_setup.app()
    ids = add_queued(app, add_user(app), n=3)
    for analysis_id in ids:
        enqueue(app, analysis_id)

    queued = [row(app, i) for i in ids]
    assert all(r.status == "queued" and r.job_id.startswith(f"analysis-{r.id}-") for r in queued)
    with app.app_context():
        assert app.extensions["jobs"].queue().count == 3

    worker = rq_setup.worker("a")
    finished = settle(app, ids, timeout=60, workers=[worker])

    assert [r.status for r in finished] == ["done"] * 3
    for before, after in zip(queued, finished):
        assert after.job_id == before.job_id and after.attempts == 1
        assert rq_job(rq_setup, after.job_id).get_status() == "finished"


def test_two_workers_share_the_queue_and_each_job_runs_once(rq_setup):
    from redis import Redis
    from rq import Queue, Worker

    app = rq_setup.app()
    workers = [rq_setup.worker(n, FAKE_JOB_STEP_SECONDS=0.1) for n in ("a", "b")]
    queue = Queue(rq_setup.queue, connection=Redis.from_url(rq_setup.redis))
    wait_for(lambda: len(Worker.all(queue=queue)) == 2, timeout=60, what="two workers registered")

    ids = add_queued(app, add_user(app), n=6)
    for analysis_id in ids:
        enqueue(app, analysis_id)
    finished = settle(app, ids, timeout=60, workers=workers)

    assert [(r.status, r.attempts) for r in finished] == [("done", 1)] * 6
    assert len({rq_job(rq_setup, r.job_id).worker_name for r in finished}) == 2


def test_time_limit_fails_rq_jobs_with_a_reason_and_the_worker_goes_on(rq_setup):
    app = rq_setup.app(JOB_TIMEOUT=1, JOB_TIMEOUT_GRACE=1)
    user_id = add_user(app)
    endless, stuck, after = add_queued(app, user_id, n=3)
    worker = rq_setup.worker("a", JOB_TIMEOUT=1, JOB_TIMEOUT_GRACE=1, FAKE_JOB_STUCK_SECONDS=30,
                             JOB_TARGET="tests.job_targets:endless_with_progress")
    enqueue(app, endless)
    [first] = settle(app, [endless], timeout=60, workers=[worker])
    worker.stop()

    # A job stuck without reporting progress: RQ's alarm (JOB_TIMEOUT + grace) ends it.
    worker = rq_setup.worker("b", JOB_TIMEOUT=1, JOB_TIMEOUT_GRACE=1, FAKE_JOB_STUCK_SECONDS=30,
                             JOB_TARGET="tests.job_targets:stuck_without_progress")
    enqueue(app, stuck)
    [second] = settle(app, [stuck], timeout=60, workers=[worker])
    started = time.monotonic()
    app.config["JOB_TIMEOUT"] = 30
    enqueue(app, after)  # the next job, same worker: it was not killed by the stuck one
    wait_for(lambda: row(app, after).status != "queued", timeout=30, what="the worker to take the next job")

    for failed in (first, second):
        assert failed.status == "failed", failed.error
        assert "took longer than 1 s" in failed.error
    assert time.monotonic() - started < 30
    assert rq_job(rq_setup, second.job_id).get_status() == "failed"


def test_killed_worker_job_is_rerun_by_the_next_worker(rq_setup):
    app = rq_setup.app()
    [analysis_id] = add_queued(app, add_user(app))
    victim = rq_setup.worker("victim", JOB_TARGET="tests.job_targets:slow_first_attempt")
    enqueue(app, analysis_id)
    try:
        wait_for(lambda: (r := row(app, analysis_id)).status == "running" and r.stage.startswith("finding"),
                 timeout=60, what="the job to be running in the worker")
    except AssertionError:
        print(victim.output())
        raise
    victim.kill9()
    orphan = row(app, analysis_id)
    assert (orphan.status, orphan.attempts) == ("running", 1)

    rescuer = rq_setup.worker("rescuer", JOB_TARGET="tests.job_targets:slow_first_attempt")
    [rerun] = settle(app, [analysis_id], timeout=60, workers=[rescuer])

    assert (rerun.status, rerun.attempts) == ("done", 2)
    assert rerun.job_id != orphan.job_id


def test_worker_stopped_twice_hands_its_job_back_instead_of_failing_it(rq_setup):
    """SIGTERM, SIGTERM: RQ's cold shutdown interrupts the job; that is no reason to fail it."""
    import signal

    app = rq_setup.app()
    [analysis_id] = add_queued(app, add_user(app))
    stopped = rq_setup.worker("stopped", JOB_TARGET="tests.job_targets:slow_first_attempt")
    enqueue(app, analysis_id)
    wait_for(lambda: (r := row(app, analysis_id)).status == "running" and r.stage.startswith("finding"),
             timeout=60, what="the job to be running in the worker")
    stopped.proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a second signal within 1 s
    stopped.proc.send_signal(signal.SIGTERM)
    stopped.proc.wait(timeout=30)

    handed_back = row(app, analysis_id)
    assert (handed_back.status, handed_back.attempts, handed_back.error) == ("queued", 0, None)
    rq_setup.worker("next")  # its start-up sweep re-enqueues the row (its RQ job is gone)
    [done] = settle(app, [analysis_id], timeout=60, workers=[stopped])
    assert (done.status, done.attempts) == ("done", 1)


def test_killed_worker_job_fails_with_a_reason_when_attempts_run_out(rq_setup):
    app = rq_setup.app()
    [analysis_id] = add_queued(app, add_user(app))
    victim = rq_setup.worker("victim", JOB_TARGET="tests.job_targets:slow_first_attempt")
    enqueue(app, analysis_id)
    wait_for(lambda: row(app, analysis_id).status == "running", timeout=60, what="the job to start")
    victim.kill9()

    rescuer = rq_setup.worker("rescuer", JOB_MAX_ATTEMPTS=1)
    [failed] = settle(app, [analysis_id], timeout=60, workers=[rescuer])

    assert failed.status == "failed" and "interrupted once" in failed.error


def test_starting_worker_picks_up_queued_rows_whose_jobs_were_lost(rq_setup):
    """The web committed the rows but Redis lost the jobs (flushed, or down at upload time)."""
    from models import utcnow

    app = rq_setup.app()
    user_id = add_user(app)
    a_while_ago = utcnow() - timedelta(minutes=2)
    [lost] = add_queued(app, user_id, job_id="analysis-0-gone", created_at=a_while_ago)
    [never_sent] = add_queued(app, user_id, job_id=None, created_at=a_while_ago)

    worker = rq_setup.worker("a")
    finished = settle(app, [lost, never_sent], timeout=60, workers=[worker])

    assert [(r.status, r.attempts) for r in finished] == [("done", 1), ("done", 1)]
    assert finished[0].job_id != "analysis-0-gone"


def test_web_process_puts_a_dead_workers_job_back_in_the_queue_even_with_no_worker_up(rq_setup):
    from models import utcnow

    from rq.exceptions import NoSuchJobError

    def rq_job_status(job_id):
        try:
            return rq_job(rq_setup, job_id).get_status()
        except NoSuchJobError:
            return None

    app = rq_setup.app(JOB_RECOVER_ON_START=True)
    long_ago = utcnow() - timedelta(minutes=5)
    [orphan] = add_queued(app, add_user(app), status="running", attempts=1, job_id="analysis-x-dead",
                          started_at=long_ago, heartbeat_at=long_ago)

    app.test_client().get("/healthz")  # a web process starts serving
    # The sweep marks the row queued without a job, records the new job id, then pushes that job to
    # Redis (in this order, so a worker never runs a job the row does not name): wait for both.
    requeued = wait_for(lambda: (r := row(app, orphan)).status == "queued"
                        and r.job_id not in (None, "analysis-x-dead") and rq_job_status(r.job_id) and r,
                        timeout=10, what="the row to be queued again under a new job, and that job in Redis")

    assert rq_job_status(requeued.job_id) == "queued"  # waiting for any worker
    assert requeued.attempts == 1


def test_upload_is_kept_queued_when_redis_is_down(store, tmp_path):
    app = make_app(store.url, tmp_path, JOB_RUNNER="rq", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    [analysis_id] = add_queued(app, add_user(app))

    enqueue(app, analysis_id)  # logs the failure; must not raise into the upload request

    assert row(app, analysis_id).status == "queued"
    with app.app_context():
        from utils import jobs

        state = jobs.queue_state()
    assert state["runner"] == "rq" and state["redis"].startswith("unreachable")


@pytest.mark.skipif(not MODEL_FILE.exists(), reason=f"no trained model at {MODEL_FILE} yet")
def test_an_upload_reaches_done_on_an_rq_worker_with_the_real_model(rq_setup):
    import io

    from PIL import Image
    from skimage import data

    from extensions import db
    from models import User

    app = rq_setup.app(JOB_TARGET="utils.analysis:analyse")
    user_id = add_user(app)
    worker = rq_setup.worker("model", JOB_TARGET="utils.analysis:analyse", JOB_TIMEOUT=120,
                             MODEL_PATH=str(MODEL_FILE))
    client = app.test_client()
    with app.app_context():
        session_id = db.session.get(User, user_id).get_id()
    with client.session_transaction() as session:
        session["_user_id"] = session_id
    ids = []
    for quality in (90, 70):  # two different files: the second must reuse the loaded model
        photo = io.BytesIO()
        Image.fromarray(data.astronaut()).save(photo, "JPEG", quality=quality)
        photo.seek(0)
        response = client.post("/upload", data={"files": (photo, f"astronaut-{quality}.jpg")},
                               content_type="multipart/form-data")
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        ids.append(int(response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]))

    finished = settle(app, ids, timeout=180, workers=[worker])

    for done in finished:
        assert done.status == "done", done.error
        assert done.verdict in ("real", "fake", "uncertain", "no_face") and done.model_version
    assert worker.output().count("model loaded from") == 1


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(c) for c in children)
    return found


def test_gunicorn_production_start_serves_healthz_with_two_workers(store, tmp_path):
    make_app(store.url, tmp_path)  # the tables, as `flask db upgrade` would leave them
    port = free_port()
    env = flask_env(store.url, tmp_path, PORT=port, WEB_CONCURRENCY=2, APP_ENV="production",
                    SECRET_KEY="a-long-random-secret-for-this-test")
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    server = Process([gunicorn, "-c", "gunicorn.conf.py"], env, tmp_path / "gunicorn.log")
    try:
        def healthz():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:  # 503 while the model is missing
                return exc.code, json.loads(exc.read())
            except OSError:
                return None

        status, body = wait_for(healthz, timeout=60, interval=0.3, what="gunicorn to answer /healthz")
        assert body["database"]["ok"] is True
        assert status == (200 if body["model"]["ok"] else 503)
        assert len(_children(server.pid)) == 2
        assert server.stop() == 0
        log = server.output()
        assert f"Listening at: http://127.0.0.1:{port}" in log
        assert '"GET /healthz HTTP/1.1"' in log  # access log on stdout
    finally:
        server.stop()


def _run(argv: list[str], env: dict, stdin: str = "") -> str:
    import subprocess

    done = subprocess.run(argv, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _post_file(url: str, token: str, name: str, payload: bytes) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def _get_json(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.skipif(not MODEL_FILE.exists(), reason=f"no trained model at {MODEL_FILE} yet")
def test_the_documented_scale_out_topology_end_to_end(rq_setup, tmp_path):
    """The README's "Scaling out" section, command by command: PostgreSQL + Redis + a shared upload folder,
    `flask db upgrade`, an account and an API token from the CLI, two `flask --app app worker`
    processes, gunicorn with two web workers; an API upload ends `done`."""
    import io

    from PIL import Image
    from skimage import data

    pg = ScratchDatabase(tmp_path, "postgresql")
    flask = str(Path(sys.executable).parent / "flask")
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    port = free_port()
    env = flask_env(pg.url, tmp_path, APP_ENV="production", SECRET_KEY="one-secret-shared-by-all-web-workers",
                    REDIS_URL=rq_setup.redis, JOB_QUEUE=rq_setup.queue, MODEL_PATH=str(MODEL_FILE),
                    PORT=port, WEB_CONCURRENCY=2)
    processes = []
    try:
        _run([flask, "--app", "app", "db", "upgrade"], env)
        has_migrations = any((ROOT / "migrations" / "versions").glob("*.py"))
        if has_migrations:
            from sqlalchemy import create_engine, inspect

            engine = create_engine(pg.url)
            assert "analysis" in inspect(engine).get_table_names(), "flask db upgrade made no tables"
            engine.dispose()
        else:  # until the first migration is committed, the tables come from the models
            make_app(pg.url, tmp_path)
        _run([flask, "--app", "app", "users", "create", "ops@example.com"], env, stdin="a long enough password\n")
        token = _run([flask, "--app", "app", "tokens", "create", "ops@example.com"], env).strip().splitlines()[-1]

        for name in ("w1", "w2"):
            processes.append(Process([flask, "--app", "app", "worker", "--name", f"{rq_setup.queue}-{name}"],
                                     env, tmp_path / f"{name}.log"))
        processes.append(Process([gunicorn, "-c", "gunicorn.conf.py"], env, tmp_path / "gunicorn.log"))
        base = f"http://127.0.0.1:{port}"
        status, health = wait_for(lambda: _get_json(base + "/healthz") if _alive(base) else None,
                                  timeout=60, what="gunicorn")
        assert status == 200 and health["jobs"]["runner"] == "rq", health

        photo = io.BytesIO()
        Image.fromarray(data.astronaut()).save(photo, "JPEG", quality=85)
        status, created = _post_file(base + "/api/v1/analyses", token, "astronaut.jpg", photo.getvalue())
        assert status == 202 and created["status"] == "queued"

        def finished():
            _, body = _get_json(created["url"], token)
            return body if body["status"] in ("done", "failed") else None

        result = wait_for(finished, timeout=180, interval=0.5, what="the analysis over the API")
        assert result["status"] == "done", result
        assert result["verdict"] in ("real", "fake", "uncertain", "no_face") and result["model_version"]
        # Both workers register once TensorFlow is imported; on a loaded machine the one that did not
        # take the job may still be starting when it ends.
        wait_for(lambda: _get_json(base + "/healthz")[1]["jobs"]["workers"] == 2, timeout=120, interval=1,
                 what="/healthz to count both workers")
    except BaseException:
        for process in processes:
            print(f"--- {process.log_path.name}\n{process.output()[-3000:]}")
        raise
    finally:
        for process in processes:
            process.stop()
        pg.drop()


def _alive(base: str) -> bool:
    try:
        urllib.request.urlopen(base + "/healthz", timeout=2)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def test_gunicorn_restart_hands_running_work_to_the_next_server(store, tmp_path):
    """In-process runner under gunicorn: a graceful stop (deploy) puts the running analysis back in
    the queue at once, without spending an attempt, and the next server start runs it."""
    app = make_app(store.url, tmp_path)
    [analysis_id] = add_queued(app, add_user(app))
    gunicorn = str(Path(sys.executable).parent / "gunicorn")

    def serve(label: str, step_s: float) -> Process:
        env = flask_env(store.url, tmp_path, PORT=free_port(), WEB_CONCURRENCY=1, JOB_RUNNER="thread",
                        JOB_RECOVER_ON_START=1, JOB_TARGET="tests.job_targets:staged",
                        FAKE_JOB_STEP_SECONDS=step_s, JOB_HEARTBEAT_SECONDS=0.3)
        return Process([gunicorn, "-c", "gunicorn.conf.py"], env, tmp_path / f"gunicorn-{label}.log")

    first = serve("first", step_s=5)  # ~30 s job: still running when the server is stopped
    try:
        running = wait_for(lambda: (r := row(app, analysis_id)).status == "running" and r, timeout=60,
                           what="the first server to start the queued analysis on boot")
        assert first.stop() == 0
    finally:
        first.stop()
        print(first.output()[-2000:])
    handed_back = row(app, analysis_id)
    assert (handed_back.status, handed_back.attempts) == ("queued", 0)
    assert running.job_id.startswith("local-") and handed_back.job_id is None

    second = serve("second", step_s=0.05)
    try:
        done = wait_status(app, analysis_id, ("done", "failed"), timeout=60)
    finally:
        second.stop()
    assert (done.status, done.attempts) == ("done", 1)
