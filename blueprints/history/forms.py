from flask_wtf import FlaskForm
from wtforms import SelectField

from models import KINDS, VERDICTS

VERDICT_LABELS = {"real": "Real", "fake": "Fake", "uncertain": "Uncertain", "no_face": "No face found"}


class HistoryFilterForm(FlaskForm):
    """GET filters: no CSRF (they change nothing)."""

    class Meta:
        csrf = False

    verdict = SelectField("Verdict", choices=[("", "Any verdict")] + [(v, VERDICT_LABELS[v]) for v in VERDICTS],
                          default="")
    kind = SelectField("Type", choices=[("", "Any type")] + [(k, k.capitalize()) for k in KINDS], default="")
