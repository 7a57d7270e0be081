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
from utils.detail import MEASURE as DETAIL_MEASURE, DetailBands, face_detail, widened
from utils.robustness import (Degradation, degrade, h264_available, h264_recompress, jpeg_recompress,
                              heic_available, parse_degradation, shrink_and_restore, still_recompress)

# What a codec-compressed face (--codec-fraction) is made with: --codec-kinds picks among these.
CODEC_KINDS = ("h264", "heic", "avif")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HEADS = ("generation", "blending")
BAND_TARGET = 0.9  # outside the uncertain band, validation verdicts are right at least this often
# Detail-aware bands (utils.detail): each validation face is scored once more after one of these, drawn
# at random, and the faces (as stored and degraded) are binned by detail at these quantiles.
DETAIL_DEGRADATIONS = ("blur:0.7", "blur:1", "blur:1.5", "blur:2", "scale:0.5", "scale:0.35", "jpeg:50",
                       "jpeg:30", "noise:5", "h264:30", "h264:36", "h264:42")
DETAIL_QUANTILES = (0.05, 0.15, 0.35)
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

    datasets = [source for source in metrics if source != "all" and not source.startswith("sbi:")]
    measured = ", ".join(f"{source} {auc(source)}" for source in datasets)
    device = {True: "GPU", False: "CPU"}.get(training.get("gpu"), "device not recorded")
    reliability = {source: (metrics[source].get("shipped_right_outside_band"), metrics[source].get("shipped_uncertain"))
                   for source in datasets}
    weak = {source: pair for source, pair in reliability.items() if pair[0] is not None and pair[0] < BAND_TARGET}
    band_line = [] if not weak else [
        "The uncertain band is fitted on all validation faces together; per source, verdicts outside it were right "
        + ", ".join(f"{right:.0%} of the time on {source} ({share:.0%} of its faces 'uncertain')"
                    for source, (right, share) in reliability.items() if right is not None and share is not None)
        + f": a 'fake' or 'real' on faces like {', '.join(weak)} is less sure than the band's {BAND_TARGET:.0%} suggests."]
    return [
        f"A small network ({parameters:,} parameters, {training.get('input_size', 128)} px faces) trained for "
        f"{training.get('minutes_total', training.get('minutes'))} minutes ({training.get('epochs_total', training.get('epochs'))} "
        f"epochs, {training.get('backend', 'keras')} backend, {device}): far less training than published detectors.",
        f"Validation ROC-AUC per source: {measured}; borderline files are answered 'uncertain'.",
        f"Trained only on tight face crops from: {', '.join(sources)}; other generators, editing tools and "
        "diffusion-made faces were never seen.",
    ] + band_line


# --------------------------------------------------------------------------- augmentation

def soften(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole face made softer, as a beauty filter, a shrunk re-upload or a soft lens do: a blur
    (sigma 0.6-2.0 px) or a shrink to 30-60 % and back up."""
    if rng.random() < 0.5:
        return cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), rng.uniform(0.6, 2.0))
    return shrink_and_restore(img, max(2, int(img.shape[0] * rng.uniform(0.3, 0.6))))


def codec_recompress(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One face through a codec: an H.264 intra frame at quantiser 22-42, or a HEIC (HEVC) or AVIF
    (AV1) still at quality 20-80, as phones and sites store photos."""
    if kind == "h264":
        return h264_recompress(np.ascontiguousarray(img)[None], int(rng.integers(22, 43)))[0]
    return still_recompress(img, kind, int(rng.integers(20, 81)))


def codec_words(codec_kinds) -> str:
    words = {"h264": "H.264 intra frames at quantiser 22-42", "heic": "HEIC stills at quality 20-80",
             "avif": "AVIF stills at quality 20-80"}
    return ", ".join(words[k] for k in codec_kinds)


def augment(img: np.ndarray, rng: np.random.Generator, soften_fraction: float = 0.0,
            codec_fraction: float = 0.0, codec_kinds: tuple[str, ...] = ("h264",)) -> np.ndarray:
    """Robustness to what uploads do to faces: re-compression, blur, rescaling, colour, framing.
    soften_fraction: share of faces (real, fake and self-blended alike) also softened as a whole, so
    that softness alone is no evidence (the shipped blending head fires on blurred real faces; README
    "Robustness to degraded faces"). codec_fraction: share of faces ending as an H.264 intra frame
    (quantiser 22-42) instead of the usual chance of a JPEG, as a face in an uploaded video does;
    codec_kinds: the codecs it is drawn from, one at random per face (one kind draws nothing extra).
    Either fraction at 0 draws nothing extra: batches stay as before."""
    size = img.shape[0]
    out = img
    if soften_fraction > 0 and rng.random() < soften_fraction:
        out = soften(out, rng)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:  # framing jitter: crop 85-100 % and resize back
        side = int(size * rng.uniform(0.85, 1.0))
        x0, y0 = rng.integers(0, size - side + 1, size=2)
        out = convert.resize_face(np.ascontiguousarray(out[y0:y0 + side, x0:x0 + side]), size)
    if rng.random() < 0.3:  # a smaller face upscaled, as from a distant face or a low-res video
        out = shrink_and_restore(out, int(size * rng.uniform(0.4, 0.9)))
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
    if codec_fraction > 0 and rng.random() < codec_fraction:
        kind = codec_kinds[int(rng.integers(len(codec_kinds)))] if len(codec_kinds) > 1 else codec_kinds[0]
        out = codec_recompress(out, kind, rng)
    elif rng.random() < 0.6:
        out = jpeg_recompress(out, rng.integers(35, 96))
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


def mismatch(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The inner face of a pseudo-fake at another resolution or compression than its surroundings,
    as a swapped face rendered small (or encoded apart) and pasted into a sharper frame is: shrunk
    to 40-80 % and back up, or JPEG at quality 30-70."""
    if rng.random() < 0.6:
        return shrink_and_restore(face, max(2, int(face.shape[0] * rng.uniform(0.4, 0.8))))
    return jpeg_recompress(face, int(rng.integers(30, 71)))


def self_blend(face: np.ndarray, rng: np.random.Generator, mismatch_fraction: float = 0.0) -> np.ndarray:
    """SBI-style pseudo-fake: a slightly transformed copy of a real face blended into itself.
    mismatch_fraction: share whose inner face also differs in resolution or compression (mismatch);
    0 draws nothing extra, so earlier runs and the validation pseudo-fakes stay as they were."""
    size = face.shape[0]
    f = face.astype(np.float32)
    target = f.copy()
    if mismatch_fraction > 0 and rng.random() < mismatch_fraction:
        target = mismatch(np.ascontiguousarray(face), rng).astype(np.float32)
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


PACK_SUFFIX = ".npz"


def is_pack(path: str | Path) -> bool:
    return Path(path).suffix == PACK_SUFFIX and Path(path).is_file()


def load_packed(data_dirs: list[str], input_size: int, cache_dir: str | Path, seed: int = 0,
                validation_fraction: float = 0.15, log=print) -> PackedData:
    """Every --data entry as model-sized crops: a dataset folder (cropped once, cached), or a face
    pack written by write_pack (its rows keep the split they had when packed)."""
    crops, labels, sources, splits, groups = [], [], [], [], []
    for data_dir in data_dirs:
        if is_pack(data_dir):
            packed = read_pack(data_dir, input_size)
            log(f"{data_dir}: {len(packed['labels'])} packed faces")
        else:
            if Path(data_dir).is_file():
                raise ValueError(f"{data_dir} is neither a dataset folder nor a face pack ({PACK_SUFFIX}).")
            try:
                samples = dataset.discover_samples(data_dir)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from exc
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


def write_pack(data_dirs: list[str], out_path: str | Path, *, input_size: int = 128,
               cache_dir: str | Path = "data/cache", seed: int = 0, validation_fraction: float = 0.15,
               quality: int = 90, max_mb: float = 52.0, log=print) -> dict:
    """The training split of DIRs as one compact file (WebP crops + labels, groups, sources), small
    enough to carry to a GPU machine (the device tool takes 64 MiB a call). Validation faces stay
    here: `flask calibrate` fits the fusion on them after the GPU run, so they are never packed.
    Over max_mb, the largest (source, label) pools are cut to a common cap (random rows, fixed seed)."""
    data = load_packed(data_dirs, input_size, cache_dir, seed, validation_fraction, log)
    rows = np.flatnonzero(data.splits == "train")
    if len(rows) == 0:
        raise ValueError("No training faces to pack.")
    log(f"encoding {len(rows)} training faces (WebP quality {quality})")
    encoded = {}
    for i in rows:
        ok, buf = cv2.imencode(".webp", np.ascontiguousarray(data.crops[i][..., ::-1]),
                               [cv2.IMWRITE_WEBP_QUALITY, int(quality)])
        if not ok:
            raise ValueError("This OpenCV cannot write WebP.")
        encoded[int(i)] = buf.tobytes()
    rng = np.random.default_rng(seed)
    pools = {key: rng.permutation(pool) for key, pool in _batch_plan(data, rows).items()}
    budget = int(max_mb * 2**20)

    def chosen(cap):
        return np.sort(np.concatenate([pool[:cap] for pool in pools.values()]))

    cap = max(len(pool) for pool in pools.values())
    if sum(len(encoded[i]) for i in chosen(cap)) > budget:
        low, high = 0, cap  # the largest cap that fits
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if sum(len(encoded[i]) for i in chosen(mid)) <= budget else (low, mid - 1)
        cap = low
        if cap == 0:
            raise ValueError(f"Not even one face per pool fits in {max_mb} MB.")
    keep = chosen(cap)
    blobs = [encoded[i] for i in keep]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    counts = {f"{source}/{'fake' if label else 'real'}": {"packed": int(min(cap, len(pool))), "of": int(len(pool))}
              for (source, label), pool in pools.items()}
    meta = {"input_size": input_size, "face_margin": convert.FACE_MARGIN,
            "face_detector": convert.get_face_finder().name, "seed": seed,
            "validation_fraction": validation_fraction, "quality": quality, "counts": counts,
            "data": describe_data(data_dirs)}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, images=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             labels=data.labels[keep], sources=data.sources[keep].astype(str),
             groups=data.groups[keep].astype(str), meta=np.array(json.dumps(meta)))
    log(f"wrote {out_path}: {len(keep)} faces, {out_path.stat().st_size / 2**20:.1f} MiB; per pool {counts}")
    return meta


PACK_ARRAYS = ("images", "offsets", "labels", "sources", "groups", "meta")


def _open_pack(path: str | Path, names=PACK_ARRAYS) -> dict:
    """The named arrays of a face pack (no pickles), or ValueError saying the file is not one."""
    try:
        with np.load(path, allow_pickle=False) as pack:
            arrays = {name: pack[name] for name in names}
        arrays["meta"] = json.loads(str(arrays["meta"]))
        return arrays
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a face pack written by `flask pack-faces` ({exc}).") from exc


def pack_meta(path: str | Path) -> dict:
    return _open_pack(path, ("meta",))["meta"]


def read_pack(path: str | Path, input_size: int) -> dict:
    """A face pack's crops (decoded) and rows, shaped like dataset.pack_samples's result."""
    pack = _open_pack(path)
    if pack["meta"].get("input_size") != input_size:
        raise ValueError(f"{path} holds {pack['meta'].get('input_size')} px faces; this run needs {input_size} px.")
    images, offsets, labels = pack["images"], pack["offsets"], pack["labels"]
    crops = np.zeros((len(labels), input_size, input_size, 3), np.uint8)
    for i in range(len(labels)):
        face = cv2.imdecode(images[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if face is None or face.shape != (input_size, input_size, 3):
            raise ValueError(f"{path}: face {i} cannot be decoded; write the pack again.")
        crops[i] = face[..., ::-1]
    return {"crops": crops, "labels": labels, "sources": pack["sources"], "groups": pack["groups"],
            "splits": np.array(["train"] * len(labels)), "paths": np.array([f"{path}#{i}" for i in range(len(labels))])}


def describe_data(data_dirs: list[str]) -> list[dict]:
    """The card's "data": each source with its terms (a pack lists the folders it was made from)."""
    entries = []
    for d in data_dirs:
        if is_pack(d):
            entries.extend({**entry, "pack": Path(d).name} for entry in pack_meta(d)["data"])
        else:
            entries.append({"folder": str(d), "source": Path(d).name, "terms": data_terms(d)})
    return entries


def _batch_plan(data: PackedData, index: np.ndarray) -> dict:
    """Index pools per (source, label), so each batch is balanced across sources and classes."""
    pools = {}
    for source in np.unique(data.sources[index]):
        for label in (0, 1):
            rows = index[(data.sources[index] == source) & (data.labels[index] == label)]
            if len(rows):
                pools[(str(source), label)] = rows
    return pools


SOURCE_BALANCES = ("equal", "sqrt")
SBI_SOURCES = ("like-reals", "alternate")


def batch_slots(keys: list, count: int, balance: str, sizes: dict[str, int]) -> list:
    """Which pool each of `count` batch places draws from. equal: the pools in turn. sqrt: shares
    proportional to the square root of each pool's source size (largest remainders), interleaved, so
    a large source (DFDC) fills more of the batch and a small one (StyleGAN) is repeated less."""
    if balance == "equal" or len(keys) < 2:
        return [keys[i % len(keys)] for i in range(count)]
    weights = np.sqrt([sizes[key[0]] for key in keys])
    exact = count * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(exact - counts)[::-1][:count - counts.sum()]:
        counts[i] += 1
    positions = sorted((j / c, k) for k, c in enumerate(counts) for j in range(c))
    return [keys[k] for _, k in positions]


def sbi_slots(real_pools: list, count: int, balance: str, sizes: dict[str, int], sbi_sources: str) -> list:
    """Which real pool each self-blended place takes its face from. 'like-reals': shared among sources
    as the real places are, so that for every source the blending head sees pseudo-fakes and reals in
    the same ratio. 'alternate' (every run before 2026-12-06, seventh session): the pools in turn, which
    under sqrt balance gave StyleGAN/FFHQ 6 pseudo-fakes against 4 reals a batch (DFDC 6 against 14),
    teaching the head that an FFHQ-like face is more often blended. Under equal balance both agree."""
    if sbi_sources not in SBI_SOURCES:
        raise ValueError(f"sbi_sources must be one of {SBI_SOURCES}, not {sbi_sources!r}")
    if sbi_sources == "alternate":
        return [real_pools[i % len(real_pools)] for i in range(count)]
    return batch_slots(real_pools, count, balance, sizes)


def make_batches(data: PackedData, index: np.ndarray, batch_size: int, steps: int, seed: int,
                 sbi_fraction: float = 0.25, first_epoch: int = 0, workers: int = 1,
                 source_balance: str = "equal", soften_fraction: float = 0.0, sbi_mismatch: float = 0.0,
                 sbi_sources: str = "like-reals", codec_fraction: float = 0.0,
                 codec_kinds: tuple[str, ...] = ("h264",)):
    """A keras PyDataset yielding (uint8 crops, [N,2] head labels) with -1 = ignored by that head.
    `first_epoch` lets a continued run draw new batches instead of replaying the first run's.
    `workers` threads build batches ahead (for a GPU that outruns one core); each batch is seeded by
    (seed, epoch, step), so the batches are the same whatever the count.
    `source_balance` (batch_slots) decides how the real and fake places are shared among sources."""
    import keras

    if source_balance not in SOURCE_BALANCES:
        raise ValueError(f"source_balance must be one of {SOURCE_BALANCES}, not {source_balance!r}")
    pools = _batch_plan(data, index)
    real_pools = [k for k in pools if k[1] == 0]
    fake_pools = [k for k in pools if k[1] == 1]
    sizes = {str(s): int((data.sources[index] == s).sum()) for s in np.unique(data.sources[index])}
    n_sbi = int(batch_size * sbi_fraction)
    n_each = (batch_size - n_sbi) // 2
    places = ((batch_slots(real_pools, n_each, source_balance, sizes), 0),
              (batch_slots(fake_pools, batch_size - n_sbi - n_each, source_balance, sizes), 1))
    sbi_places = sbi_slots(real_pools, n_sbi, source_balance, sizes, sbi_sources)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=max(1, workers), use_multiprocessing=False)
            self.epoch = first_epoch

        def __len__(self):
            return steps

        def on_epoch_end(self):
            self.epoch += 1

        def __getitem__(self, step):
            rng = np.random.default_rng([seed, self.epoch, step])
            xs, ys = [], []
            for keys, label in places:
                for key in keys:
                    rows = pools[key]
                    img = data.crops[rows[rng.integers(len(rows))]]
                    xs.append(augment(np.asarray(img), rng, soften_fraction, codec_fraction, codec_kinds))
                    ys.append((label, 0 if label == 0 else -1))
            for key in sbi_places:
                rows = pools[key]
                img = np.asarray(data.crops[rows[rng.integers(len(rows))]])
                if rng.random() < 0.5:
                    img = img[:, ::-1]
                xs.append(augment(self_blend(np.ascontiguousarray(img), rng, sbi_mismatch), rng, soften_fraction,
                                  codec_fraction, codec_kinds))
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


def _batched_logits(model, crops: np.ndarray, batch: int = 128, mirror_average: bool = False) -> np.ndarray:
    """Logits on any Keras backend (predict_on_batch runs the backend's compiled predict step),
    averaged over each crop and its mirror as the Detector does for cards with mirror_average."""
    from utils.model import mirrored_mean

    def run(x):
        return np.asarray(model.predict_on_batch(np.asarray(x, np.float32)))

    out = [mirrored_mean(run, crops[i:i + batch]) if mirror_average else run(crops[i:i + batch])
           for i in range(0, len(crops), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(HEADS)), np.float32)


def _uncertain_band(probs: np.ndarray, labels: np.ndarray, threshold: float, target: float = BAND_TARGET):
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


def band_reliability(probs: np.ndarray, labels: np.ndarray, band) -> dict:
    """How a band serves one set of faces: the share it answers 'uncertain', and how often the
    verdicts outside it ('fake' at or above the top, 'real' below the bottom) were right. The band is
    fitted on all validation faces together, so a source can fare worse than its rule says.
    band: (low, high) for every face, or per-face arrays (detail-aware bands)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    low, high = (np.broadcast_to(np.asarray(edge, np.float64), probs.shape) for edge in band)
    decided = (probs < low) | (probs >= high)
    right = ((probs >= high) & (labels == 1)) | ((probs < low) & (labels == 0))
    reals = labels == 0
    return {"uncertain": round(float(1 - decided.mean()), 4) if len(probs) else None,
            "right_outside_band": round(float(right[decided].mean()), 4) if decided.any() else None,
            "reals_called_fake": round(float((probs[reals] >= high[reals]).mean()), 4) if reals.any() else None}


def degraded_mixture(crops: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """Each crop after one degradation of DETAIL_DEGRADATIONS drawn at random (seeded); H.264 ones
    only where PyAV is installed. Returns the crops and the degradations used."""
    kinds = [k for k in DETAIL_DEGRADATIONS if h264_available() or not k.startswith("h264")]
    choice = np.random.default_rng(seed + 2000).integers(len(kinds), size=len(crops))
    out = np.empty_like(crops)
    for k, text in enumerate(kinds):
        rows = np.flatnonzero(choice == k)
        if rows.size:
            out[rows] = degrade(crops[rows], [parse_degradation(text)], seed=seed + k)
    return out, kinds


def fit_detail_bands(probs: np.ndarray, labels: np.ndarray, details: np.ndarray, band, threshold: float,
                     quantiles=DETAIL_QUANTILES, min_faces: int = 40) -> dict:
    """Bin faces by detail at these quantiles; in each bin below the top one, the band that keeps
    verdicts outside it right >= BAND_TARGET (as _uncertain_band), never narrower than `band` or than
    a bin with more detail (utils.detail.widened). A bin with fewer than min_faces keeps the band
    of the bin above it. Returns the card's `detail_bands` entry."""
    probs, labels, details = np.asarray(probs), np.asarray(labels), np.asarray(details)
    edges = sorted({round(float(e), 3) for e in np.quantile(details, quantiles)}) if len(details) else []
    bands, low_edge = [], -np.inf
    for edge in edges:
        sel = (details >= low_edge) & (details < edge)
        bands.append(_uncertain_band(probs[sel], labels[sel], threshold) if sel.sum() >= min_faces else None)
        low_edge = edge
    for i in range(len(bands) - 1, -1, -1):  # a thin bin borrows the band of the bin above it
        if bands[i] is None:
            bands[i] = bands[i + 1] if i + 1 < len(bands) else tuple(band)
    bands = widened(bands, tuple(band))
    return {"measure": DETAIL_MEASURE, "edges": list(edges),
            "bands": [[round(lo, 3), round(hi, 3)] for lo, hi in bands],
            "rule": f"a face whose detail is below edges[i] (and not below edges[i-1]) gets bands[i]; at or above "
                    f"the last edge, the uncertain band. Fitted on the validation faces as stored and once more "
                    f"after one degradation each, binned at detail quantiles {list(quantiles)}: in each bin, "
                    f"verdicts outside its band were right >= {BAND_TARGET:.0%}; never narrower than the band "
                    "of a bin with more detail. A person's detail is the median over their faces."}


def _detail_fit(probs, degraded_probs, labels, sources, details, degraded_details, band, threshold):
    """Fit the detail-aware bands on the validation faces as stored and degraded; return the card
    entry (with their effect on the degraded faces per source: the band alone vs detail-aware, on the
    faces they were fitted on) and the bands it holds."""
    entry = fit_detail_bands(np.concatenate([probs, degraded_probs]), np.concatenate([labels, labels]),
                             np.concatenate([details, degraded_details]), band, threshold)
    bands = DetailBands.from_card(entry, band)
    degraded_low, degraded_high = bands.bands_for(degraded_details)
    entry["effect"] = {}
    for source in list(np.unique(sources)) + ["all"]:
        sel = np.ones(len(labels), bool) if source == "all" else sources == source
        entry["effect"][str(source)] = {
            "degraded_band_only": band_reliability(degraded_probs[sel], labels[sel], band),
            "degraded_detail_aware": band_reliability(degraded_probs[sel], labels[sel],
                                                      (degraded_low[sel], degraded_high[sel]))}
    return entry, bands


def fit_photo_band(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, details: np.ndarray, band,
                   threshold: float, photo_sources, detail_bands: DetailBands) -> dict | None:
    """The band for photos: the narrowest band around the threshold outside which the verdicts on each
    photo source (its dataset faces, and apart the self-blended fakes made from its reals) were right
    >= BAND_TARGET, never narrower than `band`. The card's band is fitted on all sources together,
    mostly video frames; on the photos it was right less often (README "Photo band"). Returns the card's
    `photo_band` entry (with the effect on each photo source: card band vs photo band, detail-aware),
    or None without photo sources."""
    if not photo_sources:
        return None
    fits = {}
    for source in sorted(photo_sources):
        for name in (source, f"sbi:{source}"):
            sel = sources == name
            if sel.any():
                fits[name] = _uncertain_band(probs[sel], labels[sel], threshold)
    low = min([band[0]] + [fit[0] for fit in fits.values()])
    high = max([band[1]] + [fit[1] for fit in fits.values()])
    photo_bands = detail_bands.with_base((low, high))
    effect = {}
    for name in fits:
        sel = sources == name
        effect[name] = {"card_band": band_reliability(probs[sel], labels[sel], detail_bands.bands_for(details[sel])),
                        "photo_band": band_reliability(probs[sel], labels[sel], photo_bands.bands_for(details[sel]))}
    return {"sources": sorted(photo_sources), "band": [round(low, 3), round(high, 3)],
            "fits": {name: list(fit) for name, fit in fits.items()}, "effect": effect,
            "rule": f"images (not video frames) are judged with this band: outside it, the validation verdicts on "
                    f"each photo source (and on the self-blended fakes made from its reals) were right >= "
                    f"{BAND_TARGET:.0%}; never narrower than the uncertain band. Faces that lost fine detail widen "
                    "it further (detail_bands, each bin at least this wide)"}


def calibrate(model, data: PackedData, val_index: np.ndarray, seed: int, threshold: float = 0.5,
              mirror_average: bool = False, photo_sources=()):
    """Fit the fusion on validation logits (mirror-averaged when the card will score that way), the
    uncertain band, the detail-aware bands (on the faces as stored and once degraded) and, for
    photo_sources, the photo band; return (card fusion dict, uncertain band, per-source metrics, card
    detail_bands entry, card photo_band entry or None)."""
    from utils.model import Fusion

    val_crops, val_labels, val_sources = validation_set(data, val_index, seed)
    logits = _batched_logits(model, val_crops, mirror_average=mirror_average)
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
    degraded, used = degraded_mixture(val_crops, seed)
    degraded_probs = shipped.probability(_batched_logits(model, degraded, mirror_average=mirror_average))
    details = face_detail(val_crops)
    detail_entry, detail_bands = _detail_fit(probs, degraded_probs, val_labels, val_sources, details,
                                             face_detail(degraded), band, threshold)
    detail_entry["degradations"] = used
    photo_entry = fit_photo_band(probs, val_labels, val_sources, details, band, threshold, photo_sources,
                                 detail_bands)
    face_band = detail_bands.bands_for(details)
    if photo_entry:  # photo sources are reported with the band their files get
        photo_rows = np.isin(val_sources, [*photo_entry["sources"], *(f"sbi:{s}" for s in photo_entry["sources"])])
        photo_low, photo_high = detail_bands.with_base(tuple(photo_entry["band"])).bands_for(details[photo_rows])
        face_band[0][photo_rows], face_band[1][photo_rows] = photo_low, photo_high

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
        entry.update({f"shipped_{k}": v for k, v in band_reliability(
            probs[sel], val_labels[sel], (face_band[0][sel], face_band[1][sel])).items()})
        metrics[str(source)] = entry
    fusion = {"mode": "max", "heads": list(HEADS), "scales": scales, "biases": biases,
              "alternative_logistic": {"weights": [round(float(w), 6) for w in lr_weights],
                                       "bias": round(lr_bias, 6)}}
    return fusion, band, metrics, detail_entry, photo_entry


def load_initial_model(path: str | Path, input_size: int, exact_size: bool = False):
    """The model a continued run starts from, and the card written next to it (or {}).
    The network is fully convolutional up to a global pooling, so its weights carry over to another
    input size (e.g. fine-tuning at 160 px a model trained at 128 px) unless exact_size. Refuses a
    file that is not this network, before any data is loaded."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No model file at {path}.")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ValueError(f"The model at {path} could not be loaded: {exc}") from exc
    card_path = path.with_name("model_card.json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    shape = tuple(model.input_shape[1:])
    if tuple(model.output_shape[1:]) != (len(HEADS),) or shape[2:] != (3,) or (
            exact_size and shape != (input_size, input_size, 3)):
        raise ValueError(f"The model at {path} takes {shape} and gives {model.output_shape[1:]}; "
                         f"this run needs ({input_size}, {input_size}, 3) -> ({len(HEADS)},).")
    if shape != (input_size, input_size, 3):
        resized = build_model(input_size, float(card.get("training", {}).get("width", 1.0)))
        try:
            resized.set_weights(model.get_weights())
        except ValueError as exc:
            raise ValueError(f"The model at {path} is not this network (its weights do not fit one "
                             f"built for {input_size} px): {exc}") from exc
        model = resized
    return model, card


def _gpu_used() -> bool | None:
    """Whether the Keras backend ran on a GPU (None: a backend not checked here)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return None


def train(data_dirs: list[str], out_path: str | Path, *, input_size: int = 128, epochs: int = 10,
          steps_per_epoch: int = 200, batch_size: int = 48, learning_rate: float = 2e-3, seed: int = 0,
          width: float = 1.0, max_minutes: float | None = None, cache_dir: str | Path = "data/cache",
          validation_fraction: float = 0.15, sbi_fraction: float = 0.25, init_from: str | Path | None = None,
          loader_workers: int = 1, source_balance: str = "equal", mirror_average: bool = False,
          soften_fraction: float = 0.0, sbi_mismatch: float = 0.0, sbi_sources: str = "like-reals",
          codec_fraction: float = 0.0, codec_kinds=("h264",), photo_sources=(), log=print) -> dict:
    """Train, calibrate on the validation split, write the .keras model and model_card.json.
    mirror_average: score each face as the mean of its and its mirror image's logits (off by default:
    better on the validation split, worse on the unseen FF++ faces; README "Run 7 and mirror averaging").
    init_from: continue from that .keras model (same network and input size); keep the first run's
    seed and validation fraction so the validation split, and so the card's numbers, stay held out.
    Trained on face packs alone (no validation faces: the GPU route), the card is written with
    "calibrated": false and the model is refused for serving until `flask calibrate` completes it.
    photo_sources: the sources (folder names) whose faces are photos; images get a band fitted on them."""
    import keras

    started = time.time()
    codec_kinds = tuple(dict.fromkeys(codec_kinds or ("h264",)))
    unknown = [k for k in codec_kinds if k not in CODEC_KINDS]
    if unknown:
        raise ValueError(f"unknown codec {', '.join(unknown)} for --codec-kinds; use {', '.join(CODEC_KINDS)}")
    if codec_fraction > 0 and "h264" in codec_kinds and not h264_available():
        raise ValueError("--codec-fraction needs PyAV (pip install av), which this Python lacks; "
                         "train with --codec-fraction 0 here")
    if codec_fraction > 0 and "heic" in codec_kinds and not heic_available():
        raise ValueError("--codec-kinds heic needs pillow-heif (pip install pillow-heif), which this Python lacks; "
                         "leave heic out here")
    keras.utils.set_random_seed(seed)
    previous = {}
    if init_from:
        initial_model, initial_card = load_initial_model(init_from, input_size)
        previous = initial_card.get("training", {})
        for key, value in (("seed", seed), ("validation_fraction", validation_fraction)):
            if key in previous and previous[key] != value:
                raise ValueError(f"{init_from} was trained with {key}={previous[key]}; continuing with "
                                 f"{value} would move faces between the training and validation splits.")
    packs = [d for d in data_dirs if is_pack(d)]
    for pack in packs:
        meta = pack_meta(pack)
        for key, value in (("seed", seed), ("validation_fraction", validation_fraction)):
            if meta.get(key) != value:
                raise ValueError(f"{pack} was packed with {key}={meta.get(key)}; training with {value} would "
                                 "let `flask calibrate` validate on faces this run trained on.")
    data = load_packed(data_dirs, input_size, cache_dir, seed, validation_fraction, log)
    train_index = np.flatnonzero(data.splits == "train")
    val_index = np.flatnonzero(data.splits == "validation")
    deferred = len(val_index) == 0 and len(packs) == len(data_dirs)
    if len(train_index) == 0 or (len(val_index) == 0 and not deferred):
        raise ValueError("Need images on both sides of the train/validation split.")
    if not deferred:
        check_photo_sources(data, val_index, photo_sources)
    overlap = set(data.groups[train_index]) & set(data.groups[val_index])
    log(f"train {len(train_index)} / validation {len(val_index)} faces; groups shared across split: {len(overlap)}"
        + ("; calibration deferred to `flask calibrate`" if deferred else ""))

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
                           first_epoch=previous_epochs, workers=loader_workers, source_balance=source_balance,
                           soften_fraction=soften_fraction, sbi_mismatch=sbi_mismatch, sbi_sources=sbi_sources,
                           codec_fraction=codec_fraction, codec_kinds=codec_kinds)

    class TimeBudget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log(f"epoch {epoch + 1}/{epochs} loss {logs.get('loss', float('nan')):.4f} "
                f"({(time.time() - started) / 60:.1f} min)")
            if max_minutes and (time.time() - started) / 60 > max_minutes:
                log("time budget reached; stopping")
                self.model.stop_training = True

    history = model.fit(batches, epochs=epochs, verbose=0, callbacks=[TimeBudget()])
    epochs_run = len(history.history.get("loss", []))

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(out_path)
    face_detector = (pack_meta(packs[0])["face_detector"] if len(packs) == len(data_dirs)
                     else convert.get_face_finder().name)
    card = {
        "version": _model_version(out_path.read_bytes()),
        "architecture": "separable CNN, RGB + high-pass residual input, two logit heads; "
                        f"{model.count_params()} parameters",
        "input_size": input_size,
        "face_margin": convert.FACE_MARGIN,
        "face_detector": face_detector,
        "heads": list(HEADS),
        "mirror_average": bool(mirror_average),
        "data": describe_data(data_dirs),
        "training": {"epochs": epochs_run, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
                     "learning_rate": learning_rate, "seed": seed, "sbi_fraction": sbi_fraction,
                     "source_balance": source_balance, "soften_fraction": soften_fraction,
                     "sbi_mismatch": sbi_mismatch, "sbi_sources": sbi_sources, "codec_fraction": codec_fraction,
                     **({"codec_kinds": list(codec_kinds)} if codec_kinds != ("h264",) else {}),
                     "validation_fraction": validation_fraction, "width": width,
                     "augmentation": "flip, framing jitter, down/up-scaling, blur, colour, noise, JPEG 35-95"
                                     + (", " + codec_words(codec_kinds) if codec_fraction else ""),
                     "minutes": round((time.time() - started) / 60, 1),
                     "epochs_total": previous_epochs + epochs_run,
                     "minutes_total": round(previous_minutes + (time.time() - started) / 60, 1),
                     "backend": keras.backend.backend(), "gpu": _gpu_used(),
                     "train_faces": {s: int(((data.sources == s) & (data.splits == "train")).sum())
                                     for s in sorted({str(s) for s in data.sources})}},
    }
    reviewed = reviewed_data([d for d in data_dirs if not is_pack(d)], dt.date.today().isoformat())
    if reviewed:
        card["reviewed_data"] = reviewed
    if init_from:
        card["initialised_from"] = {"file": str(init_from), "version": initial_card.get("version"),
                                    "epochs": previous_epochs, "minutes": previous_minutes,
                                    "input_size": initial_card.get("input_size")}
    if deferred:
        card["calibrated"] = False
        card["calibration"] = ("pending: trained on face packs without validation faces; run "
                               "`flask --app app calibrate --model THIS_FILE --data DIR...` with the folders packed")
    else:
        card.update(_calibrated_fields(model, data, val_index, seed, validation_fraction, overlap, card["training"],
                                       mirror_average, photo_sources))
    out_path.with_name("model_card.json").write_text(json.dumps(card, indent=2))
    log(json.dumps(card.get("validation_metrics", {}), indent=1))
    return card


def check_photo_sources(data: PackedData, val_index: np.ndarray, photo_sources) -> None:
    """Refuse a --photo-source that names no source with validation faces (before any training)."""
    unknown = set(photo_sources) - {str(s) for s in data.sources[val_index]}
    if unknown:
        raise ValueError(f"--photo-source {', '.join(sorted(unknown))}: no validation faces from it; the sources "
                         f"are {', '.join(sorted({str(s) for s in data.sources}))} (the --data folder names)")


def _calibrated_fields(model, data: PackedData, val_index: np.ndarray, seed: int, validation_fraction: float,
                       overlap: set, training: dict, mirror_average: bool, photo_sources=()) -> dict:
    """The card's fusion, band, split and validation metrics, fitted on the validation faces."""
    fusion, band, metrics, detail_entry, photo_entry = calibrate(model, data, val_index, seed,
                                                                 mirror_average=mirror_average,
                                                                 photo_sources=photo_sources)
    sources_used = sorted({str(s) for s in data.sources})
    fields = {
        "calibrated": True,
        "fusion": fusion,
        "mirror_average": bool(mirror_average),
        "calibration": "Platt scaling of each head on validation data for its own task (generation: the "
                       "datasets' real vs fake; blending: validation reals vs self-blended fakes made from "
                       "them), sources weighted equally and classes balanced; P(fake) = the higher of the two"
                       + (". Each head's logit is the mean over the crop and its mirror image (mirror_average)"
                          if mirror_average else ""),
        "threshold": 0.5,
        "uncertain_band": list(band),
        "uncertain_band_rule": "outside the band, validation verdicts (all sources together) were right >= 90 % "
                               "of the time; per source, see the validation metrics. Faces that lost fine "
                               "detail get a wider band (detail_bands); images (not video frames) get the photo band "
                               "where the card has one (photo_band)",
        "detail_bands": detail_entry,
        "photo_band": photo_entry,
        "counts": {s: {"train": int(training.get("train_faces", {}).get(
                           s, ((data.sources == s) & (data.splits == "train")).sum())),
                       "validation": int(((data.sources == s) & (data.splits == "validation")).sum())}
                   for s in sources_used},
        "split": f"validation = {validation_fraction:.0%} of groups by hash (groups.csv groups: a fake shares "
                 "the group of its source video), or the folder's own Validation split; "
                 f"groups on both sides: {len(overlap)}",
        "validation_metrics": metrics,
        "metrics_note": "ROC-AUC per validation source for each head alone, for the shipped fusion "
                        "(max of calibrated heads) and for the alternative (one logistic regression over both "
                        "logits); accuracy/precision/recall of the shipped score at the threshold; "
                        "'shipped uncertain' = share of faces in their uncertain band (detail-aware), 'shipped right outside band' "
                        "= how often the 'fake'/'real' verdicts outside it were right, 'shipped reals called fake' = share "
                        "of the real faces at or above its top. "
                        "'sbi:<source>' = self-blended fakes made from that source's validation reals vs those "
                        "reals (a proxy for unseen face swaps). The fusion's 4 numbers are fitted on the same "
                        "validation data they are reported on.",
    }
    fields["known_limits"] = known_limits(metrics, {**training, "input_size": data.crops.shape[1]},
                                          model.count_params(), sources_used)
    return fields


def _model_version(*contents: bytes) -> str:
    """Today's date and a digest of what the scores depend on (the model file, and after a refit
    its scoring fields), so that stored verdicts name what produced them."""
    return f"{dt.date.today().isoformat()}-{hashlib.sha256(b''.join(contents)).hexdigest()[:10]}"


def _scoring_fingerprint(card: dict) -> str:
    """What, besides the weights, decides a card's scores and verdicts."""
    return json.dumps([card.get("fusion"), bool(card.get("mirror_average", False)), card.get("threshold"),
                       card.get("uncertain_band"), card.get("detail_bands", {}).get("edges"),
                       card.get("detail_bands", {}).get("bands")]
                      + ([(card.get("photo_band") or {}).get("band")] if card.get("photo_band") else []),
                      sort_keys=True)


def calibrate_model(model_path: str | Path, data_dirs: list[str], *, cache_dir: str | Path = "data/cache",
                    mirror_average: bool | None = None, photo_sources=None, log=print) -> dict:
    """Fit (or refit) a trained model's fusion, uncertain band and validation metrics on the
    validation faces of DIRs (same seed and split as its training) and rewrite its card. The step
    that completes a model trained on a GPU from face packs; the model file is not changed.
    mirror_average: None keeps what the card says (absent: off); photo_sources: None keeps the card's
    (absent: none), () drops the photo band."""
    model_path = Path(model_path)
    card_path = model_path.with_name("model_card.json")
    if not card_path.is_file():
        raise ValueError(f"{card_path} is missing: calibrate needs the card written by `train`.")
    card = json.loads(card_path.read_text())
    input_size = int(card.get("input_size", 128))
    model, _ = load_initial_model(model_path, input_size, exact_size=True)
    training = card.get("training", {})
    seed, fraction = int(training.get("seed", 0)), float(training.get("validation_fraction", 0.15))
    data = load_packed(data_dirs, input_size, cache_dir, seed, fraction, log)
    val_index = np.flatnonzero(data.splits == "validation")
    if len(val_index) == 0:
        raise ValueError("These folders have no validation faces at this seed and split.")
    trained_sources = {str(s) for s in (training.get("train_faces") or {})}
    missing = trained_sources - {str(s) for s in data.sources}
    if missing:
        raise ValueError(f"The model was trained on {', '.join(sorted(missing))}: pass those folders too.")
    overlap = set(data.groups[data.splits == "train"]) & set(data.groups[val_index])
    was_calibrated, scoring_before = card.get("calibrated") is not False, _scoring_fingerprint(card)
    if mirror_average is None:
        mirror_average = bool(card.get("mirror_average", False))
    if photo_sources is None:
        photo_sources = (card.get("photo_band") or {}).get("sources", [])
    check_photo_sources(data, val_index, photo_sources)
    card.update(_calibrated_fields(model, data, val_index, seed, fraction, overlap, training, mirror_average,
                                   list(photo_sources)))
    scoring_after = _scoring_fingerprint(card)
    if was_calibrated and scoring_before != scoring_after:  # same weights, other scores: a new version
        card["version"] = _model_version(model_path.read_bytes(), scoring_after.encode())
    card_path.write_text(json.dumps(card, indent=2))
    log(json.dumps(card["validation_metrics"], indent=1))
    return card


# --------------------------------------------------------------------------- evaluation

def evaluate(data_dir: str, model_path: str | Path, out_dir: str | Path, *, cache_dir: str | Path = "data/cache",
             split: str = "all", degradations: list[Degradation] | None = None, media: str = "auto",
             log=print) -> dict:
    """Score the images of DIR (cropped as in training) and write ROC + confusion-matrix PNGs.
    split="validation" keeps only what the model's training run held out (same seed and groups).
    degradations (utils/robustness.py) are applied to every face crop, in order, before scoring.
    A DIR whose real/ and fake/ hold videos is scored per video through the production pipeline.
    media: which band judges face-image folders, 'image' (the card's photo band) or 'video'; 'auto':
    image for a folder named like one of the card's photo sources, else video."""
    from utils.model import get_detector

    degradations = list(degradations or [])
    videos = dataset.discover_videos(data_dir)
    if videos and degradations:
        raise ValueError(f"{data_dir} holds videos; --degrade works on folders of face images "
                         "(degrade the videos themselves, e.g. with ffmpeg, to test those)")
    detector = get_detector(model_path)
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
    crops = np.asarray(packed["crops"][keep])  # keep is in ascending order
    if degradations:
        crops = degrade(crops, degradations)
    scores = detector.score(crops) if len(keep) else np.zeros(0)
    result = classification_metrics(labels, scores, detector.threshold)
    if media == "auto":
        media = "image" if Path(data_dir).name in (detector.card.get("photo_band") or {}).get("sources", []) else "video"
    bands, _ = detector.bands_for_media(media)
    result.update(_band_fields(bands.default, scores, labels, bands.bands_for(face_detail(crops))))
    result["photo_band_used"] = media == "image" and detector.photo_band is not None
    result["degradation"] = " then ".join(map(str, degradations)) or "none"
    result["threshold"] = detector.threshold
    result["model_version"] = detector.version
    result["split"] = split
    result["unreadable_files"] = len(samples) - len(packed["labels"])
    return _write_plots(result, labels, scores, Path(out_dir), data_dir, detector.threshold)


def _band_fields(base_band, scores: np.ndarray, labels: np.ndarray, bands) -> dict:
    """The base band (the card's uncertain band, or its photo band for photos) and what the bands used
    (per face or per video: detail-aware) do to these scores (band_reliability), as evaluate's result
    keys: printed by `flask evaluate`, kept by --record."""
    reliability = band_reliability(scores, labels, bands)
    return {"uncertain_band": list(base_band), **{f"band_{k}": v for k, v in reliability.items()}}


def _evaluate_videos(videos: list[tuple[str, int]], detector, out_dir: Path, data_dir: str, log) -> dict:
    """Videos in real/ and fake/: each goes through the production pipeline (32 frames, faces,
    aggregation); metrics are per video, plus each head's ROC-AUC over all the faces found."""
    from utils.analysis import inspect_media

    labels, scores, bands, face_labels, face_logits, per_video = [], [], [], [], [], []
    for path, label in videos:
        report = inspect_media(path, detector=detector, frames=32)
        crops = np.stack([f.crop for f in report.faces]) if report.faces else None
        if crops is not None:
            face_logits.append(detector.logits(crops))
            face_labels.extend([label] * len(crops))
        score = report.verdict.score
        band = [report.uncertain_low, report.uncertain_high]  # wider when the faces lost fine detail
        per_video.append({"path": str(path), "label": label, "verdict": report.verdict.verdict,
                          "score": None if score is None else round(float(score), 4), "faces": len(report.faces),
                          "band": band})
        log(f"  {Path(path).name}: {report.verdict.verdict} {score if score is None else round(score, 3)}"
            + ("" if tuple(band) == tuple(detector.uncertain_band) else f" (band widened to {band[0]:.3f}-{band[1]:.3f})"))
        if score is not None:
            labels.append(label)
            scores.append(score)
            bands.append((report.uncertain_low, report.uncertain_high))  # the band its verdict used
    labels, scores = np.asarray(labels, int), np.asarray(scores)
    result = classification_metrics(labels, scores, detector.threshold)
    result.update(threshold=detector.threshold, model_version=detector.version, split="all",
                  unreadable_files=0, videos=per_video)
    bands = np.asarray(bands, np.float64).reshape(-1, 2)
    result.update(_band_fields(detector.uncertain_band, scores, labels, (bands[:, 0], bands[:, 1])))
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
