"""Live camera check: the /live page and the JSON endpoints its script calls.

The page starts a session, posts one downscaled JPEG frame about once a second (X-CSRFToken header),
and shows the rolling verdict each answer carries. Frames stay in this process's memory
(utils.live.LiveStore) until the session expires; only "save" writes anything.
"""
from __future__ import annotations

import os
from functools import wraps

from flask import Blueprint, current_app, jsonify, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf.csrf import CSRFError
from redis.exceptions import RedisError

from extensions import limiter
from models import utcnow
from utils.live import (FrameRejected, LiveSettings, LiveStore, RedisLiveStore, decode_frame, make_store,
                        save_session, score_frame)

bp = Blueprint("live", __name__)

# Each may be overridden by the environment variable of the same name (or the app's config).
# Unsaved sessions live in this process's memory, or in Redis when REDIS_URL is set (LIVE_STORE=auto),
# so that every web process (gunicorn worker) sees the same session.
LIVE_DEFAULTS = {
    "LIVE_FRAME_INTERVAL_MS": 1000,  # the page sends a frame this often
    "LIVE_FRAME_MAX_SIDE": 480,  # ... downscaled in the browser to this longest side
    "LIVE_WINDOW_SECONDS": 10,  # rolling verdict over this many seconds
    "LIVE_MAX_FRAME_BYTES": 2 * 1024 * 1024,
    "LIVE_MAX_FRAME_PIXELS": 4_000_000,
    "LIVE_SESSION_IDLE_SECONDS": 300,  # an unsaved session without frames is forgotten after this
    "LIVE_MAX_SESSIONS_PER_USER": 3,
    "LIVE_MAX_IN_FLIGHT_PER_USER": 2,
    "LIVE_MAX_SESSION_FRAMES": 300,  # what a save can hold (the most recent frames)
    "LIVE_KEY_FRAMES": 32,  # thumbnails written by a save
    "RATELIMIT_LIVE": "90 per minute",  # frames per user
    "LIVE_STORE": "auto",  # unsaved sessions in Redis when REDIS_URL is set (shared by all processes), else memory
    "LIVE_REDIS_PREFIX": "live:",
}


@bp.record_once
def _settings(state) -> None:
    app = state.app
    for name, default in LIVE_DEFAULTS.items():
        value = os.environ.get(name)
        app.config.setdefault(name, default if value is None else type(default)(value))
    app.extensions["live"] = make_store(app.config)


def _store() -> LiveStore | RedisLiveStore:
    return current_app.extensions["live"]


def _error(status: int, code: str, message: str, **extra):
    response = jsonify({"error": code, "message": message, "status": status, **extra})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _json_sign_in_required(view):
    """401 JSON instead of a redirect to the sign-in page: the caller is a script."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        if not current_user.is_authenticated:
            return _error(401, "unauthorized", "Sign in to use the live camera check.")
        return view(*args, **kwargs)

    return wrapped


def _user_key() -> str:
    return f"live-user:{current_user.id}" if current_user.is_authenticated else f"live-ip:{request.remote_addr}"


@bp.errorhandler(CSRFError)
def _csrf_failed(exc):
    return _error(400, "csrf", "The page's security token is missing or expired. Reload the page and start again.")


@bp.errorhandler(429)
def _too_many(exc):
    response = _error(429, "rate_limited", f"Too many frames: the limit is {exc.description}. "
                      "Frames are dropped until the limit resets.", dropped=True)
    if getattr(exc, "retry_after", None):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@bp.errorhandler(RedisError)
def _store_unavailable(exc):
    current_app.logger.error("live: session store unavailable: %s", exc)
    return _error(503, "store_unavailable", "Live sessions are unavailable right now (their store cannot be "
                                            "reached). Please try again in a moment.")


@bp.errorhandler(413)
def _too_large(exc):
    return _error(413, "frame_too_large", _too_large_message())


def _too_large_message() -> str:
    limit = current_app.config["LIVE_MAX_FRAME_BYTES"]
    return f"The frame is larger than {limit // 1024} kB; send a smaller (downscaled) JPEG."


@bp.route("/live")
@login_required
def page():
    config = current_app.config
    return render_template("live/live.html", interval_ms=config["LIVE_FRAME_INTERVAL_MS"],
                           max_side=config["LIVE_FRAME_MAX_SIDE"], window_s=config["LIVE_WINDOW_SECONDS"],
                           max_frames=config["LIVE_MAX_SESSION_FRAMES"])


def _session_urls(session_id: str) -> dict:
    return {"frame_url": url_for("live.frame", session_id=session_id),
            "save_url": url_for("live.save", session_id=session_id),
            "discard_url": url_for("live.discard", session_id=session_id)}


@bp.route("/live/sessions", methods=["POST"])
@_json_sign_in_required
def start():
    session = _store().create(current_user.id, LiveSettings.from_config(current_app.config))
    return jsonify({"id": session.id, **_session_urls(session.id)}), 201


def _own_session(session_id: str):
    return _store().get(session_id, current_user.id)


def _unknown_session():
    return _error(404, "unknown_session", "This live session has ended or expired. Start the camera check again.")


@bp.route("/live/sessions/<session_id>/frames", methods=["POST"])
@_json_sign_in_required
@limiter.limit(lambda: current_app.config["RATELIMIT_LIVE"], key_func=_user_key)
def frame(session_id: str):
    """Score one frame now, or drop it at once (409/429, "dropped": true) when this session or
    this user already has frames being scored: nothing is ever queued."""
    from utils.model import ModelUnavailable, get_detector

    config = current_app.config
    session = _own_session(session_id)
    if session is None:
        return _unknown_session()
    limit = config["LIVE_MAX_FRAME_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        return _error(413, "frame_too_large", _too_large_message())
    request.max_content_length = limit  # also bounds a body sent without a length

    if not session.try_begin_scoring():
        session.note_dropped()
        return _error(409, "busy", "The previous frame of this session is still being scored; this one was dropped.",
                      dropped=True, rates=session.rates().to_json())
    try:
        store = _store()
        if not store.try_begin_user(current_user.id, config["LIVE_MAX_IN_FLIGHT_PER_USER"]):
            session.note_dropped()
            return _error(429, "user_busy", "Your other live sessions are using all of your scoring slots; "
                                            "this frame was dropped.", dropped=True, rates=session.rates().to_json())
        try:
            rgb = decode_frame(request.get_data(cache=False), config["LIVE_MAX_FRAME_PIXELS"])
            detector = get_detector(config["MODEL_PATH"])
            faces, image_jpeg = score_frame(rgb, detector)
            scored = session.add_frame(rgb.shape[1], rgb.shape[0], faces, image_jpeg)
            rolling = session.rolling_verdict(detector)
        finally:
            store.end_user(current_user.id)
    except FrameRejected as exc:
        return _error(exc.status, exc.code, str(exc))
    except ModelUnavailable as exc:
        current_app.logger.error("live: model unavailable: %s", exc)
        return _error(503, "model_unavailable", "The detector is not available right now; please try again later.")
    finally:
        session.end_scoring()
    response = jsonify({
        "seq": scored.seq, "time_s": scored.time_s, "width": scored.width, "height": scored.height,
        "faces": [{"box": list(f.box), "score": round(f.score, 4),  # each face's band: wider without detail
                   "uncertain_band": list(detector.detail_bands.band_for(f.detail))} for f in scored.faces],
        "score": None if scored.score is None else round(scored.score, 4),
        "no_face": not scored.faces,
        "rolling": rolling.to_json(),
        "rates": session.rates().to_json(),
        "threshold": detector.threshold, "uncertain_band": list(detector.uncertain_band),
        "kept_frames": session.kept_count(),
    })
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/live/sessions/<session_id>/save", methods=["POST"])
@_json_sign_in_required
def save(session_id: str):
    """Write the session as a finished analysis (kind live): only now do its frames reach the disk."""
    from utils.model import ModelUnavailable, get_detector

    session = _own_session(session_id)
    if session is None:
        return _unknown_session()
    name = f"Live camera session {utcnow().strftime('%Y-%m-%d %H:%M')} UTC"
    try:
        analysis = save_session(session, current_user._get_current_object(),
                                get_detector(current_app.config["MODEL_PATH"]), name)
    except FrameRejected as exc:
        return _error(exc.status, exc.code, str(exc))
    except ModelUnavailable:
        return _error(503, "model_unavailable", "The detector is not available right now; please try again later.")
    return jsonify({"analysis_id": analysis.id, "url": url_for("upload.result", analysis_id=analysis.id),
                    "verdict": analysis.verdict, "frames": analysis.frames_sampled}), 201


@bp.route("/live/sessions/<session_id>/discard", methods=["POST"])
@_json_sign_in_required
def discard(session_id: str):
    """Forget an unsaved session now (the page calls this when the camera is stopped)."""
    if not _store().discard(session_id, current_user.id):
        return _unknown_session()
    return "", 204
