"""The in-process job runner: the bounded thread pool, leases, time limits, recovery after a
crash or restart, and the progress the status endpoint reports. Runs on SQLite by default and
on PostgreSQL with JOBS_TEST_DATABASE=postgresql (or TEST_DATABASE_URL=postgresql...)."""
from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests import job_targets
from tests.jobs_support import (ROOT, Process, ScratchDatabase, add_queued, add_user, flask_env, make_app,
                                row, wait_for, wait_status, wanted_database)

MODEL_FILE = ROOT / "utils" / "weights" / "detector.keras"


@pytest.fixture
def store(tmp_path):
    database = ScratchDatabase(tmp_path, wanted_database())
    yield database
    database.drop()


@pytest.fixture
def make(store, tmp_path):
    """Apps sharing one database, as web processes before and after a restart would."""
    from extensions import db
    from utils.jobs import ThreadRunner

    apps = []
    job_targets.reset()

    def _make(**config):
        app = make_app(store.url, tmp_path, **config)
        apps.append(app)
        return app

    yield _make
    for app in apps:
        runner = app.extensions["jobs"]
        if isinstance(runner, ThreadRunner) and runner.started:
            runner.wait_idle(timeout=15)
        if hasattr(runner, "stop") and runner.started:
            runner.stop()
        with app.app_context():
            db.engine.dispose()


def enqueue(app, analysis_id):
    from utils import jobs

    with app.app_context():
        jobs.enqueue(analysis_id)


def test_sync_runner_takes_a_job_through_every_stage_to_done(make):
    app = make(JOB_RUNNER="sync")
    [analysis_id] = add_queued(app, add_user(app))

    enqueue(app, analysis_id)

    done = row(app, analysis_id)
    assert (done.status, done.stage, done.progress, done.error) == ("done", "done", 1.0, None)
    assert done.attempts == 1 and done.job_id.startswith("local-")
    assert done.started_at is not None and done.heartbeat_at is not None
    stages = [stage for i, stage in job_targets.seen_stages if i == analysis_id]
    assert stages[0] == "decoding" and stages[-1] == "scoring"
    assert "finding faces: frame 4 of 4" in stages


def test_thread_pool_answers_at_once_and_runs_at_most_job_workers_jobs(make, monkeypatch):
    monkeypatch.setattr(job_targets, "STEP_S", 0.1)  # each job ~0.7 s once let through
    gate = threading.Event()  # the jobs wait for it: were enqueue to run them itself, it would not return
    monkeypatch.setattr(job_targets, "gate", gate)  # before each job had waited GATE_TIMEOUT_S and finished
    app = make(JOB_RUNNER="thread", JOB_WORKERS=2)
    ids = add_queued(app, add_user(app), n=5)

    for analysis_id in ids:
        enqueue(app, analysis_id)

    assert {row(app, i).status for i in ids} <= {"queued", "running"}, "enqueue must hand work off, not run it"
    gate.set()
    assert app.extensions["jobs"].wait_idle(timeout=30)
    finished = [row(app, i) for i in ids]
    assert [r.status for r in finished] == ["done"] * 5
    assert all(r.attempts == 1 for r in finished)
    assert job_targets.max_running_at_once == 2


def test_running_job_keeps_its_lease_fresh_and_the_time_limit_fails_it(make):
    app = make(JOB_RUNNER="thread", JOB_TIMEOUT=2, JOB_HEARTBEAT_SECONDS=0.2,
               JOB_TARGET="tests.job_targets:endless_with_progress")
    [analysis_id] = add_queued(app, add_user(app))
    enqueue(app, analysis_id)

    first = wait_status(app, analysis_id, ("running",), timeout=10)
    beats = {first.heartbeat_at}
    wait_for(lambda: beats.add(row(app, analysis_id).heartbeat_at) or len(beats) >= 3, timeout=5,
             interval=0.1, what="three distinct heartbeats")
    failed = wait_status(app, analysis_id, ("failed", "done"), timeout=10)

    assert failed.status == "failed"
    assert "took longer than 2 s" in failed.error
    assert failed.finished_at is not None


def test_job_stuck_where_it_cannot_be_interrupted_is_failed_at_the_hard_deadline(make, monkeypatch):
    monkeypatch.setenv("FAKE_JOB_STUCK_SECONDS", "5")
    app = make(JOB_RUNNER="thread", JOB_TIMEOUT=1, JOB_TIMEOUT_GRACE=1,
               JOB_TARGET="tests.job_targets:stuck_without_progress")
    [analysis_id] = add_queued(app, add_user(app))
    started = time.monotonic()
    enqueue(app, analysis_id)

    failed = wait_status(app, analysis_id, ("failed", "done"), timeout=8)
    assert time.monotonic() - started < 4.5, "must not wait for the stuck call to return"
    assert failed.status == "failed" and "took longer than 1 s" in failed.error

    assert app.extensions["jobs"].wait_idle(timeout=10)  # the stuck call returns, trying to say done
    assert row(app, analysis_id).status == "failed"


def test_crash_in_a_job_fails_it_with_a_reason_and_the_pool_keeps_working(make):
    app = make(JOB_RUNNER="thread", JOB_WORKERS=1, JOB_TARGET="tests.job_targets:crashing")
    user_id = add_user(app)
    [crashed_id] = add_queued(app, user_id)
    enqueue(app, crashed_id)
    assert app.extensions["jobs"].wait_idle(timeout=10)

    app.config["JOB_TARGET"] = "tests.job_targets:leaves_running"
    [left_id] = add_queued(app, user_id)
    enqueue(app, left_id)
    assert app.extensions["jobs"].wait_idle(timeout=10)

    app.config["JOB_TARGET"] = "tests.job_targets:staged"
    [after_id] = add_queued(app, user_id)
    enqueue(app, after_id)
    assert app.extensions["jobs"].wait_idle(timeout=10)

    for failed_id in (crashed_id, left_id):
        failed = row(app, failed_id)
        assert failed.status == "failed" and "internal error" in failed.error
    assert row(app, after_id).status == "done"


def test_a_job_is_claimed_once_even_when_two_runners_race_for_it(make):
    from utils import jobs

    app = make(JOB_RUNNER="sync")
    [analysis_id] = add_queued(app, add_user(app))
    results = []
    gate = threading.Barrier(2)

    def race(token):
        with app.app_context():
            gate.wait()
            results.append(jobs.run_job(analysis_id, token))

    threads = [threading.Thread(target=race, args=(f"local-race-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results, key=str) == [None, "done"]
    assert row(app, analysis_id).attempts == 1


def test_restarted_app_picks_up_queued_work_on_its_first_request(make):
    before = make(JOB_RUNNER="thread")
    ids = add_queued(before, add_user(before), n=3)  # uploads committed, process gone before running

    after = make(JOB_RUNNER="thread", JOB_RECOVER_ON_START=True)
    assert {row(after, i).status for i in ids} == {"queued"}
    after.test_client().get("/healthz")

    for analysis_id in ids:
        assert wait_status(after, analysis_id, ("done", "failed"), timeout=20).status == "done"


def test_idle_runner_adopts_a_queued_row_whose_hand_over_was_lost(make):
    from models import utcnow

    app = make(JOB_RUNNER="thread", JOB_LEASE_SECONDS=1, JOB_SWEEP_SECONDS=0.3)
    [lost] = add_queued(app, add_user(app), created_at=utcnow() - timedelta(minutes=1))

    app.extensions["jobs"].start(recover_on_start=False)  # started by something else, no start-up sweep

    assert wait_status(app, lost, ("done", "failed"), timeout=10).status == "done"


def test_no_background_work_starts_unless_asked(make):
    app = make(JOB_RUNNER="thread")  # tests, `flask db ...` and other commands: JOB_RECOVER_ON_START off
    [analysis_id] = add_queued(app, add_user(app))
    app.test_client().get("/healthz")
    time.sleep(0.5)
    assert not app.extensions["jobs"].started
    assert row(app, analysis_id).status == "queued"


def test_expired_leases_are_rerun_until_attempts_run_out(make):
    from models import utcnow
    from utils import jobs

    app = make(JOB_RUNNER="sync", JOB_LEASE_SECONDS=2, JOB_MAX_ATTEMPTS=3)
    user_id = add_user(app)
    long_ago = utcnow() - timedelta(minutes=5)
    [dead_once] = add_queued(app, user_id, status="running", attempts=1, job_id="local-dead-1",
                             started_at=long_ago, heartbeat_at=long_ago)
    [dead_thrice] = add_queued(app, user_id, status="running", attempts=3, job_id="local-dead-3",
                               started_at=long_ago, heartbeat_at=long_ago)
    [alive] = add_queued(app, user_id, status="running", attempts=1, job_id="local-alive",
                         started_at=long_ago, heartbeat_at=utcnow())

    with app.app_context():
        found = jobs.recover(app, include_queued=False)

    assert (found.requeued, found.failed) == ([dead_once], [dead_thrice])
    rerun = row(app, dead_once)
    assert (rerun.status, rerun.attempts) == ("done", 2)
    given_up = row(app, dead_thrice)
    assert given_up.status == "failed" and "interrupted 3 times" in given_up.error
    assert row(app, alive).status == "running"  # its heartbeat is fresh: not ours to touch


def test_job_of_a_killed_process_is_rerun_not_left_running(make, store, tmp_path):
    """kill -9 the process running the job (the in-process runner inside `flask jobs recover`)."""
    app = make(JOB_RUNNER="thread", JOB_RECOVER_ON_START=False)
    [analysis_id] = add_queued(app, add_user(app))
    env = flask_env(store.url, tmp_path, JOB_RUNNER="thread", JOB_LEASE_SECONDS=2,
                    JOB_HEARTBEAT_SECONDS=0.3, JOB_TARGET="tests.job_targets:slow_first_attempt")
    flask = str(Path(sys.executable).parent / "flask")
    victim = Process([flask, "--app", "app", "jobs", "recover"], env, tmp_path / "victim.log")
    try:
        wait_for(lambda: (r := row(app, analysis_id)).status == "running" and r.stage.startswith("finding"),
                 timeout=60, what="the job to be running in the subprocess")
        victim.kill9()
    except BaseException:
        print(victim.output())
        raise
    finally:
        victim.stop()

    orphan = row(app, analysis_id)
    assert (orphan.status, orphan.attempts) == ("running", 1)
    time.sleep(2.5)  # let the lease run out
    from utils import jobs

    with app.app_context():
        found = jobs.recover(app)
    assert found.requeued == [analysis_id]
    assert app.extensions["jobs"].wait_idle(timeout=20)
    rerun = row(app, analysis_id)
    assert (rerun.status, rerun.attempts) == ("done", 2)


def _login(client, app, user_id):
    from extensions import db
    from models import User

    with app.app_context():
        session_id = db.session.get(User, user_id).get_id()
    with client.session_transaction() as session:
        session["_user_id"] = session_id
        session["_fresh"] = True


def test_status_endpoint_reports_each_stage_while_the_job_runs(make, monkeypatch):
    monkeypatch.setattr(job_targets, "STEP_S", 0.25)
    app = make(JOB_RUNNER="thread")
    if "upload.status" not in app.view_functions:
        pytest.fail("GET /analyses/<id>/status (upload.status) is missing")
    user_id = add_user(app)
    [analysis_id] = add_queued(app, user_id)
    client = app.test_client()
    _login(client, app, user_id)

    enqueue(app, analysis_id)
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = client.get(f"/analyses/{analysis_id}/status")
        assert response.status_code == 200
        body = response.get_json()
        if not seen or seen[-1][0] != body["stage"]:
            seen.append((body["stage"], body["progress"], body["status"]))
        if body["finished"]:
            break
        time.sleep(0.05)

    stages = [stage for stage, _, _ in seen]
    assert "decoding" in stages and "scoring" in stages
    assert any(stage.startswith("finding faces: frame") for stage in stages)
    assert seen[-1] == ("done", 1.0, "done")
    progresses = [p for _, p, _ in seen]
    assert progresses == sorted(progresses), "progress never goes backwards"


@pytest.mark.skipif(not MODEL_FILE.exists(), reason=f"no trained model at {MODEL_FILE} yet")
@pytest.mark.parametrize("runner", ["sync", "thread"])
def test_an_upload_reaches_done_with_the_real_model(make, tmp_path, runner):
    """The whole path: POST /upload -> row -> runner -> analyse() with the shipped model."""
    import io

    from PIL import Image
    from skimage import data

    app = make(JOB_RUNNER=runner, JOB_TARGET="utils.analysis:analyse", JOB_TIMEOUT=120,
               MODEL_PATH=str(MODEL_FILE))
    user_id = add_user(app)
    client = app.test_client()
    _login(client, app, user_id)
    photo = io.BytesIO()
    Image.fromarray(data.astronaut()).save(photo, "JPEG", quality=90)
    photo.seek(0)

    response = client.post("/upload", data={"files": (photo, "astronaut.jpg")},
                           content_type="multipart/form-data")
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    analysis_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[-1])

    done = wait_status(app, analysis_id, ("done", "failed"), timeout=120)
    assert done.status == "done", done.error
    assert done.verdict in ("real", "fake", "uncertain", "no_face")
    assert done.model_version and done.attempts == 1


def test_sqlite_web_and_runner_write_at_once_without_database_is_locked(make, store, monkeypatch, caplog):
    """WAL + busy timeout (app.py): job threads, their heartbeats and page polls all write or read
    the one SQLite file at the same time."""
    if store.engine != "sqlite":
        pytest.skip("SQLite locking only")
    from sqlalchemy import text

    from extensions import db

    monkeypatch.setattr(job_targets, "STEP_S", 0.03)  # 12 jobs x 6 steps on 3 threads: ~0.8 s of writes
    app = make(JOB_RUNNER="thread", JOB_WORKERS=3, JOB_HEARTBEAT_SECONDS=0.05)
    with app.app_context():
        assert db.session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    user_id = add_user(app)
    ids = add_queued(app, user_id, n=12)
    client = app.test_client()
    _login(client, app, user_id)

    for analysis_id in ids:
        enqueue(app, analysis_id)
    polls = 0
    while not app.extensions["jobs"].wait_idle(timeout=0.01):
        assert client.get(f"/analyses/{ids[polls % len(ids)]}/status").status_code == 200
        polls += 1

    assert polls >= 5
    assert [row(app, i).status for i in ids] == ["done"] * 12
    assert "database is locked" not in caplog.text


@pytest.mark.skipif(not MODEL_FILE.exists(), reason=f"no trained model at {MODEL_FILE} yet")
def test_time_limit_stops_the_real_pipeline_at_its_first_progress_report(make, tmp_path):
    """JobTimedOut must travel up through convert.py and analyse() untouched (it is not an
    Exception), leaving a failed row with the reason and no half-stored results."""
    import io

    from PIL import Image
    from skimage import data

    from extensions import db
    from models import Analysis
    from utils import storage

    app = make(JOB_RUNNER="sync", JOB_TARGET="utils.analysis:analyse", JOB_TIMEOUT=0,
               MODEL_PATH=str(MODEL_FILE))
    photo = io.BytesIO()
    Image.fromarray(data.astronaut()).save(photo, "JPEG")
    photo.seek(0)
    with app.app_context():
        stored = storage.save_upload(photo)
    [analysis_id] = add_queued(app, add_user(app), stored_name=stored.stored_name, sha256=stored.sha256)

    enqueue(app, analysis_id)

    failed = row(app, analysis_id)
    assert failed.status == "failed" and "took longer than 0 s" in failed.error
    with app.app_context():
        stored_row = db.session.get(Analysis, analysis_id)
        assert stored_row.verdict is None and not stored_row.faces and not stored_row.frames


def test_jobs_status_command_counts_analyses_per_state(make):
    app = make(JOB_RUNNER="thread")
    user_id = add_user(app)
    add_queued(app, user_id, n=2)
    add_queued(app, user_id, status="failed", error="The file is empty.")

    result = app.test_cli_runner().invoke(args=["jobs", "status"])

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["runner: thread", "queued: 2", "running: 0", "done: 0", "failed: 1"]


def test_worker_command_explains_that_it_needs_redis(make):
    result = make(JOB_RUNNER="thread").test_cli_runner().invoke(args=["worker"])

    assert result.exit_code != 0 and "set REDIS_URL" in result.output
