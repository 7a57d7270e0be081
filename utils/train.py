"""Training and evaluation of the shipped detector (wrapped by `flask train` / `flask evaluate`).

One small CNN with an RGB + high-pass input and two heads (see utils/model.py):
- `generation`: real faces vs the dataset's fakes (face swaps, GAN faces);
- `blending`: real faces vs self-blended pseudo-fakes made on the fly from the real training faces
  (SBI-style: a colour/geometry-shifted copy of the face blended back through a soft face-shaped
  mask), which teaches blending boundaries that any face swap leaves, whatever made it.
A logistic regression on the validation logits fuses the heads into a calibrated P(fake).
Written with Keras 3 layers and keras.ops only, so the same code trains on the JAX or PyTorch
backend where a GPU has those; the .keras file loads in TensorFlow on CPU.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import convert
from utils import dataset

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HEADS = ("generation", "blending")
DATA_TERMS = {
    "dfdc": "Deepfake Detection Challenge (Meta/AWS) face crops: research and evaluation use only",
    "stylegan1_ffhq": "'140k Real and Fake Faces' subset (FFHQ photos by NVIDIA, CC BY-NC-SA 4.0; "
                      "StyleGAN v1 faces): research and non-commercial use only",
    "reviewed": "uploads to this service, decided by its admins (flask export-reviewed)",
}
REVIEWED_MANIFEST = "reviewed.json"  # written by `flask export-reviewed` (utils/review_export.py)


def data_terms(data_dir: str | Path) -> str:
    """Terms of a training folder: an export of reviewed uploads is known by its manifest, whatever its name."""
    if (Path(data_dir) / REVIEWED_MANIFEST).is_file():
        return DATA_TERMS["reviewed"]
    return DATA_TERMS.get(Path(data_dir).name, "see the dataset's own licence")


def reviewed_data(data_dirs: list[str], trained_on: str) -> dict | None:
    """What the card says about reviewed uploads used in this run (from each export's reviewed.json);
    None when no --data folder is such an export. Several exports are summed."""
    manifests = []
    for data_dir in data_dirs:
        path = Path(data_dir) / REVIEWED_MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text())
            except ValueError:
                manifest = {}
            manifests.append((Path(data_dir).name, manifest if isinstance(manifest, dict) else {}))
    if not manifests:
        return None
    faces = {"real": 0, "fake": 0}
    for _, m in manifests:
        for label in faces:
            faces[label] += int((m.get("faces") or {}).get(label, 0))
    return {
        "exported_at": max((m.get("exported_at") or "" for _, m in manifests), default="") or None,
        "decisions_up_to": max((m.get("decisions_up_to") or "" for _, m in manifests), default="") or None,
        "analyses": sum(int(m.get("analyses") or 0) for _, m in manifests),
        "faces": faces,
        "folder": ", ".join(name for name, _ in manifests),
        "trained_on": trained_on,
    }


def known_limits(metrics: dict, training: dict, parameters: int, sources: list[str]) -> list[str]:
    """Honest limits from what this run measured (the /model page lists them first)."""
    def auc(source):
        value = (metrics.get(source) or {}).get("shipped_roc_auc")
        return "n/a" if value is None else f"{value:.2f}"

    measured = ", ".join(f"{source} {auc(source)}" for source in metrics
                         if source != "all" and not source.startswith("sbi:"))
    device = {True: "GPU", False: "CPU"}.get(training.get("gpu"), "device not recorded")
    return [
        f"A small network ({parameters:,} parameters, {training.get('input_size', 128)} px faces) trained for "
        f"{training.get('minutes_total', training.get('minutes'))} minutes ({training.get('epochs_total', training.get('epochs'))} "
        f"epochs, {training.get('backend', 'keras')} backend, {device}): far less training than published detectors.",
        f"Validation ROC-AUC per source: {measured}; borderline files are answered 'uncertain'.",
        f"Trained only on tight face crops from: {', '.join(sources)}; other generators, editing tools and "
        "diffusion-made faces were never seen.",
    ]


# --------------------------------------------------------------------------- augmentation

def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else img


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Robustness to what uploads do to faces: re-compression, blur, rescaling, colour, framing."""
    size = img.shape[0]
    out = img
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:  # framing jitter: crop 85-100 % and resize back
        side = int(size * rng.uniform(0.85, 1.0))
        x0, y0 = rng.integers(0, size - side + 1, size=2)
        out = convert.resize_face(np.ascontiguousarray(out[y0:y0 + side, x0:x0 + side]), size)
    if rng.random() < 0.3:  # a smaller face upscaled, as from a distant face or a low-res video
        small = int(size * rng.uniform(0.4, 0.9))
        out = cv2.resize(cv2.resize(np.ascontiguousarray(out), (small, small), interpolation=cv2.INTER_AREA),
                         (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.15:
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), rng.uniform(0.3, 1.3))
    if rng.random() < 0.5:
        f = np.asarray(out, np.float32)
        f = f * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25)  # contrast, brightness
        grey = f.mean(axis=2, keepdims=True)
        f = grey + (f - grey) * rng.uniform(0.6, 1.4)  # saturation
        f = f * rng.uniform(0.92, 1.08, size=3)  # white balance
        out = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < 0.1:
        noisy = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(2, 6), out.shape)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        out = _jpeg(np.ascontiguousarray(out), rng.integers(35, 96))
    return np.ascontiguousarray(out, dtype=np.uint8)


def face_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A soft, randomly deformed, face-shaped (elliptical) mask centred where our crops put faces."""
    mask = np.zeros((size, size), np.float32)
    cx = size * (0.5 + rng.uniform(-0.04, 0.04))
    cy = size * (0.52 + rng.uniform(-0.04, 0.06))
    ax = size * rng.uniform(0.24, 0.36)
    ay = ax * rng.uniform(1.1, 1.4)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), rng.uniform(-12, 12), 0, 360, 1.0, -1)
    warp = cv2.resize(rng.normal(0, size * 0.03, (4, 4, 2)).astype(np.float32), (size, size))
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).astype(np.float32) + warp
    mask = cv2.remap(mask, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR)
    k = int(size * rng.uniform(0.04, 0.16)) | 1
    mask = cv2.GaussianBlur(mask, (k, k), 0)
    if mask.max() > 0:
        mask /= mask.max()
    return mask * rng.choice([1.0, 1.0, rng.uniform(0.4, 1.0)])


def self_blend(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SBI-style pseudo-fake: a slightly transformed copy of a real face blended into itself."""
    size = face.shape[0]
    f = face.astype(np.float32)
    target = f.copy()
    if rng.random() < 0.8:  # colour mismatch between inner face and surroundings
        target = target * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-18, 18, size=3)
    if rng.random() < 0.4:
        target = (target - target.mean()) * rng.uniform(0.8, 1.2) + target.mean()
    if rng.random() < 0.3:
        target = cv2.GaussianBlur(target, (0, 0), rng.uniform(0.5, 1.5))
    elif rng.random() < 0.2:
        blur = cv2.GaussianBlur(target, (0, 0), 1.0)
        target = target + rng.uniform(0.3, 1.0) * (target - blur)
    scale = rng.uniform(0.94, 1.06)
    shift = rng.uniform(-0.03, 0.03, size=2) * size
    matrix = np.array([[scale, 0, (1 - scale) * size / 2 + shift[0]],
                       [0, scale * rng.uniform(0.96, 1.04), (1 - scale) * size / 2 + shift[1]]], np.float32)
    target = cv2.warpAffine(target, matrix, (size, size), borderMode=cv2.BORDER_REFLECT)
    mask = face_mask(size, rng)[..., None]
    blended = mask * target + (1 - mask) * f
    return np.clip(blended, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- model

def build_model(input_size: int, width: float = 1.0):
    """RGB + high-pass residual -> small separable CNN -> two logits. Input: float pixels 0..255."""
    import keras
    from keras import layers

    def ch(n):
        return max(8, int(n * width))

    def conv(x, filters, stride=1, separable=True, name=None):
        layer = layers.SeparableConv2D if separable else layers.Conv2D
        x = layer(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu", name=name)(x)

    inputs = keras.Input((input_size, input_size, 3), name="face")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    smooth = layers.AveragePooling2D(3, strides=1, padding="same")(x)
    high_pass = layers.Rescaling(4.0)(layers.Subtract()([x, smooth]))
    x = layers.Concatenate()([x, high_pass])
    x = conv(x, ch(24), separable=False)
    x = conv(x, ch(32), stride=2, separable=False)
    x = conv(x, ch(48))
    x = conv(x, ch(64))
    x = layers.MaxPooling2D()(x)
    x = conv(x, ch(96))
    x = conv(x, ch(96))
    x = layers.MaxPooling2D()(x)
    x = conv(x, ch(160))
    x = conv(x, ch(160))
    x = layers.MaxPooling2D()(x)
    x = conv(x, ch(192), name="last_conv")
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(len(HEADS), name="logits")(x)
    return keras.Model(inputs, outputs, name="deepfake_detector")


def masked_bce(y_true, y_pred):
    """Per-head binary cross-entropy on logits; a label of -1 means 'this head ignores the sample'."""
    from keras import ops

    y_true = ops.cast(y_true, "float32")
    mask = ops.cast(y_true >= 0, "float32")
    y = ops.clip(y_true, 0.0, 1.0)
    loss = ops.maximum(y_pred, 0.0) - y_pred * y + ops.log1p(ops.exp(-ops.abs(y_pred)))
    return ops.sum(loss * mask) / ops.maximum(ops.sum(mask), 1.0)


# --------------------------------------------------------------------------- metrics (numpy)

def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray):
    order = np.argsort(-np.asarray(scores))
    labels = np.asarray(labels).astype(bool)[order]
    tps = np.r_[0, np.cumsum(labels)]
    fps = np.r_[0, np.cumsum(~labels)]
    return fps / max(fps[-1], 1), tps / max(tps[-1], 1)


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    auc = roc_auc(labels, scores)
    return {
        "n": int(len(labels)),
        "accuracy": round((tp + tn) / max(len(labels), 1), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "roc_auc": None if auc is None else round(auc, 4),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def fit_logistic(features: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                 l2: float = 1e-3, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Weighted logistic regression by Newton steps (Platt scaling generalised to several logits)."""
    x = np.c_[np.asarray(features, np.float64), np.ones(len(features))]
    y = np.asarray(labels, np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    beta = np.zeros(x.shape[1])
    reg = np.eye(x.shape[1]) * l2
    reg[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ beta, -60, 60)))
        grad = x.T @ (w * (p - y)) + reg @ beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + reg
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(beta)), grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


# --------------------------------------------------------------------------- data feeding

@dataclass
class PackedData:
    crops: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    splits: np.ndarray  # train / validation per row
    groups: np.ndarray


def load_packed(data_dirs: list[str], input_size: int, cache_dir: str | Path, seed: int = 0,
                validation_fraction: float = 0.15, log=print) -> PackedData:
    crops, labels, sources, splits, groups = [], [], [], [], []
    for data_dir in data_dirs:
        samples = dataset.discover_samples(data_dir)
        log(f"{data_dir}: {len(samples)} images; cropping faces (cached in {cache_dir})")
        packed = dataset.pack_samples(samples, input_size, cache_dir, workers=min(2, os.cpu_count() or 1),
                                      progress=lambda i, n: log(f"  cropped {i}/{n}"))
        kept = [dataset.Sample(p, int(l), str(g), str(s), sp or None) for p, l, g, s, sp in zip(
            packed["paths"], packed["labels"], packed["groups"], packed["sources"], packed["splits"])]
        crops.append(np.asarray(packed["crops"]))
        labels.append(np.asarray(packed["labels"], np.int64))
        sources.append(np.asarray(packed["sources"]))
        groups.append(np.asarray(packed["groups"]))
        splits.append(np.asarray(dataset.assign_split(kept, validation_fraction, seed)))
    return PackedData(np.concatenate(crops), np.concatenate(labels), np.concatenate(sources),
                      np.concatenate(splits), np.concatenate(groups))


def _batch_plan(data: PackedData, index: np.ndarray) -> dict:
    """Index pools per (source, label), so each batch is balanced across sources and classes."""
    pools = {}
    for source in np.unique(data.sources[index]):
        for label in (0, 1):
            rows = index[(data.sources[index] == source) & (data.labels[index] == label)]
            if len(rows):
                pools[(str(source), label)] = rows
    return pools


def make_batches(data: PackedData, index: np.ndarray, batch_size: int, steps: int, seed: int,
                 sbi_fraction: float = 0.25, first_epoch: int = 0):
    """A keras PyDataset yielding (uint8 crops, [N,2] head labels) with -1 = ignored by that head.
    `first_epoch` lets a continued run draw new batches instead of replaying the first run's."""
    import keras

    pools = _batch_plan(data, index)
    real_pools = [k for k in pools if k[1] == 0]
    fake_pools = [k for k in pools if k[1] == 1]

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = first_epoch

        def __len__(self):
            return steps

        def on_epoch_end(self):
            self.epoch += 1

        def __getitem__(self, step):
            rng = np.random.default_rng([seed, self.epoch, step])
            n_sbi = int(batch_size * sbi_fraction)
            n_each = (batch_size - n_sbi) // 2
            xs, ys = [], []
            for count, keys, label in ((n_each, real_pools, 0), (batch_size - n_sbi - n_each, fake_pools, 1)):
                for i in range(count):
                    rows = pools[keys[i % len(keys)]]
                    img = data.crops[rows[rng.integers(len(rows))]]
                    xs.append(augment(np.asarray(img), rng))
                    ys.append((label, 0 if label == 0 else -1))
            for i in range(n_sbi):
                rows = pools[real_pools[i % len(real_pools)]]
                img = np.asarray(data.crops[rows[rng.integers(len(rows))]])
                if rng.random() < 0.5:
                    img = img[:, ::-1]
                xs.append(augment(self_blend(np.ascontiguousarray(img), rng), rng))
                ys.append((-1, 1))
            return np.stack(xs).astype(np.float32), np.asarray(ys, np.float32)

    return Batches()


def validation_set(data: PackedData, index: np.ndarray, seed: int, sbi_per_source: int = 400):
    """Validation crops as they are (no augmentation) plus a fixed set of self-blended fakes made
    from validation reals (source 'sbi:<source>')."""
    rng = np.random.default_rng(seed + 1000)
    crops = [np.asarray(data.crops[index])]
    labels = [data.labels[index]]
    sources = [data.sources[index].astype(object)]
    for source in np.unique(data.sources[index]):
        reals = index[(data.sources[index] == source) & (data.labels[index] == 0)]
        chosen = rng.choice(reals, size=min(sbi_per_source, len(reals)), replace=False)
        fakes = np.stack([self_blend(np.asarray(data.crops[i]), rng) for i in chosen])
        crops.append(fakes)
        labels.append(np.ones(len(fakes), np.int64))
        sources.append(np.array([f"sbi:{source}"] * len(fakes), dtype=object))
        crops.append(np.asarray(data.crops[chosen]))  # their real originals, for a paired AUC
        labels.append(np.zeros(len(chosen), np.int64))
        sources.append(np.array([f"sbi:{source}"] * len(chosen), dtype=object))
    return np.concatenate(crops), np.concatenate(labels), np.concatenate(sources).astype(str)


def _batched_logits(model, crops: np.ndarray, batch: int = 128) -> np.ndarray:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), jit_compile=False, reduce_retracing=True)
    out = [fn(tf.constant(crops[i:i + batch], tf.float32)).numpy() for i in range(0, len(crops), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(HEADS)), np.float32)


def _uncertain_band(probs: np.ndarray, labels: np.ndarray, threshold: float, target: float = 0.9):
    """The narrowest band around the threshold outside which validation verdicts are right at least
    `target` of the time (precision for 'fake' above it, negative predictive value below it)."""
    high = threshold
    for t in np.linspace(threshold, 0.99, 99):
        above = probs >= t
        if above.sum() < 20 or labels[above].mean() >= target:
            high = float(t)
            break
    low = threshold
    for t in np.linspace(threshold, 0.01, 99):
        below = probs < t
        if below.sum() < 20 or (1 - labels[below]).mean() >= target:
            low = float(t)
            break
    return round(low, 3), round(high, 3)


def calibrate(model, data: PackedData, val_index: np.ndarray, seed: int, threshold: float = 0.5):
    """Fit the fusion on validation logits; return (card fusion dict, uncertain band, per-source metrics)."""
    from utils.model import Fusion

    val_crops, val_labels, val_sources = validation_set(data, val_index, seed)
    logits = _batched_logits(model, val_crops)
    weights = np.zeros(len(val_labels))
    for source in np.unique(val_sources):
        for label in (0, 1):
            sel = (val_sources == source) & (val_labels == label)
            if sel.any():
                weights[sel] = 1.0 / sel.sum()
    pseudo = np.char.startswith(val_sources.astype(str), "sbi:")
    scales, biases = [], []
    for h, rows in enumerate((~pseudo, pseudo)):  # generation head: dataset fakes; blending head: SBI
        (scale,), bias = fit_logistic(logits[rows, h:h + 1], val_labels[rows], weights[rows])
        scales.append(round(float(scale), 6))
        biases.append(round(bias, 6))
    shipped = Fusion(tuple(scales), 0.0, "max", tuple(scales), tuple(biases))
    lr_weights, lr_bias = fit_logistic(logits, val_labels, weights)
    alternative = Fusion(tuple(float(w) for w in lr_weights), lr_bias)
    probs = shipped.probability(logits)
    alt_probs = alternative.probability(logits)
    band = _uncertain_band(probs, val_labels, threshold)

    metrics = {}
    for source in list(np.unique(val_sources)) + ["all"]:
        sel = np.ones(len(val_labels), bool) if source == "all" else val_sources == source
        entry = {"n": int(sel.sum()), "fakes": int(val_labels[sel].sum())}
        for h, head in enumerate(HEADS):
            auc = roc_auc(val_labels[sel], logits[sel, h])
            entry[f"auc_{head}_head"] = None if auc is None else round(auc, 4)
        auc = roc_auc(val_labels[sel], alt_probs[sel])
        entry["auc_logistic_fusion"] = None if auc is None else round(auc, 4)
        entry.update({f"shipped_{k}": v for k, v in
                      classification_metrics(val_labels[sel], probs[sel], threshold).items()
                      if k in ("roc_auc", "accuracy", "precision", "recall")})
        metrics[str(source)] = entry
    fusion = {"mode": "max", "heads": list(HEADS), "scales": scales, "biases": biases,
              "alternative_logistic": {"weights": [round(float(w), 6) for w in lr_weights],
                                       "bias": round(lr_bias, 6)}}
    return fusion, band, metrics


def load_initial_model(path: str | Path, input_size: int):
    """The model a continued run starts from, and the card written next to it (or {}).
    Refuses a file that is not this network at this input size, before any data is loaded."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No model file at {path}.")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ValueError(f"The model at {path} could not be loaded: {exc}") from exc
    shape = tuple(model.input_shape[1:])
    if shape != (input_size, input_size, 3) or tuple(model.output_shape[1:]) != (len(HEADS),):
        raise ValueError(f"The model at {path} takes {shape} and gives {model.output_shape[1:]}; "
                         f"this run needs ({input_size}, {input_size}, 3) -> ({len(HEADS)},).")
    card_path = path.with_name("model_card.json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return model, card


def _gpu_used() -> bool | None:
    """Whether the TensorFlow backend had a GPU (None: another backend, not checked)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def train(data_dirs: list[str], out_path: str | Path, *, input_size: int = 128, epochs: int = 10,
          steps_per_epoch: int = 200, batch_size: int = 48, learning_rate: float = 2e-3, seed: int = 0,
          width: float = 1.0, max_minutes: float | None = None, cache_dir: str | Path = "data/cache",
          validation_fraction: float = 0.15, sbi_fraction: float = 0.25, init_from: str | Path | None = None,
          log=print) -> dict:
    """Train, calibrate on the validation split, write the .keras model and model_card.json.
    init_from: continue from that .keras model (same network and input size); keep the first run's
    seed and validation fraction so the validation split, and so the card's numbers, stay held out."""
    import keras

    started = time.time()
    keras.utils.set_random_seed(seed)
    previous = {}
    if init_from:
        initial_model, initial_card = load_initial_model(init_from, input_size)
        previous = initial_card.get("training", {})
        for key, value in (("seed", seed), ("validation_fraction", validation_fraction)):
            if key in previous and previous[key] != value:
                raise ValueError(f"{init_from} was trained with {key}={previous[key]}; continuing with "
                                 f"{value} would move faces between the training and validation splits.")
    data = load_packed(data_dirs, input_size, cache_dir, seed, validation_fraction, log)
    train_index = np.flatnonzero(data.splits == "train")
    val_index = np.flatnonzero(data.splits == "validation")
    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError("Need images on both sides of the train/validation split.")
    overlap = set(data.groups[train_index]) & set(data.groups[val_index])
    log(f"train {len(train_index)} / validation {len(val_index)} faces; groups shared across split: {len(overlap)}")

    model = initial_model if init_from else build_model(input_size, width)
    previous_epochs = int(previous.get("epochs_total", previous.get("epochs", 0)))
    previous_minutes = float(previous.get("minutes_total", previous.get("minutes", 0.0)))
    if init_from:
        log(f"continuing from {init_from} ({previous_epochs} epochs, {previous_minutes} min so far)")
    total_steps = epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate * 0.1, total_steps, alpha=0.02,
                                                      warmup_target=learning_rate,
                                                      warmup_steps=max(1, total_steps // 20))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=masked_bce,
                  jit_compile=False)
    batches = make_batches(data, train_index, batch_size, steps_per_epoch, seed, sbi_fraction,
                           first_epoch=previous_epochs)

    class TimeBudget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log(f"epoch {epoch + 1}/{epochs} loss {logs.get('loss', float('nan')):.4f} "
                f"({(time.time() - started) / 60:.1f} min)")
            if max_minutes and (time.time() - started) / 60 > max_minutes:
                log("time budget reached; stopping")
                self.model.stop_training = True

    history = model.fit(batches, epochs=epochs, verbose=0, callbacks=[TimeBudget()])
    epochs_run = len(history.history.get("loss", []))

    fusion, band, metrics = calibrate(model, data, val_index, seed)
    threshold = 0.5

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(out_path)
    digest = hashlib.sha256(out_path.read_bytes()).hexdigest()[:10]
    sources_used = sorted({str(s) for s in data.sources})
    card = {
        "version": f"{dt.date.today().isoformat()}-{digest}",
        "architecture": "separable CNN, RGB + high-pass residual input, two logit heads; "
                        f"{model.count_params()} parameters",
        "input_size": input_size,
        "face_margin": convert.FACE_MARGIN,
        "face_detector": convert.get_face_finder().name,
        "heads": list(HEADS),
        "fusion": fusion,
        "calibration": "Platt scaling of each head on validation data for its own task (generation: the "
                       "datasets' real vs fake; blending: validation reals vs self-blended fakes made from "
                       "them), sources weighted equally and classes balanced; P(fake) = the higher of the two",
        "threshold": threshold,
        "uncertain_band": list(band),
        "uncertain_band_rule": "outside the band, validation verdicts were right >= 90 % of the time",
        "data": [{"folder": str(d), "source": Path(d).name,
                  "terms": data_terms(d)} for d in data_dirs],
        "counts": {s: {"train": int(((data.sources == s) & (data.splits == "train")).sum()),
                       "validation": int(((data.sources == s) & (data.splits == "validation")).sum())}
                   for s in sources_used},
        "split": f"validation = {validation_fraction:.0%} of groups by hash (groups.csv groups: a fake shares "
                 "the group of its source video), or the folder's own Validation split; "
                 f"groups on both sides: {len(overlap)}",
        "training": {"epochs": epochs_run, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
                     "learning_rate": learning_rate, "seed": seed, "sbi_fraction": sbi_fraction,
                     "validation_fraction": validation_fraction, "width": width,
                     "augmentation": "flip, framing jitter, down/up-scaling, blur, colour, noise, JPEG 35-95",
                     "minutes": round((time.time() - started) / 60, 1),
                     "epochs_total": previous_epochs + epochs_run,
                     "minutes_total": round(previous_minutes + (time.time() - started) / 60, 1),
                     "backend": keras.backend.backend(), "gpu": _gpu_used()},
        "validation_metrics": metrics,
        "metrics_note": "ROC-AUC per validation source for each head alone, for the shipped fusion "
                        "(max of calibrated heads) and for the alternative (one logistic regression over both "
                        "logits); accuracy/precision/recall of the shipped score at the threshold. "
                        "'sbi:<source>' = self-blended fakes made from that source's validation reals vs those "
                        "reals (a proxy for unseen face swaps). The fusion's 4 numbers are fitted on the same "
                        "validation data they are reported on.",
    }
    card["known_limits"] = known_limits(metrics, {**card["training"], "input_size": input_size},
                                        model.count_params(), sources_used)
    reviewed = reviewed_data(data_dirs, dt.date.today().isoformat())
    if reviewed:
        card["reviewed_data"] = reviewed
    if init_from:
        card["initialised_from"] = {"file": str(init_from), "version": initial_card.get("version"),
                                    "epochs": previous_epochs, "minutes": previous_minutes}
    out_path.with_name("model_card.json").write_text(json.dumps(card, indent=2))
    log(json.dumps(metrics, indent=1))
    return card


# --------------------------------------------------------------------------- evaluation

def evaluate(data_dir: str, model_path: str | Path, out_dir: str | Path, *, cache_dir: str | Path = "data/cache",
             split: str = "all", log=print) -> dict:
    """Score the images of DIR (cropped as in training) and write ROC + confusion-matrix PNGs.
    split="validation" keeps only what the model's training run held out (same seed and groups).
    A DIR whose real/ and fake/ hold videos is scored per video through the production pipeline."""
    from utils.model import get_detector

    detector = get_detector(model_path)
    videos = dataset.discover_videos(data_dir)
    if videos:
        return _evaluate_videos(videos, detector, Path(out_dir), data_dir, log)
    samples = dataset.discover_samples(data_dir)
    packed = dataset.pack_samples(samples, detector.input_size, cache_dir, workers=min(2, os.cpu_count() or 1))
    labels = np.asarray(packed["labels"], int)
    keep = np.arange(len(labels))
    if split == "validation":
        training = detector.card.get("training", {})
        kept = [dataset.Sample(p, int(l), str(g), str(s), sp or None) for p, l, g, s, sp in zip(
            packed["paths"], packed["labels"], packed["groups"], packed["sources"], packed["splits"])]
        sides = np.asarray(dataset.assign_split(kept, training.get("validation_fraction", 0.15),
                                                training.get("seed", 0)))
        keep = np.flatnonzero(sides == "validation")
    labels = labels[keep]
    scores = detector.score(np.asarray(packed["crops"][np.sort(keep)])) if len(keep) else np.zeros(0)
    result = classification_metrics(labels, scores, detector.threshold)
    result["threshold"] = detector.threshold
    result["model_version"] = detector.version
    result["split"] = split
    result["unreadable_files"] = len(samples) - len(packed["labels"])
    return _write_plots(result, labels, scores, Path(out_dir), data_dir, detector.threshold)


def _evaluate_videos(videos: list[tuple[str, int]], detector, out_dir: Path, data_dir: str, log) -> dict:
    """Videos in real/ and fake/: each goes through the production pipeline (32 frames, faces,
    aggregation); metrics are per video, plus each head's ROC-AUC over all the faces found."""
    from utils.analysis import inspect_media

    labels, scores, face_labels, face_logits, per_video = [], [], [], [], []
    for path, label in videos:
        report = inspect_media(path, detector=detector, frames=32)
        crops = np.stack([f.crop for f in report.faces]) if report.faces else None
        if crops is not None:
            face_logits.append(detector.logits(crops))
            face_labels.extend([label] * len(crops))
        score = report.verdict.score
        per_video.append({"path": str(path), "label": label, "verdict": report.verdict.verdict,
                          "score": None if score is None else round(float(score), 4), "faces": len(report.faces)})
        log(f"  {Path(path).name}: {report.verdict.verdict} {score if score is None else round(score, 3)}")
        if score is not None:
            labels.append(label)
            scores.append(score)
    labels, scores = np.asarray(labels, int), np.asarray(scores)
    result = classification_metrics(labels, scores, detector.threshold)
    result.update(threshold=detector.threshold, model_version=detector.version, split="all",
                  unreadable_files=0, videos=per_video)
    if face_logits:
        logits = np.concatenate(face_logits)
        for h, head in enumerate(detector.head_names):
            result[f"face_auc_{head}_head"] = roc_auc(np.asarray(face_labels), logits[:, h])
        result["face_auc_fused"] = roc_auc(np.asarray(face_labels), detector.fusion.probability(logits))
    return _write_plots(result, labels, scores, out_dir, data_dir, detector.threshold)


def _write_plots(result: dict, labels: np.ndarray, scores: np.ndarray, out_dir: Path, data_dir: str,
                 threshold: float) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fpr, tpr = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {result['roc_auc']}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {Path(data_dir).name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=110)
    plt.close(fig)

    c = result["confusion"]
    grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", color="black" if v < grid.max() / 2 else "white")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
           xlabel="predicted", ylabel="actual", title=f"threshold {threshold:.2f}")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=110)
    plt.close(fig)
    result["roc_png"] = str(out_dir / "roc.png")
    result["confusion_png"] = str(out_dir / "confusion.png")
    return result
