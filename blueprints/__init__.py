"""Blueprints: thin views that parse the request, call a service and render."""
import os

from flask import Flask

# Rate limits, in Flask-Limiter notation; each may be overridden by the environment variable of the same name.
RATE_LIMIT_DEFAULTS = {
    "RATELIMIT_SIGNIN": "10 per minute; 100 per day",
    "RATELIMIT_REGISTER": "5 per minute; 50 per day",
    "RATELIMIT_UPLOAD": "20 per minute; 500 per day",
    "RATELIMIT_API": "60 per minute",
}


def register_all(app: Flask) -> None:
    from blueprints.admin.routes import bp as admin_bp
    from blueprints.api.routes import bp as api_bp
    from blueprints.auth.routes import bp as auth_bp
    from blueprints.history.routes import bp as history_bp
    from blueprints.main.routes import bp as main_bp
    from blueprints.upload.routes import bp as upload_bp
    from extensions import csrf

    for name, default in RATE_LIMIT_DEFAULTS.items():
        app.config.setdefault(name, os.environ.get(name, default))
    # Small non-file form fields: a 1 MB "password" is refused before anything parses it.
    app.config.setdefault("MAX_FORM_MEMORY_SIZE", 64 * 1024)

    app.register_blueprint(main_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(upload_bp)
    from blueprints.live.routes import bp as live_bp; app.register_blueprint(live_bp)  # issue 7
    app.register_blueprint(history_bp)
    app.register_blueprint(admin_bp, url_prefix="/admin")
    app.register_blueprint(api_bp, url_prefix="/api/v1")
    from blueprints.evidence.routes import bp as evidence_bp; app.register_blueprint(evidence_bp)  # reports, timeline, /model, game
    csrf.exempt(api_bp)  # token-only: the API never reads the session cookie
