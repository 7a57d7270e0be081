"""The migrations build exactly the schema models.py declares, on SQLite and (TEST_DATABASE_URL) PostgreSQL."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from extensions import db


def _empty_database():
    """No tables at all, not even Alembic's version table (PostgreSQL keeps it between tests)."""
    db.drop_all()
    with db.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


def _schema_diff(app):
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def test_upgrade_from_empty_matches_models(app):
    with app.app_context():
        _empty_database()
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {"user", "analysis", "face_result", "frame_result", "review", "api_token"} <= tables
        assert _schema_diff(app) == []
        _empty_database()


def test_downgrade_removes_everything_then_upgrade_again(app):
    with app.app_context():
        _empty_database()
        upgrade()
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        upgrade()
        assert "analysis" in inspect(db.engine).get_table_names()
        _empty_database()
