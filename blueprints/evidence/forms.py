from flask_wtf import FlaskForm
from wtforms import IntegerField, SubmitField
from wtforms.validators import DataRequired
from wtforms.widgets import HiddenInput


class GuessForm(FlaskForm):
    """One round: the face dealt and the player's answer (two buttons; no script needed)."""
    face_id = IntegerField(widget=HiddenInput(), validators=[DataRequired()])
    real = SubmitField("Real")
    fake = SubmitField("Fake")


class ResetScoreForm(FlaskForm):
    submit = SubmitField("Start a new score")
