"""Account forms. Password length is bounded both ways so a huge password is refused before hashing."""
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Email, EqualTo, Length

PASSWORD_MIN = 8
PASSWORD_MAX = 128
LENGTH_MESSAGE = f"Use {PASSWORD_MIN} to {PASSWORD_MAX} characters."


def _normalise_email(value):
    return value.strip().lower() if isinstance(value, str) else value


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)], filters=[_normalise_email])
    # No minimum here: the message for a short password must be the same as for a wrong one.
    password = PasswordField("Password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    remember = BooleanField("Keep me signed in on this device")
    submit = SubmitField("Sign in")


class RegisterForm(FlaskForm):
    email = EmailField(
        "Email", validators=[DataRequired(), Email(), Length(max=254)], filters=[_normalise_email]
    )
    password = PasswordField(
        f"Password ({PASSWORD_MIN} to {PASSWORD_MAX} characters)",
        validators=[DataRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX, message=LENGTH_MESSAGE)],
    )
    confirm = PasswordField(
        "Repeat the password",
        validators=[DataRequired(), EqualTo("password", message="The two passwords differ.")],
    )
    submit = SubmitField("Create account")


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    new_password = PasswordField(
        f"New password ({PASSWORD_MIN} to {PASSWORD_MAX} characters)",
        validators=[DataRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX, message=LENGTH_MESSAGE)],
    )
    confirm = PasswordField(
        "Repeat the new password",
        validators=[DataRequired(), EqualTo("new_password", message="The two passwords differ.")],
    )
    submit = SubmitField("Change password")


class TokenForm(FlaskForm):
    name = StringField("Token name", validators=[DataRequired(), Length(max=100)],
                       filters=[lambda v: v.strip() if isinstance(v, str) else v])
    submit = SubmitField("Create token")


class ConfirmForm(FlaskForm):
    """A bare form for POST-only buttons (sign out, revoke, delete): it carries the CSRF token."""

    submit = SubmitField("Confirm")


class DeleteAccountForm(FlaskForm):
    password = PasswordField("Your password, to confirm", validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    submit = SubmitField("Delete my account and all my analyses")
