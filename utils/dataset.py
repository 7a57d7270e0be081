"""Face datasets on disk -> labelled samples -> a packed cache of model-sized crops.

Kept apart from utils/train.py (and free of TensorFlow) so the packing runs in worker processes
and the tests can use it without loading a model.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import convert

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".heif", ".avif", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm"}
LABELS = {"real": 0, "fake": 1}


@dataclass
class Sample:
    path: str
    label: int  # 0 real, 1 fake
    group: str  # samples sharing a group never straddle the train/validation split
    source: str  # dataset name, used for per-source metrics
    split: str | None = None  # "train"/"validation"/"test" when the folder layout fixes it


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _child(folder: Path, name: str) -> Path | None:
    for child in folder.iterdir() if folder.is_dir() else []:
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def discover_samples(data_dir: str | Path) -> list[Sample]:
    """Accept DIR/{real,fake} (with an optional groups.csv: file,label,group) and the Kaggle layout
    DIR/{Train,Validation,Test}/{Real,Fake}."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    source = root.name
    samples: list[Sample] = []
    split_dirs = {name: _child(root, name) for name in ("train", "validation", "test")}
    if any(split_dirs.values()):
        for split, folder in split_dirs.items():
            if folder is None:
                continue
            for label_name, label in LABELS.items():
                sub = _child(folder, label_name)
                for path in _images_in(sub) if sub else []:
                    samples.append(Sample(str(path), label, f"{split}/{path.stem}", source, split))
        return samples
    groups: dict[str, str] = {}
    groups_csv = root / "groups.csv"
    if groups_csv.exists():
        with open(groups_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                groups[os.path.normpath(row["file"])] = row["group"]
    for label_name, label in LABELS.items():
        sub = _child(root, label_name)
        for path in _images_in(sub) if sub else []:
            rel = os.path.normpath(str(path.relative_to(root)))
            samples.append(Sample(str(path), label, groups.get(rel, rel), source))
    if not samples:
        raise FileNotFoundError(f"{root} has no real/ or fake/ images (or Train/Validation/Test layout)")
    return samples


def discover_videos(data_dir: str | Path) -> list[tuple[str, int]]:
    """(path, label) for videos under DIR/real and DIR/fake (empty when there are none)."""
    root = Path(data_dir)
    found = []
    for label_name, label in LABELS.items():
        sub = _child(root, label_name)
        for path in sorted(sub.rglob("*")) if sub else []:
            if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                found.append((str(path), label))
    return found


def assign_split(samples: list[Sample], validation_fraction: float = 0.15, seed: int = 0) -> list[str]:
    """'train' or 'validation' per sample: the folder's own split when it has one, otherwise by a
    hash of the group, so a fake and the real video it was made from land on the same side."""
    out = []
    for s in samples:
        if s.split is not None:
            out.append("train" if s.split == "train" else "validation")
            continue
        digest = hashlib.sha1(f"{seed}:{s.source}:{s.group}".encode()).digest()
        out.append("validation" if int.from_bytes(digest[:4], "big") / 2**32 < validation_fraction else "train")
    return out


def _crop_one(args) -> tuple[np.ndarray | None, bool]:
    path, input_size = args
    try:
        image = convert.load_image(path)
    except convert.MediaError:
        return None, False
    return convert.crop_training_face(image, input_size)


def pack_samples(samples: list[Sample], input_size: int, cache_dir: str | Path, workers: int = 2,
                 progress=None) -> dict:
    """Crop every sample once with the inference framing and keep uint8 crops in a .npy cache, so
    training epochs never decode JPEGs again. Returns arrays: crops, labels, groups, sources, found."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(json.dumps([input_size, convert.FACE_MARGIN, [s.path for s in samples]]).encode())
    stem = cache_dir / f"faces-{input_size}-{key.hexdigest()[:12]}"
    if (stem.with_suffix(".npy")).exists() and stem.with_suffix(".json").exists():
        meta = json.loads(stem.with_suffix(".json").read_text())
        crops = np.load(stem.with_suffix(".npy"), mmap_mode="r")
        return {"crops": crops, **{k: np.array(v) for k, v in meta.items()}}
    crops = np.zeros((len(samples), input_size, input_size, 3), np.uint8)
    ok = np.zeros(len(samples), bool)
    found = np.zeros(len(samples), bool)
    jobs = [(s.path, input_size) for s in samples]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_crop_one, jobs, chunksize=64)
            for i, (crop, face) in enumerate(results):
                if crop is not None:
                    crops[i], ok[i], found[i] = crop, True, face
                if progress and i % 500 == 0:
                    progress(i, len(jobs))
    else:
        for i, job in enumerate(jobs):
            crop, face = _crop_one(job)
            if crop is not None:
                crops[i], ok[i], found[i] = crop, True, face
            if progress and i % 500 == 0:
                progress(i, len(jobs))
    keep = np.flatnonzero(ok)
    meta = {
        "labels": [samples[i].label for i in keep],
        "groups": [samples[i].group for i in keep],
        "sources": [samples[i].source for i in keep],
        "splits": [samples[i].split or "" for i in keep],
        "paths": [samples[i].path for i in keep],
        "found": found[keep].tolist(),
    }
    np.save(stem.with_suffix(".npy"), crops[keep])
    stem.with_suffix(".json").write_text(json.dumps(meta))
    return {"crops": np.load(stem.with_suffix(".npy"), mmap_mode="r"), **{k: np.array(v) for k, v in meta.items()}}
