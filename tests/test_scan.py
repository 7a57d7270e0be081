"""`flask scan`: one result per file, JSON lines, bad files reported without stopping the batch."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from PIL import Image
from skimage import data as skdata

import convert  # noqa: F401  registers the HEIC/HEIF plugin the fixture writes with
from tests.test_model import make_tiny_model

SHARED_VIDEOS = Path("/work/shared/datasets/videos")
SHIPPED = Path(__file__).resolve().parents[1] / "utils" / "weights" / "detector.keras"
KEYS = {"path", "kind", "verdict", "score", "threshold", "model_version", "faces", "frames", "uncertain_band", "error"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("scan-model"))


@pytest.fixture
def media(tmp_path) -> Path:
    folder = tmp_path / "media"
    (folder / "nested").mkdir(parents=True)
    astronaut = skdata.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.jpg", quality=90)
    Image.new("RGB", (320, 240), (90, 140, 200)).save(folder / "nested" / "sky.png")
    Image.fromarray(astronaut).save(folder / "nested" / "IMG_0001.HEIC", "HEIF", quality=85)
    (folder / "nested" / "notes.mp4").write_text("not a video at all\n" * 10)
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    for _ in range(20):
        writer.write(cv2.cvtColor(cv2.resize(astronaut, (256, 256)), cv2.COLOR_RGB2BGR))
    writer.release()
    return folder


def scan_json(app, *args) -> list[dict]:
    result = app.test_cli_runner().invoke(args=["scan", "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_scan_json_lines_for_a_folder(app, tiny_model, media):
    app.config["MODEL_PATH"] = str(tiny_model)
    lines = {Path(line["path"]).name: line for line in scan_json(app, "--frames", "4", str(media))}
    assert set(lines) == {"astronaut.jpg", "sky.png", "IMG_0001.HEIC", "notes.mp4", "clip.mp4"}
    assert all(set(line) == KEYS for line in lines.values())

    photo = lines["astronaut.jpg"]
    assert photo["kind"] == "image" and photo["faces"] == 1 and photo["frames"] == 1
    assert photo["verdict"] in {"real", "fake", "uncertain"} and 0 <= photo["score"] <= 1
    assert photo["model_version"] == "test-1" and photo["threshold"] == 0.5 and photo["error"] is None
    assert photo["uncertain_band"] == [0.4, 0.6]  # the band its verdict used (the tiny card's)

    phone = lines["IMG_0001.HEIC"]  # an iPhone photo in a folder is picked up and read as a photo
    assert phone["kind"] == "image" and phone["faces"] == 1 and phone["error"] is None
    assert abs(phone["score"] - photo["score"]) < 0.05  # the same picture, HEIC-compressed

    sky = lines["sky.png"]
    assert sky["verdict"] == "no_face" and sky["score"] is None and sky["faces"] == 0 and sky["uncertain_band"] is None

    bad = lines["notes.mp4"]
    assert bad["error"] and bad["verdict"] is None and bad["kind"] is None

    video = lines["clip.mp4"]
    assert video["kind"] == "video" and video["frames"] == 4 and video["faces"] == 4


def test_scan_whole_image_and_plain_output(app, tiny_model, media):
    app.config["MODEL_PATH"] = str(tiny_model)
    (line,) = scan_json(app, "--whole-image", str(media / "nested" / "sky.png"))
    assert line["faces"] == 1 and line["verdict"] in {"real", "fake", "uncertain"}
    result = app.test_cli_runner().invoke(args=["scan", str(media / "astronaut.jpg"), str(media / "missing.jpg")])
    assert result.exit_code == 0
    assert "astronaut.jpg: " in result.output and "score" in result.output
    assert "missing.jpg: error: No such file." in result.output


def test_scan_without_a_model_says_how_to_get_one(app, tmp_path, media):
    app.config["MODEL_PATH"] = str(tmp_path / "nothing.keras")
    result = app.test_cli_runner().invoke(args=["scan", str(media / "astronaut.jpg")])
    assert result.exit_code != 0 and "flask --app app train" in result.output


@pytest.mark.skipif(not (SHARED_VIDEOS.exists() and SHIPPED.exists()), reason="shared videos or model absent")
def test_scan_a_real_dataset_video_with_the_shipped_model(app):
    app.config["MODEL_PATH"] = str(SHIPPED)
    video = sorted((SHARED_VIDEOS / "fake").glob("*.mp4"))[0]
    (line,) = scan_json(app, "--frames", "8", str(video))
    assert line["kind"] == "video" and line["frames"] == 8 and line["faces"] >= 6
    assert line["verdict"] in {"real", "fake", "uncertain"}
