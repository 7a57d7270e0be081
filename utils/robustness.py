"""Degradations for `flask evaluate --degrade`: what re-uploads, messengers and cameras do to a face.

The detector is judged on media it never saw, which is usually re-compressed, rescaled or blurred.
Evaluating the same held-out faces after a known degradation says how much of the score survives
it, and the model card keeps that table (`--record`, shown on /model). Each step works on the model-sized face crop (uint8 RGB),
the way `utils.train.augment` does during training, and is deterministic for a given seed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# kind -> (lowest, highest accepted amount, an example, what the amount means)
KINDS = {
    "jpeg": (1, 100, 50, "JPEG quality of a re-encoding"),
    "scale": (0.05, 1.0, 0.5, "shrink to this fraction of the side, then back up (a smaller, upscaled face)"),
    "blur": (0.1, 10.0, 1, "Gaussian blur sigma in pixels"),
    "noise": (0.1, 50.0, 5, "Gaussian noise standard deviation in grey levels"),
}


@dataclass(frozen=True)
class Degradation:
    kind: str
    amount: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"


def parse_degradation(text: str) -> Degradation:
    """'jpeg:50', 'scale:0.5', 'blur:1.2', 'noise:5' -> Degradation; anything else -> ValueError
    with a message naming what is accepted."""
    kind, _, amount = text.strip().lower().partition(":")
    if kind not in KINDS:
        choices = ", ".join(f"{k}:N ({v[3]})" for k, v in KINDS.items())
        raise ValueError(f"unknown degradation {text!r}; use one of {choices}")
    low, high, example, meaning = KINDS[kind]
    try:
        value = float(amount)
    except ValueError:
        raise ValueError(f"{text!r}: '{kind}' needs a number ({meaning}), e.g. {kind}:{example:g}") from None
    if not low <= value <= high:
        raise ValueError(f"{text!r}: the {meaning} must be between {low:g} and {high:g}")
    return Degradation(kind, value)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode an RGB uint8 image as JPEG at this quality and decode it again."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else image


def shrink_and_restore(image: np.ndarray, small: int) -> np.ndarray:
    """A square image shrunk to small x small px and upscaled back: a smaller face, upscaled."""
    size = image.shape[0]
    shrunk = cv2.resize(np.ascontiguousarray(image), (small, small), interpolation=cv2.INTER_AREA)
    return cv2.resize(shrunk, (size, size), interpolation=cv2.INTER_LINEAR)


def _apply(crop: np.ndarray, step: Degradation, rng: np.random.Generator) -> np.ndarray:
    if step.kind == "jpeg":
        return jpeg_recompress(crop, round(step.amount))
    if step.kind == "scale":
        return shrink_and_restore(crop, max(2, round(crop.shape[0] * step.amount)))
    if step.kind == "blur":
        return cv2.GaussianBlur(crop, (0, 0), step.amount)
    noisy = crop.astype(np.float32) + rng.normal(0, step.amount, crop.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def degrade(crops: np.ndarray, steps: list[Degradation], seed: int = 0) -> np.ndarray:
    """The crops [N, S, S, 3] uint8 with every step applied in order (a new array)."""
    crops = np.asarray(crops, np.uint8)
    if not steps:
        return crops.copy()
    rng = np.random.default_rng(seed)
    out = np.empty_like(crops)
    for i, crop in enumerate(crops):
        image = np.ascontiguousarray(crop)
        for step in steps:
            image = np.ascontiguousarray(_apply(image, step, rng))
        out[i] = image
    return out


ROBUSTNESS_NOTE = ("ROC-AUC and accuracy at the card's threshold on the validation split, each face crop degraded "
                   "as named first ('none' = as stored), and with the card's uncertain band: the share of faces "
                   "answered 'uncertain', how often the 'fake'/'real' verdicts outside it were right, and the "
                   "share of real faces called 'fake'; written by `flask evaluate --split validation "
                   "--degrade KIND:N --record`")
BAND_FIELDS = ("uncertain", "right_outside_band", "reals_called_fake")


def record_in_card(card_path: str | Path, source: str, result: dict) -> dict:
    """Add one `evaluate --split validation` result to the card's robustness table, under its source
    and degradation. Scoring is unchanged, so the card keeps its version. Written atomically."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    entry = {"n": int(result["n"]), "roc_auc": None if result["roc_auc"] is None else round(float(result["roc_auc"]), 4),
             "accuracy": round(float(result["accuracy"]), 4)}
    entry.update({k: result[f"band_{k}"] for k in BAND_FIELDS if result.get(f"band_{k}") is not None})
    card.setdefault("robustness", {}).setdefault(source, {})[result.get("degradation", "none")] = entry
    card["robustness_note"] = ROBUSTNESS_NOTE
    partial = card_path.with_name(card_path.name + ".partial")
    partial.write_text(json.dumps(card, indent=2))
    os.replace(partial, card_path)
    return card
