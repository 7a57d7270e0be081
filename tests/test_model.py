"""utils/model.py: loading, determinism, calibrated scores, heatmaps, failure as ModelUnavailable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils import model as model_module
from utils.model import Detector, ModelUnavailable, get_detector

ROOT = Path(__file__).resolve().parent.parent

SHIPPED = Path(__file__).resolve().parents[1] / "utils" / "weights" / "detector.keras"


def make_tiny_model(folder: Path, input_size: int = 32, fusion=None, **card_fields) -> Path:
    """A randomly initialised network of the shipped architecture plus a card, for fast tests."""
    import keras

    from utils.train import build_model

    keras.utils.set_random_seed(1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "detector.keras"
    build_model(input_size, width=0.25).save(path)
    card = {"version": "test-1", "input_size": input_size, "threshold": 0.5, "uncertain_band": [0.4, 0.6],
            "fusion": fusion or {"weights": [1.0, 0.5], "bias": -0.1}, **card_fields}
    (folder / "model_card.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"))


def crops(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_card_values_are_exposed(tiny_model):
    detector = Detector(tiny_model)
    assert detector.version == "test-1" and detector.input_size == 32
    assert detector.threshold == 0.5 and detector.uncertain_band == (0.4, 0.6)


def test_scores_are_deterministic_probabilities(tiny_model):
    detector = Detector(tiny_model)
    batch = crops(5)
    first, second = detector.score(batch), detector.score(batch)
    assert first.shape == (5,) and np.array_equal(first, second)
    assert ((first > 0) & (first < 1)).all()
    # a face scores the same alone as inside a batch
    assert detector.score(batch[2:3])[0] == pytest.approx(first[2], abs=1e-5)


def test_score_is_the_card_fusion_of_the_head_logits(tiny_model):
    detector = Detector(tiny_model)
    batch = crops(4, seed=3)
    logits = detector.logits(batch)
    expected = 1 / (1 + np.exp(-(logits @ np.array([1.0, 0.5]) - 0.1)))
    assert np.allclose(detector.score(batch), expected, atol=1e-6)
    direct = detector.model(batch.astype(np.float32), training=False).numpy()
    assert np.allclose(logits, direct, atol=1e-4)


def test_mirror_average_scores_a_face_and_its_mirror_alike_when_the_card_says_so(tmp_path):
    def with_order_one_logits(detector):  # a fresh network's logits are ~1e-6: scale its head up
        head = detector.model.get_layer("logits")
        kernel, bias = head.get_weights()
        head.set_weights([kernel * 1e5, bias])
        return detector

    batch = crops(model_module.BATCH + 3, seed=9)  # more than one chunk
    mirrored = batch[:, :, ::-1]
    plain = with_order_one_logits(Detector(make_tiny_model(tmp_path / "plain")))
    assert plain.mirror_average is False  # cards calibrated before mirror averaging keep their scoring
    assert np.abs(plain.logits(batch)).mean() > 0.05
    assert not np.allclose(plain.logits(batch), plain.logits(mirrored), atol=1e-2)

    averaging = with_order_one_logits(Detector(make_tiny_model(tmp_path / "mirror", mirror_average=True)))
    logits = averaging.logits(batch)
    assert np.allclose(logits, averaging.logits(mirrored), atol=1e-5)
    direct = [averaging.model(x.astype(np.float32), training=False).numpy() for x in (batch, mirrored)]
    assert np.allclose(logits, (direct[0] + direct[1]) / 2, atol=1e-4)
    assert np.allclose(averaging.score(batch), averaging.fusion.probability(logits), atol=1e-6)
    assert averaging.score(batch[4:5])[0] == pytest.approx(averaging.score(batch)[4], abs=1e-5)


def test_large_batches_are_split_consistently(tiny_model):
    detector = Detector(tiny_model)
    batch = crops(model_module.BATCH + 7, seed=5)
    whole = detector.score(batch)
    parts = np.concatenate([detector.score(batch[:10]), detector.score(batch[10:])])
    assert np.allclose(whole, parts, atol=1e-5)


def test_empty_batch_and_wrong_shape(tiny_model):
    detector = Detector(tiny_model)
    assert detector.score(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0,)
    with pytest.raises(ValueError):
        detector.score(np.zeros((2, 48, 48, 3), np.uint8))


def test_heatmaps_are_normalised_maps(tiny_model):
    detector = Detector(tiny_model)
    maps = detector.heatmaps(crops(3, seed=7))
    assert maps.ndim == 3 and maps.shape[0] == 3
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6


def test_missing_or_damaged_model_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="No trained model"):
        Detector(tmp_path / "absent.keras")
    broken = tmp_path / "detector.keras"
    broken.write_bytes(b"not a keras archive")
    (tmp_path / "model_card.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        Detector(broken)


def test_detail_bands_come_from_the_card(tmp_path, tiny_model):
    assert Detector(tiny_model).detail_bands.band_for(-5.0) == (0.4, 0.6)  # none in the card: its band
    path = make_tiny_model(tmp_path / "detail", detail_bands={"edges": [-2.0], "bands": [[0.2, 0.8]]})
    bands = Detector(path).detail_bands
    assert bands.band_for(-2.5) == (0.2, 0.8) and bands.band_for(-1.0) == (0.4, 0.6)
    broken = make_tiny_model(tmp_path / "broken", detail_bands={"edges": [-2.0, -3.0], "bands": [[0.2, 0.8]]})
    with pytest.raises(ModelUnavailable, match="detail_bands"):
        Detector(broken)


def test_get_detector_caches_per_file(tiny_model):
    assert get_detector(tiny_model) is get_detector(tiny_model)


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model yet")
def test_shipped_model_and_card():
    detector = get_detector(SHIPPED)
    card = detector.card
    assert SHIPPED.stat().st_size < 20 * 1024 * 1024
    low, high = detector.uncertain_band
    assert 0 < low <= detector.threshold <= high < 1
    for key in ("version", "input_size", "data", "split", "training", "validation_metrics", "fusion"):
        assert key in card
    assert detector.detail_bands.edges, "the shipped card fits detail-aware bands"
    for band_low, band_high in detector.detail_bands.bands:  # they only widen the card's band
        assert band_low <= low and band_high >= high
    scores = detector.score(crops(4, detector.input_size))
    assert scores.shape == (4,) and np.array_equal(scores, detector.score(crops(4, detector.input_size)))


def test_max_fusion_takes_the_most_alarmed_calibrated_head(tmp_path):
    fusion = {"mode": "max", "scales": [0.5, 2.0], "biases": [0.1, -1.0]}
    detector = Detector(make_tiny_model(tmp_path / "max", fusion=fusion))
    batch = crops(6, seed=11)
    logits = detector.logits(batch)
    per_head = 1 / (1 + np.exp(-(logits * np.array([0.5, 2.0]) + np.array([0.1, -1.0]))))
    assert np.allclose(detector.score(batch), per_head.max(axis=1), atol=1e-6)
    maps = detector.heatmaps(batch)
    assert maps.shape[0] == 6 and 0.0 <= maps.min() and maps.max() <= 1.0 + 1e-6


# Run in a fresh interpreter: RSS in the test process moves with whatever other tests' threads do.
FREED_FRAMES_SCRIPT = """
import numpy as np
from utils import model

def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))

pinned = model.tune_malloc()
spent = np.ones(1280 * 720 * 3, np.uint8)
del spent  # unpinned, freeing one frame raises glibc's threshold and the frames below stay resident
base = rss_mb()
frames, survivors = [], []
for _ in range(40):
    frames.append(np.ones(1280 * 720 * 3, np.uint8))  # a 720p RGB frame, 2.7 MB
    survivors.append(np.ones(100_000, np.uint8))  # below the threshold: from the heap, kept
grown = rss_mb() - base
del frames
print(pinned, grown, rss_mb() - base)
"""


def _freed_frames(tuning: str) -> tuple[bool, float, float]:
    env = {**os.environ, "DETECTOR_MALLOC_TUNING": tuning}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", FREED_FRAMES_SCRIPT], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2])


def test_serving_process_returns_freed_frame_sized_buffers(tiny_model):
    """Building a Detector pins glibc's mmap threshold (utils.model.tune_malloc): buffers the size of
    decoded frames go back to the OS when freed, even with small survivors between them, instead of
    staying resident (the +130..270 MB RSS after videos of issue 3)."""
    Detector(tiny_model)
    if not model_module.tune_malloc():
        pytest.skip("not glibc, or malloc tuning switched off in this environment")
    assert model_module.tune_malloc() is True  # once per process, then remembered
    pinned, grown, kept = _freed_frames("1")
    assert pinned and grown > 80 and kept < 30
    pinned, grown, kept = _freed_frames("0")  # glibc's default: the same frames stay resident
    assert not pinned and grown > 80 and kept > 80
