"""The only module that imports TensorFlow: load the shipped model + its card, score crops, explain.

The network has two heads (logits): `generation` (trained on real vs dataset fakes: face swaps and
GAN faces) and `blending` (trained on real vs self-blended pseudo-fakes made from real faces). The
card's `fusion` maps both logits to one calibrated P(fake) (fitted on the validation split; see
Fusion), and holds the threshold and the uncertain band.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.detail import DetailBands

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 32
LAST_CONV = "last_conv"


# glibc malloc: requests at or above this size get their own mmap and go back to the OS on free.
# glibc's default threshold is dynamic: each freed large block (a 2.7 MB 720p frame, a batch's
# activations) raises it, up to 32 MB, after which such blocks come from the heap and stay resident
# once freed (glibc cannot hand back the middle of a heap). Measured (benchmarks/bench_detector.py,
# 2 CPUs): RSS 872 MB after one 30 s 720p video and 938 MB after three, vs 777 and 779 MB pinned
# (loaded: 707 MB). Cost: fresh pages for each large buffer, ~+0.2-0.3 s CPU (system) per video.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt() parameter number in glibc's malloc.h
_malloc_tuned: bool | None = None


def tune_malloc() -> bool:
    """Pin glibc's mmap threshold (see MMAP_THRESHOLD) once per process, so the memory of a finished
    analysis is returned instead of kept. Called when a Detector is built: serving processes only
    (training imports Fusion from here and keeps glibc's default). Skipped off glibc, when
    MALLOC_MMAP_THRESHOLD_ is set in the environment (glibc has read it), or with
    DETECTOR_MALLOC_TUNING=0 or =trim (then only trim_malloc() runs). Returns whether the threshold
    is pinned (by this call or an earlier one)."""
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if os.environ.get("DETECTOR_MALLOC_TUNING", "1") in ("0", "trim") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only (musl has no tunable mallopt)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _malloc_tuned = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return _malloc_tuned


def trim_malloc() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim; a few ms). Called after each
    analysis; a no-op off glibc or with DETECTOR_MALLOC_TUNING=0."""
    if os.environ.get("DETECTOR_MALLOC_TUNING", "1") == "0":
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelUnavailable(Exception):
    """The model or its card is missing or unreadable; str(exc) says what to do."""


def card_path_for(model_path: str | Path) -> Path:
    return Path(model_path).with_name("model_card.json")


def mirrored_mean(run, crops: np.ndarray) -> np.ndarray:
    """Head logits averaged over each crop and its mirror image, in one call of `run` (a batch of
    2N). A face and its mirror are the same evidence; averaging the two views cancels part of the
    network's left/right noise (validation ROC-AUC gains in the README, paired on the same faces)."""
    both = np.asarray(run(np.concatenate([crops, crops[:, :, ::-1]])))
    return (both[:len(crops)] + both[len(crops):]) / 2


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


@dataclass
class Fusion:
    """How the head logits become one P(fake). 'max': each head is Platt-calibrated on its own
    task (scales[i] * logit_i + biases[i]) and the most alarmed head wins; 'logistic': one
    logistic regression over all logits (weights, bias)."""

    weights: tuple[float, ...]
    bias: float
    mode: str = "logistic"
    scales: tuple[float, ...] = ()
    biases: tuple[float, ...] = ()

    @classmethod
    def from_card(cls, fusion: dict, heads: int) -> "Fusion":
        if fusion.get("mode") == "max":
            return cls(tuple(fusion["scales"]), 0.0, "max", tuple(fusion["scales"]), tuple(fusion["biases"]))
        weights = fusion.get("weights") or [1.0] + [0.0] * (heads - 1)
        return cls(tuple(weights), float(fusion.get("bias", 0.0)))

    def head_probabilities(self, logits: np.ndarray) -> np.ndarray:
        z = logits.astype(np.float64) * np.asarray(self.scales, np.float64) + np.asarray(self.biases, np.float64)
        return _sigmoid(z)

    def probability(self, logits: np.ndarray) -> np.ndarray:
        if self.mode == "max":
            return self.head_probabilities(logits).max(axis=1).astype(np.float32)
        z = logits.astype(np.float64) @ np.asarray(self.weights, np.float64) + self.bias
        return _sigmoid(z).astype(np.float32)


def photo_band_from_card(entry: dict | None, default: tuple[float, float]) -> tuple[float, float] | None:
    """The card's `photo_band` as (low, high); None when the card has none (every file gets the card's
    band). A photo band narrower than the card's band on either side is refused: it only widens."""
    if not entry:
        return None
    low, high = (float(edge) for edge in entry["band"])
    if not 0.0 <= low <= default[0] or not default[1] <= high <= 1.0:
        raise ValueError(f"photo_band {[low, high]} must contain the uncertain band {list(default)}")
    return low, high


def photo_band_note(card: dict, photo_band: tuple[float, float], video_band: tuple[float, float]) -> str:
    """Why a photo was judged with a wider band, for the verdict's explanation."""
    from utils.aggregate import edge_text

    note = (f"Photos are judged with a wider band than video frames ({edge_text(photo_band[0])}-"
            f"{edge_text(photo_band[1])} instead of {edge_text(video_band[0])}-{edge_text(video_band[1])})")
    rates = [entry.get("card_band", {}).get("right_outside_band")
             for source, entry in ((card.get("photo_band") or {}).get("effect") or {}).items()
             if not source.startswith("sbi:")]
    rates = [r for r in rates if r is not None]
    if rates:
        note += (f": on the validation photos, verdicts outside the narrower band were right only "
                 f"{min(rates):.0%} of the time")
    return note + "."


class Detector:
    """A loaded model + card. score() is thread-safe and runs one compiled graph per batch size."""

    def __init__(self, model_path: str | Path):
        tune_malloc()
        import tensorflow as tf
        import keras

        model_path = Path(model_path)
        card_file = card_path_for(model_path)
        if not model_path.exists():
            raise ModelUnavailable(
                f"No trained model at {model_path}. Train one with `flask --app app train --data DIR` "
                "or set MODEL_PATH.")
        if not card_file.exists():
            raise ModelUnavailable(f"The model card {card_file} is missing; retrain or restore it.")
        try:
            self.card = json.loads(card_file.read_text())
            self.model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
        except Exception as exc:  # a damaged file must not take the app down
            raise ModelUnavailable(f"The model at {model_path} could not be loaded: {exc}") from exc
        if self.card.get("calibrated") is False:  # trained from face packs, fusion not fitted yet
            raise ModelUnavailable(
                f"The model at {model_path} is not calibrated yet: run `flask --app app calibrate --model "
                f"{model_path} --data DIR...` with the folders it was packed from.")
        self.path = model_path
        self.version = str(self.card.get("version", "unknown"))
        self.input_size = int(self.card.get("input_size", self.model.input_shape[1]))
        self.threshold = float(self.card.get("threshold", 0.5))
        band = self.card.get("uncertain_band", [self.threshold, self.threshold])
        self.uncertain_band = (float(band[0]), float(band[1]))
        try:  # wider bands for faces that lost fine detail (utils.detail); older cards: none
            self.detail_bands = DetailBands.from_card(self.card.get("detail_bands"), self.uncertain_band)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelUnavailable(f"The model card {card_file} has unreadable detail_bands: {exc}") from exc
        try:  # photos: a band fitted on the photo sources (train/calibrate --photo-source); older cards: none
            self.photo_band = photo_band_from_card(self.card.get("photo_band"), self.uncertain_band)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelUnavailable(f"The model card {card_file} has an unreadable photo_band: {exc}") from exc
        self.photo_bands = None if self.photo_band is None else self.detail_bands.with_base(self.photo_band)
        self._photo_note = "" if self.photo_band is None else photo_band_note(self.card, self.photo_band,
                                                                              self.uncertain_band)
        self.fusion = Fusion.from_card(self.card.get("fusion") or {}, self.model.output_shape[-1])
        # The fusion was fitted on mirror-averaged logits only when the card says so (older cards: no).
        self.mirror_average = bool(self.card.get("mirror_average", False))
        self.head_names = list(self.card.get("heads", ["generation", "blending"]))
        self._tf = tf
        self._lock = threading.Lock()
        spec = tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.uint8)
        model = self.model
        self._logits_fn = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False),
                                      input_signature=[spec], jit_compile=False, reduce_retracing=True)
        self._cam_model = None

    def bands_for_media(self, kind: str) -> tuple[DetailBands, str]:
        """The detail-aware bands for a file of this kind ('image' or 'video') and, for a photo judged
        with the card's photo band, the sentence that says why its band is wider."""
        if kind == "image" and self.photo_bands is not None:
            return self.photo_bands, self._photo_note
        return self.detail_bands, ""

    def _check(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"crops must be [N,{self.input_size},{self.input_size},3], got {crops.shape}")
        return np.ascontiguousarray(crops, dtype=np.uint8)

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """Per-head logits [N, heads], averaged over each crop and its mirror where the card says
        the fusion was fitted that way (for evaluation and calibration)."""
        crops = self._check(crops)
        if len(crops) == 0:
            return np.zeros((0, self.model.output_shape[-1]), np.float32)
        def run(x):
            return self._logits_fn(x).numpy()

        parts = [mirrored_mean(run, crops[i:i + BATCH]) if self.mirror_average else run(crops[i:i + BATCH])
                 for i in range(0, len(crops), BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def score(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated P(fake) per crop."""
        return self.fusion.probability(self.logits(crops))

    def heatmaps(self, crops: np.ndarray) -> np.ndarray:
        """Grad-CAM of the fused fake logit on the last convolution: where the evidence sits, 0..1.
        Computed on the crop as shown (not its mirror), so the map lines up with the picture."""
        tf = self._tf
        import keras

        crops = self._check(crops)
        with self._lock:
            if self._cam_model is None:
                layer = self.model.get_layer(LAST_CONV)
                self._cam_model = keras.Model(self.model.inputs, [layer.output, self.model.output])
        weights = tf.constant(np.asarray(self.fusion.weights, np.float32))
        maps = []
        for start in range(0, len(crops), BATCH):
            x = tf.cast(crops[start:start + BATCH], tf.float32)
            with tf.GradientTape() as tape:
                features, logits = self._cam_model(x, training=False)
                tape.watch(features)
                if self.fusion.mode == "max":  # explain the head that decided the score
                    calibrated = logits * weights + tf.constant(np.asarray(self.fusion.biases, np.float32))
                    winner = tf.one_hot(tf.argmax(calibrated, axis=-1), logits.shape[-1])
                    target = tf.reduce_sum(logits * weights * winner, axis=-1)
                else:
                    target = tf.reduce_sum(logits * weights, axis=-1)
            grads = tape.gradient(target, features)
            channel_weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(features * channel_weights, axis=-1)).numpy()
            peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
            maps.append(np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0).astype(np.float32))
        if not maps:
            return np.zeros((0, 1, 1), np.float32)
        return np.concatenate(maps)


_detectors: dict[tuple[str, float], Detector] = {}
_detectors_lock = threading.Lock()


def get_detector(path: str | Path) -> Detector:
    """One Detector per process and model file (reloaded if the file is replaced)."""
    path = Path(path)
    try:
        stamp = path.stat().st_mtime
    except OSError:
        stamp = -1.0
    key = (str(path.resolve()), stamp)
    with _detectors_lock:
        detector = _detectors.get(key)
        if detector is None:
            detector = Detector(path)
            _detectors.clear()
            _detectors[key] = detector
        return detector
