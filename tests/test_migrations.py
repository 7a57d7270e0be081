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


def test_training_consent_starts_withdrawn_for_existing_analyses(app):
    """Analyses made before the column existed get no consent; downgrading drops only that column."""
    with app.app_context():
        _empty_database()
        upgrade(revision="ee387846b493")
        with db.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO \"user\" (id, email, password_hash, is_admin, session_version, created_at) "
                "VALUES (1, 'old@example.com', 'x', false, 1, CURRENT_TIMESTAMP)"))
            connection.execute(text(
                "INSERT INTO analysis (id, user_id, kind, original_name, sha256, size_bytes, created_at, status,"
                " progress, attempts, faces_found, frames_sampled, frames_with_faces, flagged, game_consent) "
                "VALUES (1, 1, 'image', 'old.jpg', :sha, 1, CURRENT_TIMESTAMP, 'done', 1.0, 1, 1, 1, 1, false, true)"),
                {"sha": "a" * 64})
        upgrade()
        with db.engine.connect() as connection:
            row = connection.execute(text("SELECT game_consent, training_consent FROM analysis")).one()
        assert (bool(row[0]), bool(row[1])) == (True, False)
        downgrade(revision="ee387846b493")
        columns = {c["name"] for c in inspect(db.engine).get_columns("analysis")}
        assert "game_consent" in columns and "training_consent" not in columns
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT original_name FROM analysis")).scalar_one() == "old.jpg"
        _empty_database()
