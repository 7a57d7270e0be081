"""Who may see what: one place that answers 404 for other people's analyses and 403 for non-admins."""
from __future__ import annotations

from functools import wraps

from flask import abort
from flask_login import current_user, login_required

from extensions import db
from models import Analysis


def analysis_for_viewer(analysis_id: int) -> Analysis:
    """The analysis if the signed-in user owns it or is an admin; 404 otherwise (no hint it exists)."""
    analysis = db.session.get(Analysis, analysis_id)
    if analysis is None or not (analysis.user_id == current_user.id or current_user.is_admin):
        abort(404)
    return analysis


def own_analysis(analysis_id: int) -> Analysis:
    """The analysis if the signed-in user owns it; 404 otherwise. For changes only the owner may make."""
    analysis = db.session.get(Analysis, analysis_id)
    if analysis is None or analysis.user_id != current_user.id:
        abort(404)
    return analysis


def admin_required(view):
    """Sign-in first (redirect), then 403 for anyone who is not an admin."""

    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)

    return wrapped
