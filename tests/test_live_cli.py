"""`flask --app app live` on a video file source: real-time playback, one line per second, a summary
at the end of the source, after --seconds, and on Ctrl-C. Uses the shipped model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_astronaut_video(path: Path, seconds: float, fps: int = 10, side: int = 320) -> Path:
    """A video made here from skimage's astronaut photo (one face), drifting slowly sideways."""
    from skimage import data

    frame = cv2.cvtColor(cv2.resize(data.astronaut(), (side, side)), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (side, side))
    assert writer.isOpened()
    for i in range(int(seconds * fps)):
        writer.write(np.roll(frame, i, axis=1))
    writer.release()
    return path


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> Path:
    return write_astronaut_video(tmp_path_factory.mktemp("live") / "astronaut-3s.mp4", 3.0)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return write_astronaut_video(tmp_path_factory.mktemp("live") / "astronaut-30s.mp4", 30.0)


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_json_lines_per_second_then_summary_at_end_of_source(runner, short_video):
    started = time.monotonic()
    result = runner.invoke(args=["live", "--source", str(short_video), "--json"])
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    lines = json_lines(result.output)
    summary = lines[-1]["summary"]
    assert summary["ended"] == "end of source"
    # Played in real time: a 3 s video takes about 3 s and is scored about once a second.
    assert 2.5 <= summary["seconds"] <= 6.0 and took >= 2.5
    assert 2 <= summary["frames_scored"] <= 4
    assert summary["frames_with_faces"] == summary["frames_scored"]  # the astronaut is found every time
    assert summary["verdict"] in ("real", "fake", "uncertain") and 0.0 <= summary["score"] <= 1.0
    per_second = lines[:-1]
    assert len(per_second) >= 2
    times = [line["t"] for line in per_second]
    assert times == sorted(times) and times[-1] - times[0] >= 0.9
    for line in per_second:
        assert line["faces_now"] == 1 and line["verdict"] in ("real", "fake", "uncertain")
        assert line["frames_with_faces"] == line["frames"] and line["scored"] >= 1


def test_seconds_limit_ends_with_a_summary(runner, long_video):
    result = runner.invoke(args=["live", "--source", str(long_video), "--json", "--seconds", "2",
                                 "--interval", "0.5"])
    assert result.exit_code == 0, result.output
    summary = json_lines(result.output)[-1]["summary"]
    assert summary["ended"] == "time limit"
    assert 2.0 <= summary["seconds"] < 4.0
    assert 3 <= summary["frames_scored"] + summary["frames_dropped"] <= 6


def test_text_output_is_one_line_per_second_and_a_summary(runner, short_video):
    result = runner.invoke(args=["live", "--source", str(short_video)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Summary (end of source")
    assert any(" s  " in line and "faces now: 1" in line for line in lines[:-1])


@pytest.mark.parametrize("args", [[], ["--camera", "0", "--source", "x.mp4"]])
def test_exactly_one_source_is_required(runner, args):
    result = runner.invoke(args=["live", *args])
    assert result.exit_code == 2
    assert "exactly one of --camera" in result.output


def test_unreadable_source_is_a_clear_error(runner, tmp_path):
    bogus = tmp_path / "not-a-video.mp4"
    bogus.write_text("hello")
    result = runner.invoke(args=["live", "--source", str(bogus)])
    assert result.exit_code == 1
    assert "Could not open" in result.output


def test_ctrl_c_ends_cleanly_with_a_summary(tmp_path, long_video):
    """A real process and a real SIGINT, as a terminal's Ctrl-C sends."""
    env = dict(os.environ, SECRET_KEY="test", DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
               UPLOAD_FOLDER=str(tmp_path / "uploads"), DERIVED_FOLDER=str(tmp_path / "derived"))
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "live", "--source", str(long_video), "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        # As from a terminal: Ctrl-C's default action. A suite started in the background ('make test &')
        # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = process.stdout.readline()
        assert json.loads(first)["frames"] >= 1
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    summary = json_lines(rest)[-1]["summary"]
    assert summary["ended"] == "interrupted", summary
    assert summary["frames_scored"] >= 1 and summary["seconds"] < 30
