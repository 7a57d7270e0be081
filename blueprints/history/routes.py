"""The signed-in user's analyses: list with filters, delete, export as CSV or JSON."""
from __future__ import annotations

import csv
import io
import json

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy.orm import selectinload

from blueprints.access import own_analysis
from blueprints.auth.forms import ConfirmForm
from blueprints.history.forms import HistoryFilterForm
from extensions import db
from models import Analysis, FrameResult
from utils import storage

bp = Blueprint("history", __name__)

EXPORT_FIELDS = ("id", "created_at", "original_name", "kind", "sha256", "size_bytes", "status", "error",
                 "verdict", "score", "threshold", "model_version", "faces_found", "frames_sampled",
                 "frames_with_faces", "flagged", "flag_reason", "review_decision", "reviewed_at")


def _own_query(form: HistoryFilterForm | None = None):
    query = db.select(Analysis).filter_by(user_id=current_user.id)
    if form is not None:
        if form.verdict.data:
            query = query.filter_by(verdict=form.verdict.data)
        if form.kind.data:
            query = query.filter_by(kind=form.kind.data)
    return query.order_by(Analysis.created_at.desc(), Analysis.id.desc())


@bp.route("/history")
@login_required
def index():
    form = HistoryFilterForm(request.args)
    if not form.validate():
        form = HistoryFilterForm(formdata=None)
    # Each row shows a review badge and, when one exists, a thumbnail: one query each for the whole
    # page (loading every row's frames made this page 5x slower for videos).
    query = _own_query(form).options(selectinload(Analysis.review))
    page = db.paginate(query, page=request.args.get("page", 1, type=int),
                       per_page=current_app.config["HISTORY_PAGE_SIZE"], error_out=False)
    ids = [a.id for a in page.items]
    with_thumbnail = set(db.session.scalars(
        db.select(FrameResult.analysis_id).distinct()
        .where(FrameResult.analysis_id.in_(ids), FrameResult.thumb_name.is_not(None))
    )) if ids else set()
    filters = {k: v for k, v in (("verdict", form.verdict.data), ("kind", form.kind.data)) if v}
    return render_template("history/index.html", page=page, form=form, filters=filters,
                           with_thumbnail=with_thumbnail)


@bp.route("/analyses/<int:analysis_id>/delete", methods=["POST"])
@login_required
def delete(analysis_id: int):
    analysis = own_analysis(analysis_id)
    form = ConfirmForm()
    if not form.validate_on_submit():
        flash("The delete form expired. Please try again.", "error")
        return redirect(url_for("upload.result", analysis_id=analysis_id))
    if analysis.status == "running":
        # The job would write its results back into a deleted row and folder.
        flash("This analysis is running; delete it once it has finished.", "error")
        return redirect(url_for("upload.result", analysis_id=analysis_id))
    delete_analysis(analysis)
    flash(f"“{analysis.original_name}” and its results were deleted.", "info")
    return redirect(url_for("history.index"))


def delete_analysis(analysis: Analysis) -> None:
    """Rows first (the ORM cascades faces, frames and review), then the derived images, then the
    uploaded file unless another analysis (another user's same bytes) still uses it."""
    analysis_id, stored_name = analysis.id, analysis.stored_name
    db.session.delete(analysis)
    db.session.commit()
    storage.delete_derived(analysis_id)
    storage.delete_upload_if_unused(stored_name)


def export_rows() -> list[dict]:
    rows = []
    for a in db.session.scalars(_own_query().options(selectinload(Analysis.review))):
        rows.append({
            "id": a.id, "created_at": a.created_at.isoformat() + "Z", "original_name": a.original_name,
            "kind": a.kind, "sha256": a.sha256, "size_bytes": a.size_bytes, "status": a.status,
            "error": a.error, "verdict": a.verdict, "score": a.score, "threshold": a.threshold,
            "model_version": a.model_version, "faces_found": a.faces_found,
            "frames_sampled": a.frames_sampled, "frames_with_faces": a.frames_with_faces,
            "flagged": a.flagged, "flag_reason": a.flag_reason,
            "review_decision": a.review.decision if a.review else None,
            "reviewed_at": a.review.created_at.isoformat() + "Z" if a.review else None,
        })
    return rows


def _csv_cell(value):
    """Spreadsheets run cells that start with = + - @ as formulas; a leading quote makes them text."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@bp.route("/history/export.csv")
@login_required
def export_csv():
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for row in export_rows():
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=analyses.csv"})


@bp.route("/history/export.json")
@login_required
def export_json():
    body = json.dumps({"analyses": export_rows()}, indent=2)
    return Response(body, mimetype="application/json",
                    headers={"Content-Disposition": "attachment; filename=analyses.json"})
