"""The home page, /healthz, error pages and the headers every response carries."""
from __future__ import annotations

import sys
import time
import zipfile
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, make_response, render_template, request
from flask_login import current_user
from sqlalchemy import func, text
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from extensions import db, login_manager
from models import Analysis

bp = Blueprint("main", __name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

ERROR_TEXT = {
    400: ("Bad request", "The request could not be understood. If you submitted a form, reload the "
                         "page and try again."),
    401: ("Sign-in needed", "This needs a valid sign-in or API token."),
    403: ("Not allowed", "Your account may not open this page."),
    404: ("Not found", "There is nothing here. It may have been deleted, or the link is wrong."),
    405: ("Method not allowed", "This address does not accept that kind of request."),
    413: ("Too large", None),  # the message names the configured limit, see _too_large_message
    429: ("Too many requests", "You are going too fast. Wait a minute, then try again."),
    500: ("Something broke", "An internal error happened. It has been logged; please try again later."),
    503: ("Temporarily unavailable", "The service cannot reach its database right now. "
                                     "Please try again in a moment."),
}


@bp.app_template_filter("percent")
def percent(value: float | None) -> str:
    """0.4937 -> "49.4", 0.5 -> "50": whole numbers where rounding loses nothing a reader needs."""
    if value is None:
        return "–"
    p = value * 100
    return f"{p:.0f}" if abs(p - round(p)) < 0.05 else f"{p:.1f}"


@bp.route("/")
def index():
    recent = []
    if current_user.is_authenticated:
        recent = db.session.scalars(
            db.select(Analysis).filter_by(user_id=current_user.id)
            .order_by(Analysis.created_at.desc(), Analysis.id.desc()).limit(5)
        ).all()
    return render_template("main/index.html", recent=recent)


def _database_state() -> dict:
    try:
        db.session.execute(text("SELECT 1"))
        return {"ok": True}
    except Exception as exc:  # any driver error means "down" here
        db.session.rollback()
        return {"ok": False, "error": exc.__class__.__name__}


def _model_state() -> dict:
    """Present and structurally loadable, without importing TensorFlow into the web process."""
    path = Path(current_app.config["MODEL_PATH"])
    state = {"path": path.name, "present": path.is_file()}
    checker = None
    if "tensorflow" in sys.modules:  # utils.model imports TF: ask it only when TF is already loaded
        try:
            from utils import model as model_module

            checker = getattr(model_module, "model_health", None)
        except Exception:
            checker = None
    if checker is not None:
        state.update(checker(str(path)))
        state.setdefault("ok", bool(state.get("loadable")))
        return state
    if not state["present"]:
        state.update(ok=False, error="model file missing")
        return state
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
        state["loadable"] = "config.json" in names
    except (zipfile.BadZipFile, OSError):
        state["loadable"] = False
    card = path.with_name("model_card.json")
    state["card_present"] = card.is_file()
    state["ok"] = state["loadable"] and state["card_present"]
    if not state["loadable"]:
        state["error"] = "model file is not a readable Keras archive"
    elif not state["card_present"]:
        state["error"] = "model card (model_card.json) missing next to the model"
    return state


def _jobs_state() -> dict:
    from utils import jobs

    try:
        state = dict(jobs.queue_state())
    except Exception as exc:
        state = {"ok": False, "error": exc.__class__.__name__}
    try:
        counts = dict(
            db.session.execute(
                db.select(Analysis.status, func.count()).where(Analysis.status.in_(("queued", "running")))
                .group_by(Analysis.status)
            ).all()
        )
        state.setdefault("queued", counts.get("queued", 0))
        state.setdefault("running", counts.get("running", 0))
    except Exception:
        db.session.rollback()
    state.setdefault("ok", True)
    return state


@bp.route("/healthz")
def healthz():
    """Machine-readable state for load balancers and operators: 200 when usable, 503 when not."""
    database = _database_state()
    model = _model_state()
    jobs = _jobs_state() if database["ok"] else {"ok": False, "error": "database unavailable"}
    healthy = database["ok"] and model.get("ok", False) and jobs.get("ok", False)
    body = {"status": "ok" if healthy else "unhealthy", "database": database, "model": model, "jobs": jobs}
    return jsonify(body), 200 if healthy else 503


def _too_large_message() -> str:
    limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
    if request.content_length and limit and request.content_length <= limit:
        # Under the upload limit, so a text field was too long (MAX_FORM_MEMORY_SIZE).
        return "A form field held far more text than it accepts. Shorten it and try again."
    return (f"The upload is larger than the limit of {limit / (1024 * 1024):.0f} MB. "
            "Choose a smaller file, or trim the video, and try again.")


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def render_error(code: int, message: str | None = None):
    title, default = ERROR_TEXT.get(code, ("Error", "Something went wrong."))
    if code == 413:
        default = _too_large_message()
    message = message or default
    if _wants_json():
        return jsonify({"error": title.lower(), "message": message, "status": code}), code
    # The 503 page must not touch the database (the nav asks who is signed in).
    return render_template("errors/error.html", code=code, title=title, message=message,
                           hide_nav=code == 503), code


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException):
    code = exc.code or 500
    message = None
    if code == 400 and exc.description and "CSRF" in str(exc.description):
        message = "This form expired or was sent from another site. Reload the page and try again."
    elif code == 429:
        message = (f"Too many requests: the limit is {exc.description}. Wait a little, then try again."
                   if exc.description else None)
    response = make_response(render_error(code, message))
    if code == 429:
        response.headers["Retry-After"] = str(_retry_after_seconds())
    return response


def _retry_after_seconds() -> int:
    """Seconds until the limit that refused this request lets the client in again."""
    from extensions import limiter

    try:
        current = limiter.current_limit
    except Exception:  # limiter state unavailable (storage down): a safe guess
        current = None
    if current is None:
        return 60
    return max(1, int(current.reset_at - time.time()) + 1)


@bp.app_errorhandler(OperationalError)
def database_unavailable(exc):
    current_app.logger.error("database unavailable: %s", exc)
    db.session.rollback()
    # Treat the visitor as anonymous, or rendering the page would ask the database who they are.
    g._login_user = login_manager.anonymous_user()
    return render_error(503)


@bp.teardown_app_request
def release_database_session(exc):
    """End the request's database session here, where a connection the database dropped during
    the request is discarded quietly. (Flask-SQLAlchemy's own teardown would raise on the failed
    ROLLBACK and turn an answer already made, such as the 503 page, into a bare 500.)"""
    try:
        db.session.remove()
    except Exception:  # the connection is gone; the pool has invalidated it and will open a new one
        db.session.registry.clear()
        current_app.logger.warning("database connection lost at the end of a request", exc_info=True)


@bp.app_errorhandler(500)
def internal_error(exc):
    return render_error(500)


@bp.after_app_request
def security_headers(response):
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(self), microphone=(), geolocation=()")
    if current_app.config.get("SESSION_COOKIE_SECURE"):
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response
