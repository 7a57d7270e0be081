"""What the evidence pages say: the model card as shown to people, a verdict in plain words with
what lowers its reliability, and the per-analysis report (HTML and JSON from one dataclass)."""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from flask import current_app, url_for

from models import Analysis

# Below this many pixels on a side a face keeps little of the detail a detector relies on.
SMALL_FACE_PX = 64
LOW_RESOLUTION_PIXELS = 320 * 240
# A model whose overall validation ROC-AUC is below this is close to guessing; say so on every verdict.
WEAK_MODEL_AUC = 0.65
EVALUATION_IMAGES = {"roc": "roc.png", "confusion": "confusion.png"}  # names `flask evaluate` writes
EVALUATION_DIR = "eval"  # per-source plots: <weights>/eval/<source>/{roc,confusion}.png
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
GENERAL_LIMITS = [
    "Heavy compression (messaging apps, re-uploads) removes the fine traces the model looks for.",
    "Tiny, blurred or turned-away faces (profile views) give it little to judge.",
    "Generators and editing tools it never saw in training can pass as real.",
    "It judges faces only: a manipulated voice, background or body is outside what it checks.",
    "A score is an estimate from patterns in training data, not proof; a human review is available.",
]


# --------------------------------------------------------------------------- model card

def weights_dir() -> Path:
    return Path(current_app.config["MODEL_PATH"]).parent


def card_file() -> Path:
    return Path(current_app.config["MODEL_PATH"]).with_name("model_card.json")


_card_cache: dict[str, tuple[float, dict]] = {}


def read_model_card() -> dict:
    """The card as a dict ({} when missing or unreadable); re-read when the file changes, since the
    model is retrained and replaced while the app runs."""
    path = card_file()
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return {}
    cached = _card_cache.get(str(path))
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    card = card if isinstance(card, dict) else {}
    _card_cache[str(path)] = (stamp, card)
    return card


def evaluation_image(kind: str) -> Path | None:
    """The ROC / confusion PNG next to the model, if `flask evaluate --out` put one there."""
    path = weights_dir() / EVALUATION_IMAGES[kind]
    return path if path.is_file() else None


def evaluation_sets() -> dict[str, dict[str, bool]]:
    """Per-source plots `flask evaluate --out <weights>/eval/<source>` wrote: {source: {kind: exists}},
    only folders holding at least one of them."""
    root = weights_dir() / EVALUATION_DIR
    sets = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and SOURCE_NAME.fullmatch(p.name)):
            found = {kind: (folder / name).is_file() for kind, name in EVALUATION_IMAGES.items()}
            if any(found.values()):
                sets[folder.name] = found
    return sets


def evaluation_set_image(source: str, kind: str) -> Path | None:
    """One per-source plot; None for a name that is not a plain folder name or a missing file."""
    if not SOURCE_NAME.fullmatch(source):
        return None
    path = weights_dir() / EVALUATION_DIR / source / EVALUATION_IMAGES[kind]
    return path if path.is_file() else None


def overall_auc(card: dict) -> float | None:
    metrics = card.get("validation_metrics") or {}
    entry = metrics.get("all") if isinstance(metrics, dict) else None
    if not isinstance(entry, dict):
        return None
    value = entry.get("fused_roc_auc", entry.get("roc_auc"))
    return value if isinstance(value, (int, float)) else None


def metric_columns(metrics: dict) -> list[str]:
    """Every metric name that appears for any source, in first-seen order."""
    columns: list[str] = []
    for entry in metrics.values():
        if isinstance(entry, dict):
            columns.extend(k for k in entry if k not in columns)
    return columns


@dataclass
class RobustnessRow:
    source: str
    degradation: str
    n: int | None
    roc_auc: float | None
    accuracy: float | None
    auc_change: float | None  # against the same source undegraded ('none'), when recorded
    uncertain: float | None = None  # with the card's band (entries recorded before 2026-12-06 lack these)
    right_outside_band: float | None = None
    reals_called_fake: float | None = None
    photo_band: bool = False  # these faces were judged with the card's photo band

    @property
    def label(self) -> str:
        """The degradation in words ('JPEG quality 50'), as /model shows it."""
        from utils.robustness import describe

        return describe(self.degradation)


def robustness_rows(card: dict) -> list[RobustnessRow]:
    """The card's robustness table (flask evaluate --degrade --record) as rows, undegraded first;
    anything malformed is skipped rather than shown wrongly."""
    table = card.get("robustness")
    rows: list[RobustnessRow] = []
    if not isinstance(table, dict):
        return rows

    def number(entry: dict, key: str):
        value = entry.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    for source, entries in table.items():
        if not isinstance(entries, dict):
            continue
        clean = entries.get("none") if isinstance(entries.get("none"), dict) else {}
        baseline = number(clean, "roc_auc")
        for degradation in sorted(entries, key=lambda d: d != "none"):  # then in recorded order
            entry = entries[degradation]
            if not isinstance(entry, dict):
                continue
            auc = number(entry, "roc_auc")
            change = None if auc is None or baseline is None or degradation == "none" else auc - baseline
            rows.append(RobustnessRow(str(source), str(degradation), number(entry, "n"), auc,
                                      number(entry, "accuracy"), change, number(entry, "uncertain"),
                                      number(entry, "right_outside_band"), number(entry, "reals_called_fake"),
                                      entry.get("photo_band") is True))
    return rows


def detail_band_rows(card: dict) -> list[tuple[str, float, float]]:
    """The card's detail-aware bands for /model, least detail first: (which faces, low, high);
    empty for a card without them or with ones that cannot be read."""
    from utils.detail import DetailBands

    try:
        bands = DetailBands.from_card(card.get("detail_bands"), tuple(card.get("uncertain_band") or (0.5, 0.5)))
    except (KeyError, TypeError, ValueError):
        return []
    rows, below = [], None
    for edge, (low, high) in zip(bands.edges, bands.bands):
        which = f"detail below {edge:.2f}" if below is None else f"detail {below:.2f} to {edge:.2f}"
        rows.append((which, low, high))
        below = edge
    return rows


def photo_band(card: dict) -> dict | None:
    """The card's band for photos for /model: {low, high, sources, rule}; None for a card without one
    or with one that cannot be read (the Detector refuses such a card)."""
    from utils.model import photo_band_from_card

    try:
        band = photo_band_from_card(card.get("photo_band"), tuple(card.get("uncertain_band") or (0.5, 0.5)))
    except (KeyError, TypeError, ValueError):
        return None
    if band is None:
        return None
    entry = card["photo_band"]
    return {"low": band[0], "high": band[1], "sources": [str(s) for s in entry.get("sources") or []],
            "rule": str(entry.get("rule") or "")}


def model_limits(card: dict) -> list[str]:
    """Known limits: the card's own list when it has one (the lines `train`/`calibrate` write, then
    the measured_limits people added after evaluating this version, which a recalibration keeps),
    then the general ones, then what the training data implies (sources seen)."""
    limits = [str(item) for item in (card.get("known_limits") or card.get("limits") or []) if item]
    limits += [str(item) for item in card.get("measured_limits") or [] if item and str(item) not in limits]
    limits += [item for item in GENERAL_LIMITS if item not in limits]
    sources = [d.get("source") for d in card.get("data") or [] if isinstance(d, dict) and d.get("source")]
    if sources:
        limits.append("Trained only on these sources: " + ", ".join(sources)
                      + ". Fakes made another way are less likely to be caught.")
    auc = overall_auc(card)
    if auc is not None and auc < WEAK_MODEL_AUC:
        limits.insert(0, f"This model version scores close to chance on its validation data (ROC-AUC "
                         f"{auc:.2f}; 0.5 is guessing). Treat its verdicts as weak hints.")
    return limits


# --------------------------------------------------------------------------- verdict in words

def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    p = value * 100
    return f"{p:.0f} %" if abs(p - round(p)) < 0.05 else f"{p:.1f} %"


def plain_explanation(a: Analysis) -> str:
    """One paragraph a non-specialist can read: what the number means and what it does not."""
    if a.status != "done":
        return ""
    if a.verdict == "no_face" or a.score is None:
        return ("No face was found, so there is no verdict: the model judges faces only. A face that is "
                "very small, turned away or hidden may be missed; a clearer, frontal shot may work.")
    where = ("the faces across the sampled frames" if a.kind != "image" else
             "the face" if a.faces_found == 1 else "the most suspicious face")
    score, threshold = _pct(a.score), _pct(a.threshold)
    band = (f" between {_pct(a.uncertain_low)} and {_pct(a.uncertain_high)}"
            if a.uncertain_low is not None and a.uncertain_high is not None else "")
    if a.verdict == "fake":
        return (f"The model estimates a {score} probability that {where} was generated or manipulated. That is "
                f"above its threshold of {threshold} and outside its uncertain band{band}, so it says “fake”. "
                "This is a statistical estimate, not proof; check the regions that drove the score and "
                "ask for a human review if you disagree.")
    if a.verdict == "real":
        return (f"The model estimates a {score} probability that {where} was generated or manipulated. That is "
                f"below its threshold of {threshold} and outside its uncertain band{band}, so it says “real”. "
                "This means it found no strong sign of manipulation, not that the media is proven authentic: "
                "a generator it has never seen can pass.")
    return (f"The score, {score}, lies in the uncertain band{band} around the threshold of {threshold}. "
            "In this range the model was too often wrong on its validation data to pick a side, so it "
            "does not. Other evidence (the source of the file, a human review) matters more here.")


def reliability_notes(a: Analysis) -> list[str]:
    """What, in this particular analysis, makes the score less trustworthy."""
    if a.status != "done":
        return []
    notes = []
    faces = list(a.faces)
    small = [f for f in faces if min(f.w, f.h) < SMALL_FACE_PX]
    if small:
        notes.append(f"{len(small)} of {len(faces)} face{'s are' if len(faces) != 1 else ' is'} smaller than "
                     f"{SMALL_FACE_PX} pixels: fine detail is lost, so the score is less reliable.")
    if a.width and a.height and a.width * a.height < LOW_RESOLUTION_PIXELS:
        notes.append(f"The {a.kind} is small ({a.width} × {a.height} px); low resolution hides the traces "
                     "the model looks for.")
    if a.kind != "image" and a.frames_sampled:
        share = a.frames_with_faces / a.frames_sampled
        if 0 < share < 0.5:
            notes.append(f"Only {a.frames_with_faces} of {a.frames_sampled} sampled frames show a face, so "
                         "the verdict rests on part of the video.")
        scores = [f.score for f in a.frames if f.score is not None]
        if len(scores) >= 3 and statistics.pstdev(scores) > 0.2:
            notes.append("The score changes a lot from frame to frame (see the timeline); look at the "
                         "frames with the highest scores.")
    if (a.score is not None and a.threshold is not None and a.verdict in ("real", "fake")
            and abs(a.score - a.threshold) < 0.1):
        notes.append("The score is close to the threshold: a small change in the file could flip the verdict.")
    auc = overall_auc(read_model_card())
    if auc is not None and auc < WEAK_MODEL_AUC:
        notes.append(f"The current model is close to chance on its validation data (ROC-AUC {auc:.2f}); "
                     "treat this verdict as a weak hint. See the model page.")
    return notes


# --------------------------------------------------------------------------- report

@dataclass
class FaceFigure:
    number: int
    frame_index: int
    time_s: float | None
    person: int
    box: list[int]
    score: float
    crop_url: str | None
    heatmap_url: str | None


@dataclass
class FrameFigure:
    index: int
    time_s: float
    faces: int
    score: float | None


@dataclass
class ReviewFigure:
    decision: str
    decision_text: str
    note: str | None
    decided_at: datetime
    usable_for_game: bool


@dataclass
class EvidenceReport:
    """Everything the printable report shows; to_json() is the same content for machines."""

    analysis_id: int
    file_name: str
    sha256: str
    size_bytes: int
    kind: str
    uploaded_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None
    verdict: str | None
    score: float | None
    threshold: float | None
    uncertain_band: list[float] | None
    model_version: str | None
    explanation: str | None
    plain_explanation: str
    reliability_notes: list[str]
    width: int | None
    height: int | None
    duration_s: float | None
    frames_sampled: int
    frames_with_faces: int
    faces: list[FaceFigure] = field(default_factory=list)
    frames: list[FrameFigure] = field(default_factory=list)
    dispute_reason: str | None = None
    disputed_at: datetime | None = None
    review: ReviewFigure | None = None

    def to_json(self) -> dict:
        def convert(value):
            if isinstance(value, datetime):
                return value.isoformat(timespec="seconds") + "Z"
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, list):
                return [convert(v) for v in value]
            return value

        return convert(asdict(self))


def build_report(a: Analysis, decision_text: dict[str, str]) -> EvidenceReport:
    times = {f.index: f.time_s for f in a.frames}

    def file_url(name: str | None) -> str | None:
        return url_for("upload.derived_file", analysis_id=a.id, name=name) if name else None

    review = None
    if a.review is not None:
        review = ReviewFigure(a.review.decision, decision_text.get(a.review.decision, a.review.decision),
                              a.review.note, a.review.created_at, bool(a.review.usable_for_game))
    band = ([a.uncertain_low, a.uncertain_high]
            if a.uncertain_low is not None and a.uncertain_high is not None else None)
    return EvidenceReport(
        analysis_id=a.id, file_name=a.original_name, sha256=a.sha256, size_bytes=a.size_bytes, kind=a.kind,
        uploaded_at=a.created_at, finished_at=a.finished_at, status=a.status, error=a.error,
        verdict=a.verdict if a.status == "done" else None, score=a.score, threshold=a.threshold,
        uncertain_band=band, model_version=a.model_version, explanation=a.explanation,
        plain_explanation=plain_explanation(a), reliability_notes=reliability_notes(a),
        width=a.width, height=a.height, duration_s=a.duration_s, frames_sampled=a.frames_sampled,
        frames_with_faces=a.frames_with_faces,
        faces=[FaceFigure(n, f.frame_index, times.get(f.frame_index), f.person, [f.x, f.y, f.w, f.h], f.score,
                          file_url(f.crop_name), file_url(f.heatmap_name))
               for n, f in enumerate(a.faces, start=1)],
        frames=[FrameFigure(f.index, f.time_s, f.faces_count, f.score) for f in a.frames],
        dispute_reason=a.dispute_reason, disputed_at=a.disputed_at, review=review,
    )
