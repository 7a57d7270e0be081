"""Detector speed on this machine, measured in one run against the seeds' `model.predict` path.

    .venv/bin/python benchmarks/bench_detector.py [--model utils/weights/detector.keras] [--repeat 30]

Prints a Markdown table: per-crop latency (batch 1 and 32) through the compiled call vs
`model.predict` per image, face detection per 640x480 frame (BlazeFace and the Haar fallback),
end-to-end 1-megapixel photo, end-to-end 30 s 720p video with 32 sampled frames (best of 3), resident
memory (VmRSS) after loading, after the photos, after the first and the third video, and its peak (VmHWM).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as skdata  # noqa: E402

import convert  # noqa: E402

TARGETS = {"crop": 10.0, "ratio": 5.0, "photo": 150.0, "video": 5000.0, "rss": 800.0}


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MB (VmHWM: its peak so far)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, repeat: int) -> float:
    """Median wall time in ms over `repeat` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def scene(width: int, height: int, face_side: int, x: int, y: int) -> np.ndarray:
    """A grey room with the astronaut's head pasted in at a given size and place."""
    head = cv2.resize(skdata.astronaut()[0:300, 100:400], (face_side, face_side))
    canvas = np.full((height, width, 3), 120, np.uint8)
    canvas[:, :, 0] = np.linspace(80, 170, width, dtype=np.uint8)
    canvas[y:y + face_side, x:x + face_side] = head
    return canvas


def write_video(path: Path, seconds: int = 30, fps: int = 30) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    for i in range(seconds * fps):
        x = 200 + int(500 * (0.5 + 0.5 * np.sin(i / 40)))
        writer.write(cv2.cvtColor(scene(1280, 720, 260, x, 200), cv2.COLOR_RGB2BGR))
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "utils" / "weights" / "detector.keras"))
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    rss_start = rss_mb()
    from utils.analysis import inspect_media
    from utils.model import get_detector

    load_start = time.perf_counter()
    detector = get_detector(args.model)
    detector.score(np.zeros((1, detector.input_size, detector.input_size, 3), np.uint8))
    load_s = time.perf_counter() - load_start
    rss_loaded = rss_mb()
    size = detector.input_size
    rng = np.random.default_rng(0)
    crops1 = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    crops32 = rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8)

    rows = []
    batch1 = timed(lambda: detector.score(crops1), args.repeat)
    batch32 = timed(lambda: detector.score(crops32), max(5, args.repeat // 3)) / 32
    predict = timed(lambda: detector.model.predict(crops1.astype(np.float32), verbose=0), max(5, args.repeat // 2))
    rows.append(("model, 1 crop (compiled call, batch 1)", f"{batch1:.1f} ms", f"<= {TARGETS['crop']:.0f} ms"))
    rows.append(("model, per crop in a batch of 32", f"{batch32:.2f} ms", f"<= {TARGETS['crop']:.0f} ms"))
    rows.append(("seeds' path: `model.predict` per image", f"{predict:.1f} ms", "baseline"))
    rows.append(("speed-up, batch 1 vs `model.predict`", f"{predict / batch1:.1f}x", f">= {TARGETS['ratio']:.0f}x"))
    rows.append(("speed-up, batch 32 vs `model.predict`", f"{predict / batch32:.0f}x", f">= {TARGETS['ratio']:.0f}x"))

    frame = scene(640, 480, 160, 240, 120)
    finder = convert.get_face_finder()
    found = finder(frame)
    detect = timed(lambda: finder(frame), args.repeat)
    haar = convert.HaarFaceFinder()
    haar_ms = timed(lambda: haar(frame), max(5, args.repeat // 3))
    rows.append((f"face detection, 640x480 frame ({finder.name}, {len(found)} face)", f"{detect:.1f} ms", "-"))
    rows.append(("face detection, 640x480 frame (Haar fallback)", f"{haar_ms:.1f} ms", "-"))
    del haar  # the fallback is not loaded where BlazeFace is (~19 MB): keep it out of the memory rows

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        Image.fromarray(scene(1200, 900, 300, 450, 200)).save(photo, quality=90)  # 1.08 MP
        report = inspect_media(photo, detector=detector)
        photo_ms = timed(lambda: inspect_media(photo, detector=detector), max(5, args.repeat // 3))
        rows.append((f"end to end, 1.1 MP JPEG photo ({len(report.faces)} face)", f"{photo_ms:.0f} ms",
                     f"<= {TARGETS['photo']:.0f} ms"))
        rss_photo = rss_mb()

        video = Path(tmp) / "video.mp4"
        write_video(video)
        video_s, rss_videos = float("inf"), []
        for _ in range(3):
            start = time.perf_counter()
            report = inspect_media(video, detector=detector, frames=32)
            video_s = min(video_s, time.perf_counter() - start)
            rss_videos.append(rss_mb())
        rows.append((f"end to end, 30 s 720p mp4v video, 32 frames ({len(report.faces)} faces)",
                     f"{video_s:.2f} s", f"<= {TARGETS['video'] / 1000:.0f} s"))

    rows.append(("resident memory after loading (+ one scored batch)", f"{rss_loaded:.0f} MB",
                 f"<= {TARGETS['rss']:.0f} MB"))
    rows.append(("resident memory after the photo runs", f"{rss_photo:.0f} MB",
                 f"<= {TARGETS['rss']:.0f} MB"))
    rows.append(("resident memory after one 30 s 720p video", f"{rss_videos[0]:.0f} MB", f"<= {TARGETS['rss']:.0f} MB"))
    rows.append(("resident memory after three videos", f"{rss_videos[-1]:.0f} MB", f"<= {TARGETS['rss']:.0f} MB"))
    rows.append(("peak resident memory of this run (VmHWM)", f"{rss_mb('VmHWM'):.0f} MB", "-"))

    print(f"model {detector.version}, input {size} px, file {Path(args.model).stat().st_size / 1e6:.2f} MB, "
          f"load {load_s:.1f} s, python start RSS {rss_start:.0f} MB, {os.cpu_count()} CPUs")
    print("| measurement | result | target |")
    print("|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")


if __name__ == "__main__":
    main()
