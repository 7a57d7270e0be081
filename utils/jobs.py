"""Runs analyse() for queued analyses, so no web request waits for a video and no upload is lost.

Runners (JOB_RUNNER): "thread" — a small in-process pool (the default without REDIS_URL);
"rq" — RQ workers started with `flask --app app worker` (the default with REDIS_URL);
"sync" — inline, for tests and scripts.

Every runner goes through run_job(): it claims the row with a compare-and-set (so a job runs at
most once even when recovery and a late worker race), holds a lease by refreshing heartbeat_at
from a side thread, enforces JOB_TIMEOUT, and leaves the row done or failed. recover() turns rows
whose lease expired (their process died) back into queued work, or fails them after
JOB_MAX_ATTEMPTS, and finds queued rows that no runner holds.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

from flask import Flask, current_app, has_app_context
from sqlalchemy import func, or_, select, update

from extensions import db
from models import Analysis, utcnow

log = logging.getLogger("jobs")

DEFAULT_TARGET = "utils.analysis:analyse"
RUNNERS = ("thread", "rq", "sync")


class JobTimedOut(BaseException):
    """Raised inside a job when it passes JOB_TIMEOUT. A BaseException so that the pipeline's own
    `except Exception` (which turns crashes into 'internal error') lets it through to run_job."""


def timeout_reason(seconds: int) -> str:
    return (f"The analysis took longer than {seconds} s and was stopped. "
            "A shorter clip or a smaller file may work; otherwise try again later.")


def gave_up_reason(attempts: int) -> str:
    times = "once" if attempts == 1 else f"{attempts} times"
    return (f"The analysis was interrupted {times} (the process running it stopped), "
            "so it was given up. Please try again later.")


CRASH_REASON = "An internal error stopped the analysis. It has been logged; please try again later."


# --------------------------------------------------------------------------- settings

def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _settings_from_env(config) -> dict:
    """Job settings that config.py does not define yet; the environment wins, then defaults."""
    lease = int(config.get("JOB_LEASE_SECONDS", 60))
    testing = bool(config.get("TESTING"))
    recover_env = os.environ.get("JOB_RECOVER_ON_START")
    return {
        "JOB_RUNNER": os.environ.get("JOB_RUNNER", "auto"),
        "JOB_QUEUE": os.environ.get("JOB_QUEUE", "analyses"),
        "JOB_MAX_ATTEMPTS": _env_int("JOB_MAX_ATTEMPTS", 3),
        "JOB_HEARTBEAT_SECONDS": float(os.environ.get("JOB_HEARTBEAT_SECONDS", max(1.0, lease / 4))),
        "JOB_SWEEP_SECONDS": float(os.environ.get("JOB_SWEEP_SECONDS", max(2.0, lease / 2))),
        "JOB_TIMEOUT_GRACE": _env_int("JOB_TIMEOUT_GRACE", 10),
        "JOB_TARGET": os.environ.get("JOB_TARGET", DEFAULT_TARGET),
        # Nice value of the in-process runner's threads (0-19). 5 is the value measured in the load
        # test's A/B; higher yields more CPU to pages but lets a starved analysis thread hold the GIL
        # its own process's requests wait for, so change it only after measuring.
        "JOB_THREAD_NICENESS": _env_int("JOB_THREAD_NICENESS", 5),
        # Tests and one-off CLI commands must not start background work behind the caller's back.
        "JOB_RECOVER_ON_START": (recover_env.lower() in {"1", "true", "yes", "on"})
        if recover_env is not None else not testing,
    }


def runner_name(app: Flask) -> str:
    name = app.config["JOB_RUNNER"]
    if name == "auto":
        return "rq" if app.config.get("REDIS_URL") else "thread"
    if name not in RUNNERS:
        raise ValueError(f"JOB_RUNNER must be one of auto, {', '.join(RUNNERS)}; got {name!r}")
    if name == "rq" and not app.config.get("REDIS_URL"):
        raise ValueError("JOB_RUNNER=rq needs REDIS_URL (for example redis://127.0.0.1:6379/0)")
    return name


def job_target(app: Flask) -> Callable:
    """The function a job calls: analyse(analysis_id, progress=) unless JOB_TARGET names another
    (the seam tests use to exercise runners without the model)."""
    target = app.config["JOB_TARGET"]
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


# --------------------------------------------------------------------------- public entry points

def init_app(app: Flask) -> None:
    for key, value in _settings_from_env(app.config).items():
        app.config.setdefault(key, value)
    runner_name(app)  # fail at start-up on a bad setting, not at the first upload
    app.extensions["jobs"] = _make_runner(app)

    @app.before_request
    def _start_runner_on_first_request():
        # Only processes that serve requests run background work; `flask db ...` never does.
        runner = app.extensions["jobs"]
        if app.config["JOB_RECOVER_ON_START"] and not runner.started:
            runner.start(recover_on_start=True)


def enqueue(analysis_id: int) -> None:
    """Put an analysis in `queued` (a re-run when it had finished) and hand it to the runner.
    A row that is running now is left alone. The row is committed first, so nothing is lost if
    the runner is down: recovery finds it."""
    runner = current_app.extensions["jobs"]
    runner.submit(analysis_id)


def start(app: Flask) -> None:
    """Start background work now (gunicorn's post_worker_init calls this): recovery of work left
    by a dead process, the periodic lease sweep and, in-process, the pool."""
    app.extensions["jobs"].start(recover_on_start=True)


def get_runner(app: Flask):
    return app.extensions["jobs"]


def queue_state() -> dict:
    """For /healthz: which runner, and whether it can take work. A Redis outage does not make the
    web unhealthy (uploads stay queued in the database and workers pick them up later), so it is
    reported, not failed on."""
    return current_app.extensions["jobs"].describe()


def _make_runner(app: Flask):
    name = runner_name(app)
    if name == "rq":
        return RQRunner(app)
    if name == "sync":
        return SyncRunner(app)
    return ThreadRunner(app)


# --------------------------------------------------------------------------- row state changes

def _mark_queued(analysis_id: int, job_id: str | None) -> bool:
    """queued again for a fresh run; refuses a row that is running now."""
    result = db.session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.status != "running")
        .values(status="queued", job_id=job_id, attempts=0, error=None, stage="queued", progress=0.0,
                heartbeat_at=None, finished_at=None)
    )
    db.session.commit()
    return result.rowcount == 1


def _claim(analysis_id: int, token: str, *, expected_job_id: str | None) -> bool:
    """queued -> running for this token only; False if another runner got there first."""
    now = utcnow()
    stmt = update(Analysis).where(Analysis.id == analysis_id, Analysis.status == "queued")
    if expected_job_id is not None:
        stmt = stmt.where(Analysis.job_id == expected_job_id)
    result = db.session.execute(
        stmt.values(status="running", job_id=token, attempts=Analysis.attempts + 1, started_at=now,
                    heartbeat_at=now, finished_at=None, error=None, stage="starting", progress=0.0)
    )
    db.session.commit()
    return result.rowcount == 1


def _fail_if_mine(analysis_id: int, token: str, reason: str,
                  from_statuses: tuple[str, ...] = ("running",)) -> bool:
    """Record a failure unless the row has moved on (a newer run owns it, or it settled)."""
    stmt = update(Analysis).where(Analysis.id == analysis_id, Analysis.job_id == token,
                                  Analysis.status.in_(from_statuses))
    with db.engine.begin() as conn:
        result = conn.execute(stmt.values(status="failed", error=reason, finished_at=utcnow()))
    return result.rowcount == 1


def _hand_back(analysis_id: int, token: str) -> bool:
    """Running -> queued for the next process, without counting this cut-short attempt."""
    with db.engine.begin() as conn:
        result = conn.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id, Analysis.job_id == token, Analysis.status == "running")
            .values(status="queued", job_id=None, stage="queued", progress=0.0, heartbeat_at=None,
                    attempts=Analysis.attempts - 1))
    return result.rowcount == 1


class _Lease:
    """Keeps heartbeat_at fresh while a job runs and watches its deadline.

    Past JOB_TIMEOUT it flags the job (the progress callback raises JobTimedOut at the next
    stage or frame); past JOB_TIMEOUT + grace, if the job is stuck where it cannot be interrupted,
    it marks the row failed itself and stops beating, so the row never stays running."""

    def __init__(self, app: Flask, analysis_id: int, token: str):
        self.engine = db.engine
        self.analysis_id = analysis_id
        self.token = token
        self.interval = float(app.config["JOB_HEARTBEAT_SECONDS"])
        self.timeout = int(app.config["JOB_TIMEOUT"])
        self.deadline = time.monotonic() + self.timeout
        self.hard_deadline = self.deadline + int(app.config["JOB_TIMEOUT_GRACE"])
        self.timed_out = threading.Event()
        self.abandoned = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{analysis_id}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def check(self, stage: str = "", fraction: float = 0.0) -> None:
        """The progress callback handed to the pipeline: the point where a late job stops."""
        if self.timed_out.is_set() or time.monotonic() > self.deadline:
            self.timed_out.set()
            raise JobTimedOut(self.timeout)

    def _beat(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= self.deadline:
                self.timed_out.set()
            if now >= self.hard_deadline:
                self._give_up()
                return
            wait = self.interval
            if not self.timed_out.is_set():
                wait = min(wait, max(0.05, self.deadline - now))
            else:
                wait = min(wait, max(0.05, self.hard_deadline - now))
            if self._stop.wait(wait):
                return
            self._refresh()

    def _refresh(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(Analysis)
                    .where(Analysis.id == self.analysis_id, Analysis.job_id == self.token,
                           Analysis.status == "running")
                    .values(heartbeat_at=utcnow())
                )
        except Exception:  # a missed beat is survivable; the lease is several beats long
            log.warning("heartbeat for analysis %s failed", self.analysis_id, exc_info=True)

    def _give_up(self) -> None:
        self.abandoned.set()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(Analysis)
                    .where(Analysis.id == self.analysis_id, Analysis.job_id == self.token,
                           Analysis.status == "running")
                    .values(status="failed", error=timeout_reason(self.timeout), finished_at=utcnow())
                )
            log.error("analysis %s is stuck past its time limit; marked failed", self.analysis_id)
        except Exception:
            log.exception("could not mark stuck analysis %s failed; the lease sweep will",
                          self.analysis_id)


def run_job(analysis_id: int, token: str, *, expected_job_id: str | None = None) -> str | None:
    """Claim, run the target under a lease and a time limit, and settle the row.
    Returns the final status, or None when the row was not ours to run. Needs an app context."""
    app = current_app._get_current_object()
    if not _claim(analysis_id, token, expected_job_id=expected_job_id):
        log.info("analysis %s: not queued for %s any more; skipped", analysis_id, token)
        return None
    target = job_target(app)
    with _Lease(app, analysis_id, token) as lease:
        try:
            target(analysis_id, progress=lease.check)
        except JobTimedOut:
            db.session.rollback()
            _fail_if_mine(analysis_id, token, timeout_reason(lease.timeout))
        except (SystemExit, KeyboardInterrupt):  # the process is being stopped: not the job's fault
            db.session.rollback()
            _hand_back(analysis_id, token)
            raise
        except BaseException:
            db.session.rollback()
            if lease.timed_out.is_set():  # RQ's hard alarm, raised where the job was stuck
                _fail_if_mine(analysis_id, token, timeout_reason(lease.timeout), ("running", "failed"))
            else:
                log.exception("analysis %s: job crashed", analysis_id)
                _fail_if_mine(analysis_id, token, CRASH_REASON)
            raise
        else:
            db.session.rollback()
            if lease.abandoned.is_set():
                # Declared failed at the hard deadline while stuck: a late finish does not undo it.
                _fail_if_mine(analysis_id, token, timeout_reason(lease.timeout),
                              ("running", "done", "failed"))
            elif lease.timed_out.is_set():
                # A hard stop (RQ's alarm) surfaced inside the pipeline as an 'internal error'.
                _fail_if_mine(analysis_id, token, timeout_reason(lease.timeout), ("running", "failed"))
            else:
                _fail_if_mine(analysis_id, token, CRASH_REASON)  # no-op unless left running
    db.session.expire_all()
    row = db.session.get(Analysis, analysis_id)
    return row.status if row else None


# --------------------------------------------------------------------------- recovery

@dataclass
class Recovery:
    """What one sweep found. requeued: running rows whose process died, put back in the queue;
    failed: such rows that had used up JOB_MAX_ATTEMPTS; waiting: queued rows to hand to a runner."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)

    @property
    def to_run(self) -> list[int]:
        return self.requeued + self.waiting


def sweep_expired_leases(app: Flask) -> Recovery:
    """Rows left `running` by a process that stopped beating: queued again, or failed for good.
    Each change is a compare-and-set on what was read, so concurrent sweepers act once."""
    found = Recovery()
    lease = timedelta(seconds=int(app.config["JOB_LEASE_SECONDS"]))
    max_attempts = int(app.config["JOB_MAX_ATTEMPTS"])
    last_sign_of_life = func.coalesce(Analysis.heartbeat_at, Analysis.started_at, Analysis.created_at)
    stale = db.session.execute(
        select(Analysis.id, Analysis.attempts, Analysis.job_id, Analysis.heartbeat_at)
        .where(Analysis.status == "running", last_sign_of_life < utcnow() - lease)
        .order_by(Analysis.id)
    ).all()
    for row in stale:
        same_run = [Analysis.id == row.id, Analysis.status == "running"]
        same_run.append(Analysis.job_id.is_(None) if row.job_id is None else Analysis.job_id == row.job_id)
        same_run.append(Analysis.heartbeat_at.is_(None) if row.heartbeat_at is None
                        else Analysis.heartbeat_at == row.heartbeat_at)
        if row.attempts >= max_attempts:
            values = dict(status="failed", error=gave_up_reason(row.attempts), finished_at=utcnow())
            bucket = found.failed
        else:
            values = dict(status="queued", job_id=None, heartbeat_at=None, stage="queued", progress=0.0)
            bucket = found.requeued
        if db.session.execute(update(Analysis).where(*same_run).values(**values)).rowcount == 1:
            bucket.append(row.id)
        db.session.commit()
    if found.requeued or found.failed:
        log.warning("lease sweep: re-queued %s, gave up %s", found.requeued, found.failed)
    return found


def queued_ids(older_than_s: float = 0.0) -> list[int]:
    stmt = select(Analysis.id).where(Analysis.status == "queued").order_by(Analysis.id)
    if older_than_s:
        stmt = stmt.where(Analysis.created_at < utcnow() - timedelta(seconds=older_than_s))
    return list(db.session.scalars(stmt))


def recover(app: Flask | None = None, *, include_queued: bool = True) -> Recovery:
    """One sweep, dispatched to the app's runner: expired leases re-run or failed, and (with
    include_queued) queued rows no runner holds handed over. Returns what it found."""
    app = app or current_app._get_current_object()
    runner = app.extensions["jobs"]
    with app.app_context():
        found = sweep_expired_leases(app)
        return runner.dispatch_recovered(found, include_queued=include_queued)


# --------------------------------------------------------------------------- runners

class SyncRunner:
    """Runs the job inline in the caller (tests, scripts). Nothing runs in the background."""

    started = True

    def __init__(self, app: Flask):
        self.app = app

    def start(self, recover_on_start: bool = False) -> None:
        if recover_on_start:
            recover(self.app)

    def submit(self, analysis_id: int) -> None:
        if _mark_queued(analysis_id, None):
            self._run(analysis_id)

    def _run(self, analysis_id: int) -> None:
        with self.app.app_context():
            run_job(analysis_id, _local_token())

    def dispatch_recovered(self, found: Recovery, *, include_queued: bool) -> Recovery:
        if include_queued:
            found.waiting = [i for i in queued_ids() if i not in found.requeued]
        for analysis_id in found.to_run:
            self._run(analysis_id)
        return found

    def describe(self) -> dict:
        return {"runner": "sync", "ok": True}


def _lower_this_threads_priority(niceness: int) -> None:
    """On Linux each thread has its own nice value, inherited by threads it starts (TensorFlow's
    pools): the in-process runner's CPU then goes to requests first. Never raises the priority:
    a process started at a higher nice value keeps it."""
    try:
        thread_id = threading.get_native_id()
        wanted = min(19, max(niceness, os.getpriority(os.PRIO_PROCESS, thread_id)))
        os.setpriority(os.PRIO_PROCESS, thread_id, wanted)
    except (AttributeError, OSError):
        pass


def _local_token() -> str:
    return f"local-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class ThreadRunner:
    """A bounded pool of JOB_WORKERS daemon threads in the web process, plus a sweeper thread
    that re-runs work whose process died. Started lazily (first request or enqueue) and again
    after a fork, since threads do not survive one."""

    def __init__(self, app: Flask):
        self.app = app
        self._lock = threading.Lock()
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pid: int | None = None
        self._stopping = threading.Event()
        self._in_flight: dict[int, str] = {}  # analysis id -> token of the run in this process

    @property
    def started(self) -> bool:
        return self._pid == os.getpid()

    def start(self, recover_on_start: bool = False) -> None:
        with self._lock:
            if self.started:
                return
            if self._pid is None:
                atexit.register(self.release)
            self._pid = os.getpid()
            self._queue = queue.Queue()
            self._in_flight = {}
            self._stopping.clear()
            count = max(1, int(self.app.config["JOB_WORKERS"]))
            self._threads = [
                threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True)
                for i in range(count)
            ]
            self._threads.append(
                threading.Thread(target=self._sweep_forever, args=(recover_on_start,),
                                 name="job-sweeper", daemon=True))
            for thread in self._threads:
                thread.start()

    def submit(self, analysis_id: int) -> None:
        self.start(recover_on_start=self.app.config["JOB_RECOVER_ON_START"])
        if _mark_queued(analysis_id, None):
            self._queue.put(analysis_id)

    def dispatch_recovered(self, found: Recovery, *, include_queued: bool) -> Recovery:
        if include_queued:
            found.waiting = [i for i in queued_ids() if i not in found.requeued]
        if found.to_run:
            self.start(recover_on_start=False)
        for analysis_id in found.to_run:
            self._queue.put(analysis_id)
        return found

    def describe(self) -> dict:
        return {"runner": "thread", "ok": True, "threads": int(self.app.config["JOB_WORKERS"]),
                "started": self.started, "backlog": self._queue.unfinished_tasks if self.started else 0}

    def _adopt_old_queued(self) -> None:
        """With nothing left to do here, take rows that have waited longer than a lease: their
        hand-over was lost (the database was down when a thread tried to claim them, or the
        process that had them died). Taking another process's backlog is harmless: claims are
        compare-and-set."""
        with self.app.app_context():
            waiting = queued_ids(older_than_s=float(self.app.config["JOB_LEASE_SECONDS"]))
        for analysis_id in waiting:
            self._queue.put(analysis_id)

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted job has finished (tests and graceful shutdown use it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads after the jobs they are running (queued ids stay queued in the DB)."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads = []
        self._pid = None

    def _work(self) -> None:
        # page views in this process come before analyses
        _lower_this_threads_priority(int(self.app.config["JOB_THREAD_NICENESS"]))
        while True:
            analysis_id = self._queue.get()
            try:
                if analysis_id is None:
                    return
                token = _local_token()
                self._in_flight[analysis_id] = token
                with self.app.app_context():
                    run_job(analysis_id, token)
            except BaseException:
                log.exception("job for analysis %s crashed the runner thread's step", analysis_id)
            finally:
                self._in_flight.pop(analysis_id, None)
                self._queue.task_done()

    def release(self) -> list[int]:
        """On a clean exit (gunicorn restarting a worker, Ctrl+C): put the jobs this process is
        running back in the queue for the next process, without counting the cut-short attempt,
        instead of leaving them to expire as if the process had crashed."""
        if not self.started or not self._in_flight:
            return []
        released = []
        with self.app.app_context():
            for analysis_id, token in list(self._in_flight.items()):
                if _hand_back(analysis_id, token):
                    released.append(analysis_id)
        if released:
            log.warning("shutting down: analyses %s handed back to the queue", released)
        return released

    def _sweep_forever(self, recover_on_start: bool) -> None:
        first = True
        while True:
            if not first or recover_on_start:
                try:
                    recover(self.app, include_queued=first)
                    if not first and self._queue.unfinished_tasks == 0:
                        self._adopt_old_queued()
                except Exception:
                    log.exception("job recovery sweep failed; will retry")
            first = False
            if self._stopping.wait(float(self.app.config["JOB_SWEEP_SECONDS"])):
                return


class RQRunner:
    """Hands jobs to RQ workers (`flask --app app worker`) through Redis. The row keeps the RQ
    job id; a worker runs a job only while the row still names that id."""

    def __init__(self, app: Flask):
        self.app = app
        self._connection = None
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stopping = threading.Event()

    @property
    def started(self) -> bool:
        return self._pid == os.getpid()

    def start(self, recover_on_start: bool = False) -> None:
        """A sweeper thread (no job runs here): web processes sweep too, so a dead worker's row
        goes back to the queue even while no worker is up, and uploads that found Redis down are
        sent once it is back. Workers start the same sweeper (run_worker)."""
        with self._lock:
            if self.started:
                return
            self._pid = os.getpid()
            self._stopping.clear()
            threading.Thread(target=self._sweep_forever, args=(recover_on_start,), name="job-sweeper",
                             daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._pid = None

    def _sweep_forever(self, recover_on_start: bool) -> None:
        first = True
        while True:
            if recover_on_start or not first:
                try:
                    recover(self.app)
                except Exception:
                    log.exception("job recovery sweep failed; will retry")
            first = False
            if self._stopping.wait(float(self.app.config["JOB_SWEEP_SECONDS"])):
                return

    @property
    def connection(self):
        if self._connection is None:
            from redis import Redis

            # Bounded waits, so a web request never hangs on an unreachable Redis.
            self._connection = Redis.from_url(self.app.config["REDIS_URL"], socket_connect_timeout=3,
                                              socket_timeout=10, health_check_interval=30)
        return self._connection

    def queue(self):
        from rq import Queue

        return Queue(self.app.config["JOB_QUEUE"], connection=self.connection)

    def describe(self) -> dict:
        state = {"runner": "rq", "ok": True, "queue": self.app.config["JOB_QUEUE"]}
        try:
            from rq import Worker

            state["backlog"] = self.queue().count
            state["workers"] = Worker.count(queue=self.queue())
            state["redis"] = "ok"
        except Exception as exc:
            state["redis"] = f"unreachable ({exc.__class__.__name__})"
        return state

    def submit(self, analysis_id: int) -> None:
        job_id = _new_rq_job_id(analysis_id)
        if _mark_queued(analysis_id, job_id):
            self._push(analysis_id, job_id)

    def _push(self, analysis_id: int, job_id: str) -> bool:
        from rq import Callback

        config = self.app.config
        try:
            self.queue().enqueue_call(
                func="utils.jobs.run_rq_job",
                args=(analysis_id,),
                job_id=job_id,
                timeout=int(config["JOB_TIMEOUT"]) + int(config["JOB_TIMEOUT_GRACE"]),
                result_ttl=3600,
                failure_ttl=7 * 24 * 3600,
                on_failure=Callback(_rq_job_failed),
                description=f"analysis {analysis_id}",
            )
            return True
        except Exception:
            # The row is committed as queued: a worker's sweep enqueues it once Redis is back.
            log.exception("could not enqueue analysis %s on Redis; it stays queued", analysis_id)
            return False

    def _hand_over(self, analysis_id: int, old_job_id: str | None) -> bool:
        """Give a queued row a new RQ job, unless another sweeper changed it first."""
        job_id = _new_rq_job_id(analysis_id)
        same = Analysis.job_id.is_(None) if old_job_id is None else Analysis.job_id == old_job_id
        result = db.session.execute(
            update(Analysis).where(Analysis.id == analysis_id, Analysis.status == "queued", same)
            .values(job_id=job_id))
        db.session.commit()
        return result.rowcount == 1 and self._push(analysis_id, job_id)

    def dispatch_recovered(self, found: Recovery, *, include_queued: bool) -> Recovery:
        for analysis_id in found.requeued:
            self._hand_over(analysis_id, None)
        if include_queued:
            found.waiting = self._orphaned_queued(exclude=set(found.requeued))
        return found

    def _orphaned_queued(self, exclude: set[int], min_age_s: float = 10.0) -> list[int]:
        """Queued rows whose RQ job is gone (Redis flushed, enqueue failed, job lost)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        alive = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
        rows = db.session.execute(
            select(Analysis.id, Analysis.job_id).where(
                Analysis.status == "queued",
                or_(Analysis.job_id.is_(None),
                    Analysis.created_at < utcnow() - timedelta(seconds=min_age_s)))
            .order_by(Analysis.id)
        ).all()
        handed = []
        for row in rows:
            if row.id in exclude:
                continue
            if row.job_id is not None:
                try:
                    if Job.fetch(row.job_id, connection=self.connection).get_status() in alive:
                        continue
                except NoSuchJobError:
                    pass
            elif (age := self._age_s(row.id)) is not None and age < min_age_s:
                continue  # the web may be between its commit and its enqueue
            if self._hand_over(row.id, row.job_id):
                handed.append(row.id)
        return handed

    @staticmethod
    def _age_s(analysis_id: int) -> float | None:
        created = db.session.scalar(select(Analysis.created_at).where(Analysis.id == analysis_id))
        return None if created is None else (utcnow() - created).total_seconds()


def _new_rq_job_id(analysis_id: int) -> str:
    return f"analysis-{analysis_id}-{uuid.uuid4().hex[:12]}"


def run_rq_job(analysis_id: int) -> str | None:
    """The function RQ workers execute (by name). Runs in a fresh app context per job."""
    from rq import get_current_job

    job = get_current_job()
    app = current_app._get_current_object()
    with app.app_context():
        return run_job(analysis_id, job.id, expected_job_id=job.id)


def _rq_job_failed(job, connection, exc_type, exc_value, tb) -> None:
    """RQ's failure callback: settle the row when the failure happened outside run_job's own
    handling (RQ's hard time limit, a job found abandoned). A killed worker's job is left to the
    lease sweep, which re-runs it while attempts remain."""
    from rq.exceptions import AbandonedJobError
    from rq.timeouts import JobTimeoutException

    if not has_app_context() or not job.args:
        return
    if exc_type is AbandonedJobError:
        return
    analysis_id = job.args[0]
    if exc_type is not None and issubclass(exc_type, (JobTimeoutException, JobTimedOut)):
        reason = timeout_reason(int(current_app.config["JOB_TIMEOUT"]))
    else:
        reason = CRASH_REASON
    _fail_if_mine(analysis_id, job.id, reason)


# --------------------------------------------------------------------------- RQ worker process

def preload_model(app: Flask) -> None:
    """Load the detector before the first job, so every job finds it in the per-process cache."""
    if app.config["JOB_TARGET"] != DEFAULT_TARGET:
        return
    try:
        from utils.model import get_detector

        get_detector(app.config["MODEL_PATH"])
        log.info("model loaded from %s", app.config["MODEL_PATH"])
    except Exception as exc:  # jobs will fail with the model's own reason
        log.error("model not loaded (%s); analyses will fail until it is fixed", exc)


def run_worker(app: Flask, *, queue_names: list[str] | None = None, burst: bool = False,
               name: str | None = None) -> bool:
    """An RQ worker in this process (no fork per job: TensorFlow is not fork-safe, and the model
    stays loaded), with the lease sweep at start and every JOB_SWEEP_SECONDS."""
    from rq import Queue, SimpleWorker

    runner = app.extensions["jobs"]
    if not isinstance(runner, RQRunner):
        raise RuntimeError("The worker needs REDIS_URL (and JOB_RUNNER unset or 'rq').")
    preload_model(app)
    names = queue_names or [app.config["JOB_QUEUE"]]
    queues = [Queue(n, connection=runner.connection) for n in names]
    recover(app)
    runner.start(recover_on_start=False)
    worker = SimpleWorker(queues, connection=runner.connection, name=name)
    try:
        return worker.work(burst=burst, logging_level="INFO")
    finally:
        runner.stop()
