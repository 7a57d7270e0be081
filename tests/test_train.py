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


def astronaut_face():
    """A real photographed face at the model's size, for the augmentations that act on detail."""
    from skimage import data as skdata

    import convert

    return convert.resize_face(skdata.astronaut()[0:300, 100:400], 128)


def detail(img):
    """Mean absolute difference of neighbouring grey pixels: falls when a face is softened."""
    grey = img.astype(np.float32).mean(axis=2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def test_soften_fraction_softens_whole_faces_and_zero_changes_nothing():
    from utils.train import soften

    face = astronaut_face()
    softened = [soften(face, np.random.default_rng(i)) for i in range(12)]
    assert all(s.shape == face.shape and s.dtype == np.uint8 for s in softened)
    assert max(detail(s) for s in softened) < 0.85 * detail(face)
    # fraction 0 draws nothing extra, so earlier runs' batches are reproduced exactly
    plain = [augment(face, np.random.default_rng(i)) for i in range(6)]
    assert all(np.array_equal(a, augment(face, np.random.default_rng(i), 0.0)) for i, a in enumerate(plain))
    always = [augment(face, np.random.default_rng(i), 1.0) for i in range(24)]
    usual = [augment(face, np.random.default_rng(i)) for i in range(24)]
    assert np.mean([detail(a) for a in always]) < 0.85 * np.mean([detail(u) for u in usual])


def test_codec_fraction_ends_faces_as_h264_frames_and_zero_changes_nothing():
    from utils.robustness import h264_recompress

    face = astronaut_face()
    plain = [augment(face, np.random.default_rng(i)) for i in range(6)]
    assert all(np.array_equal(a, augment(face, np.random.default_rng(i), 0.0, 0.0)) for i, a in enumerate(plain))
    # always: every face is an H.264 frame, i.e. a second round trip at a low quantiser barely moves it
    coded = [augment(face, np.random.default_rng(i), 0.0, 1.0) for i in range(8)]
    assert all(c.shape == face.shape and c.dtype == np.uint8 for c in coded)
    assert not any(np.array_equal(c, p) for c, p in zip(coded, plain))
    drift = np.mean([np.abs(h264_recompress(c[None], 20)[0].astype(int) - c).mean() for c in coded])
    jpeg_drift = np.mean([np.abs(h264_recompress(p[None], 20)[0].astype(int) - p).mean() for p in plain])
    assert drift < jpeg_drift


def test_codec_kinds_draw_heic_and_avif_stills_and_h264_alone_keeps_the_batches():
    from utils.robustness import still_recompress

    face = astronaut_face()
    h264_only = [augment(face, np.random.default_rng(i), 0.0, 1.0) for i in range(6)]
    assert all(np.array_equal(a, augment(face, np.random.default_rng(i), 0.0, 1.0, ("h264",)))
               for i, a in enumerate(h264_only))  # naming the default draws nothing more
    heic = [augment(face, np.random.default_rng(i), 0.0, 1.0, ("heic",)) for i in range(6)]
    assert all(h.shape == face.shape and h.dtype == np.uint8 for h in heic)
    assert not any(np.array_equal(h, c) for h, c in zip(heic, h264_only))
    # each is a HEIC still already: a second high-quality HEIC round trip barely moves it
    drift = np.mean([np.abs(still_recompress(h, "heic", 90).astype(int) - h).mean() for h in heic])
    raw_drift = np.mean([np.abs(still_recompress(f, "heic", 90).astype(int) - f).mean()
                         for f in (augment(face, np.random.default_rng(i)) for i in range(6))])
    assert drift < raw_drift
    mixed = [augment(face, np.random.default_rng(i), 0.0, 1.0, ("h264", "heic", "avif")) for i in range(12)]
    assert all(m.shape == face.shape for m in mixed)


def test_unknown_codec_kind_is_refused_before_training(tmp_path):
    from utils.train import train

    with pytest.raises(ValueError, match="unknown codec vp9"):
        train([str(tmp_path / "nothing")], tmp_path / "m.keras", codec_fraction=0.3, codec_kinds=("h264", "vp9"),
              log=lambda m: None)


def test_self_blend_changes_the_face_not_the_corners():
    rng = np.random.default_rng(1)
    face = synthetic_face(rng, False, 128)
    blended = self_blend(face, rng)
    diff = np.abs(blended.astype(int) - face.astype(int)).sum(-1)
    assert diff[40:90, 40:90].mean() > 1.0
    assert diff[:8, :8].mean() < 0.5 and diff[-8:, -8:].mean() < 0.5


def batch_sources(source_balance: str, sizes: dict[str, int], sbi_fraction: float = 0.0,
                  sbi_sources: str = "like-reals") -> tuple[list[str], np.ndarray]:
    """The source of every place of one training batch, with its two head labels (-1 = ignored)."""
    from utils.train import PackedData, make_batches

    sources = np.concatenate([[name] * n for name, n in sizes.items()])
    labels = np.arange(len(sources)) % 2
    names = list(sizes)
    # one flat grey per source, far apart: the colour augmentation (brightness, contrast) keeps them apart
    crops = np.stack([np.full((16, 16, 3), 30 if s == names[0] else 220, np.uint8) for s in sources])
    data = PackedData(crops, labels, sources, np.array(["train"] * len(sources)), np.arange(len(sources)).astype(str))
    batches = make_batches(data, np.arange(len(sources)), batch_size=36, steps=1, seed=0,
                           sbi_fraction=sbi_fraction, source_balance=source_balance, sbi_sources=sbi_sources)
    images, heads = batches[0]
    levels = np.median(images.reshape(len(images), -1), axis=1)
    return [names[0] if level < 125 else names[1] for level in levels], heads


def test_source_balance_equal_gives_each_source_half_the_places():
    sources, heads = batch_sources("equal", {"big": 160, "small": 10})
    labels = heads[:, 0]
    assert sources.count("big") == sources.count("small") == 18
    assert list(labels).count(0) == list(labels).count(1) == 18


def test_source_balance_sqrt_gives_a_large_source_more_places_and_refuses_unknown_modes():
    sources, heads = batch_sources("sqrt", {"big": 160, "small": 10})
    labels = heads[:, 0]
    # sqrt(160) : sqrt(10) = 4 : 1 of the 18 reals and of the 18 fakes -> 14 + 14 big, 4 + 4 small
    assert sources.count("big") == 28 and sources.count("small") == 8
    assert list(labels).count(0) == list(labels).count(1) == 18
    with pytest.raises(ValueError, match="source_balance"):
        batch_sources("by-size", {"big": 4, "small": 4})


def test_sbi_sources_like_reals_makes_pseudo_fakes_from_each_source_as_often_as_its_reals_appear():
    sizes = {"big": 160, "small": 10}

    def counts(sbi_sources, balance="sqrt"):
        sources, heads = batch_sources(balance, sizes, sbi_fraction=0.25, sbi_sources=sbi_sources)
        pseudo = [s for s, h in zip(sources, heads) if h[1] == 1 and h[0] == -1]
        reals = [s for s, h in zip(sources, heads) if h[0] == 0]
        return {k: (reals.count(k), pseudo.count(k)) for k in sizes}

    # 36 places: 9 self-blended, 13 real; sqrt shares 4 : 1 -> reals 10 + 3, pseudo-fakes 7 + 2
    assert counts("like-reals") == {"big": (10, 7), "small": (3, 2)}
    # the older draw took the sources in turn: the small source got more pseudo-fakes than reals
    assert counts("alternate") == {"big": (10, 5), "small": (3, 4)}
    # with equal shares both draws are the same batch, so runs made before the option reproduce
    a = batch_sources("equal", sizes, 0.25, "like-reals")
    b = batch_sources("equal", sizes, 0.25, "alternate")
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="sbi_sources"):
        batch_sources("sqrt", sizes, 0.25, "by-size")


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


def test_band_reliability_counts_uncertain_faces_and_right_verdicts_outside_the_band():
    from utils.train import band_reliability

    probs = np.array([0.1, 0.2, 0.5, 0.6, 0.8, 0.9, 0.95, 0.05])
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    r = band_reliability(probs, labels, (0.3, 0.75))
    assert r["uncertain"] == 0.25  # 0.5 and 0.6
    assert r["right_outside_band"] == pytest.approx(4 / 6, abs=1e-4)  # 0.2 real-called and 0.9 fake-called wrong
    assert r["reals_called_fake"] == 0.25  # 0.9 of the four reals
    assert band_reliability(np.array([0.5]), np.array([1]), (0.3, 0.75)) == {
        "uncertain": 1.0, "right_outside_band": None, "reals_called_fake": None}


def test_known_limits_say_when_a_source_fares_worse_than_the_band_rule():
    from utils.train import known_limits

    metrics = {"dfdc": {"shipped_roc_auc": 0.82, "shipped_right_outside_band": 0.91, "shipped_uncertain": 0.66},
               "stylegan1_ffhq": {"shipped_roc_auc": 0.79, "shipped_right_outside_band": 0.79,
                                  "shipped_uncertain": 0.4},
               "sbi:dfdc": {"shipped_roc_auc": 0.88, "shipped_right_outside_band": 0.5, "shipped_uncertain": 0.5}}
    lines = known_limits(metrics, {"minutes": 1, "epochs": 1}, 1000, ["dfdc", "stylegan1_ffhq"])
    band = [line for line in lines if "uncertain band" in line]
    assert len(band) == 1
    assert "91% of the time on dfdc (66% of its faces 'uncertain')" in band[0]
    assert "79% of the time on stylegan1_ffhq" in band[0] and "faces like stylegan1_ffhq is" in band[0]
    assert "sbi:" not in band[0]
    metrics["stylegan1_ffhq"]["shipped_right_outside_band"] = 0.95
    assert not [line for line in known_limits(metrics, {}, 1000, ["dfdc"]) if "uncertain band" in line]


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
    tiny = card["validation_metrics"]["tiny"]
    assert 0.0 <= tiny["shipped_uncertain"] <= 1.0
    assert tiny["shipped_right_outside_band"] is None or 0.0 <= tiny["shipped_right_outside_band"] <= 1.0
    detail = card["detail_bands"]  # fitted on the validation faces as stored and degraded once each
    assert detail["edges"] == sorted(detail["edges"]) and len(detail["bands"]) == len(detail["edges"])
    assert all(b_low <= low and b_high >= high for b_low, b_high in detail["bands"])
    assert "h264:42" in detail["degradations"] and set(detail["effect"]) == {"tiny", "sbi:tiny", "all"}
    detector = Detector(out)
    assert detector.version == card["version"]
    assert detector.detail_bands.band_for(-10.0) == tuple(detail["bands"][0]) if detail["edges"] else True
    assert detector.score(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2,)

    result = runner.invoke(args=["evaluate", "--data", str(data_dir), "--model", str(out),
                                 "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    for word in ("accuracy", "precision", "recall", "f1", "roc_auc", "confusion matrix"):
        assert word in result.output
    assert "32 images" in result.output
    assert f"uncertain band [{low:.3f}, {high:.3f}]: " in result.output and "reals called fake" in result.output
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000


def test_evaluate_scores_videos_through_the_pipeline(tmp_path, app):
    import cv2
    from skimage import data as skdata

    from tests.test_model import make_tiny_model

    # every face has detail below 5: each video's verdict uses (and reports) the widened band
    model_path = make_tiny_model(tmp_path / "model", detail_bands={"edges": [5.0], "bands": [[0.01, 0.99]]})
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
    assert "uncertain band [" in result.output and "of the videos inside it" in result.output
    assert result.output.count("(band widened to 0.010-0.990)") == 2
    assert "100.0% of the videos inside it" in result.output  # 0.01-0.99 holds every score
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
                                 "--init-from", str(first), "--learning-rate", "1e-12", "--source-balance", "sqrt",
                                 *common])
    assert result.exit_code == 0, result.output
    card = json.loads(second.with_name("model_card.json").read_text())
    assert first_card["training"]["source_balance"] == "equal" and card["training"]["source_balance"] == "sqrt"
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

    # Another seed would not be a continuation of the same split: refused.
    args = ["train", "--data", str(data_dir), "--out", str(tmp_path / "bad.keras"), "--init-from", str(first),
            *common[:-1], "4"]
    result = runner.invoke(args=args)
    assert result.exit_code != 0 and not (tmp_path / "bad.keras").exists() and "seed=3" in result.output
    # Another file than this network: refused before any data is read.
    other = tmp_path / "other.keras"
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(2)]).save(other)
    result = runner.invoke(args=["train", "--data", str(data_dir), "--out", str(tmp_path / "bad.keras"),
                                 "--init-from", str(other), *common[:-4], "--input-size", "48", "--seed", "3"])
    assert result.exit_code != 0 and "not this network" in result.output
    assert not (tmp_path / "bad.keras").exists()


def test_a_model_continues_at_another_input_size_with_its_weights(tmp_path, app):
    """Fully convolutional up to the pooling: a 32 px model's weights start a 48 px run."""
    from utils.model import Detector
    from utils.train import load_initial_model

    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    app.config["DETECTOR_CACHE_DIR"] = str(tmp_path / "cache")
    runner = app.test_cli_runner()
    common = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--width", "0.25", "--seed", "3"]
    first = tmp_path / "first.keras"
    assert runner.invoke(args=["train", "--data", str(data_dir), "--out", str(first), "--input-size", "32",
                               *common]).exit_code == 0
    small, _ = load_initial_model(first, 32)
    large, _ = load_initial_model(first, 48)
    assert large.input_shape[1:] == (48, 48, 3)
    for a, b in zip(small.get_weights(), large.get_weights()):
        np.testing.assert_array_equal(a, b)
    second = tmp_path / "second.keras"
    result = runner.invoke(args=["train", "--data", str(data_dir), "--out", str(second), "--input-size", "48",
                                 "--init-from", str(first), *common])
    assert result.exit_code == 0, result.output
    card = json.loads(second.with_name("model_card.json").read_text())
    assert card["input_size"] == 48 and card["initialised_from"]["input_size"] == 32
    assert Detector(second).score(np.zeros((2, 48, 48, 3), np.uint8)).shape == (2,)


# ---------------------------------------------------------------- the GPU route: pack, train elsewhere, calibrate here

def _pack(app, tmp_path, data_dir, out, *extra):
    app.config["DETECTOR_CACHE_DIR"] = str(tmp_path / "cache")
    result = app.test_cli_runner().invoke(args=["pack-faces", "--data", str(data_dir), "--out", str(out),
                                                "--input-size", "32", "--seed", "3", *extra])
    assert result.exit_code == 0, result.output
    return result


def test_pack_holds_the_training_split_only_and_decodes_close_to_the_crops(tmp_path, app):
    from utils.train import load_packed, pack_meta, read_pack

    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    pack = tmp_path / "pack" / "faces.npz"
    _pack(app, tmp_path, data_dir, pack)
    full = load_packed([str(data_dir)], 32, tmp_path / "cache", seed=3, log=lambda m: None)
    packed = read_pack(pack, 32)
    train_rows = np.flatnonzero(full.splits == "train")
    assert 0 < len(train_rows) < len(full.labels)  # the validation faces stay behind
    assert len(packed["labels"]) == len(train_rows)
    assert sorted(packed["groups"]) == sorted(full.groups[train_rows])
    assert not set(packed["groups"]) & set(full.groups[full.splits == "validation"])
    difference = np.abs(packed["crops"].astype(int) - full.crops[train_rows].astype(int)).mean()
    assert difference < 4, difference  # WebP q90 of a 32 px crop
    meta = pack_meta(pack)
    assert meta["seed"] == 3 and meta["input_size"] == 32 and meta["data"][0]["source"] == "tiny"
    # read back as training data, every packed row is on the training side
    again = load_packed([str(pack)], 32, tmp_path / "cache", seed=3, log=lambda m: None)
    assert set(again.splits) == {"train"}


def test_pack_size_cap_cuts_the_largest_pools_first(tmp_path, app):
    from utils.train import pack_meta

    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    whole = tmp_path / "whole.npz"
    _pack(app, tmp_path, data_dir, whole)
    capped = tmp_path / "capped.npz"
    with np.load(whole) as contents:
        budget_mb = contents["images"].nbytes * 0.6 / 2**20  # the cap counts the encoded faces
    _pack(app, tmp_path, data_dir, capped, "--max-mb", f"{budget_mb:.6f}")
    with np.load(capped) as contents:
        assert contents["images"].nbytes <= budget_mb * 2**20
    counts = pack_meta(capped)["counts"]
    assert all(c["packed"] <= c["of"] for c in counts.values())
    assert sum(c["packed"] for c in counts.values()) < sum(c["of"] for c in counts.values())
    cap = max(c["packed"] for c in counts.values())  # one common cap: smaller pools kept whole
    assert all(c["packed"] == min(cap, c["of"]) for c in counts.values())
    result = app.test_cli_runner().invoke(args=["pack-faces", "--data", str(data_dir), "--out",
                                                str(tmp_path / "none.npz"), "--input-size", "32", "--max-mb", "0.0001"])
    assert result.exit_code != 0 and "fits in" in result.output
    assert not (tmp_path / "none.npz").exists()


def test_train_on_a_pack_defers_calibration_and_calibrate_completes_the_card(tmp_path, app):
    from utils.model import Detector, ModelUnavailable

    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    pack = tmp_path / "faces.npz"
    _pack(app, tmp_path, data_dir, pack)
    out = tmp_path / "gpu" / "detector.keras"
    runner = app.test_cli_runner()
    result = runner.invoke(args=["train", "--data", str(pack), "--out", str(out), "--epochs", "1",
                                 "--steps-per-epoch", "2", "--batch-size", "8", "--input-size", "32",
                                 "--width", "0.25", "--seed", "3", "--loader-workers", "2", "--sbi-fraction", "0.5",
                                 "--soften-fraction", "0.4", "--sbi-mismatch", "0.5", "--sbi-sources", "alternate",
                                 "--codec-fraction", "0.3", "--codec-kinds", "h264", "--codec-kinds", "heic"])
    assert result.exit_code == 0, result.output
    card = json.loads((out.parent / "model_card.json").read_text())
    assert card["training"]["sbi_fraction"] == 0.5 and card["training"]["soften_fraction"] == 0.4
    assert card["training"]["sbi_mismatch"] == 0.5 and card["training"]["sbi_sources"] == "alternate"
    assert card["training"]["codec_fraction"] == 0.3 and "H.264" in card["training"]["augmentation"]
    assert card["training"]["codec_kinds"] == ["h264", "heic"] and "HEIC stills" in card["training"]["augmentation"]
    assert card["calibrated"] is False and "fusion" not in card and "validation_metrics" not in card
    assert card["mirror_average"] is False  # what `train` was told (default off); calibrate keeps it
    assert card["data"][0]["source"] == "tiny" and card["data"][0]["pack"] == "faces.npz"
    with pytest.raises(ModelUnavailable, match="not calibrated"):
        Detector(out)

    result = runner.invoke(args=["calibrate", "--model", str(out), "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "validation ROC-AUC" in result.output
    card = json.loads((out.parent / "model_card.json").read_text())
    assert card["calibrated"] is True and card["fusion"]["mode"] == "max"
    assert card["validation_metrics"]["tiny"]["n"] > 0
    assert card["counts"]["tiny"]["train"] == card["training"]["train_faces"]["tiny"]
    assert card["mirror_average"] is False  # opt-in: it cost accuracy on unseen FF++ faces (README)
    assert Detector(out).score(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2,)
    trained_version = card["version"]

    def recalibrate(*flags):
        result = runner.invoke(args=["calibrate", "--model", str(out), "--data", str(data_dir), *flags])
        assert result.exit_code == 0, result.output
        card = json.loads((out.parent / "model_card.json").read_text())
        assert f"version {card['version']}" in result.output
        return card

    # Calibrating again changes nothing, so the version stays; an older card without the field scores
    # without mirror averaging, so refitting it changes nothing either.
    assert recalibrate()["version"] == trained_version
    card.pop("mirror_average")
    card["measured_limits"] = ["Measured by hand on this version."]
    (out.parent / "model_card.json").write_text(json.dumps(card))
    card = recalibrate()
    assert card["mirror_average"] is False and card["version"] == trained_version
    assert card["measured_limits"] == ["Measured by hand on this version."]  # a refit keeps them
    # Turning mirror averaging on refits the fusion on averaged logits: other scores, a new version,
    # which later calibrations keep until told otherwise.
    card = recalibrate("--mirror-average")
    assert card["mirror_average"] is True and card["version"] != trained_version
    assert "mirror image" in card["calibration"] and Detector(out).mirror_average is True
    averaged_version = card["version"]
    assert recalibrate()["version"] == averaged_version
    card = recalibrate("--no-mirror-average")
    assert card["mirror_average"] is False and card["version"] != averaged_version
    # Verdicts depend on the detail bands too, so they are part of what names a version.
    from utils.train import _scoring_fingerprint

    other = json.loads(json.dumps(card))
    other["detail_bands"].update(edges=[-1.0], bands=[[0.01, 0.99]])
    assert _scoring_fingerprint(other) != _scoring_fingerprint(card)
    other["detail_bands"] = dict(card["detail_bands"], effect={})  # the recorded effect is not scoring
    assert _scoring_fingerprint(other) == _scoring_fingerprint(card)


def test_pack_and_train_refuse_what_would_leak_or_cannot_be_read(tmp_path, app):
    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    pack = tmp_path / "faces.npz"
    _pack(app, tmp_path, data_dir, pack)
    runner = app.test_cli_runner()
    base = ["train", "--out", str(tmp_path / "m.keras"), "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "8", "--input-size", "32", "--width", "0.25"]
    result = runner.invoke(args=base + ["--data", str(pack), "--seed", "4"])
    assert result.exit_code != 0 and "packed with seed=3" in result.output
    not_a_pack = tmp_path / "notes.npz"
    not_a_pack.write_bytes(b"not a zip")
    result = runner.invoke(args=base + ["--data", str(not_a_pack), "--seed", "3"])
    assert result.exit_code != 0 and "not a face pack" in result.output
    photo = tmp_path / "photo.jpg"
    Image.fromarray(synthetic_face(np.random.default_rng(1), False)).save(photo)
    result = runner.invoke(args=base + ["--data", str(photo), "--seed", "3"])
    assert result.exit_code != 0 and "neither a dataset folder nor a face pack" in result.output
    assert not (tmp_path / "m.keras").exists()


def test_the_same_training_runs_on_jax_and_the_file_loads_in_tensorflow(tmp_path, app):
    """The GPU route on CPU: KERAS_BACKEND=jax, no Flask, a face pack in; TensorFlow loads the result."""
    import os
    import subprocess
    import sys

    from utils.model import Detector

    root = Path(__file__).parents[1]
    jax_dir = root / ".venv" / "jax-backend"  # installed by `make install`, off the app's import path
    if not (jax_dir / "jax").is_dir():
        pytest.skip(f"JAX is not installed in {jax_dir} (make install puts it there)")

    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    pack = tmp_path / "faces.npz"
    _pack(app, tmp_path, data_dir, pack)
    out = tmp_path / "jax" / "detector.keras"
    # like the GPU machine: no PyAV and no pillow-heif there (README "Training on a GPU")
    absent = tmp_path / "absent"
    absent.mkdir()
    for module in ("av", "pillow_heif"):
        (absent / f"{module}.py").write_text(f"raise ImportError('{module} is not on the GPU machine')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(absent), str(jax_dir), os.environ.get("PYTHONPATH")]))}
    probe = ("import sys, keras, utils.train_cli, utils.train; "
             "sys.exit(3 if {'flask', 'tensorflow'} & set(sys.modules) else 0)")
    run = subprocess.run([sys.executable, "-c", probe], env=env, cwd=root)
    assert run.returncode == 0, "the training command must not import Flask or TensorFlow"
    run = subprocess.run([sys.executable, "-m", "utils.train_cli", "--data", str(pack), "--out", str(out),
                          "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--input-size", "32",
                          "--width", "0.25", "--seed", "3"],
                         env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    card = json.loads((out.parent / "model_card.json").read_text())
    assert card["training"]["backend"] == "jax" and card["training"]["gpu"] is False
    result = app.test_cli_runner().invoke(args=["calibrate", "--model", str(out), "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    scores = Detector(out).score(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_sbi_mismatch_softens_or_recompresses_the_inner_face_only_and_zero_changes_nothing():
    from utils.train import mismatch

    face = astronaut_face()
    changed = [mismatch(face, np.random.default_rng(i)) for i in range(12)]
    assert all(c.shape == face.shape and c.dtype == np.uint8 for c in changed)
    assert all(np.abs(c.astype(int) - face.astype(int)).mean() > 1.0 for c in changed)
    shrunk = [c for c in changed if detail(c) < 0.8 * detail(face)]  # the JPEG ones are blockier instead
    assert 0 < len(shrunk) < len(changed)
    # fraction 0 draws nothing extra: earlier runs' pseudo-fakes and the validation set are unchanged
    plain = [self_blend(face, np.random.default_rng(i)) for i in range(8)]
    assert all(np.array_equal(p, self_blend(face, np.random.default_rng(i), 0.0)) for i, p in enumerate(plain))
    mixed = np.stack([self_blend(face, np.random.default_rng(i), 1.0) for i in range(8)]).astype(int)
    inner, corner = (slice(None), slice(52, 76), slice(52, 76)), (slice(None), slice(0, 8), slice(0, 8))
    assert np.abs(mixed - np.stack(plain))[inner].mean() > 1.0
    assert np.abs(mixed - face.astype(int))[corner].mean() < 0.5


@pytest.mark.parametrize("missing, kinds, message", [
    ("av", ("h264",), "--codec-fraction needs PyAV"),
    ("pillow_heif", ("avif", "heic"), "heic needs pillow-heif"),  # the GPU bundle has neither
])
def test_codec_without_its_encoder_is_refused_before_training(tmp_path, monkeypatch, missing, kinds, message):
    import builtins

    from utils.train import train

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == missing:
            raise ImportError(f"No module named {missing!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(ValueError, match=message):
        train([str(tmp_path / "nothing")], tmp_path / "m.keras", codec_fraction=0.3, codec_kinds=kinds,
              log=lambda m: None)
    assert not (tmp_path / "m.keras").exists()
