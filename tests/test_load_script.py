"""benchmarks/load_test.py without running a load: the environment each runner gets, the RQ
worker command line, the clean-up that leaves no process behind; and the in-process runner's
thread niceness (JOB_THREAD_NICENESS), the knob the load test's A/B turns."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.jobs_support import ROOT, ScratchDatabase, add_queued, add_user, make_app, wanted_database


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("load_test", None)


def test_thread_is_the_default_runner_and_keeps_analyses_in_the_web_workers(load_test, tmp_path):
    args = load_test.arguments().parse_args([])
    env = load_test.app_env(args, tmp_path)

    assert args.runner == "thread"
    assert (env["REDIS_URL"], env["JOB_RUNNER"], env["JOB_WORKERS"]) == ("", "thread", "1")
    assert "JOB_THREAD_NICENESS" not in env  # the app's default unless --thread-niceness
    assert load_test.runner_line(args, env).startswith("runner: thread")


def test_rq_runner_points_web_and_workers_at_the_spare_redis_database(load_test, tmp_path):
    args = load_test.arguments().parse_args(["--runner", "rq", "--rq-workers", "2"])
    env = load_test.app_env(args, tmp_path)

    assert env["REDIS_URL"] == "redis://127.0.0.1:6379/9" and env["JOB_RUNNER"] == "rq"
    assert env["RATELIMIT_STORAGE_URI"] == "memory://"  # the limiter costs the same for both runners
    assert load_test.runner_line(args, env).startswith("runner: rq (2 `flask --app app worker` processes")
    command = load_test.worker_command(args.worker_niceness, 0)
    assert command[:3] == ["nice", "-n", "19"]
    assert command[3:7] == [str(load_test.BIN / "flask"), "--app", "app", "worker"]


def test_stop_leaves_no_process_of_the_group_behind(load_test):
    # A leader that dies on SIGTERM and a child that outlives it in the same process group.
    script = ("import subprocess, sys, time; child = subprocess.Popen(['sleep', '300']); "
              "print(child.pid, flush=True); time.sleep(300)")
    leader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child_pid = int(leader.stdout.readline())
    leader.stdout.close()

    load_test.stop(leader, "test leader", grace=5)

    assert leader.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"child {child_pid} survived stop()")


def test_in_process_job_threads_run_at_job_thread_niceness(tmp_path):
    store = ScratchDatabase(tmp_path, wanted_database())
    seen = {}

    def record_niceness(analysis_id, progress):
        seen[analysis_id] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    app = make_app(store.url, tmp_path, JOB_RUNNER="thread", JOB_TARGET=record_niceness,
                   JOB_THREAD_NICENESS=12)
    try:
        [analysis_id] = add_queued(app, add_user(app))
        from utils import jobs

        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        with app.app_context():
            jobs.enqueue(analysis_id)
        assert app.extensions["jobs"].wait_idle(timeout=15)
        # Never below the nice value the process started with: a runner cannot raise its priority.
        assert seen[analysis_id] == min(19, max(12, before))
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # only the job thread
    finally:
        app.extensions["jobs"].stop()
        from extensions import db

        with app.app_context():
            db.engine.dispose()
        store.drop()
