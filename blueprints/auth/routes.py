"""Register, sign in, sign out, and the account page (password change, API tokens)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.security import check_password_hash, generate_password_hash

from blueprints.auth.forms import (ChangePasswordForm, ConfirmForm, DeleteAccountForm, LoginForm, RegisterForm,
                                   TokenForm)
from extensions import db, limiter, login_manager
from models import ApiToken, User, utcnow
from utils import storage

bp = Blueprint("auth", __name__)

login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.login_message_category = "info"

BAD_CREDENTIALS = "Email or password is incorrect."
_dummy_hash: str | None = None


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """The cookie holds "id:session_version"; an old version means the session was ended elsewhere."""
    user_part, _, version_part = user_id.partition(":")
    if not (user_part.isdigit() and version_part.isdigit()):
        return None
    user = db.session.get(User, int(user_part))
    if user is None or user.session_version != int(version_part):
        return None
    return user


def safe_next(target: str | None) -> str:
    """A redirect target only if it is a path on this site; the home page otherwise."""
    fallback = url_for("main.index")
    if not target or not target.startswith("/") or target.startswith("//"):
        return fallback
    if "\\" in target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return fallback
    return target


def _check_credentials(email: str, password: str) -> User | None:
    """The user for these credentials, spending the same hashing time whether or not the email exists."""
    global _dummy_hash
    user = db.session.scalar(db.select(User).filter_by(email=email))
    if user is None:
        if _dummy_hash is None:
            _dummy_hash = generate_password_hash("not a real password")
        check_password_hash(_dummy_hash, password)
        return None
    return user if user.check_password(password) else None


def _start_session(user: User, remember: bool = False) -> None:
    """A fresh session on sign-in, so nothing from before (fixation) carries over."""
    session.clear()
    login_user(user, remember=remember)


def _limit(name):
    return lambda: current_app.config[name]


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_limit("RATELIMIT_SIGNIN"), methods=["POST"])
def login():
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    form = LoginForm()
    if form.validate_on_submit():
        user = _check_credentials(form.email.data, form.password.data)
        if user is not None:
            _start_session(user, remember=form.remember.data)
            flash("Signed in.", "success")
            return redirect(safe_next(request.args.get("next")))
        flash(BAD_CREDENTIALS, "error")
    elif form.is_submitted() and not form.errors.get("csrf_token"):
        flash(BAD_CREDENTIALS, "error")
    status = 200 if not form.is_submitted() else 400
    return render_template("auth/login.html", form=form), status


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(_limit("RATELIMIT_REGISTER"), methods=["POST"])
def register():
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = RegisterForm()
    if form.validate_on_submit():
        if db.session.scalar(db.select(User.id).filter_by(email=form.email.data)) is not None:
            form.email.errors.append("This email cannot be used to register. If it is yours, sign in instead.")
        else:
            user = User(email=form.email.data)
            user.set_password(form.password.data)
            db.session.add(user)
            db.session.commit()
            _start_session(user)
            flash("Account created. Upload a photo or a video to check it.", "success")
            return redirect(url_for("upload.upload"))
    status = 200 if not form.is_submitted() else 400
    return render_template("auth/register.html", form=form), status


@bp.route("/logout", methods=["POST"])
def logout():
    form = ConfirmForm()
    if form.validate_on_submit():
        if current_user.is_authenticated:
            # Sessions live in signed cookies: only a new version makes a copied cookie useless.
            # This also ends the account's sessions on other devices.
            user = current_user._get_current_object()
            user.session_version += 1
            db.session.commit()
        logout_user()
        session.clear()
        flash("Signed out, here and on your other devices.", "info")
    return redirect(url_for("main.index"))


def _account_page(password_form=None, token_form=None, delete_form=None, new_secret=None, status=200):
    tokens = db.session.scalars(
        db.select(ApiToken).filter_by(user_id=current_user.id).order_by(ApiToken.created_at.desc())
    ).all()
    return render_template(
        "auth/account.html",
        password_form=password_form or ChangePasswordForm(formdata=None),
        token_form=token_form or TokenForm(formdata=None),
        confirm_form=ConfirmForm(formdata=None),
        delete_form=delete_form or DeleteAccountForm(formdata=None),
        tokens=tokens,
        new_secret=new_secret,
    ), status


@bp.route("/account")
@login_required
def account():
    return _account_page()


@bp.route("/account/password", methods=["POST"])
@login_required
@limiter.limit(_limit("RATELIMIT_SIGNIN"))
def change_password():
    form = ChangePasswordForm()
    if form.validate_on_submit():
        if not current_user.check_password(form.current_password.data):
            form.current_password.errors.append("The current password is not correct.")
        else:
            user = current_user._get_current_object()
            user.set_password(form.new_password.data)
            user.session_version += 1  # every other session's cookie now names an old version
            db.session.commit()
            _start_session(user)
            flash("Password changed. Other devices have been signed out.", "success")
            return redirect(url_for("auth.account"))
    return _account_page(password_form=form, status=400)


@bp.route("/account/tokens", methods=["POST"])
@login_required
def create_token():
    form = TokenForm()
    if form.validate_on_submit():
        token, secret = ApiToken.issue(current_user._get_current_object(), form.name.data)
        db.session.add(token)
        db.session.commit()
        # Rendered, not flashed: a flashed secret would sit in the (signed, not encrypted) cookie.
        return _account_page(new_secret=secret, status=201)
    return _account_page(token_form=form, status=400)


@bp.route("/account/tokens/<int:token_id>/revoke", methods=["POST"])
@login_required
def revoke_token(token_id: int):
    form = ConfirmForm()
    token = db.session.get(ApiToken, token_id)
    if token is None or token.user_id != current_user.id:
        abort(404)
    if form.validate_on_submit() and token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.commit()
        flash(f"Token “{token.name}” revoked.", "info")
    return redirect(url_for("auth.account"))


@bp.route("/account/sessions/end", methods=["POST"])
@login_required
def end_other_sessions():
    """Sign out every other browser and device (e.g. after using a shared computer)."""
    form = ConfirmForm()
    if form.validate_on_submit():
        user = current_user._get_current_object()
        user.session_version += 1
        db.session.commit()
        _start_session(user)
        flash("Every other session has been signed out.", "success")
    return redirect(url_for("auth.account"))


@bp.route("/account/delete", methods=["POST"])
@login_required
@limiter.limit(_limit("RATELIMIT_SIGNIN"))
def delete_account():
    """The account, its tokens and analyses (rows, derived images, uploaded files no one else uses)."""
    form = DeleteAccountForm()
    if form.validate_on_submit():
        user = current_user._get_current_object()
        if not user.check_password(form.password.data):
            form.password.errors.append("The password is not correct.")
        else:
            files = [(a.id, a.stored_name) for a in user.analyses]
            db.session.delete(user)
            db.session.commit()
            for analysis_id, stored_name in files:
                storage.delete_derived(analysis_id)
                storage.delete_upload_if_unused(stored_name)
            logout_user()
            session.clear()
            flash("Your account, its analyses and their files were deleted.", "info")
            return redirect(url_for("main.index"))
    return _account_page(delete_form=form, status=400)
