"""`flask evaluate --degrade`: the degradations themselves and that they reach the scores."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

import convert
from utils.detail import DetailBands
from utils.robustness import Degradation, degrade, parse_degradation


def face_crops(n: int = 3, size: int = 128) -> np.ndarray:
    return np.stack([convert.resize_face(skdata.astronaut()[i * 20:i * 20 + 300, 100:400], size) for i in range(n)])


def sharpness(crops: np.ndarray) -> float:
    grey = crops.astype(np.float32).mean(axis=3)
    return float(np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=2)).mean())


@pytest.mark.parametrize("text, expected", [("jpeg:50", Degradation("jpeg", 50)), ("SCALE:0.5", Degradation("scale", 0.5)),
                                            (" blur:1.2 ", Degradation("blur", 1.2)), ("noise:5", Degradation("noise", 5)),
                                            ("h264:35", Degradation("h264", 35)), ("heic:50", Degradation("heic", 50)),
                                            ("avif:30", Degradation("avif", 30))])
def test_parse_accepts_each_kind(text, expected):
    assert parse_degradation(text) == expected
    assert str(expected) == text.strip().lower()


@pytest.mark.parametrize("text, message", [
    ("gamma:2", "unknown degradation"), ("jpeg", "needs a number"), ("jpeg:high", "needs a number"),
    ("jpeg:0", "between 1 and 100"), ("scale:2", "between 0.05 and 1"), ("blur:nan", "between"),
    ("noise:-1", "between"), ("h264:52", "between 0 and 51"), ("h264:", "needs a number"),
    ("heic:0", "between 1 and 100"), ("avif:101", "between 1 and 100")])
def test_parse_refuses_bad_specs_with_a_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_degradation(text)


def test_each_degradation_changes_the_crop_the_expected_way():
    crops = face_crops()
    before = crops.copy()
    for spec in ("jpeg:20", "scale:0.4", "blur:1.5", "h264:40", "heic:20", "avif:20"):
        out = degrade(crops, [parse_degradation(spec)])
        assert out.shape == crops.shape and out.dtype == np.uint8
        assert sharpness(out) < sharpness(crops), spec  # each of these removes fine detail
        assert np.abs(out.astype(int) - crops).mean() > 1.0, spec
    noisy = degrade(crops, [parse_degradation("noise:8")])
    assert sharpness(noisy) > sharpness(crops)
    assert np.std(noisy.astype(int) - crops) == pytest.approx(8, abs=1.0)
    assert np.array_equal(crops, before)  # the input is never modified


def test_degrade_is_deterministic_and_chains_in_order():
    crops = face_crops()
    steps = [parse_degradation("noise:6"), parse_degradation("jpeg:40")]
    assert np.array_equal(degrade(crops, steps), degrade(crops, steps))
    assert not np.array_equal(degrade(crops, steps), degrade(crops, steps[::-1]))
    assert np.array_equal(degrade(crops, []), crops)
    assert degrade(crops[:0], steps).shape == (0, 128, 128, 3)


def test_h264_loses_more_the_higher_the_quantiser_and_treats_each_crop_alone():
    crops = face_crops(4)
    errors = [np.abs(degrade(crops, [Degradation("h264", q)]).astype(int) - crops).mean() for q in (10, 30, 45)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 3.0  # near-lossless apart from 4:2:0 chroma and the colour-range round trip
    # intra-only frames at a constant quantiser: a crop comes out the same whatever its neighbours
    together = degrade(crops, [Degradation("h264", 35)])
    alone = degrade(crops[2:3], [Degradation("h264", 35)])
    assert np.array_equal(together[2], alone[0])
    # odd sides (4:2:0 needs even ones) come back at their own size
    odd = degrade(crops[:, :127, :125], [Degradation("h264", 30)])
    assert odd.shape == (4, 127, 125, 3)
    assert degrade(crops[:0], [Degradation("h264", 30)]).shape == (0, 128, 128, 3)


@pytest.mark.parametrize("kind", ["heic", "avif"])
def test_phone_stills_lose_more_the_lower_the_quality(kind):
    crops = face_crops(3)
    errors = [np.abs(degrade(crops, [Degradation(kind, q)]).astype(int) - crops).mean() for q in (90, 50, 10)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 3.0  # high quality: close to the original
    assert np.array_equal(degrade(crops, [Degradation(kind, 50)]), degrade(crops, [Degradation(kind, 50)]))


class CheckerboardDetector:
    """Stands in for the model: P(fake) = strength of a pixel-level checkerboard, the synthetic
    fakes' only trace (tests/test_train.py), which a blur removes and a mild JPEG keeps."""

    version, threshold, input_size, card = "checkerboard-1", 0.5, 48, {"training": {}}
    uncertain_band = (0.5, 0.5)  # what Detector takes from a card without a band
    detail_bands = DetailBands((), (), (0.5, 0.5))  # ... and without detail bands

    def bands_for_media(self, kind: str):  # ... or a photo band
        return self.detail_bands, ""

    def score(self, crops: np.ndarray) -> np.ndarray:
        grey = crops.astype(np.float32).mean(axis=3)
        sign = np.where(np.indices(grey.shape[1:]).sum(0) % 2 == 0, 1.0, -1.0)
        return np.clip(np.abs((grey * sign).mean(axis=(1, 2))) / 10, 0, 1)


def test_evaluate_scores_the_degraded_faces(tmp_path, app, monkeypatch):
    import utils.model
    from tests.test_train import make_dataset

    monkeypatch.setattr(utils.model, "get_detector", lambda path: CheckerboardDetector())
    data_dir = make_dataset(tmp_path / "tiny", n=10)
    app.config["DETECTOR_CACHE_DIR"] = str(tmp_path / "cache")
    runner = app.test_cli_runner()

    def recall(*extra):
        result = runner.invoke(args=["evaluate", "--data", str(data_dir), "--model", "unused.keras",
                                     "--out", str(tmp_path / "eval"), *extra])
        assert result.exit_code == 0, result.output
        line = next(l for l in result.output.splitlines() if l.startswith("recall"))
        return result.output, float(line.split()[1])

    output, clean = recall()
    assert clean == 1.0 and "degraded" not in output
    output, mild = recall("--degrade", "jpeg:95")
    assert mild == 1.0 and "degraded: jpeg:95" in output
    output, blurred = recall("--degrade", "jpeg:95", "--degrade", "blur:2")
    assert blurred == 0.0 and "degraded: jpeg:95 then blur:2" in output  # the trace is gone: fakes missed


def test_evaluate_refuses_bad_degradations(tmp_path, app):
    from tests.test_train import make_dataset

    data_dir = make_dataset(tmp_path / "tiny", n=2)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["evaluate", "--data", str(data_dir), "--degrade", "sepia:3"])
    assert result.exit_code == 2 and "unknown degradation 'sepia:3'" in result.output
    (tmp_path / "videos" / "real").mkdir(parents=True)
    (tmp_path / "videos" / "real" / "clip.mp4").write_bytes(b"not decoded: refused before any work")
    result = runner.invoke(args=["evaluate", "--data", str(tmp_path / "videos"), "--degrade", "jpeg:50"])
    assert result.exit_code == 1 and "--degrade works on folders of face images" in result.output


def test_record_adds_held_out_results_to_the_card(tmp_path, app, monkeypatch):
    import json

    import utils.model
    from tests.test_train import make_dataset

    monkeypatch.setattr(utils.model, "get_detector", lambda path: CheckerboardDetector())
    data_dir = make_dataset(tmp_path / "tiny", n=20)
    model = tmp_path / "weights" / "detector.keras"
    model.parent.mkdir()
    (model.parent / "model_card.json").write_text(json.dumps({"version": "v1", "threshold": 0.5}))
    app.config["DETECTOR_CACHE_DIR"] = str(tmp_path / "cache")
    runner = app.test_cli_runner()
    common = ["evaluate", "--data", str(data_dir), "--model", str(model), "--out", str(tmp_path / "eval")]

    refused = runner.invoke(args=[*common, "--record"])  # the whole folder is not held-out data
    assert refused.exit_code == 2 and "--split validation" in refused.output
    assert "robustness" not in json.loads((model.parent / "model_card.json").read_text())

    for extra in ([], ["--degrade", "blur:2"]):
        result = runner.invoke(args=[*common, "--split", "validation", "--record", *extra])
        assert result.exit_code == 0, result.output
        assert "recorded in" in result.output
    card = json.loads((model.parent / "model_card.json").read_text())
    assert card["version"] == "v1" and "flask evaluate" in card["robustness_note"]
    table = card["robustness"]["tiny"]
    assert list(table) == ["none", "blur:2"]
    assert table["none"]["n"] == table["blur:2"]["n"] > 0
    assert table["none"]["accuracy"] == 1.0 and table["blur:2"]["accuracy"] < 1.0
    # no band on this card: every face is decided at the threshold, so 'right' is the accuracy
    assert table["none"]["uncertain"] == 0.0 and table["none"]["right_outside_band"] == 1.0
    assert table["blur:2"]["right_outside_band"] == table["blur:2"]["accuracy"]
    assert table["none"]["reals_called_fake"] == 0.0 and "share of real faces" in card["robustness_note"]
    assert not list(model.parent.glob("*.partial"))


@pytest.mark.parametrize("recorded, words", [
    ("none", "as stored"), ("jpeg:30", "JPEG quality 30"), ("scale:0.35", "shrunk to 35 % and upscaled"),
    ("blur:1.5", "blurred, σ 1.5 px"), ("noise:5", "noise, σ 5"), ("h264:42", "H.264 video frame, quantiser 42"),
    ("heic:50", "HEIC quality 50"), ("avif:30", "AVIF quality 30"),
    ("scale:0.5 then jpeg:50", "shrunk to 50 % and upscaled, then JPEG quality 50"),
    ("gamma:2", "gamma:2"), ("jpeg:500", "jpeg:500")])
def test_describe_puts_recorded_degradations_in_words(recorded, words):
    from utils.robustness import describe

    assert describe(recorded) == words
