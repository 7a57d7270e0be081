"""Upload form, the result page with its JSON status, disputes, and the owner/admin-only media route."""
from __future__ import annotations

import re

from flask import (Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request,
                   send_file, url_for)
from flask_login import current_user, login_required

from blueprints.access import analysis_for_viewer, own_analysis
from blueprints.upload.forms import DisputeForm, GameConsentForm, TrainingConsentForm, UploadForm
from blueprints.upload.service import UploadRejected, accept_upload, display_name
from extensions import db, limiter
from models import utcnow
from utils import storage

bp = Blueprint("upload", __name__)

MAX_FILES_PER_FORM = 20
DERIVED_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}\.(jpg|jpeg|png)$")
DECISION_TEXT = {"fake": "Confirmed fake", "real": "Actually real", "cannot_tell": "Cannot tell"}


@bp.app_context_processor
def labels():
    return {"decision_text": DECISION_TEXT}


@bp.route("/upload", methods=["GET", "POST"])
@login_required
@limiter.limit(lambda: current_app.config["RATELIMIT_UPLOAD"], methods=["POST"])
def upload():
    form = UploadForm()
    if form.validate_on_submit():
        files = [f for f in request.files.getlist(form.files.name) if f and f.filename]
        if not files:
            form.files.errors.append("Choose at least one photo or video.")
        elif len(files) > MAX_FILES_PER_FORM:
            form.files.errors.append(f"Upload at most {MAX_FILES_PER_FORM} files at once.")
        else:
            return _accept_files(files)
    status = 400 if form.is_submitted() else 200
    return render_template("upload/upload.html", form=form), status


def _accept_files(files):
    """Accept each file on its own; say what happened to each in a few lines (flashes live in the
    session cookie, so many files are summed up rather than listed)."""
    accepted, new, duplicate, refused = [], [], [], []
    for file_storage in files:
        name = display_name(file_storage.filename)[:60]
        try:
            outcome = accept_upload(current_user._get_current_object(), file_storage)
        except UploadRejected as exc:
            refused.append((name, str(exc)))
            continue
        accepted.append(outcome.analysis)
        (duplicate if outcome.duplicate else new).append(name)
    for name, reason in refused[:3]:
        flash(f"“{name}” was not accepted: {reason}", "error")
    if len(refused) > 3:
        flash(f"{len(refused) - 3} more files were not accepted.", "error")
    if len(new) == 1:
        flash(f"“{new[0]}” uploaded and queued for analysis.", "success")
    elif new:
        flash(f"{len(new)} files uploaded and queued for analysis.", "success")
    if len(duplicate) == 1:
        flash(f"“{duplicate[0]}” was already analysed; here is the earlier analysis.", "info")
    elif duplicate:
        flash(f"{len(duplicate)} files were already analysed; they are in your history.", "info")
    if len(accepted) == 1:
        return redirect(url_for("upload.result", analysis_id=accepted[0].id))
    if not accepted:
        return render_template("upload/upload.html", form=UploadForm(formdata=None)), 400
    return redirect(url_for("history.index"))


def key_frame_of(analysis, wanted_index: int | None):
    """The frame to draw boxes on: the one asked for, else the most suspicious, else the first."""
    frames = list(analysis.frames)
    if not frames:
        return None
    if wanted_index is not None:
        for frame in frames:
            if frame.index == wanted_index:
                return frame
    scored = [f for f in frames if f.score is not None]
    return max(scored, key=lambda f: f.score) if scored else frames[0]


@bp.route("/analyses/<int:analysis_id>")
@login_required
def result(analysis_id: int):
    analysis = analysis_for_viewer(analysis_id)
    key_frame = key_frame_of(analysis, request.args.get("frame", type=int))
    key_faces = [f for f in analysis.faces if key_frame is not None and f.frame_index == key_frame.index]
    return render_template(
        "upload/result.html", analysis=analysis, key_frame=key_frame, key_faces=key_faces,
        dispute_form=DisputeForm(formdata=None), consent_form=GameConsentForm(formdata=None),
        training_form=TrainingConsentForm(formdata=None),
        is_owner=analysis.user_id == current_user.id,
    )


def status_json(analysis) -> dict:
    return {
        "id": analysis.id, "status": analysis.status, "stage": analysis.stage,
        "progress": round(analysis.progress or 0.0, 3), "verdict": analysis.verdict,
        "error": analysis.error, "finished": analysis.finished,
    }


@bp.route("/analyses/<int:analysis_id>/status")
@login_required
def status(analysis_id: int):
    """Polled by static/progress.js while the job runs."""
    response = jsonify(status_json(analysis_for_viewer(analysis_id)))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/analyses/<int:analysis_id>/dispute", methods=["POST"])
@login_required
def dispute(analysis_id: int):
    analysis = own_analysis(analysis_id)
    form = DisputeForm()
    if analysis.status != "done":
        flash("A verdict can be disputed once the analysis has finished.", "error")
    elif analysis.review is not None:
        flash("An admin has already reviewed this analysis.", "info")
    elif form.validate_on_submit():
        analysis.flagged = True
        analysis.flag_reason = "dispute"
        analysis.dispute_reason = form.reason.data.strip()
        analysis.disputed_at = utcnow()
        db.session.commit()
        flash("Thank you. An admin will review this analysis; their decision will appear here.", "success")
    else:
        for errors in form.errors.values():
            for error in errors:
                flash(error, "error")
    return redirect(url_for("upload.result", analysis_id=analysis.id))


@bp.route("/analyses/<int:analysis_id>/game-consent", methods=["POST"])
@login_required
def game_consent(analysis_id: int):
    """Only the owner decides whether their faces may appear in the game (an admin cannot do it for
    them); withdrawing takes them out of the game at once, since the game checks it on every deal."""
    return _record_consent(
        analysis_id, GameConsentForm(), "game_consent", "#game-consent",
        given="Thank you. If an admin also picks this analysis, its faces may appear in the game.",
        withdrawn="Consent withdrawn: the faces of this analysis are no longer used in the game.")


@bp.route("/analyses/<int:analysis_id>/training-consent", methods=["POST"])
@login_required
def training_consent(analysis_id: int):
    """Only the owner decides whether their upload may be used to retrain the model (an admin cannot
    do it for them); `flask export-reviewed` reads it at every export."""
    return _record_consent(
        analysis_id, TrainingConsentForm(), "training_consent", "#training-consent",
        given="Thank you. If an admin confirms this analysis as fake or real, its face crops may be used "
              "to improve the model.",
        withdrawn="Consent withdrawn: this upload will be left out of future training data. Face crops "
                  "already exported for training, or already learned by a model, cannot be recalled.")


def _record_consent(analysis_id: int, form, attribute: str, anchor: str, *, given: str, withdrawn: str):
    """The owner's explicit allow or withdraw (exactly one of the two buttons), stored on the analysis."""
    analysis = own_analysis(analysis_id)
    if not form.validate_on_submit() or form.allow.data == form.withdraw.data:
        abort(400)
    setattr(analysis, attribute, bool(form.allow.data))
    db.session.commit()
    flash(given if form.allow.data else withdrawn, "success")
    return redirect(url_for("upload.result", analysis_id=analysis.id) + anchor)


def _private_file(path, mimetype, download_name=None):
    """Media leaves only through here: signed-in owner/admin, never cached publicly, never sniffed."""
    if not path.is_file():
        abort(404)
    response = send_file(path, mimetype=mimetype, as_attachment=download_name is not None,
                         download_name=download_name, conditional=True, max_age=0)
    response.headers["Cache-Control"] = "private, no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.route("/analyses/<int:analysis_id>/files/<name>")
@login_required
def derived_file(analysis_id: int, name: str):
    """Frame thumbnails, face crops and heatmaps written by the pipeline."""
    analysis = analysis_for_viewer(analysis_id)
    if not DERIVED_NAME.match(name):
        abort(404)
    mimetype = "image/png" if name.endswith(".png") else "image/jpeg"
    return _private_file(storage.derived_path(analysis.id, name), mimetype)


@bp.route("/analyses/<int:analysis_id>/thumb")
@login_required
def thumbnail(analysis_id: int):
    analysis = analysis_for_viewer(analysis_id)
    frame = key_frame_of(analysis, None)
    if frame is None or not frame.thumb_name:
        abort(404)
    return _private_file(storage.derived_path(analysis.id, frame.thumb_name), "image/jpeg")


@bp.route("/analyses/<int:analysis_id>/original")
@login_required
def original(analysis_id: int):
    """The uploaded file itself, as a download (never rendered inline from our origin)."""
    analysis = analysis_for_viewer(analysis_id)
    if not analysis.stored_name:
        abort(404)
    return _private_file(storage.upload_path(analysis.stored_name), "application/octet-stream",
                         download_name=analysis.original_name)
