"""Report (HTML + JSON) and timeline per analysis for its owner or an admin; the public model page;
the game. Views only parse, call blueprints/evidence/{service,game}.py and render."""
from __future__ import annotations

from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, send_file, url_for
from flask_login import login_required
from markupsafe import Markup

from blueprints.access import analysis_for_viewer
from blueprints.evidence import game, service
from blueprints.evidence.forms import GuessForm, ResetScoreForm
from blueprints.upload.routes import DECISION_TEXT
from utils import storage
from utils.timeline import points_from_frames, render_timeline

bp = Blueprint("evidence", __name__)


# --------------------------------------------------------------------------- shared with _analysis.html

def timeline_markup(a, *, standalone: bool = False) -> str:
    band = ((a.uncertain_low, a.uncertain_high)
            if a.uncertain_low is not None and a.uncertain_high is not None else None)
    return render_timeline(
        points_from_frames(a.frames), threshold=a.threshold if a.threshold is not None else 0.5, band=band,
        link_for=lambda index: url_for("upload.result", analysis_id=a.id, frame=index, _anchor="faces"),
        duration_s=a.duration_s, standalone=standalone)


@bp.app_template_global("timeline_svg")
def timeline_svg(a) -> Markup:
    """Inline SVG for the result page; render_timeline escapes every value it writes."""
    return Markup(timeline_markup(a))


bp.add_app_template_global(service.plain_explanation, "plain_explanation")
bp.add_app_template_global(service.reliability_notes, "reliability_notes")


def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "private, no-store"
    return response


# --------------------------------------------------------------------------- per analysis

@bp.route("/analyses/<int:analysis_id>/report")
@login_required
def report(analysis_id: int):
    analysis = analysis_for_viewer(analysis_id)
    data = service.build_report(analysis, DECISION_TEXT)
    timeline = timeline_svg(analysis) if analysis.kind != "image" and analysis.frames else None
    return _private(Response(render_template("evidence/report.html", report=data, analysis=analysis,
                                             timeline=timeline)))


@bp.route("/analyses/<int:analysis_id>/report.json")
@login_required
def report_json(analysis_id: int):
    analysis = analysis_for_viewer(analysis_id)
    response = jsonify(service.build_report(analysis, DECISION_TEXT).to_json())
    response.headers["Content-Disposition"] = f'inline; filename="analysis-{analysis.id}-report.json"'
    return _private(response)


@bp.route("/analyses/<int:analysis_id>/timeline.svg")
@login_required
def timeline(analysis_id: int):
    analysis = analysis_for_viewer(analysis_id)
    if not analysis.frames:
        abort(404)
    response = Response(timeline_markup(analysis, standalone=True), mimetype="image/svg+xml")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return _private(response)


# --------------------------------------------------------------------------- model page (public)

@bp.route("/model")
def model_card():
    card = service.read_model_card()
    metrics = card.get("validation_metrics") if isinstance(card.get("validation_metrics"), dict) else {}
    images = {kind: service.evaluation_image(kind) is not None for kind in service.EVALUATION_IMAGES}
    return render_template("evidence/model.html", card=card, metrics=metrics,
                           columns=service.metric_columns(metrics), images=images,
                           evaluation_sets=service.evaluation_sets(),
                           limits=service.model_limits(card), auc=service.overall_auc(card),
                           robustness=service.robustness_rows(card), detail_bands=service.detail_band_rows(card),
                           photo_band=service.photo_band(card))


@bp.route("/model/<any(roc, confusion):kind>.png")
def evaluation_png(kind: str):
    path = service.evaluation_image(kind)
    if path is None:
        abort(404)
    return send_file(path, mimetype="image/png", max_age=300)


@bp.route("/model/eval/<source>/<any(roc, confusion):kind>.png")
def evaluation_set_png(source: str, kind: str):
    path = service.evaluation_set_image(source, kind)
    if path is None:
        abort(404)
    return send_file(path, mimetype="image/png", max_age=300)


# --------------------------------------------------------------------------- game

@bp.route("/game", methods=["GET", "POST"])
@login_required
def play():
    form = GuessForm()
    if form.is_submitted():
        if form.validate() and (form.real.data or form.fake.data):
            outcome = game.play(form.face_id.data, "fake" if form.fake.data else "real")
            if outcome is not None:
                return redirect(url_for("evidence.reveal"))
        flash("That round had already been played or expired; here is a new face.", "info")
        return redirect(url_for("evidence.play"))
    face = game.deal()
    if face is not None:
        form = GuessForm(formdata=None, face_id=face.id)
    return render_template("evidence/game.html", face=face, form=form, score=game.score(),
                           reset_form=ResetScoreForm(formdata=None))


@bp.route("/game/reveal")
@login_required
def reveal():
    outcome = game.last_round()
    if outcome is None:
        return redirect(url_for("evidence.play"))
    face = game.playable_face(outcome.face_id)
    return render_template("evidence/reveal.html", outcome=outcome, face=face, score=game.score(),
                           reset_form=ResetScoreForm(formdata=None))


@bp.route("/game/reset", methods=["POST"])
@login_required
def reset_score():
    if ResetScoreForm().validate_on_submit():
        game.reset()
        flash("Score cleared.", "success")
    return redirect(url_for("evidence.play"))


@bp.route("/game/faces/<int:face_id>/<any(crop, heatmap):kind>.jpg")
@login_required
def game_image(face_id: int, kind: str):
    """Only faces in the game are served here (no owner check: an admin released them for play)."""
    face = game.playable_face(face_id)
    name = face and (face.crop_name if kind == "crop" else face.heatmap_name)
    if not name:
        abort(404)
    path = storage.derived_path(face.analysis_id, name)
    if not path.is_file():
        abort(404)
    response = send_file(path, mimetype="image/jpeg", max_age=0)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return _private(response)
