from flask_wtf import FlaskForm
from wtforms import MultipleFileField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

ACCEPT = "image/jpeg,image/png,image/heic,image/heif,image/avif,.heic,.heif,.avif,image/webp,image/bmp,video/mp4,video/quicktime,video/x-msvideo,video/webm,video/x-matroska,.mkv"


class UploadForm(FlaskForm):
    # The browser's `accept` only helps people pick files; the server decides the type from the content.
    files = MultipleFileField("Photos or videos", render_kw={"accept": ACCEPT})
    submit = SubmitField("Upload and analyse")


class DisputeForm(FlaskForm):
    reason = TextAreaField(
        "Why do you think the verdict is wrong?",
        validators=[DataRequired(message="Please say briefly why."), Length(min=3, max=500)],
        render_kw={"maxlength": 500, "rows": 3},
    )
    submit = SubmitField("Ask for a human review")


class GameConsentForm(FlaskForm):
    """The owner's yes or no to the game; two buttons, so the choice is explicit in the request."""

    allow = SubmitField("Allow in the game")
    withdraw = SubmitField("Withdraw consent")


class TrainingConsentForm(FlaskForm):
    """The owner's yes or no to retraining the model on this upload; two buttons, as for the game."""

    allow = SubmitField("Allow for training")
    withdraw = SubmitField("Withdraw consent")
