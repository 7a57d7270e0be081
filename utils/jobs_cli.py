"""Operator commands for background analysis: `flask --app app worker` and `flask --app app jobs ...`."""
from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select

from extensions import db
from models import Analysis
from utils import jobs


@click.command("worker")
@click.option("--queue", "queue_names", multiple=True,
              help="Queue to listen on (repeatable). Default: JOB_QUEUE, 'analyses'.")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option("--name", default=None, help="Worker name shown by RQ (default: host and pid).")
@with_appcontext
def worker_command(queue_names, burst, name):
    """Run an RQ worker for analyses (needs REDIS_URL). Start as many as the machines allow."""
    app = current_app._get_current_object()
    if jobs.runner_name(app) != "rq":
        raise click.ClickException(
            "The worker takes jobs from Redis: set REDIS_URL (e.g. redis://127.0.0.1:6379/0) for "
            "the web processes and the workers. Without it, the web process analyses uploads itself.")
    jobs.run_worker(app, queue_names=list(queue_names) or None, burst=burst, name=name)


@click.group("jobs")
def jobs_group():
    """Inspect and recover background analyses."""


@jobs_group.command("status")
@with_appcontext
def status_command():
    """Count analyses per state and name the runner in use."""
    app = current_app._get_current_object()
    counts = dict(db.session.execute(
        select(Analysis.status, func.count()).group_by(Analysis.status)).all())
    click.echo(f"runner: {jobs.runner_name(app)}")
    for state in ("queued", "running", "done", "failed"):
        click.echo(f"{state}: {counts.get(state, 0)}")


@jobs_group.command("recover")
@with_appcontext
def recover_command():
    """Re-run or fail analyses whose process died, and hand queued ones to the runner.
    With the in-process runner they run here, in this command, until finished."""
    app = current_app._get_current_object()
    found = jobs.recover(app)
    runner = jobs.get_runner(app)
    if isinstance(runner, jobs.ThreadRunner) and found.to_run:
        click.echo(f"running {len(found.to_run)} analyses here ...")
        runner.wait_idle(timeout=float("inf"))
        runner.stop()
    click.echo(f"re-queued: {len(found.requeued)}, given up: {len(found.failed)}, "
               f"queued handed over: {len(found.waiting)}")


def register(app: Flask) -> None:
    app.cli.add_command(worker_command)
    app.cli.add_command(jobs_group)
