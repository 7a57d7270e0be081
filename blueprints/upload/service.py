"""Accepting an uploaded file: store it under its hash, decide its type from the content, queue it.

Shared by the HTML form and the JSON API so both refuse and de-duplicate the same way.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.exc import IntegrityError

from extensions import db
from models import Analysis, User
from utils import jobs, storage


class UploadRejected(Exception):
    """The file cannot be analysed; str(exc) tells the user why. Nothing of it was kept."""


@dataclass
class UploadOutcome:
    analysis: Analysis
    duplicate: bool  # the user had already uploaded these exact bytes: `analysis` is the earlier one


def display_name(filename: str | None) -> str:
    """The user's file name as display text only: no folders, no control characters, bounded length."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[:255] or "upload"


def _existing(user_id: int, sha256: str) -> Analysis | None:
    return db.session.scalar(db.select(Analysis).filter_by(user_id=user_id, sha256=sha256))


def accept_upload(user: User, file_storage) -> UploadOutcome:
    """Store, type-check and queue one file, or raise UploadRejected leaving no file and no row."""
    import convert  # the detector helper's module; imported late so the web app starts without it

    stored = storage.save_upload(file_storage.stream)
    existing = _existing(user.id, stored.sha256)
    if existing is not None:
        if existing.stored_name is None:  # its media was purged (retention): the new copy is no one's
            storage.delete_upload_if_unused(stored.stored_name)
        return UploadOutcome(existing, duplicate=True)  # the file is the existing analysis's: keep it
    try:
        if stored.size_bytes == 0:
            raise UploadRejected("The file is empty.")
        try:
            kind = convert.detect_media_kind(stored.path)
        except convert.MediaError as exc:
            raise UploadRejected(str(exc)) from exc
        analysis = Analysis(
            user_id=user.id, kind=kind, original_name=display_name(file_storage.filename),
            sha256=stored.sha256, stored_name=stored.stored_name, size_bytes=stored.size_bytes,
            status="queued", stage="queued", progress=0.0,
        )
        db.session.add(analysis)
        db.session.commit()
    except IntegrityError:
        # The same bytes arrived twice at once; the other request created the row.
        db.session.rollback()
        existing = _existing(user.id, stored.sha256)
        if existing is None:
            raise
        return UploadOutcome(existing, duplicate=True)
    except BaseException:
        db.session.rollback()
        storage.delete_upload_if_unused(stored.stored_name)
        raise
    try:
        jobs.enqueue(analysis.id)
    except Exception:
        # The row stays queued; the job runner picks up queued rows when it starts again.
        current_app.logger.exception("could not enqueue analysis %s", analysis.id)
    return UploadOutcome(analysis, duplicate=False)
