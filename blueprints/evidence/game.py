""""Can you beat the model?": faces from analyses whose owner consented and that an admin decided
(fake or real) and marked usable for the game. The player's score lives in the session; the face
being played is remembered there too, so a round counts once and only for the face that was dealt."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from flask import session
from sqlalchemy import func

from extensions import db
from models import Analysis, FaceResult, Review
from utils import storage
from utils.timeline import classify

SESSION_KEY = "game"
RECENT = 20  # faces not dealt again until this many others have been shown (when there are enough)


@dataclass
class Round:
    """What the reveal page shows."""

    face_id: int
    guess: str  # real | fake
    truth: str  # the reviewer's decision
    model_answer: str  # real | fake | uncertain
    model_score: float
    threshold: float
    player_right: bool
    model_right: bool


@dataclass
class Score:
    rounds: int = 0
    player: int = 0
    model: int = 0


def playable_faces():
    """Faces whose owner consented and whose analysis a reviewer decided (fake/real) and allowed in
    the game. Checked on every deal and image request, so a withdrawn consent applies at once."""
    return (db.select(FaceResult)
            .join(Analysis, FaceResult.analysis_id == Analysis.id)
            .join(Review, Review.analysis_id == Analysis.id)
            .where(Analysis.game_consent.is_(True), Review.usable_for_game.is_(True),
                   Review.decision.in_(("fake", "real")),
                   Analysis.status == "done", FaceResult.crop_name.is_not(None)))


def playable_face(face_id: int) -> FaceResult | None:
    return db.session.scalar(playable_faces().where(FaceResult.id == face_id))


def _state() -> dict:
    return session.get(SESSION_KEY) or {}


def _save(state: dict) -> None:
    session[SESSION_KEY] = state


def score() -> Score:
    saved = _state().get("score") or {}
    return Score(**{k: int(saved.get(k, 0)) for k in ("rounds", "player", "model")})


def deal() -> FaceResult | None:
    """A random playable face, avoiding the ones shown lately; None when there is no material."""
    state = _state()
    recent = [int(i) for i in state.get("recent", [])]
    candidates = playable_faces().order_by(func.random()).limit(10)
    face = None
    for query in (candidates.where(FaceResult.id.not_in(recent)) if recent else candidates, candidates):
        for row in db.session.scalars(query):
            if storage.derived_path(row.analysis_id, row.crop_name).is_file():
                face = row
                break
        if face is not None:
            break
    if face is not None:
        state["dealt"] = face.id
        state["recent"] = (recent + [face.id])[-RECENT:]
        _save(state)
    return face


def dealt_face_id() -> int | None:
    return _state().get("dealt")


def play(face_id: int, guess: str) -> Round | None:
    """Score the guess for the face that was dealt; None if that is not the dealt face (a replayed
    or forged form), which then counts for nothing."""
    state = _state()
    if state.get("dealt") != face_id:
        return None
    face = playable_face(face_id)
    if face is None:
        return None
    analysis = face.analysis
    threshold = analysis.threshold if analysis.threshold is not None else 0.5
    band = ((analysis.uncertain_low, analysis.uncertain_high)
            if analysis.uncertain_low is not None and analysis.uncertain_high is not None else None)
    model_answer = classify(face.score, threshold, band)
    truth = analysis.review.decision
    outcome = Round(face_id=face.id, guess=guess, truth=truth, model_answer=model_answer,
                    model_score=float(face.score), threshold=float(threshold),
                    player_right=guess == truth, model_right=model_answer == truth)
    current = score()
    current.rounds += 1
    current.player += outcome.player_right
    current.model += outcome.model_right
    state.pop("dealt", None)
    state["score"] = asdict(current)
    state["last"] = asdict(outcome)
    _save(state)
    return outcome


def last_round() -> Round | None:
    saved = _state().get("last")
    return Round(**saved) if saved else None


def reset() -> None:
    state = _state()
    state["score"] = asdict(Score())
    state.pop("last", None)
    _save(state)
