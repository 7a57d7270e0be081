"""The photo band: images are judged with a band fitted on the photo sources (utils.train.fit_photo_band,
the card's `photo_band`), because the band fitted on all validation faces together (mostly video
frames) was right less often on photos. Videos keep the card's band."""
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from tests.test_convert import write_video
from tests.test_model import make_tiny_model
from tests.test_train import make_dataset
from utils.aggregate import aggregate_faces
from utils.detail import DetailBands
from utils.model import Detector, ModelUnavailable, photo_band_from_card
from utils.train import _uncertain_band, band_reliability, fit_photo_band


def scores_for(rng, n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """n faces, half fake; the larger the spread, the more scores land on the wrong side."""
    labels = np.arange(n) % 2
    probs = np.clip(0.5 + (labels - 0.5) * 0.6 + rng.normal(0, spread, n), 0.001, 0.999)
    return probs, labels


def test_the_photo_band_keeps_each_photo_source_right_where_the_pooled_band_does_not():
    rng = np.random.default_rng(0)
    video, video_labels = scores_for(rng, 2000, 0.12)  # many reliable video faces dominate the pooled fit
    photo, photo_labels = scores_for(rng, 300, 0.3)
    blended, blended_labels = scores_for(rng, 200, 0.1)
    probs = np.concatenate([video, photo, blended])
    labels = np.concatenate([video_labels, photo_labels, blended_labels])
    sources = np.array(["frames"] * 2000 + ["portraits"] * 300 + ["sbi:portraits"] * 200)
    details = np.zeros(len(probs))
    band = _uncertain_band(probs, labels, 0.5)
    photo_rows = sources == "portraits"
    assert band_reliability(probs[photo_rows], labels[photo_rows], band)["right_outside_band"] < 0.9

    entry = fit_photo_band(probs, labels, sources, details, band, 0.5, ["portraits"], DetailBands((), (), band))
    low, high = entry["band"]
    assert low <= band[0] and high >= band[1] and (low, high) != tuple(band)
    assert entry["sources"] == ["portraits"] and set(entry["fits"]) == {"portraits", "sbi:portraits"}
    for name in ("portraits", "sbi:portraits"):
        rows = sources == name
        assert band_reliability(probs[rows], labels[rows], (low, high))["right_outside_band"] >= 0.9
        assert entry["effect"][name]["photo_band"]["right_outside_band"] >= 0.9
    assert entry["effect"]["portraits"]["card_band"]["right_outside_band"] < 0.9
    assert "never narrower than the uncertain band" in entry["rule"]
    assert fit_photo_band(probs, labels, sources, details, band, 0.5, [], DetailBands((), (), band)) is None


def test_a_reliable_photo_source_keeps_the_card_band():
    rng = np.random.default_rng(1)
    probs, labels = scores_for(rng, 400, 0.1)
    sources = np.array(["portraits"] * 400)
    band = (0.35, 0.65)
    entry = fit_photo_band(probs, labels, sources, np.zeros(400), band, 0.5, ["portraits"], DetailBands((), (), band))
    assert entry["band"] == [0.35, 0.65]  # never narrower than the card's band


def test_detail_bands_around_a_wider_base_never_narrow_it():
    bands = DetailBands((-2.0, -1.0), ((0.3, 0.7), (0.35, 0.65)), (0.4, 0.6))
    wide = bands.with_base((0.2, 0.8))
    assert wide.default == (0.2, 0.8) and wide.bands == ((0.2, 0.8), (0.2, 0.8)) and wide.edges == bands.edges
    middle = bands.with_base((0.32, 0.68))
    assert middle.bands == ((0.3, 0.7), (0.32, 0.68)) and middle.band_for(0.0) == (0.32, 0.68)


def test_the_card_photo_band_is_read_or_refused(tmp_path):
    assert photo_band_from_card(None, (0.4, 0.6)) is None
    assert photo_band_from_card({"band": [0.2, 0.85]}, (0.4, 0.6)) == (0.2, 0.85)
    for broken in ({"band": [0.45, 0.8]}, {"band": [0.2, 0.55]}, {"band": [0.2]}, {"band": "wide"}, {"sources": []}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            photo_band_from_card(broken, (0.4, 0.6))
    path = make_tiny_model(tmp_path / "broken", photo_band={"band": [0.45, 0.8]})
    with pytest.raises(ModelUnavailable, match="photo_band"):
        Detector(path)


def test_images_get_the_photo_band_and_videos_the_card_band(tmp_path):
    path = make_tiny_model(tmp_path / "m", detail_bands={"edges": [-3.0], "bands": [[0.3, 0.7]]},
                           photo_band={"band": [0.2, 0.85], "sources": ["portraits"],
                                       "effect": {"portraits": {"card_band": {"right_outside_band": 0.796}},
                                                  "sbi:portraits": {"card_band": {"right_outside_band": 0.5}}}})
    detector = Detector(path)
    bands, note = detector.bands_for_media("image")
    assert bands.default == (0.2, 0.85) and bands.band_for(-5.0) == (0.2, 0.85)
    assert note == ("Photos are judged with a wider band than video frames (0.20-0.85 instead of 0.40-0.60): on the "
                    "validation photos, verdicts outside the narrower band were right only 80% of the time.")
    assert detector.bands_for_media("video") == (detector.detail_bands, "")
    plain = Detector(make_tiny_model(tmp_path / "plain"))  # a card without a photo band: one band for all
    assert plain.photo_band is None and plain.bands_for_media("image") == (plain.detail_bands, "")


def test_the_explanation_says_why_a_photo_band_is_wider():
    note = "Photos are judged with a wider band than video frames."
    verdict = aggregate_faces([(0, 0, 0.8)], 1, 0.5, (0.2, 0.85), "image", band_note=note)
    assert verdict.verdict == "uncertain" and verdict.band == (0.2, 0.85)
    assert verdict.explanation.endswith(note)
    assert "between 0.20 and 0.85" in verdict.explanation
    assert note not in aggregate_faces([], 1, 0.5, (0.2, 0.85), "image", band_note=note).explanation


def test_the_pipeline_judges_a_photo_and_a_video_of_the_same_face_with_their_bands(tmp_path):
    from utils.analysis import inspect_media

    path = make_tiny_model(tmp_path / "m", input_size=128, photo_band={"band": [0.1, 0.95], "sources": ["x"]})
    detector = Detector(path)
    photo = skdata.astronaut()
    image_path = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(image_path)
    image_report = inspect_media(image_path, detector=detector)
    assert image_report.faces and (image_report.uncertain_low, image_report.uncertain_high) == (0.1, 0.95)
    assert "Photos are judged with a wider band than video frames (0.10-0.95" in image_report.verdict.explanation
    video_report = inspect_media(write_video(tmp_path / "astronaut.mp4", [photo] * 6), detector=detector, frames=4)
    assert video_report.faces and (video_report.uncertain_low, video_report.uncertain_high) == (0.4, 0.6)
    assert "Photos" not in video_report.verdict.explanation


def test_train_fits_the_photo_band_evaluate_and_calibrate_use_and_keep_it(tmp_path, app):
    data_dir = make_dataset(tmp_path / "tiny", n=16, groups=True)
    out = tmp_path / "weights" / "detector.keras"
    app.config["DETECTOR_CACHE_DIR"] = str(tmp_path / "cache")
    runner = app.test_cli_runner()
    common = ["--data", str(data_dir), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2",
              "--batch-size", "8", "--input-size", "32", "--width", "0.25"]
    refused = runner.invoke(args=["train", *common, "--photo-source", "portraits"])
    assert refused.exit_code != 0 and "--photo-source portraits" in refused.output and "tiny" in refused.output
    assert not out.exists()  # refused before training
    result = runner.invoke(args=["train", *common, "--photo-source", "tiny"])
    assert result.exit_code == 0, result.output
    card_path = out.parent / "model_card.json"
    card = json.loads(card_path.read_text())
    entry = card["photo_band"]
    low, high = entry["band"]
    assert entry["sources"] == ["tiny"] and low <= card["uncertain_band"][0] and high >= card["uncertain_band"][1]
    assert set(entry["effect"]) == {"tiny", "sbi:tiny"}
    assert Detector(out).photo_band == (low, high)

    def evaluate(*extra):
        result = runner.invoke(args=["evaluate", "--data", str(data_dir), "--model", str(out), "--split", "validation",
                                     "--out", str(tmp_path / "eval"), *extra])
        assert result.exit_code == 0, result.output
        return result.output

    assert f"uncertain band [{low:.3f}, {high:.3f}] (photo band): " in evaluate()  # auto: a photo source
    band = card["uncertain_band"]
    assert f"uncertain band [{band[0]:.3f}, {band[1]:.3f}]: " in evaluate("--media", "video")
    evaluate("--record")
    assert json.loads(card_path.read_text())["robustness"]["tiny"]["none"]["photo_band"] is True

    def calibrate(*flags):
        result = runner.invoke(args=["calibrate", "--model", str(out), "--data", str(data_dir), *flags])
        assert result.exit_code == 0, result.output
        return json.loads(card_path.read_text())

    version = card["version"]
    assert calibrate()["photo_band"]["sources"] == ["tiny"]  # kept from the card
    assert json.loads(card_path.read_text())["version"] == version
    dropped = calibrate("--no-photo-band")
    assert dropped["photo_band"] is None and Detector(out).photo_band is None
    if (low, high) != tuple(band):  # a band that decides verdicts names the version
        assert dropped["version"] != version
    assert calibrate("--photo-source", "tiny")["photo_band"]["band"] == [low, high]
    both = runner.invoke(args=["calibrate", "--model", str(out), "--data", str(data_dir), "--photo-source", "tiny",
                               "--no-photo-band"])
    assert both.exit_code != 0 and "contradict" in both.output


def test_model_page_shows_the_photo_band_and_marks_rows_judged_with_it(client, app, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    card = {"version": "v-photo", "threshold": 0.5, "uncertain_band": [0.3, 0.7],
            "photo_band": {"band": [0.15, 0.86], "sources": ["stylegan1_ffhq"], "rule": "fitted on photos"},
            "robustness": {"stylegan1_ffhq": {"none": {"n": 324, "roc_auc": 0.79, "photo_band": True}},
                           "dfdc": {"none": {"n": 4247, "roc_auc": 0.82}}}}
    (folder / "model_card.json").write_text(json.dumps(card))
    app.config["MODEL_PATH"] = str(folder / "detector.keras")
    html = client.get("/model").get_data(as_text=True)
    assert "Band for photos" in html and "15 % – 86 %" in html and "stylegan1_ffhq" in html
    assert '<th scope="row">stylegan1_ffhq <small>(photo band)</small></th>' in html
    assert '<th scope="row">dfdc</th>' in html
    card["photo_band"]["band"] = [0.4, 0.9]  # narrower than the card's band: unreadable, not shown
    (folder / "model_card.json").write_text(json.dumps(card))
    html = client.get("/model").get_data(as_text=True)
    assert "Band for photos" not in html and "v-photo" in html


SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[1] / "utils" / "weights" / "detector.keras"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model")
def test_the_shipped_card_judges_photos_with_a_band_fitted_on_its_photo_source():
    card = json.loads(SHIPPED.with_name("model_card.json").read_text())
    detector = Detector(SHIPPED)
    low, high = detector.photo_band
    assert card["photo_band"]["sources"] == ["stylegan1_ffhq"]
    assert low < detector.uncertain_band[0] and high > detector.uncertain_band[1]
    effect = card["photo_band"]["effect"]["stylegan1_ffhq"]  # what it was fitted to do, on its own faces
    assert effect["photo_band"]["right_outside_band"] >= 0.9 > effect["card_band"]["right_outside_band"]
    assert card["validation_metrics"]["stylegan1_ffhq"]["shipped_right_outside_band"] == effect["photo_band"]["right_outside_band"]
