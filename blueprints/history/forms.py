from flask_wtf import FlaskForm
from wtforms import SelectField
from wtforms.fields.choices import SelectChoice

from models import KINDS, VERDICTS

VERDICT_LABELS = {"real": "Real", "fake": "Fake", "uncertain": "Uncertain", "no_face": "No face found"}


class HistoryFilterForm(FlaskForm):
    """GET filters: no CSRF (they change nothing)."""

    class Meta:
        csrf = False

    verdict = SelectField("Verdict", default="", choices=[SelectChoice("", "Any verdict")]
                          + [SelectChoice(v, VERDICT_LABELS[v]) for v in VERDICTS])
    kind = SelectField("Type", default="", choices=[SelectChoice("", "Any type")]
                       + [SelectChoice(k, k.capitalize()) for k in KINDS])
