"""Where uploads and their derived images live: content-hash names, safe paths, deletion."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flask import current_app
from werkzeug.utils import safe_join

CHUNK = 1024 * 1024


@dataclass
class StoredFile:
    sha256: str
    stored_name: str  # "<sha256>" — no user-controlled part, no extension
    size_bytes: int
    path: Path


def upload_root() -> Path:
    return Path(current_app.config["UPLOAD_FOLDER"])


def derived_root() -> Path:
    return Path(current_app.config["DERIVED_FOLDER"])


def upload_path(stored_name: str) -> Path:
    """The file for a stored name; safe_join refuses anything that would leave the folder."""
    path = safe_join(str(upload_root()), stored_name[:2], stored_name)
    if path is None:
        raise ValueError("unsafe stored name")
    return Path(path)


def derived_dir(analysis_id: int) -> Path:
    return derived_root() / str(int(analysis_id))


def derived_path(analysis_id: int, name: str) -> Path:
    path = safe_join(str(derived_dir(analysis_id)), name)
    if path is None:
        raise ValueError("unsafe derived name")
    return Path(path)


def save_upload(stream) -> StoredFile:
    """Stream an upload to a temp file while hashing it, then move it under its content hash.

    Writing to a temp file first means a failed or aborted upload leaves nothing behind.
    """
    root = upload_root()
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=root)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        sha = digest.hexdigest()
        final = upload_path(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            os.unlink(tmp_name)
        else:
            os.replace(tmp_name, final)
        return StoredFile(sha256=sha, stored_name=sha, size_bytes=size, path=final)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def delete_upload_if_unused(stored_name: str | None) -> None:
    """Remove a stored file once no analysis refers to it (two users may upload the same bytes)."""
    if not stored_name:
        return
    from models import Analysis  # local: storage stays importable without the models

    from extensions import db

    still_used = db.session.query(Analysis.id).filter_by(stored_name=stored_name).first()
    if still_used is None:
        upload_path(stored_name).unlink(missing_ok=True)


def delete_derived(analysis_id: int) -> None:
    shutil.rmtree(derived_dir(analysis_id), ignore_errors=True)
