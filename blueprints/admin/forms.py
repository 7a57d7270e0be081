from flask_wtf import FlaskForm
from wtforms import BooleanField, RadioField, SubmitField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

DECISION_CHOICES = [SelectChoice("fake", "Confirmed fake"), SelectChoice("real", "Actually real"),
                    SelectChoice("cannot_tell", "Cannot tell")]


class ReviewForm(FlaskForm):
    decision = RadioField("Decision", choices=DECISION_CHOICES, validators=[DataRequired()])
    note = TextAreaField("Note (shown to the owner)", validators=[Optional(), Length(max=2000)],
                         render_kw={"rows": 3, "maxlength": 2000})
    usable_for_game = BooleanField("Usable for the “beat the model” game (only used if the owner allows it)")
    submit = SubmitField("Record decision")
