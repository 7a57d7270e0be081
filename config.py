"""Settings from the environment, with defaults that make a one-command start work."""
import os
import secrets
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent


def _int(name, default):
    return int(os.environ.get(name, default))


def _float(name, default):
    return float(os.environ.get(name, default))


def _bool(name, default=False):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


class ConfigError(RuntimeError):
    """Raised at start-up when a setting makes the app unsafe or unusable."""


def _secret_key(instance_path: Path, production: bool) -> str:
    """Production must be given SECRET_KEY; development generates one once into instance/."""
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    if production:
        raise ConfigError(
            "SECRET_KEY is not set. In production (APP_ENV=production) the app refuses to start "
            "without it: export SECRET_KEY to a long random string shared by every web worker."
        )
    key_file = instance_path / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


def _database_url(instance_path: Path) -> str:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{instance_path / 'app.db'}"
    # Heroku-style URLs name the old driver; we ship psycopg 3.
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url[len("postgres://"):]
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def load_config(instance_path: str) -> dict:
    """Every setting the app reads, resolved once from the environment."""
    instance = Path(instance_path)
    production = os.environ.get("APP_ENV", "development").lower() == "production"
    database_url = _database_url(instance)
    return {
        "APP_ENV": "production" if production else "development",
        "SECRET_KEY": _secret_key(instance, production),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "UPLOAD_FOLDER": os.environ.get("UPLOAD_FOLDER", str(instance / "uploads")),
        "DERIVED_FOLDER": os.environ.get("DERIVED_FOLDER", str(instance / "derived")),
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 200 * 1024 * 1024),
        "MODEL_PATH": os.environ.get("MODEL_PATH", str(BASE_DIR / "utils" / "weights" / "detector.keras")),
        "VIDEO_FRAMES": _int("VIDEO_FRAMES", 32),
        "VIDEO_MAX_SECONDS": _float("VIDEO_MAX_SECONDS", 600),
        "VIDEO_MAX_PIXELS": _int("VIDEO_MAX_PIXELS", 3840 * 2160),
        "IMAGE_MAX_PIXELS": _int("IMAGE_MAX_PIXELS", 50_000_000),
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "JOB_WORKERS": _int("JOB_WORKERS", 1),
        "JOB_TIMEOUT": _int("JOB_TIMEOUT", 300),
        "JOB_LEASE_SECONDS": _int("JOB_LEASE_SECONDS", 60),
        "RATELIMIT_ENABLED": _bool("RATELIMIT_ENABLED", True),
        "RATELIMIT_STORAGE_URI": os.environ.get("RATELIMIT_STORAGE_URI")
        or os.environ.get("REDIS_URL")
        or "memory://",
        "RETENTION_DAYS": _int("RETENTION_DAYS", 0),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_DURATION": timedelta(days=_int("REMEMBER_DAYS", 30)),
        "WTF_CSRF_TIME_LIMIT": None,
        "HISTORY_PAGE_SIZE": _int("HISTORY_PAGE_SIZE", 20),
    }
