"""Admin review: the queue of flagged analyses, one analysis in full, decisions, simple counts."""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import func

from blueprints.access import admin_required
from blueprints.admin.forms import ReviewForm
from blueprints.upload.routes import key_frame_of
from extensions import db
from models import Analysis, Review, utcnow

bp = Blueprint("admin", __name__)

COUNT_DAYS = 14


def review_queue():
    """Flagged (automatically or by a dispute) and not yet decided, oldest first."""
    return (db.select(Analysis).outerjoin(Review, Review.analysis_id == Analysis.id)
            .where(Analysis.flagged.is_(True), Review.id.is_(None))
            .order_by(Analysis.created_at.asc(), Analysis.id.asc()))


def counts() -> dict:
    since = utcnow() - timedelta(days=COUNT_DAYS)
    day = func.date(Analysis.created_at)
    per_day = db.session.execute(
        db.select(day, func.count()).where(Analysis.created_at >= since).group_by(day).order_by(day)
    ).all()
    verdicts = db.session.execute(
        db.select(Analysis.verdict, func.count()).group_by(Analysis.verdict)
    ).all()
    queue_length = db.session.scalar(db.select(func.count()).select_from(review_queue().subquery()))
    return {
        "per_day": [(str(d), n) for d, n in per_day],
        "verdicts": sorted(((v or "pending", n) for v, n in verdicts), key=lambda item: -item[1]),
        "total": db.session.scalar(db.select(func.count(Analysis.id))),
        "queue_length": queue_length,
    }


@bp.route("/")
@admin_required
def queue():
    items = db.session.scalars(review_queue().limit(200)).all()
    return render_template("admin/queue.html", items=items, counts=counts())


@bp.route("/analyses/<int:analysis_id>", methods=["GET", "POST"])
@admin_required
def detail(analysis_id: int):
    analysis = db.get_or_404(Analysis, analysis_id)
    form = ReviewForm()
    if analysis.review is None and form.validate_on_submit():
        analysis.review = Review(decision=form.decision.data, note=(form.note.data or "").strip() or None,
                                 usable_for_game=form.usable_for_game.data, reviewer_id=current_user.id)
        db.session.commit()
        flash("Decision recorded; the owner can see it on their result page.", "success")
        return redirect(url_for("admin.queue"))
    status = 400 if form.is_submitted() else 200
    key_frame = key_frame_of(analysis, None)
    key_faces = [f for f in analysis.faces if key_frame is not None and f.frame_index == key_frame.index]
    return render_template("admin/detail.html", analysis=analysis, form=form, key_frame=key_frame,
                           key_faces=key_faces), status
