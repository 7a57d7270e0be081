"""JSON API under /api/v1. Bearer tokens only: the session cookie is never read here, so no CSRF."""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, current_app, g, jsonify, request, url_for
from flask_limiter.util import get_remote_address

from blueprints.upload.service import UploadRejected, accept_upload
from extensions import db, limiter
from models import Analysis, ApiToken, utcnow

bp = Blueprint("api", __name__)

MAX_PER_PAGE = 100


def _bearer_secret() -> str | None:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def _rate_limit_key() -> str:
    """Per token when one is given (many clients may share an address), else per address."""
    secret = _bearer_secret()
    return "token:" + ApiToken.hash(secret)[:16] if secret else "ip:" + get_remote_address()


limiter.limit(lambda: current_app.config["RATELIMIT_API"], key_func=_rate_limit_key)(bp)


def api_error(status: int, message: str, error: str):
    response = jsonify({"error": error, "message": message, "status": status})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def token_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        secret = _bearer_secret()
        if secret is None:
            return api_error(401, "Send an API token as 'Authorization: Bearer <token>'. "
                                  "Create one on your account page.", "unauthorized")
        token = db.session.scalar(db.select(ApiToken).filter_by(token_hash=ApiToken.hash(secret)))
        if token is None or not token.active:
            return api_error(401, "This API token is not valid or has been revoked.", "unauthorized")
        token.last_used_at = utcnow()
        db.session.commit()
        g.api_user = token.user
        return view(*args, **kwargs)

    return wrapped


def _own(analysis_id: int) -> Analysis:
    analysis = db.session.get(Analysis, analysis_id)
    if analysis is None or analysis.user_id != g.api_user.id:
        abort(404)
    return analysis


def analysis_summary(a: Analysis) -> dict:
    return {
        "id": a.id, "url": url_for("api.get_analysis", analysis_id=a.id, _external=True),
        "page": url_for("upload.result", analysis_id=a.id, _external=True),
        "kind": a.kind, "original_name": a.original_name, "sha256": a.sha256,
        "created_at": a.created_at.isoformat() + "Z", "status": a.status, "verdict": a.verdict,
        "score": a.score,
    }


def analysis_detail(a: Analysis) -> dict:
    body = analysis_summary(a)
    body.update({
        "stage": a.stage, "progress": a.progress, "error": a.error, "threshold": a.threshold,
        "uncertain_band": [a.uncertain_low, a.uncertain_high] if a.uncertain_low is not None else None,
        "model_version": a.model_version, "explanation": a.explanation,
        "width": a.width, "height": a.height, "duration_s": a.duration_s,
        "faces": [{"frame": f.frame_index, "person": f.person, "box": [f.x, f.y, f.w, f.h], "score": f.score}
                  for f in a.faces],
        "frames": [{"index": f.index, "time_s": f.time_s, "faces": f.faces_count, "score": f.score}
                   for f in a.frames],
        "flagged": a.flagged,
        "review": ({"decision": a.review.decision, "note": a.review.note,
                    "decided_at": a.review.created_at.isoformat() + "Z"} if a.review else None),
    })
    return body


@bp.route("/analyses", methods=["POST"])
@token_required
def create_analysis():
    """multipart `file` -> 202 {id, url} for new media; 200 with duplicate=true for bytes seen before."""
    file_storage = request.files.get("file")
    if file_storage is None or not file_storage.filename:
        return api_error(400, "Send the media as a multipart form field named 'file'.", "bad_request")
    try:
        outcome = accept_upload(g.api_user, file_storage)
    except UploadRejected as exc:
        return api_error(422, str(exc), "unsupported_media")
    body = {"id": outcome.analysis.id, "url": url_for("api.get_analysis", analysis_id=outcome.analysis.id,
                                                      _external=True),
            "status": outcome.analysis.status, "duplicate": outcome.duplicate}
    response = jsonify(body)
    response.status_code = 200 if outcome.duplicate else 202
    response.headers["Location"] = body["url"]
    return response


@bp.route("/analyses/<int:analysis_id>")
@token_required
def get_analysis(analysis_id: int):
    return jsonify(analysis_detail(_own(analysis_id)))


@bp.route("/analyses")
@token_required
def list_analyses():
    per_page = max(1, min(request.args.get("per_page", 20, type=int), MAX_PER_PAGE))
    query = (db.select(Analysis).filter_by(user_id=g.api_user.id)
             .order_by(Analysis.created_at.desc(), Analysis.id.desc()))
    page = db.paginate(query, page=request.args.get("page", 1, type=int), per_page=per_page, error_out=False)
    return jsonify({
        "items": [analysis_summary(a) for a in page.items], "page": page.page, "per_page": per_page,
        "pages": page.pages, "total": page.total,
        "next": url_for("api.list_analyses", page=page.next_num, per_page=per_page, _external=True)
        if page.has_next else None,
    })
