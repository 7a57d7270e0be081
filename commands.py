"""Operator commands (`flask --app app ...`): each area registers its own group here."""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup

DEFAULT_ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD_FILE = "admin_password.txt"

users_cli = AppGroup("users", help="Create accounts and the first admin.")
tokens_cli = AppGroup("tokens", help="Issue API tokens.")


def _read_password(confirm: bool = True) -> str:
    """From a prompt on a terminal, or the first line of stdin when piped (scripts, CI)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)


def _check_password_length(password: str) -> None:
    from blueprints.auth.forms import PASSWORD_MAX, PASSWORD_MIN

    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise click.ClickException(f"The password must have {PASSWORD_MIN} to {PASSWORD_MAX} characters.")


@users_cli.command("create")
@click.argument("email")
@click.option("--admin", is_flag=True, help="Give the account admin rights (review queue).")
def create_user(email: str, admin: bool) -> None:
    """Create an account; the password is read from a prompt or stdin."""
    from extensions import db
    from models import User

    email = email.strip().lower()
    if db.session.scalar(db.select(User.id).filter_by(email=email)) is not None:
        raise click.ClickException(f"{email} already has an account.")
    password = _read_password()
    _check_password_length(password)
    user = User(email=email, is_admin=admin)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    click.echo(f"Created {'admin ' if admin else ''}account {email}.")


@users_cli.command("ensure-admin")
@click.option("--email", default=DEFAULT_ADMIN_EMAIL, show_default=True)
def ensure_admin(email: str) -> None:
    """Make sure an admin login exists and print it. The password is generated once into
    instance/admin_password.txt and reused, so running this again changes nothing."""
    from extensions import db
    from models import User

    password_file = Path(current_app.instance_path) / ADMIN_PASSWORD_FILE
    user = db.session.scalar(db.select(User).filter_by(email=email))
    if user is None:
        password = password_file.read_text().strip() if password_file.exists() else secrets.token_urlsafe(12)
        user = User(email=email, is_admin=True)
        user.set_password(password)
        db.session.add(user)
        db.session.commit()
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    elif not user.is_admin:
        user.is_admin = True
        db.session.commit()
    if password_file.exists() and user.check_password(password_file.read_text().strip()):
        click.echo(f"Admin login: {email} / {password_file.read_text().strip()}  (stored in {password_file})")
    else:
        click.echo(f"Admin login: {email} (its password was changed; it is no longer the one in {password_file})")


@tokens_cli.command("create")
@click.argument("email")
@click.option("--name", default="cli", show_default=True, help="A label shown on the account page.")
def create_token(email: str, name: str) -> None:
    """Issue an API token for an account and print it (the only time it is shown)."""
    from extensions import db
    from models import ApiToken, User

    user = db.session.scalar(db.select(User).filter_by(email=email.strip().lower()))
    if user is None:
        raise click.ClickException(f"No account for {email}.")
    token, secret = ApiToken.issue(user, name)
    db.session.add(token)
    db.session.commit()
    click.echo(secret)


def register_commands(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
    from utils.jobs_cli import register; register(app)
    from utils.detector_cli import register; register(app)
    from utils.live_cli import register; register(app)
    from utils.review_export import register; register(app)
    from utils.retention import register; register(app)
