"""From face scores to one verdict for the file (pure numpy, no model, no database).

The rule, in words:
1. Each face has a calibrated P(fake) from the model.
2. Faces are grouped by person (a track across frames). A person's score is the mean of the upper
   half of their face scores: a manipulation rarely fools the model in every frame, and one noisy
   frame alone should not condemn a person either.
3. In a video, persons seen in very few of the frames with faces (stray detections) are ignored when
   a steadier person exists.
4. The file's score is the highest person score: one confidently fake person makes the file fake
   (as the leading DFDC entries did).
5. score >= uncertain_high -> fake; score < uncertain_low -> real; in between -> uncertain.
   When the decisive person's faces have lost fine detail (blurred, upscaled, heavily compressed:
   utils.detail), the card's detail bands give that person a wider band, and the explanation says so.
   Photos start from the card's photo band where it has one (fitted on the photo sources, on which
   the band fitted mostly on video frames was right less often); the explanation says so too.
   No face at all -> "no_face" with no score: we never invent one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from utils.detail import DetailBands


@dataclass
class PersonScore:
    person: int
    score: float
    faces: int
    detail: float | None = None  # median detail of the person's faces (utils.detail), when measured


@dataclass
class MediaVerdict:
    verdict: str  # real | fake | uncertain | no_face
    score: float | None
    frames_with_faces: int
    explanation: str
    persons: list[PersonScore] = field(default_factory=list)
    decisive_person: int | None = None
    band: tuple[float, float] | None = None  # the uncertain band this verdict used


def person_score(scores: list[float] | np.ndarray) -> float:
    """Mean of the upper half of a person's face scores (all of them when there are one or two)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    keep = max(1, int(np.ceil(len(ordered) / 2)))
    return float(ordered[:keep].mean())


def edge_text(value: float) -> str:
    """A band edge as written in explanations: two decimals, three where the card has them (0.285),
    so that "below 0.285 means likely real" is exactly the rule applied."""
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


def verdict_for(score: float, threshold: float, uncertain_band: tuple[float, float]) -> str:
    low, high = uncertain_band
    low, high = min(low, threshold), max(high, threshold)
    if score >= high and score >= threshold:
        return "fake"
    if score < low:
        return "real"
    return "uncertain" if high > low else ("fake" if score >= threshold else "real")


def aggregate_faces(faces: list[tuple], frames_sampled: int, threshold: float,
                    uncertain_band: tuple[float, float], kind: str,
                    detail_bands: DetailBands | None = None, band_note: str = "") -> MediaVerdict:
    """faces: (frame_index, person, score) or (frame_index, person, score, detail) for every face
    found. See the module docstring; without detail_bands (or details) every person gets
    uncertain_band. band_note: why uncertain_band itself is what it is (a photo's wider band), added
    to the explanation of every verdict with a score."""
    frames_with_faces = len({face[0] for face in faces})
    if not faces:
        where = (f"any of the {frames_sampled} sampled frames" if kind == "video" and frames_sampled
                 else "the image")
        return MediaVerdict("no_face", None, 0,
                            f"No face was found in {where}, so no verdict was made.",
                            band=tuple(uncertain_band))

    by_person: dict[int, list[float]] = {}
    details: dict[int, list[float]] = {}
    for face in faces:
        by_person.setdefault(face[1], []).append(float(face[2]))
        if len(face) > 3 and face[3] is not None:
            details.setdefault(face[1], []).append(float(face[3]))
    persons = [PersonScore(p, person_score(s), len(s), float(np.median(details[p])) if p in details else None)
               for p, s in sorted(by_person.items())]

    considered = persons
    if kind == "video" and frames_with_faces >= 4:
        steady = [p for p in persons if p.faces >= max(2, 0.25 * frames_with_faces)]
        considered = steady or persons
    decisive = max(considered, key=lambda p: p.score)
    band = tuple(uncertain_band)
    if detail_bands is not None:
        band = detail_bands.band_for(decisive.detail)
    verdict = verdict_for(decisive.score, threshold, band)

    low, high = band
    if kind == "video":
        seen = f"Faces were found in {frames_with_faces} of {frames_sampled} sampled frames"
    else:
        seen = f"{len(faces)} face{'s' if len(faces) != 1 else ''} found in the image"
    who = (f"person {decisive.person + 1} of {len(considered)} scored {decisive.score:.2f}"
           if len(considered) > 1 else f"the face scored {decisive.score:.2f}")
    if kind == "video" and len(considered) == 1:
        who = f"the person seen scored {decisive.score:.2f} over {decisive.faces} frames"
    rule = {
        "fake": f"at or above {edge_text(max(high, threshold))} means likely fake",
        "real": f"below {edge_text(min(low, threshold))} means likely real",
        "uncertain": f"between {edge_text(min(low, threshold))} and {edge_text(max(high, threshold))} the model is not sure",
    }[verdict]
    explanation = f"{seen}; {who} ({rule})."
    if tuple(band) != tuple(uncertain_band):
        explanation += (f" The faces behind this score have lost fine detail (blurred, upscaled or heavily compressed; detail "
                        f"{decisive.detail:.2f}), which makes scores less reliable, so the band was widened from "
                        f"{edge_text(uncertain_band[0])}-{edge_text(uncertain_band[1])} to {edge_text(low)}-{edge_text(high)}.")
    if band_note:
        explanation += f" {band_note}"
    return MediaVerdict(verdict, decisive.score, frames_with_faces, explanation,
                        persons, decisive.person, band=tuple(band))
