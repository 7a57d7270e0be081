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
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

import convert  # noqa: F401  registers the HEIC plugin (where pillow-heif is installed) that heic steps use

# kind -> (lowest, highest accepted amount, an example, what the amount means)
KINDS = {
    "jpeg": (1, 100, 50, "JPEG quality of a re-encoding"),
    "scale": (0.05, 1.0, 0.5, "shrink to this fraction of the side, then back up (a smaller, upscaled face)"),
    "blur": (0.1, 10.0, 1, "Gaussian blur sigma in pixels"),
    "noise": (0.1, 50.0, 5, "Gaussian noise standard deviation in grey levels"),
    "h264": (0, 51, 35, "H.264 quantiser of an intra-frame re-encoding (x264; higher is worse)"),
    "heic": (1, 100, 50, "HEIC quality of a re-encoding (HEVC still, as a phone saves a photo)"),
    "avif": (1, 100, 50, "AVIF quality of a re-encoding (AV1 still)"),
}


@dataclass(frozen=True)
class Degradation:
    kind: str
    amount: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"


def parse_degradation(text: str) -> Degradation:
    """'jpeg:50', 'scale:0.5', 'blur:1.2', 'noise:5', 'h264:35', 'heic:50' -> Degradation; anything else -> ValueError
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


WORDS = {"jpeg": lambda q: f"JPEG quality {q:g}", "scale": lambda f: f"shrunk to {f * 100:g} % and upscaled",
         "blur": lambda sigma: f"blurred, σ {sigma:g} px", "noise": lambda sd: f"noise, σ {sd:g}",
         "h264": lambda q: f"H.264 video frame, quantiser {q:g}",
         "heic": lambda q: f"HEIC quality {q:g}", "avif": lambda q: f"AVIF quality {q:g}"}


def describe(recorded: str) -> str:
    """A recorded degradation ('none', 'scale:0.5 then jpeg:50', 'h264:42') in words for people;
    anything it cannot read is returned unchanged."""
    if recorded == "none":
        return "as stored"
    try:
        steps = [parse_degradation(part) for part in recorded.split(" then ")]
    except ValueError:
        return recorded
    return ", then ".join(WORDS[step.kind](step.amount) for step in steps)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode an RGB uint8 image as JPEG at this quality and decode it again."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else image


def still_recompress(image: np.ndarray, kind: str, quality: int) -> np.ndarray:
    """Encode an RGB uint8 image as a 'heic' (HEVC, through pillow-heif) or 'avif' (AV1, Pillow's own)
    still at this quality and decode it again: how phones and modern sites store photos."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, {"heic": "HEIF", "avif": "AVIF"}[kind],
                                                      quality=int(quality))
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"), np.uint8)


def shrink_and_restore(image: np.ndarray, small: int) -> np.ndarray:
    """A square image shrunk to small x small px and upscaled back: a smaller face, upscaled."""
    size = image.shape[0]
    shrunk = cv2.resize(np.ascontiguousarray(image), (small, small), interpolation=cv2.INTER_AREA)
    return cv2.resize(shrunk, (size, size), interpolation=cv2.INTER_LINEAR)


def h264_available() -> bool:
    """Whether PyAV (requirements.txt; not in the GPU bundle) can be imported for h264_recompress."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def heic_available() -> bool:
    """Whether pillow-heif (requirements.txt; not in the GPU bundle) can be imported for HEIC stills."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def h264_recompress(images: np.ndarray, quantiser: int) -> np.ndarray:
    """Each RGB uint8 image [N, H, W, 3] encoded as an H.264 intra frame (x264, constant quantiser,
    4:2:0 chroma, BT.601 limited range) and decoded again: what a video upload does to a face, which
    JPEG does not imitate (4x4 integer transforms, intra prediction, the deblocking filter). A
    constant quantiser and intra-only frames make every image's result independent of the others.
    Odd sides are padded by one edge pixel for 4:2:0 and cut back."""
    import av  # PyAV (requirements.txt) bundles FFmpeg with libx264

    images = np.asarray(images, np.uint8)
    n, height, width = images.shape[:3]
    if n == 0:
        return images.copy()
    padded = np.pad(images, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"qp": str(int(quantiser)), "preset": "veryfast", "tune": "zerolatency",
                       "x264-params": "keyint=1:min-keyint=1:scenecut=0:threads=1"}
    decoder = av.CodecContext.create("h264", "r")
    packets = []
    for i, image in enumerate(padded):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoded = [f.to_ndarray(format="rgb24") for p in packets for f in decoder.decode(p)]
    decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(None)]
    if len(decoded) != n:
        raise RuntimeError(f"H.264 round trip returned {len(decoded)} frames for {n} images")
    return np.stack(decoded)[:, :height, :width]


def _apply(crop: np.ndarray, step: Degradation, rng: np.random.Generator) -> np.ndarray:
    if step.kind == "jpeg":
        return jpeg_recompress(crop, round(step.amount))
    if step.kind == "scale":
        return shrink_and_restore(crop, max(2, round(crop.shape[0] * step.amount)))
    if step.kind == "blur":
        return cv2.GaussianBlur(crop, (0, 0), step.amount)
    if step.kind in ("heic", "avif"):
        return still_recompress(crop, step.kind, round(step.amount))
    if step.kind == "noise":
        noisy = crop.astype(np.float32) + rng.normal(0, step.amount, crop.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    raise ValueError(f"no per-crop step for {step}")  # h264 runs over all crops at once in degrade()


def degrade(crops: np.ndarray, steps: list[Degradation], seed: int = 0) -> np.ndarray:
    """The crops [N, S, S, 3] uint8 with every step applied in order (a new array). Steps run one
    after the other over all crops (H.264 encodes them as one intra-only stream)."""
    out = np.array(crops, np.uint8)
    rng = np.random.default_rng(seed)
    for step in steps:
        if step.kind == "h264":
            for start in range(0, len(out), 512):
                out[start:start + 512] = h264_recompress(out[start:start + 512], round(step.amount))
            continue
        for i, crop in enumerate(out):
            out[i] = _apply(np.ascontiguousarray(crop), step, rng)
    return out


ROBUSTNESS_NOTE = ("ROC-AUC and accuracy at the card's threshold on the validation split, each face crop degraded "
                   "as named first ('none' = as stored), and with the card's uncertain band: the share of faces "
                   "answered 'uncertain', how often the 'fake'/'real' verdicts outside it were right, and the "
                   "share of real faces called 'fake' (photo_band: true = with the card's photo band); written by `flask evaluate --split validation "
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
    if result.get("photo_band_used"):
        entry["photo_band"] = True  # judged with the card's photo band
    card.setdefault("robustness", {}).setdefault(source, {})[result.get("degradation", "none")] = entry
    card["robustness_note"] = ROBUSTNESS_NOTE
    partial = card_path.with_name(card_path.name + ".partial")
    partial.write_text(json.dumps(card, indent=2))
    os.replace(partial, card_path)
    return card
