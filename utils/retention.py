"""Media retention: after RETENTION_DAYS the uploaded file and every image derived from it (frame
thumbnails, face crops, heatmaps: pictures of people's faces) are deleted; the verdict, scores, boxes
and reviews stay, so history, exports and the review record keep working.

Run it from cron or a systemd timer: `flask --app app purge-media` (see "Retention" in the README).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import select, update

from extensions import db
from models import Analysis, FaceResult, FrameResult, utcnow
from utils import storage

# Rows still queued or running keep their file: the job needs it.
PURGEABLE_STATUSES = ("done", "failed")


@dataclass
class PurgeReport:
    cutoff: datetime
    analyses: list[int] = field(default_factory=list)  # rows whose media was purged now
    files_deleted: int = 0  # uploaded files removed (a file shared with a newer analysis stays)


def purge_media(days: int, *, now: datetime | None = None, dry_run: bool = False) -> PurgeReport:
    """Delete the media of finished analyses uploaded more than `days` days ago; keep their verdicts.
    Each row is settled (compare-and-set on media_purged_at) before its files go, so two purges
    running at once, or a crash half-way, never leave a row pointing at a deleted file."""
    if days < 1:
        raise ValueError("days must be at least 1")
    now = now or utcnow()
    report = PurgeReport(cutoff=now - timedelta(days=days))
    candidates = db.session.execute(
        select(Analysis.id, Analysis.stored_name)
        .where(Analysis.created_at < report.cutoff, Analysis.media_purged_at.is_(None),
               Analysis.status.in_(PURGEABLE_STATUSES))
        .order_by(Analysis.id)
    ).all()
    if dry_run:
        report.analyses = [row.id for row in candidates]
        return report
    for analysis_id, stored_name in candidates:
        claimed = db.session.execute(
            update(Analysis)
            .where(Analysis.id == analysis_id, Analysis.media_purged_at.is_(None),
                   Analysis.status.in_(PURGEABLE_STATUSES))
            .values(media_purged_at=now, stored_name=None)
        ).rowcount
        if claimed != 1:
            db.session.rollback()
            continue
        db.session.execute(update(FaceResult).where(FaceResult.analysis_id == analysis_id)
                           .values(crop_name=None, heatmap_name=None))
        db.session.execute(update(FrameResult).where(FrameResult.analysis_id == analysis_id)
                           .values(thumb_name=None))
        db.session.commit()
        storage.delete_derived(analysis_id)
        if stored_name:
            path = storage.upload_path(stored_name)
            existed = path.exists()
            storage.delete_upload_if_unused(stored_name)
            report.files_deleted += int(existed and not path.exists())
        report.analyses.append(analysis_id)
    return report


@click.command("purge-media")
@click.option("--days", type=int, default=None,
              help="Override RETENTION_DAYS for this run (uploads older than this many days).")
@click.option("--dry-run", is_flag=True, help="Only say how many analyses would lose their media.")
@with_appcontext
def purge_media_command(days: int | None, dry_run: bool) -> None:
    """Delete uploaded media (and face images) older than RETENTION_DAYS; verdicts are kept."""
    days = days if days is not None else int(current_app.config.get("RETENTION_DAYS") or 0)
    if days <= 0:
        click.echo("Retention is off (RETENTION_DAYS is 0 or unset): nothing deleted. "
                   "Set RETENTION_DAYS or pass --days.")
        return
    report = purge_media(days, dry_run=dry_run)
    cutoff = report.cutoff.strftime("%Y-%m-%d %H:%M UTC")
    if dry_run:
        click.echo(f"Would purge the media of {len(report.analyses)} analyses uploaded before {cutoff}.")
    else:
        click.echo(f"Purged the media of {len(report.analyses)} analyses uploaded before {cutoff}; "
                   f"{report.files_deleted} uploaded files deleted. Verdicts kept.")


def register(app: Flask) -> None:
    app.cli.add_command(purge_media_command)
