"""The application factory: settings, extensions, blueprints, CLI and error pages."""
from __future__ import annotations

import logging
import os

from flask import Flask

from config import load_config
from extensions import csrf, db, limiter, login_manager, migrate


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(load_config(app.instance_path))
    if config:
        app.config.update(config)

    register_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_cli(app)
    register_jobs(app)
    return app


def register_logging(app: Flask) -> None:
    if not app.debug and not app.testing:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "migrations"), render_as_batch=True)
    login_manager.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        _sqlite_pragmas(app)


def _sqlite_pragmas(app: Flask) -> None:
    """WAL and a busy timeout so the web process and the job runner do not trip over each other."""
    from sqlalchemy import event

    with app.app_context():
        engine = db.engine

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=15000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()


def register_blueprints(app: Flask) -> None:
    from blueprints import register_all

    register_all(app)


def register_cli(app: Flask) -> None:
    from commands import register_commands

    register_commands(app)


def register_jobs(app: Flask) -> None:
    from utils import jobs

    jobs.init_app(app)
