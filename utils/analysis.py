"""The one pipeline: media file -> face crops (convert.py) -> scores (utils/model.py) -> verdict.

`inspect_media()` is pure (no database) and serves the CLI `scan` and the live camera;
`analyse(analysis_id)` wraps it for an Analysis row and is what the web, the API and the
job runners all call.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from flask import current_app
from PIL import Image

import convert
from utils.aggregate import MediaVerdict, aggregate_faces
from utils.detail import face_detail
from utils.model import trim_malloc  # TensorFlow loads only inside Detector(): cheap here

Progress = Callable[[str, float], None]

MODEL_UNAVAILABLE_REASON = ("The detection model is not available on the server (missing or damaged), so "
                            "nothing was analysed. The operators can see this on /healthz; please try again later.")


def _no_progress(stage: str, fraction: float) -> None:
    pass


@dataclass
class ScoredFace:
    frame_index: int
    person: int
    box: tuple[int, int, int, int]  # x, y, w, h in the source frame
    score: float
    detail: float | None = None  # fine detail left in the crop (utils.detail)
    crop: np.ndarray | None = field(default=None, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)


@dataclass
class ScoredFrame:
    index: int
    time_s: float
    faces_count: int
    score: float | None
    image: np.ndarray | None = field(default=None, repr=False)


@dataclass
class MediaReport:
    """Everything the pipeline concluded about one file, before anything is stored."""

    kind: str
    verdict: MediaVerdict
    threshold: float
    uncertain_low: float
    uncertain_high: float
    model_version: str
    width: int | None
    height: int | None
    duration_s: float | None
    fps: float | None
    frame_count: int | None
    faces: list[ScoredFace]
    frames: list[ScoredFrame]

    def to_json(self) -> dict:
        """The JSON shape shared by `scan --json` and the API."""
        return {
            "kind": self.kind,
            "verdict": self.verdict.verdict,
            "score": self.verdict.score,
            "threshold": self.threshold,
            "uncertain_band": [self.uncertain_low, self.uncertain_high],
            "model_version": self.model_version,
            "faces": [
                {"frame": f.frame_index, "person": f.person, "box": list(f.box), "score": f.score,
                 "detail": None if f.detail is None else round(f.detail, 3)}
                for f in self.faces
            ],
            "frames": [
                {"index": f.index, "time_s": f.time_s, "faces": f.faces_count, "score": f.score}
                for f in self.frames
            ],
            "explanation": self.verdict.explanation,
        }


def media_limits_from_config(config) -> convert.MediaLimits:
    return convert.MediaLimits(
        image_max_pixels=config["IMAGE_MAX_PIXELS"],
        video_max_pixels=config["VIDEO_MAX_PIXELS"],
        video_max_seconds=config["VIDEO_MAX_SECONDS"],
    )


def inspect_media(
    path: str | Path,
    *,
    detector,
    limits: convert.MediaLimits | None = None,
    frames: int = 32,
    whole_image: bool = False,
    with_heatmaps: bool = False,
    progress: Progress = _no_progress,
    decode_limits=None,
) -> MediaReport:
    """Decode, find faces, score them and aggregate. Raises convert.MediaError on bad media.
    With decode_limits (utils.bounded_decode.DecodeLimits) decoding runs in a child process under
    those time and memory limits: how uploads are analysed."""
    extract = convert.extract_faces
    if decode_limits is not None:
        from functools import partial

        from utils.bounded_decode import extract_faces_bounded

        extract = partial(extract_faces_bounded, decode_limits=decode_limits)
    media = extract(
        path,
        input_size=detector.input_size,
        frames=frames,
        limits=limits or convert.MediaLimits(),
        whole_image=whole_image,
        progress=progress,
    )
    all_faces = [(frame, face) for frame in media.frames for face in frame.faces]
    progress("scoring", 0.0)
    crops = np.stack([face.crop for _, face in all_faces]) if all_faces else None
    scores = detector.score(crops) if crops is not None else np.zeros(0)
    details = face_detail(crops) if crops is not None else np.zeros(0)
    heatmaps = detector.heatmaps(crops) if (with_heatmaps and crops is not None) else None
    progress("scoring", 1.0)

    persons = convert.assign_persons(media.frames)
    scored_faces = []
    for i, (frame, face) in enumerate(all_faces):
        scored_faces.append(
            ScoredFace(
                frame_index=frame.index,
                person=persons[i],
                box=tuple(int(v) for v in face.box),
                score=float(scores[i]),
                detail=float(details[i]),
                crop=face.crop,
                heatmap=None if heatmaps is None else heatmaps[i],
            )
        )
    scored_frames = []
    for frame in media.frames:
        frame_scores = [f.score for f in scored_faces if f.frame_index == frame.index]
        scored_frames.append(
            ScoredFrame(
                index=frame.index,
                time_s=frame.time_s,
                faces_count=len(frame.faces),
                score=max(frame_scores) if frame_scores else None,
                image=frame.image,
            )
        )
    del crops  # the stacked copy (each face keeps its own crop)
    trim_malloc()  # hand the decoding and scoring temporaries back to the OS
    bands, band_note = detector.bands_for_media(media.kind)  # photos: the card's photo band, where it has one
    verdict = aggregate_faces(
        [(f.frame_index, f.person, f.score, f.detail) for f in scored_faces],
        frames_sampled=len(media.frames),
        threshold=detector.threshold,
        uncertain_band=bands.default,
        kind=media.kind,
        detail_bands=bands,
        band_note=band_note,
    )
    return MediaReport(
        kind=media.kind,
        verdict=verdict,
        threshold=detector.threshold,
        uncertain_low=verdict.band[0],  # the band this verdict used (wider for faces without detail)
        uncertain_high=verdict.band[1],
        model_version=detector.version,
        width=media.width,
        height=media.height,
        duration_s=media.duration_s,
        fps=media.fps,
        frame_count=media.frame_count,
        faces=scored_faces,
        frames=scored_frames,
    )


def _save_jpeg(array: np.ndarray, path: Path, max_side: int = 480) -> None:
    image = Image.fromarray(array)
    image.thumbnail((max_side, max_side))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=85)


def _save_heatmap(crop: np.ndarray, heatmap: np.ndarray, path: Path) -> None:
    """Overlay the heatmap on the crop in a colour map, so it reads without a legend."""
    import matplotlib

    heat = np.clip(heatmap, 0.0, 1.0)
    heat_img = Image.fromarray((heat * 255).astype(np.uint8)).resize(
        (crop.shape[1], crop.shape[0]), Image.BILINEAR
    )
    coloured = (matplotlib.colormaps["jet"](np.asarray(heat_img) / 255.0)[..., :3] * 255).astype(np.uint8)
    blended = (0.55 * crop.astype(np.float32) + 0.45 * coloured.astype(np.float32)).astype(np.uint8)
    _save_jpeg(blended, path, max_side=crop.shape[0])


def store_report(analysis, report: MediaReport) -> None:
    """Write a report onto its Analysis row (faces, frames, derived images). Caller commits."""
    from models import FaceResult, FrameResult
    from utils import storage

    out_dir = storage.derived_dir(analysis.id)
    out_dir.mkdir(parents=True, exist_ok=True)
    v = report.verdict
    analysis.kind = analysis.kind if analysis.kind == "live" else report.kind
    analysis.verdict = v.verdict
    analysis.score = v.score
    analysis.threshold = report.threshold
    analysis.uncertain_low = report.uncertain_low
    analysis.uncertain_high = report.uncertain_high
    analysis.model_version = report.model_version
    analysis.explanation = v.explanation
    analysis.faces_found = len(report.faces)
    analysis.frames_sampled = len(report.frames)
    analysis.frames_with_faces = v.frames_with_faces
    analysis.width, analysis.height = report.width, report.height
    analysis.duration_s, analysis.fps, analysis.frame_count = (
        report.duration_s, report.fps, report.frame_count)

    analysis.faces.clear()
    analysis.frames.clear()
    for i, frame in enumerate(report.frames):
        thumb = None
        if frame.image is not None:
            thumb = f"frame-{i:03d}.jpg"
            _save_jpeg(frame.image, out_dir / thumb)
        analysis.frames.append(
            FrameResult(index=frame.index, time_s=frame.time_s, faces_count=frame.faces_count,
                        score=frame.score, thumb_name=thumb)
        )
    for i, face in enumerate(report.faces):
        crop_name = heat_name = None
        if face.crop is not None:
            crop_name = f"face-{i:03d}.jpg"
            _save_jpeg(face.crop, out_dir / crop_name, max_side=face.crop.shape[0])
        if face.heatmap is not None and face.crop is not None:
            heat_name = f"heat-{i:03d}.jpg"
            _save_heatmap(face.crop, face.heatmap, out_dir / heat_name)
        x, y, w, h = face.box
        analysis.faces.append(
            FaceResult(frame_index=face.frame_index, person=face.person, x=x, y=y, w=w, h=h,
                       score=face.score, crop_name=crop_name, heatmap_name=heat_name)
        )
    if v.verdict in ("fake", "uncertain") and not analysis.flagged:
        analysis.flagged = True
        analysis.flag_reason = "auto"


def set_progress(analysis, stage: str, fraction: float) -> None:
    from extensions import db

    analysis.stage = stage
    analysis.progress = max(0.0, min(1.0, fraction))
    db.session.commit()


def analyse(analysis_id: int, progress: Progress | None = None) -> None:
    """Run the pipeline for one Analysis row and store the outcome: done with a verdict, or failed
    with a human reason. Never leaves the row 'running'. Job runners own status/lease fields; this
    function owns the verdict fields."""
    from extensions import db
    from models import Analysis, utcnow
    from utils import storage
    from utils.bounded_decode import decode_limits_from_config
    from utils.model import ModelUnavailable, get_detector

    analysis = db.session.get(Analysis, analysis_id)
    if analysis is None:
        return
    config = current_app.config
    stage_weights = {"decoding": (0.0, 0.1), "finding faces": (0.1, 0.8), "scoring": (0.8, 1.0)}

    def report_progress(stage: str, fraction: float) -> None:
        lo, hi = stage_weights.get(stage, (0.0, 1.0))
        set_progress(analysis, stage, lo + (hi - lo) * fraction)
        if progress is not None:
            progress(stage, fraction)

    analysis.status = "running"
    analysis.started_at = analysis.started_at or utcnow()
    analysis.error = None
    db.session.commit()
    try:
        if not analysis.stored_name:
            raise convert.MediaError("The media file was removed, so it cannot be analysed again.")
        detector = get_detector(config["MODEL_PATH"])
        report = inspect_media(
            storage.upload_path(analysis.stored_name),
            detector=detector,
            limits=media_limits_from_config(config),
            frames=config["VIDEO_FRAMES"],
            with_heatmaps=True,
            progress=report_progress,
            decode_limits=decode_limits_from_config(config),
        )
        store_report(analysis, report)
        analysis.status = "done"
        analysis.stage = "done"
        analysis.progress = 1.0
    except (convert.MediaError, ModelUnavailable) as exc:
        db.session.rollback()
        analysis = db.session.get(Analysis, analysis_id)
        analysis.status = "failed"
        analysis.error = str(exc)
        if isinstance(exc, ModelUnavailable):  # its text names server paths: for the log, not the user
            current_app.logger.error("analysis %s: model unavailable: %s", analysis_id, exc)
            analysis.error = MODEL_UNAVAILABLE_REASON
    except Exception:
        current_app.logger.exception("analysis %s crashed", analysis_id)
        db.session.rollback()
        analysis = db.session.get(Analysis, analysis_id)
        analysis.status = "failed"
        analysis.error = "An internal error stopped the analysis. It has been logged; please try again later."
    analysis.finished_at = utcnow()
    db.session.commit()
