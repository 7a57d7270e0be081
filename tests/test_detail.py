"""utils/detail.py and its fit (utils.train.fit_detail_bands): how much fine detail a face keeps,
and the wider uncertain band for faces that lost it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

import convert
from utils.detail import DetailBands, face_detail, widened
from utils.robustness import Degradation, degrade
from utils.train import band_reliability, fit_detail_bands


@pytest.fixture(scope="module")
def face_crop() -> np.ndarray:
    """The astronaut's face, cropped as the pipeline crops it (a real photo from a package)."""
    faces = convert.faces_in_frame(skdata.astronaut(), 128)
    assert faces, "the astronaut's face must be found"
    return faces[0].crop


def test_detail_falls_as_the_face_loses_detail(face_crop):
    crops = np.stack([face_crop] * 5)
    steps = [[], [Degradation("blur", 1)], [Degradation("blur", 2)], [Degradation("scale", 0.35)],
             [Degradation("h264", 42)]]
    details = np.array([face_detail(degrade(crops[:1], s))[0] for s in steps])
    sharp, blur1, blur2, small, coded = details
    assert blur2 < blur1 < sharp and small < sharp and coded < sharp
    assert sharp - blur1 > 0.3  # a 1 px blur is a large step on this scale (log10)
    assert np.array_equal(face_detail(crops), face_detail(crops))  # deterministic, one value per crop
    assert face_detail(face_crop).shape == (1,)  # a single crop is accepted


def test_detail_ignores_brightness_and_contrast(face_crop):
    """Lowering contrast is not a loss of detail: the measure is normalised by the grey variance."""
    dim = (face_crop.astype(np.float32) * 0.5 + 60).astype(np.uint8)
    assert abs(face_detail(dim)[0] - face_detail(face_crop)[0]) < 0.1


def test_a_flat_crop_has_the_lowest_detail():
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    assert face_detail(flat).tolist() == [-6.0, -6.0]
    assert face_detail(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0,)


def test_bands_by_detail():
    bands = DetailBands.from_card({"edges": [-2.0, -1.5], "bands": [[0.1, 0.9], [0.2, 0.8]]}, (0.3, 0.7))
    assert bands.band_for(-2.5) == (0.1, 0.9)
    assert bands.band_for(-2.0) == (0.2, 0.8)  # an edge belongs to the bin above it
    assert bands.band_for(-1.6) == (0.2, 0.8)
    assert bands.band_for(-1.5) == (0.3, 0.7) and bands.band_for(0.0) == (0.3, 0.7)
    assert bands.band_for(None) == (0.3, 0.7)  # no measurement: the card's band
    low, high = bands.bands_for(np.array([-3.0, -1.7, 1.0]))
    assert low.tolist() == [0.1, 0.2, 0.3] and high.tolist() == [0.9, 0.8, 0.7]


def test_a_card_without_detail_bands_gives_every_face_its_band():
    bands = DetailBands.from_card(None, (0.3, 0.7))
    assert bands.band_for(-5.0) == bands.band_for(1.0) == (0.3, 0.7)


@pytest.mark.parametrize("entry", [{"edges": [-1.0, -2.0], "bands": [[0.1, 0.9], [0.2, 0.8]]},
                                   {"edges": [-1.0], "bands": [[0.1, 0.9], [0.2, 0.8]]}])
def test_inconsistent_detail_bands_are_refused(entry):
    with pytest.raises(ValueError, match="ascending"):
        DetailBands.from_card(entry, (0.3, 0.7))


def test_widened_never_narrows():
    out = widened([(0.35, 0.6), (0.1, 0.95), (0.3, 0.8)], (0.3, 0.7))
    assert out == [(0.1, 0.95), (0.1, 0.95), (0.3, 0.8)]
    for low, high in out:
        assert low <= 0.3 and high >= 0.7


def test_fit_widens_the_band_where_scores_are_unreliable():
    """Sharp faces: scores that separate the classes; faces without detail: scores that do not. The
    fitted band for the low-detail bins must be wider, the sharp faces keep the card's band, and
    outside the bands the verdicts on the blurry faces are right more often than with the card's
    band alone."""
    rng = np.random.default_rng(0)
    n = 4000
    labels = rng.integers(0, 2, n)
    details = rng.uniform(-1.0, 0.0, n)
    blurry = rng.random(n) < 0.4
    details[blurry] = rng.uniform(-3.0, -2.0, blurry.sum())
    probs = np.where(labels == 1, rng.beta(6, 2, n), rng.beta(2, 6, n))
    probs[blurry] = rng.uniform(0.0, 1.0, blurry.sum())  # no information left
    entry = fit_detail_bands(probs, labels, details, (0.4, 0.6), 0.5, quantiles=(0.1, 0.25))
    assert entry["edges"] == sorted(entry["edges"]) and len(entry["edges"]) == 2
    assert all(edge < -2.0 for edge in entry["edges"])  # both quantiles fall among the blurry faces
    bands = DetailBands.from_card(entry, (0.4, 0.6))
    for low, high in bands.bands:
        assert low < 0.4 - 0.1 and high > 0.6 + 0.1
    assert bands.band_for(-0.5) == (0.4, 0.6)
    fixed = band_reliability(probs[blurry], labels[blurry], (0.4, 0.6))
    aware = band_reliability(probs[blurry], labels[blurry], bands.bands_for(details[blurry]))
    assert aware["uncertain"] > fixed["uncertain"]
    assert aware["reals_called_fake"] < fixed["reals_called_fake"]


def test_fit_with_too_few_faces_in_a_bin_keeps_the_band_above():
    probs = np.linspace(0, 1, 50)
    labels = (probs > 0.5).astype(int)
    entry = fit_detail_bands(probs, labels, np.linspace(-3, 0, 50), (0.45, 0.55), 0.5, min_faces=40)
    assert all(tuple(b) == (0.45, 0.55) for b in entry["bands"])


def test_band_reliability_takes_a_band_per_face():
    probs = np.array([0.1, 0.5, 0.9, 0.9])
    labels = np.array([0, 0, 1, 0])
    one = band_reliability(probs, labels, (0.3, 0.7))
    assert one == {"uncertain": 0.25, "right_outside_band": round(2 / 3, 4), "reals_called_fake": round(1 / 3, 4)}
    per_face = band_reliability(probs, labels, (np.array([0.3, 0.3, 0.3, 0.05]), np.array([0.7, 0.7, 0.7, 0.95])))
    assert per_face == {"uncertain": 0.5, "right_outside_band": 1.0, "reals_called_fake": 0.0}


def test_blur_kernel_sanity():
    """The measure reads the Laplacian: a pure edge keeps detail, its blurred copy loses it."""
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, 32:] = 255
    edge[::7] = 40  # some texture so the centre is not flat in one direction
    assert face_detail(cv2.GaussianBlur(edge, (0, 0), 2))[0] < face_detail(edge)[0]


SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[1] / "utils" / "weights" / "detector.keras"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model")
def test_the_pipeline_records_the_band_its_verdict_used(tmp_path):
    """The report (stored on the Analysis row as uncertain_low/high) holds the band its verdict used:
    for a photo, sharp or blurred, the photo band's bin for its detail (never narrower than the photo
    band); for a video of the blurred face, the card's band widened for faces that lost detail."""
    from PIL import Image

    from utils.analysis import inspect_media
    from utils.model import get_detector

    detector = get_detector(SHIPPED)
    photo = skdata.astronaut()
    reports = {}
    for name, image in (("sharp", photo), ("blurred", cv2.GaussianBlur(photo, (0, 0), 3))):
        path = tmp_path / f"{name}.png"
        Image.fromarray(image).save(path)
        reports[name] = inspect_media(path, detector=detector)
    photo_bands, _ = detector.bands_for_media("image")  # a photo: the card's photo band, where it has one
    for report in reports.values():
        face = report.faces[0]
        assert face.detail == pytest.approx(float(face_detail(face.crop)[0]), abs=1e-6)
        assert (report.uncertain_low, report.uncertain_high) == photo_bands.band_for(face.detail)
        assert report.to_json()["faces"][0]["detail"] == round(face.detail, 3)
    blurred = reports["blurred"]
    assert blurred.faces[0].detail < reports["sharp"].faces[0].detail
    assert blurred.uncertain_low <= photo_bands.default[0] and blurred.uncertain_high >= photo_bands.default[1]
    # A video keeps the card's band, widened by the detail bands when its faces lost detail.
    from tests.test_convert import write_video

    soft = inspect_media(write_video(tmp_path / "blurred.mp4", [cv2.GaussianBlur(photo, (0, 0), 3)] * 6),
                         detector=detector, frames=4)
    assert soft.faces and (soft.uncertain_low, soft.uncertain_high) == detector.detail_bands.band_for(
        float(np.median([f.detail for f in soft.faces])))
    assert soft.uncertain_low < detector.uncertain_band[0] and soft.uncertain_high > detector.uncertain_band[1]
    assert "lost fine detail" in soft.verdict.explanation
