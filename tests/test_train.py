"""Training pieces (data layouts, split, augmentation, pseudo-fakes, metrics) and a smoke run of
`flask train` / `flask evaluate` on a tiny synthetic set."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils import dataset
from utils.train import (augment, classification_metrics, fit_logistic, roc_auc, self_blend)

SHARED_DFDC = Path("/work/shared/datasets/faces/dfdc")


def synthetic_face(rng: np.random.Generator, fake: bool, size: int = 48) -> np.ndarray:
    """A smooth blob 'face'; fakes carry a fine checkerboard (an easy, learnable trace)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * rng.uniform(4, 8))
    img = np.stack([base * rng.uniform(120, 250), base * rng.uniform(80, 200), base * rng.uniform(60, 160)], -1)
    if fake:
        img += ((np.indices((size, size)).sum(0) % 2) * 40)[..., None]
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def make_dataset(root: Path, n: int = 12, groups: bool = False) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            name = f"{label}/{i:03d}.png"
            Image.fromarray(synthetic_face(rng, label == "fake")).save(root / name)
            rows.append({"file": name, "label": label, "group": f"g{i % 4}"})
    if groups:
        with open(root / "groups.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["file", "label", "group"])
            writer.writeheader()
            writer.writerows(rows)
    return root


# ---------------------------------------------------------------- data layouts and split

def test_discover_plain_layout_with_groups(tmp_path):
    root = make_dataset(tmp_path / "set", n=4, groups=True)
    samples = dataset.discover_samples(root)
    assert len(samples) == 8 and {s.label for s in samples} == {0, 1}
    assert {s.group for s in samples} == {"g0", "g1", "g2", "g3"}
    assert all(s.source == "set" for s in samples)


def test_discover_kaggle_layout(tmp_path):
    for split in ("Train", "Validation", "Test"):
        for label in ("Real", "Fake"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.new("RGB", (20, 20)).save(tmp_path / split / label / "a.jpg")
    samples = dataset.discover_samples(tmp_path)
    assert len(samples) == 6
    sides = dataset.assign_split(samples)
    assert sorted(sides) == ["train"] * 2 + ["validation"] * 4  # Test counts as held out


def test_split_never_separates_a_group(tmp_path):
    samples = [dataset.Sample(f"{i}.jpg", i % 2, f"group{i // 6}", "src") for i in range(600)]
    sides = dataset.assign_split(samples, validation_fraction=0.3)
    by_group = {}
    for sample, side in zip(samples, sides):
        by_group.setdefault(sample.group, set()).add(side)
    assert all(len(s) == 1 for s in by_group.values())
    assert 0.15 < sides.count("validation") / len(sides) < 0.45


@pytest.mark.skipif(not SHARED_DFDC.exists(), reason="shared datasets not mounted")
def test_dfdc_groups_are_read_from_groups_csv():
    samples = dataset.discover_samples(SHARED_DFDC)
    fakes = [s for s in samples if s.label == 1][:50]
    assert all(s.group != s.path and "/" not in s.group for s in fakes)


# ---------------------------------------------------------------- augmentation and pseudo-fakes

def test_augment_keeps_shape_and_varies():
    rng = np.random.default_rng(0)
    face = synthetic_face(rng, False, 64)
    outputs = [augment(face, rng) for _ in range(8)]
    assert all(o.shape == face.shape and o.dtype == np.uint8 for o in outputs)
    assert sum(not np.array_equal(o, face) for o in outputs) >= 6


def test_self_blend_changes_the_face_not_the_corners():
    rng = np.random.default_rng(1)
    face = synthetic_face(rng, False, 128)
    blended = self_blend(face, rng)
    diff = np.abs(blended.astype(int) - face.astype(int)).sum(-1)
    assert diff[40:90, 40:90].mean() > 1.0
    assert diff[:8, :8].mean() < 0.5 and diff[-8:, -8:].mean() < 0.5


# ---------------------------------------------------------------- metrics and calibration

def test_roc_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8]) == 0.5
    assert roc_auc([1, 1], [0.1, 0.2]) is None


def test_classification_metrics_counts():
    m = classification_metrics([0, 0, 1, 1, 1], [0.2, 0.7, 0.9, 0.6, 0.1], threshold=0.5)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert m["accuracy"] == 0.6 and m["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["recall"] == pytest.approx(2 / 3, abs=1e-4)


def test_fit_logistic_calibrates_an_overconfident_logit():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4000)
    true_logit = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.0, 4000)
    weights, bias = fit_logistic((true_logit * 5)[:, None], labels)  # 5x overconfident input
    assert weights[0] == pytest.approx(0.4, abs=0.08)  # scaled back toward the true slope (2/5)
    assert abs(bias) < 0.15


# ---------------------------------------------------------------- smoke run through the CLI

def test_train_then_evaluate_smoke(tmp_path, app):
    from utils.model import Detector

    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    out = tmp_path / "weights" / "detector.keras"
    app.config["DETECTOR_CACHE_DIR"] = str(tmp_path / "cache")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["train", "--data", str(data_dir), "--out", str(out), "--epochs", "1",
                                 "--steps-per-epoch", "2", "--batch-size", "8", "--input-size", "32",
                                 "--width", "0.25", "--seed", "3"])
    assert result.exit_code == 0, result.output
    card = json.loads((out.parent / "model_card.json").read_text())
    assert card["input_size"] == 32 and card["training"]["seed"] == 3
    assert "tiny" in card["validation_metrics"] and card["data"][0]["source"] == "tiny"
    low, high = card["uncertain_band"]
    assert low <= card["threshold"] <= high
    detector = Detector(out)
    assert detector.version == card["version"]
    assert detector.score(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2,)

    result = runner.invoke(args=["evaluate", "--data", str(data_dir), "--model", str(out),
                                 "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    for word in ("accuracy", "precision", "recall", "f1", "roc_auc", "confusion matrix"):
        assert word in result.output
    assert "32 images" in result.output
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000


def test_evaluate_scores_videos_through_the_pipeline(tmp_path, app):
    import cv2
    from skimage import data as skdata

    from tests.test_model import make_tiny_model

    model_path = make_tiny_model(tmp_path / "model")
    face = cv2.cvtColor(cv2.resize(skdata.astronaut(), (192, 192)), cv2.COLOR_RGB2BGR)
    for label in ("real", "fake"):
        (tmp_path / "videos" / label).mkdir(parents=True)
        writer = cv2.VideoWriter(str(tmp_path / "videos" / label / "clip.mp4"),
                                 cv2.VideoWriter_fourcc(*"mp4v"), 10, (192, 192))
        for _ in range(12):
            writer.write(face if label == "real" else cv2.GaussianBlur(face, (0, 0), 2))
        writer.release()
    result = app.test_cli_runner().invoke(args=["evaluate", "--data", str(tmp_path / "videos"),
                                                "--model", str(model_path), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "2 videos" in result.output and "face_auc_blending_head" in result.output
    assert (tmp_path / "eval" / "roc.png").exists()


def test_train_continues_from_a_model_and_records_reviewed_data(tmp_path, app):
    import keras

    from utils.model import Detector

    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    reviewed_dir = make_dataset(tmp_path / "export-1", n=6, groups=True)
    manifest = {"folder": str(reviewed_dir), "exported_at": "2026-11-25T12:00:00Z", "analyses": 5,
                "faces": {"real": 6, "fake": 6}, "decisions_up_to": "2026-11-25T11:59:00Z", "source": "reviewed"}
    (reviewed_dir / "reviewed.json").write_text(json.dumps(manifest))
    first = tmp_path / "first" / "detector.keras"
    app.config["DETECTOR_CACHE_DIR"] = str(tmp_path / "cache")
    runner = app.test_cli_runner()
    common = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--input-size", "32",
              "--width", "0.25", "--seed", "3"]
    result = runner.invoke(args=["train", "--data", str(data_dir), "--out", str(first), *common])
    assert result.exit_code == 0, result.output
    first_card = json.loads(first.with_name("model_card.json").read_text())
    assert "initialised_from" not in first_card and "reviewed_data" not in first_card
    assert first_card["known_limits"]

    # A learning rate of ~0 keeps the weights: the continued model must be the first one, not a fresh network.
    second = tmp_path / "second" / "detector.keras"
    result = runner.invoke(args=["train", "--data", str(data_dir), "--data", str(reviewed_dir), "--out", str(second),
                                 "--init-from", str(first), "--learning-rate", "1e-12", *common])
    assert result.exit_code == 0, result.output
    card = json.loads(second.with_name("model_card.json").read_text())
    assert card["initialised_from"]["version"] == first_card["version"]
    assert card["initialised_from"]["file"] == str(first)
    assert card["training"]["epochs"] == 1 and card["training"]["epochs_total"] == 2
    assert card["training"]["minutes_total"] >= first_card["training"]["minutes"]
    kernel = lambda path: keras.saving.load_model(path, compile=False).get_layer("logits").get_weights()[0]
    np.testing.assert_allclose(kernel(second), kernel(first), atol=1e-6)
    assert Detector(second).score(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2,)

    reviewed = card["reviewed_data"]
    assert reviewed["faces"] == {"real": 6, "fake": 6} and reviewed["analyses"] == 5
    assert reviewed["exported_at"] == manifest["exported_at"] and reviewed["folder"] == "export-1"
    assert reviewed["decisions_up_to"] == manifest["decisions_up_to"] and reviewed["trained_on"]
    terms = {d["source"]: d["terms"] for d in card["data"]}
    assert "decided by its admins" in terms["export-1"] and "decided by its admins" not in terms["tiny"]

    # Another network size or another seed would not be a continuation of the same split: refused.
    for changed in (["--input-size", "48"], ["--seed", "4"]):
        args = ["train", "--data", str(data_dir), "--out", str(tmp_path / "bad.keras"), "--init-from", str(first),
                *common, *changed]
        result = runner.invoke(args=args)
        assert result.exit_code != 0 and not (tmp_path / "bad.keras").exists()
        assert ("needs" in result.output) or ("seed=3" in result.output)
