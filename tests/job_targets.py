"""Stand-ins for analyse(analysis_id, progress=) used to test the job runners without the model.

They behave like the pipeline where the runners can see it: the row goes running, stages and
progress are written as they pass, and it ends done. Pace is set by environment variables so a
worker subprocess can be told how slow to be. Real end-to-end runs with the model live in
tests/test_jobs.py and tests/test_scaleout.py as well."""
from __future__ import annotations

import os
import threading
import time

from extensions import db
from models import Analysis

STEP_S = float(os.environ.get("FAKE_JOB_STEP_SECONDS", "0.05"))
FRAMES = int(os.environ.get("FAKE_JOB_FRAMES", "4"))

# In-process observations (same process only): stages seen and how many jobs ran at once.
seen_stages: list[tuple[int, str]] = []
_running_now = 0
max_running_at_once = 0
_lock = threading.Lock()
# When a test sets this, staged() jobs wait for it before their first step (at most GATE_TIMEOUT_S).
gate: threading.Event | None = None
GATE_TIMEOUT_S = 10.0


def reset() -> None:
    global _running_now, max_running_at_once
    seen_stages.clear()
    _running_now = 0
    max_running_at_once = 0


def _stage(analysis: Analysis, stage: str, fraction: float, progress) -> None:
    analysis.stage = stage
    analysis.progress = fraction
    db.session.commit()
    seen_stages.append((analysis.id, stage))
    progress(stage, fraction)


def staged(analysis_id: int, progress) -> None:
    """Decoding, one step per frame, scoring, done: FRAMES + 2 steps of STEP_S each."""
    global _running_now, max_running_at_once
    with _lock:
        _running_now += 1
        max_running_at_once = max(max_running_at_once, _running_now)
    try:
        if gate is not None:
            gate.wait(GATE_TIMEOUT_S)
        analysis = db.session.get(Analysis, analysis_id)
        analysis.status = "running"
        db.session.commit()
        _stage(analysis, "decoding", 0.05, progress)
        time.sleep(STEP_S)
        for i in range(FRAMES):
            _stage(analysis, f"finding faces: frame {i + 1} of {FRAMES}", 0.1 + 0.7 * i / FRAMES, progress)
            time.sleep(STEP_S)
        _stage(analysis, "scoring", 0.9, progress)
        time.sleep(STEP_S)
        analysis.status = "done"
        analysis.stage = "done"
        analysis.progress = 1.0
        analysis.explanation = "test stand-in for the pipeline"
        db.session.commit()
    finally:
        with _lock:
            _running_now -= 1


def slow_first_attempt(analysis_id: int, progress) -> None:
    """The first run takes ~forever (killing its process is the test); later runs are quick."""
    analysis = db.session.get(Analysis, analysis_id)
    if analysis.attempts <= 1:
        analysis.status = "running"
        db.session.commit()
        for i in range(3000):
            _stage(analysis, f"finding faces: frame {i + 1} of 3000", i / 3000, progress)
            time.sleep(0.1)
    staged(analysis_id, progress)


def endless_with_progress(analysis_id: int, progress) -> None:
    """Reports progress forever: a time limit must stop it at the next step."""
    analysis = db.session.get(Analysis, analysis_id)
    analysis.status = "running"
    db.session.commit()
    i = 0
    while True:
        i += 1
        _stage(analysis, f"finding faces: frame {i}", 0.5, progress)
        time.sleep(0.1)


def stuck_without_progress(analysis_id: int, progress) -> None:
    """Blocks without ever calling progress (like a decoder that hangs) for STUCK_SECONDS."""
    analysis = db.session.get(Analysis, analysis_id)
    analysis.status = "running"
    db.session.commit()
    time.sleep(float(os.environ.get("FAKE_JOB_STUCK_SECONDS", "6")))
    analysis.status = "done"
    db.session.commit()


def crashing(analysis_id: int, progress) -> None:
    """A bug that escapes the pipeline's own error handling."""
    raise RuntimeError("bug in the pipeline")


def leaves_running(analysis_id: int, progress) -> None:
    """Returns without settling the row; the runner must not leave it running."""
    analysis = db.session.get(Analysis, analysis_id)
    analysis.status = "running"
    db.session.commit()
