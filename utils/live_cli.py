"""`flask --app app live`: the live camera check on the command line.

Reads frames with OpenCV from a local camera, a stream URL, or a video file played in real time,
scores about one frame per interval with the same code as the /live page (utils.live), and prints a
rolling verdict once a second. When scoring falls behind, frames are skipped and counted, never
queued. Ends at the end of the source, after --seconds, or on Ctrl-C, always with a summary.
"""
from __future__ import annotations

import json
import math
import os
import time

import click
import cv2
import numpy as np
from flask import Flask, current_app
from flask.cli import with_appcontext

from utils.live import LiveSession, LiveSettings, aggregate_frames, score_frame

REPORT_EVERY_S = 1.0
CLI_MAX_FRAMES = 36_000  # scores only (no pictures are kept on the command line): ten hours at 1 frame/s


class FrameSource:
    """Frames "now": for a file, the frame at the wall-clock position since the start (real-time
    playback, skipping what scoring had no time for); for a camera or stream, the newest frame."""

    def __init__(self, spec: str, camera: int | None):
        self.is_file = camera is None and os.path.isfile(spec)
        self.name = f"camera {camera}" if camera is not None else spec
        self.capture = cv2.VideoCapture(camera if camera is not None else spec)
        if not self.capture.isOpened():
            what = f"No camera could be opened at index {camera}" if camera is not None else f"Could not open {spec}"
            raise click.ClickException(f"{what}. Check the device/path, or that OpenCV can decode it.")
        if camera is not None:
            self.capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 <= fps <= 1000 else 25.0
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self.position = 0  # index of the next frame a read() returns (files)
        self.started = time.monotonic()

    def read(self, elapsed: float):
        """(RGB frame, source time in seconds), or None at the end of the source."""
        if not self.is_file:
            ok, bgr = self.capture.read()
            return (cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), round(elapsed, 3)) if ok and bgr is not None else None
        target = int(elapsed * self.fps)
        if self.frame_count is not None and target >= self.frame_count:
            return None
        gap = target - self.position
        if 0 <= gap <= 2 * self.fps:  # close ahead: decoding forward is cheaper than a seek
            for _ in range(gap):
                if not self.capture.grab():
                    return None
        else:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, target)
        ok, bgr = self.capture.read()
        self.position = target + 1
        if not ok or bgr is None:
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), round(target / self.fps, 3)

    def close(self) -> None:
        self.capture.release()


def _line(now_s: float, session: LiveSession, detector, faces_now: int | None) -> dict:
    rolling = session.rolling_verdict(detector)
    rates = session.rates()
    return {"t": round(now_s, 2), **rolling.to_json(), "faces_now": faces_now,
            "scored_fps": round(rates.scored_fps, 2), "dropped_fps": round(rates.dropped_fps, 2),
            "scored": rates.scored, "dropped": rates.dropped}


def _text(line: dict) -> str:
    verdict = line["verdict"].replace("_", " ")
    score = "" if line["score"] is None else f" {line['score']:.2f}"
    faces = "-" if line["faces_now"] is None else str(line["faces_now"])
    return (f"{line['t']:7.1f} s  {verdict}{score}  (last {line['window_s']:g} s: {line['frames']} frames, "
            f"{line['frames_with_faces']} with faces)  faces now: {faces}  "
            f"scored {line['scored_fps']:.2f}/s, dropped {line['dropped_fps']:.2f}/s")


def summary(session: LiveSession, detector, reason: str, wall_s: float, source: str) -> dict:
    frames = session.kept_frames()
    verdict = aggregate_frames(frames, detector)
    rates = session.rates()
    return {"summary": {
        "source": source, "ended": reason, "seconds": round(wall_s, 2),
        "frames_scored": rates.scored, "frames_dropped": rates.dropped,
        "scored_fps": round(rates.scored / wall_s, 3) if wall_s > 0 else 0.0,
        "verdict": verdict.verdict, "score": verdict.score, "frames_with_faces": verdict.frames_with_faces,
        "explanation": verdict.explanation, "model_version": detector.version,
    }}


def _summary_text(result: dict) -> str:
    s = result["summary"]
    score = "" if s["score"] is None else f" (fake probability {s['score']:.2f})"
    return (f"Summary ({s['ended']}, {s['seconds']:.1f} s of {s['source']}): {s['verdict'].replace('_', ' ')}{score}. "
            f"{s['frames_scored']} frames scored ({s['scored_fps']:.2f}/s), {s['frames_dropped']} dropped. "
            f"{s['explanation']}")


def run_live(source: FrameSource, detector, *, interval_s: float, window_s: float, seconds: float | None,
             emit) -> dict:
    """The loop: score a frame each interval, emit a rolling line each second, stop cleanly."""
    session = LiveSession(None, LiveSettings(window_seconds=window_s, max_frames=CLI_MAX_FRAMES))
    start = time.monotonic()
    next_tick, next_report = start, start + REPORT_EVERY_S
    faces_now = None
    reason = "end of source"
    try:
        while True:
            now = time.monotonic()
            if seconds is not None and now - start >= seconds:
                reason = "time limit"
                break
            if now < next_tick:
                time.sleep(min(next_tick - now, 0.05))
                continue
            got = source.read(now - start)
            if got is None:
                break
            rgb, source_time = got
            faces, _ = score_frame(rgb, detector, keep_images=False)
            session.add_frame(rgb.shape[1], rgb.shape[0], faces, None, time_s=source_time)
            faces_now = len(faces)
            done = time.monotonic()
            next_tick += interval_s
            if next_tick < done:  # scoring took longer than the interval: those frames are skipped
                missed = math.floor((done - next_tick) / interval_s) + 1
                for _ in range(missed):
                    session.note_dropped()
                next_tick += missed * interval_s
            if done >= next_report:
                emit(_line(done - start, session, detector, faces_now))
                while next_report <= done:
                    next_report += REPORT_EVERY_S
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        source.close()
    return summary(session, detector, reason, time.monotonic() - start, source.name)


def warm_up(detector) -> None:
    """Load the face finder and trace the model once before the clock starts, so the first
    second of a real-time source is not spent compiling."""
    import convert

    convert.find_faces(np.zeros((64, 64, 3), np.uint8))
    detector.score(np.zeros((1, detector.input_size, detector.input_size, 3), np.uint8))


def register(app: Flask) -> None:
    @app.cli.command("live")
    @click.option("--camera", type=int, default=None, help="Local camera index (0 is the first camera).")
    @click.option("--source", default=None, help="A video file (played in real time) or a stream URL.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per second, then a summary object.")
    @click.option("--seconds", type=float, default=None, help="Stop after this many seconds.")
    @click.option("--interval", type=float, default=None,
                  help="Seconds between scored frames (default LIVE_FRAME_INTERVAL_MS).")
    @click.option("--window", type=float, default=None, help="Rolling verdict window in seconds (default LIVE_WINDOW_SECONDS).")
    @with_appcontext
    def live_command(camera, source, as_json, seconds, interval, window):
        """Rolling deepfake verdict for a camera or a video, printed once a second; Ctrl-C ends with a summary."""
        from utils.model import ModelUnavailable, get_detector

        if (camera is None) == (source is None):
            raise click.UsageError("Give exactly one of --camera INDEX or --source FILE_OR_URL.")
        config = current_app.config
        interval = interval if interval is not None else config.get("LIVE_FRAME_INTERVAL_MS", 1000) / 1000.0
        window = window if window is not None else float(config.get("LIVE_WINDOW_SECONDS", 10))
        if interval <= 0 or window <= 0 or (seconds is not None and seconds <= 0):
            raise click.UsageError("--interval, --window and --seconds must be positive.")
        try:
            detector = get_detector(config["MODEL_PATH"])
        except ModelUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
        warm_up(detector)
        frames = FrameSource(source, camera)

        def emit(line: dict) -> None:
            click.echo(json.dumps(line) if as_json else _text(line))

        if not as_json:
            click.echo(f"Checking {frames.name}: one frame every {interval:g} s, verdict over the last {window:g} s. "
                       "Ctrl-C to stop.", err=True)
        result = run_live(frames, detector, interval_s=interval, window_s=window, seconds=seconds, emit=emit)
        click.echo(json.dumps(result) if as_json else _summary_text(result))
