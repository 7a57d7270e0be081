"""Hostile and broken media through the real upload form and the real pipeline (jobs run inline).

Every sample is built here from scratch. Each must end in one of two ways: refused at upload with a
clear message (and then no file and no row are left), or accepted and its analysis settled as `done`
with a verdict or `failed` with a reason a person can act on (never the generic internal error,
never left `running`). Either way no orphan file, no derived folder without a finished analysis,
and the server still answers. Decoding runs in the bounded child process (utils/bounded_decode.py).

Accepted formats (decided by content, never by name): images JPEG, PNG, HEIC/HEIF, AVIF, WebP, BMP,
plus GIF and TIFF as stills (first frame); videos MP4/MOV (H.264, HEVC), AVI, WebM (VP8, AV1), MKV. Refused: SVG, PDF, HEIF
image sequences, text, HTML, archives, anything else.
"""
from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from markupsafe import escape
from PIL import Image
from skimage import data as skdata

import convert  # noqa: F401  registers the HEIC/HEIF plugin that the samples below are written with
from conftest import jpeg_bytes
from extensions import db
from models import Analysis

INTERNAL_ERROR = "An internal error stopped the analysis"


# ---------------------------------------------------------------- building samples

def astronaut() -> np.ndarray:
    return skdata.astronaut()  # 512x512 RGB, one clear face


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(rgb: np.ndarray, **options) -> bytes:
    return encode(Image.fromarray(rgb), "JPEG", quality=90, **options)


def grey(h=240, w=320, value=128) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming width x height, with one row of real data: a bomb's shape
    without the bomb (the decoder must refuse from the header alone)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(b"\x00" * (min(width, 4096) + 1)))
    return b"\x89PNG\r\n\x1a\n" + header + data + png_chunk(b"IEND", b"")


def png_bomb(side: int = 20000) -> bytes:
    """A real decompression bomb: side x side grey pixels (400 MB decoded) in a few hundred KB."""
    row = b"\x00" + b"\x00" * side
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    raw = bytearray(jpeg(grey(16, 16)))
    sof = raw.find(b"\xff\xc0")
    raw[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def gif_declaring(width: int, height: int) -> bytes:
    raw = bytearray(encode(Image.fromarray(grey(8, 8)), "GIF"))
    raw[6:10] = struct.pack("<HH", width, height)  # logical screen
    image_descriptor = raw.find(b"\x2c")
    raw[image_descriptor + 5:image_descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(raw)


def exif_rotated_astronaut() -> bytes:
    """The astronaut cropped to 512x400, stored rotated a quarter turn with EXIF Orientation=6, so
    only a decoder that applies the tag sees an upright face and a 512x400 picture."""
    upright = astronaut()[:400]
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 400 wide, 512 high on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(stored), "JPEG", quality=90, exif=exif.tobytes())


def exif_rotated_astronaut_as(fmt: str) -> bytes:
    """The same rotated astronaut as a phone's HEIC or an AVIF: libheif stores the turn in the
    file's `irot` box, Pillow's AVIF writer keeps the EXIF tag; either way the picture is upright."""
    upright = astronaut()[:400]
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(stored), fmt, quality=85, exif=exif.tobytes())


def tiled_faces() -> np.ndarray:
    small = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    return np.vstack([np.hstack([small, small]), np.hstack([small, small])])


def cv2_video(frames: list[np.ndarray], fourcc="mp4v", suffix=".mp4", fps=10.0, tmp=None) -> bytes:
    path = Path(tmp) / f"video{suffix}"
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path.read_bytes()


def av_video(frames: list[np.ndarray], *, fmt="mp4", codec="libx264", pts=None, time_base=None,
             rate=10, pix_fmt="yuv420p") -> bytes:
    """Encoded with PyAV (H.264 and exact timestamps, which OpenCV cannot write)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        h, w = frames[0].shape[:2]
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def video_without_frames() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()  # header and index written, no frame ever muxed
    return buffer.getvalue()


def audio_only_mp4() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = (np.sin(np.arange(16000) / 10) * 3000).astype(np.int16)[None, :]
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024].copy(), format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def with_rotation_matrix(mp4: bytes) -> bytes:
    """Set the track header's display matrix to a quarter turn (how phones record portrait video)."""
    raw = bytearray(mp4)
    tkhd = raw.find(b"tkhd")
    matrix = tkhd + 44 + (12 if raw[tkhd + 4] == 1 else 0)
    raw[matrix:matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    return bytes(raw)


def corrupt_middle(content: bytes, seed=1) -> bytes:
    raw = bytearray(content)
    rng = np.random.default_rng(seed)
    start, end = len(raw) // 3, 2 * len(raw) // 3
    raw[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    return bytes(raw)


# ---------------------------------------------------------------- expectations

@dataclass
class Expect:
    outcome: str  # "refused" | "failed" | "done" | "settled" (done or failed: both are acceptable)
    text: str = ""  # part of the refusal message or of the failure reason
    verdict: str | None = None  # "face" (real/fake/uncertain) | "no_face" | None (any)
    kind: str | None = None
    check: object = None  # extra check(analysis)


def faces_at_least(n):
    def check(a):
        assert a.faces_found >= n, f"{a.faces_found} faces found, expected at least {n}"
    return check


def dims(width, height, faces=1):
    def check(a):
        assert (a.width, a.height) == (width, height), (a.width, a.height)
        assert a.faces_found >= faces
    return check


def one_frame_with_a_face(a):
    assert a.frames_with_faces == 1 and a.frames_sampled >= 5, (a.frames_with_faces, a.frames_sampled)


def single_frame(a):
    assert a.frames_sampled == 1 and a.frame_count == 1


UNSUPPORTED = "neither a supported image"
DAMAGED = "damaged or truncated"


def build_samples(tmp) -> dict[str, tuple[bytes, str, Expect]]:
    face = astronaut()
    face_jpeg = jpeg(face)
    face_png = encode(Image.fromarray(face), "PNG")
    moving_grey = [grey(120, 160, 60 + 10 * i) for i in range(12)]
    mp4v = cv2_video(moving_grey, tmp=tmp)
    x264_faststart = av_video(moving_grey)
    face_frames = [grey(256, 256, 90 + i) for i in range(10)]
    face_frames[5] = cv2.resize(face, (256, 256))
    rotated = with_rotation_matrix(av_video([np.ascontiguousarray(np.rot90(face[:400], k=1))] * 3))
    apng = encode(Image.fromarray(face), "PNG", save_all=True,
                  append_images=[Image.fromarray(grey(512, 512)), Image.fromarray(face[::-1].copy())])
    webp_anim = encode(Image.fromarray(face), "WEBP", save_all=True,
                       append_images=[Image.fromarray(grey(512, 512))], duration=100)
    rgba = np.dstack([face, np.linspace(0, 255, 512 * 512).astype(np.uint8).reshape(512, 512)])
    deep = Image.fromarray(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)  # mode I;16
    return {
        # empty, truncated, corrupt
        "empty": (b"", "empty.jpg", Expect("refused", "empty")),
        "truncated jpeg": (face_jpeg[: len(face_jpeg) // 2], "cut.jpg", Expect("failed", DAMAGED)),
        "jpeg header only": (face_jpeg[:200], "head.jpg", Expect("failed", DAMAGED)),
        "truncated png": (face_png[: len(face_png) // 2], "cut.png", Expect("failed", DAMAGED)),
        "corrupt png crc": (face_png[:40] + b"\x00\x00\x00\x00" + face_png[44:], "crc.png", Expect("failed")),
        "truncated mp4 (index at the end)": (mp4v[: len(mp4v) // 2], "cut.mp4", Expect("failed", "video")),
        "truncated mp4 (index first)": (x264_faststart[: len(x264_faststart) * 2 // 3], "cut2.mp4",
                                        Expect("settled")),
        "corrupt mp4": (corrupt_middle(x264_faststart), "noise.mp4", Expect("settled")),
        "mp4 header then noise": (mp4v[:64] + np.random.default_rng(2).bytes(20000), "junk.mp4",
                                  Expect("failed", "video")),
        # content that does not match its name
        "text named .jpg": (b"just some words\n" * 20, "notes.jpg", Expect("refused", UNSUPPORTED)),
        "html named .jpg": (b"<!doctype html><html><script>alert(document.cookie)</script></html>", "page.jpg",
                            Expect("refused", UNSUPPORTED)),
        "text named .mp4": (b"definitely not a video\n" * 10, "clip.mp4", Expect("refused", UNSUPPORTED)),
        "image named .mp4": (face_jpeg, "clip.mp4", Expect("done", verdict="face", kind="image")),
        "video named .jpg": (x264_faststart, "photo.jpg", Expect("done", verdict="no_face", kind="video")),
        "jpeg + html polyglot": (face_jpeg + b"<html><script>alert(1)</script></html>", "poly.html",
                                 Expect("done", verdict="face", kind="image")),
        "gif header + script": (b"GIF89a/*\x00\x00*/=1;<script>alert(1)</script>", "poly.gif",
                                Expect("failed")),
        "jpeg + zip polyglot": (face_jpeg + b"PK\x03\x04" + b"\x00" * 26 + b"evil.txt", "poly.jpg",
                                Expect("done", verdict="face", kind="image")),
        # formats we do not accept
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "x.svg",
                Expect("refused", UNSUPPORTED)),
        "svg named .png": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "x.png",
                           Expect("refused", UNSUPPORTED)),
        "pdf": (b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "doc.pdf", Expect("refused", UNSUPPORTED)),
        "heic header, no picture": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
                                    "phone.heic", Expect("failed", "damaged")),
        "heif image sequence": (b"\x00\x00\x00\x14ftypmsf1\x00\x00\x00\x00msf1" + b"\x00" * 64, "burst.heics",
                                Expect("refused", "sequences")),
        "zip": (b"PK\x03\x04" + b"\x00" * 60, "archive.zip", Expect("refused", UNSUPPORTED)),
        "elf executable": (b"\x7fELF\x02\x01\x01" + b"\x00" * 60, "run.jpg", Expect("refused", UNSUPPORTED)),
        # decompression bombs and absurd declared sizes
        "png declaring 100000x100000": (png_declaring(100_000, 100_000), "bomb.png", Expect("failed", "too large")),
        "png bomb 20000x20000": (png_bomb(), "bomb2.png", Expect("failed", "too large")),
        "jpeg declaring 65000x65000": (jpeg_declaring(65000, 65000), "big.jpg", Expect("failed", "too large")),
        "gif declaring 65535x65535": (gif_declaring(65535, 65535), "big.gif", Expect("failed", "too large")),
        "video at 4096x2304": (av_video([grey(2304, 4096)]), "8k.mp4", Expect("failed", "megapixels per frame")),
        # odd but valid images
        "cmyk jpeg": (encode(Image.fromarray(face).convert("CMYK"), "JPEG", quality=90), "cmyk.jpg",
                      Expect("done", verdict="face")),
        "16-bit png": (encode(deep, "PNG"), "deep.png", Expect("done")),
        "palette png": (encode(Image.fromarray(face).convert("P"), "PNG"), "palette.png", Expect("done")),
        "alpha png": (encode(Image.fromarray(rgba, "RGBA"), "PNG"), "alpha.png", Expect("done")),
        "animated png": (apng, "anim.png", Expect("done", verdict="face", check=dims(512, 512))),
        "animated webp": (webp_anim, "anim.webp", Expect("done", verdict="face")),
        "exif-rotated jpeg": (exif_rotated_astronaut(), "rotated.jpg",
                              Expect("done", verdict="face", check=dims(512, 400))),
        "grey bmp": (encode(Image.fromarray(grey()), "BMP"), "plain.bmp", Expect("done", verdict="no_face")),
        "gif still": (encode(Image.fromarray(face).convert("P"), "GIF"), "still.gif", Expect("done")),
        "tiff": (encode(Image.fromarray(face), "TIFF"), "scan.tiff", Expect("done", verdict="face")),
        "iphone heic, rotated": (exif_rotated_astronaut_as("HEIF"), "IMG_0001.HEIC",
                                 Expect("done", verdict="face", kind="image", check=dims(512, 400))),
        "avif, exif-rotated": (exif_rotated_astronaut_as("AVIF"), "photo.avif",
                               Expect("done", verdict="face", kind="image", check=dims(512, 400))),
        # video oddities
        "video without a video stream": (audio_only_mp4(), "voice.mp4", Expect("failed")),
        "video with zero frames": (video_without_frames(), "empty.mp4", Expect("failed")),
        "video with a single frame": (av_video([grey(120, 160)]), "one.mp4",
                                      Expect("done", verdict="no_face", check=single_frame)),
        "variable frame rate": (av_video(moving_grey, pts=[0, 10, 20, 200, 210, 900, 905, 910, 2000, 2400, 2401, 2500],
                                         time_base=Fraction(1, 1000)), "vfr.mp4",
                                Expect("done", verdict="no_face")),
        "rotation metadata": (rotated, "portrait.mp4", Expect("done", verdict="face", check=dims(512, 400))),
        "mov": (av_video(moving_grey, fmt="mov"), "clip.mov", Expect("done", kind="video")),
        "iphone hevc mov, rotated": (with_rotation_matrix(av_video([np.ascontiguousarray(np.rot90(face[:400], k=1))] * 3,
                                                                   fmt="mov", codec="libx265")),
                                     "IMG_0002.MOV", Expect("done", verdict="face", check=dims(512, 400))),
        "10-bit hevc (phone hdr)": (av_video([face[:400]] * 3, fmt="mov", codec="libx265", pix_fmt="yuv420p10le"),
                                    "IMG_0003.MOV", Expect("done", verdict="face", check=dims(512, 400))),
        "av1 webm": (av_video([face[:400]] * 3, fmt="webm", codec="libsvtav1"), "clip.webm",
                     Expect("done", verdict="face", kind="video")),
        "mkv": (av_video(moving_grey, fmt="matroska"), "clip.mkv", Expect("done", kind="video")),
        "webm": (cv2_video(moving_grey, "VP80", ".webm", tmp=tmp), "clip.webm", Expect("done", kind="video")),
        "avi": (cv2_video(moving_grey, "MJPG", ".avi", tmp=tmp), "clip.avi", Expect("done", kind="video")),
        # faces
        "no face": (jpeg(grey()), "wall.jpg", Expect("done", verdict="no_face")),
        "many faces": (jpeg(tiled_faces()), "crowd.jpg", Expect("done", verdict="face", check=faces_at_least(2))),
        "face in one frame only": (cv2_video(face_frames, tmp=tmp), "flash.mp4",
                                   Expect("done", verdict="face", check=one_frame_with_a_face)),
    }


def _build_once() -> dict:
    """Built once per test session, at collection (the names parametrize the tests)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return build_samples(tmp)


SAMPLES = _build_once()


@pytest.fixture
def samples():
    return SAMPLES


# ---------------------------------------------------------------- the checks

def upload(client, content: bytes, filename: str):
    return client.post("/upload", data={"files": [(io.BytesIO(content), filename)]},
                       content_type="multipart/form-data")


def files_in(folder: str) -> set[Path]:
    root = Path(folder)
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def all_rows(app) -> list[Analysis]:
    with app.app_context():
        rows = db.session.scalars(db.select(Analysis).order_by(Analysis.id)).all()
        for row in rows:
            db.session.expunge(row)
        return rows


def assert_no_orphans(app) -> None:
    """Every stored file belongs to a row and every row's file exists; derived folders only for
    finished rows that produced images."""
    rows = all_rows(app)
    with app.app_context():
        from utils import storage

        wanted = {storage.upload_path(r.stored_name) for r in rows if r.stored_name}
        derived = {int(p.name) for p in Path(app.config["DERIVED_FOLDER"]).glob("*")} \
            if Path(app.config["DERIVED_FOLDER"]).exists() else set()
    assert files_in(app.config["UPLOAD_FOLDER"]) == wanted, "orphan or missing upload files"
    done_ids = {r.id for r in rows if r.status == "done"}
    assert derived <= done_ids, f"derived folders for unfinished or failed analyses: {derived - done_ids}"


def assert_server_up(client) -> None:
    assert client.get("/history").status_code == 200
    assert client.get("/healthz").status_code in (200, 503)  # 503 only if the model is missing


@pytest.mark.parametrize("name", list(SAMPLES))
def test_hostile_or_odd_media_ends_in_a_clear_outcome(app, client, auth, user, samples, name):
    content, filename, expect = samples[name]
    auth.login()
    response = upload(client, content, filename)
    rows = all_rows(app)
    page = response.get_data(as_text=True)
    if expect.outcome == "refused":
        assert response.status_code == 400, f"{name}: {response.status_code}"
        assert expect.text in page and "was not accepted" in page
        assert rows == [] and files_in(app.config["UPLOAD_FOLDER"]) == set()
    else:
        assert response.status_code == 302, f"{name}: refused at upload: {page[:300]}"
        [analysis] = rows
        assert analysis.status in ("done", "failed"), f"{name}: left {analysis.status}"
        if expect.outcome in ("done", "failed"):
            assert analysis.status == expect.outcome, f"{name}: {analysis.status} ({analysis.error})"
        if analysis.status == "failed":
            assert analysis.error and INTERNAL_ERROR not in analysis.error, f"{name}: {analysis.error}"
            assert expect.text.lower() in analysis.error.lower(), f"{name}: {analysis.error}"
            result = client.get(f"/analyses/{analysis.id}").get_data(as_text=True)
            assert analysis.error.split(";")[0].replace("'", "&#39;") in result
        else:
            assert analysis.verdict is not None
            if expect.verdict == "face":
                assert analysis.verdict in ("real", "fake", "uncertain") and analysis.faces_found >= 1, (
                    f"{name}: {analysis.verdict}, {analysis.faces_found} faces")
            elif expect.verdict == "no_face":
                assert analysis.verdict == "no_face" and analysis.score is None
            if expect.kind:
                assert analysis.kind == expect.kind
            if expect.check:
                expect.check(analysis)
            assert client.get(f"/analyses/{analysis.id}").status_code == 200
    assert_no_orphans(app)
    assert_server_up(client)


@pytest.mark.app_config(VIDEO_MAX_SECONDS=1)
def test_video_longer_than_the_limit_fails_before_decoding_it_all(app, client, auth, user, samples):
    auth.login()
    long_clip = av_video([grey(48, 64, 10 * i) for i in range(25)], rate=10)  # 2.5 s
    assert upload(client, long_clip, "long.mp4").status_code == 302
    [analysis] = all_rows(app)
    assert analysis.status == "failed" and "limit is 1 s" in analysis.error
    assert_no_orphans(app)


@pytest.mark.app_config(IMAGE_MAX_PIXELS=100 * 100)
def test_image_pixel_limit_is_configurable(app, client, auth, user):
    auth.login()
    upload(client, jpeg(grey(101, 100)), "just-over.jpg")
    upload(client, jpeg(grey(100, 100)), "at-limit.jpg")
    over, at = all_rows(app)
    assert over.status == "failed" and "megapixels" in over.error
    assert at.status == "done"


def test_polyglot_original_is_only_ever_a_download(app, client, auth, user, samples):
    """A JPEG carrying HTML must never be rendered by a browser from our origin."""
    content, filename, _ = samples["jpeg + html polyglot"]
    auth.login()
    upload(client, content, filename)
    [analysis] = all_rows(app)
    response = client.get(f"/analyses/{analysis.id}/original")
    assert response.status_code == 200
    assert response.mimetype == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"] or \
        "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_the_same_broken_file_twice_is_one_row_and_one_file(app, client, auth, user, samples):
    content, filename, _ = samples["truncated jpeg"]
    auth.login()
    upload(client, content, filename)
    response = upload(client, content, "again.jpg")
    assert response.status_code == 302
    assert len(all_rows(app)) == 1
    assert_no_orphans(app)


# ---------------------------------------------------------------- hostile file names

# raw name sent -> the display name kept (None: whatever is kept must only pass the generic checks;
# the test client, like browsers, quotes some characters in the multipart header).
HOSTILE_NAMES = {
    "traversal": ("../../../../etc/passwd.jpg", "passwd.jpg"),
    "windows traversal": ("..\\..\\Windows\\system.ini.jpg", None),
    "absolute": ("/etc/shadow.jpg", "shadow.jpg"),
    "windows absolute": ("C:\\Users\\victim\\face.jpg", None),
    "very long": ("a" * 5000 + ".jpg", "a" * 255),
    "non-ascii": ("фото 写真 🎭 ñandú.jpg", "фото 写真 🎭 ñandú.jpg"),
    "script": ("<script>alert('x')<\\script>.jpg", None),
    "script with slash": ("x<script>alert(1)</script>.jpg", "script>.jpg"),
    "html attribute": ("'><img src=x onerror=alert(1)>.jpg", "'><img src=x onerror=alert(1)>.jpg"),
    "control characters": ("evil\x00\x1b[31m\tname.jpg", "evil[31mname.jpg"),
    "right-to-left override": ("photo\u202egpj.exe", "photogpj.exe"),
    "csv formula": ("=HYPERLINK(1+1).jpg", "=HYPERLINK(1+1).jpg"),
    "dots only": ("..", ".."),
}
GENERIC_BAD = ("/", "\\", "\x00", "\r", "\n", "\u202e")


@pytest.mark.parametrize("label", list(HOSTILE_NAMES))
def test_hostile_file_names_are_display_text_only_and_escaped_everywhere(app, client, auth, user, make_user,
                                                                       tmp_path, label):
    raw, shown = HOSTILE_NAMES[label]
    auth.login()
    response = upload(client, jpeg_bytes(list(HOSTILE_NAMES).index(label)), raw)
    assert response.status_code == 302
    [analysis] = all_rows(app)
    # Stored under its content hash only; the name is display text, cleaned and bounded.
    assert analysis.stored_name == analysis.sha256 and 0 < len(analysis.original_name) <= 255
    assert not [c for c in GENERIC_BAD if c in analysis.original_name], repr(analysis.original_name)
    if shown is not None:
        assert analysis.original_name == shown
    shown = analysis.original_name
    every_file = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in every_file if "passwd" in p.name or "shadow" in p.name or p.name.startswith("a" * 50)]
    with app.app_context():
        db.session.get(Analysis, analysis.id).flagged = True  # so the admin queue shows it too
        db.session.commit()

    dangerous = [s for s in ("<script", "<img src=x", "script>") if s in shown]
    pages = {
        "flash + result": client.get(response.headers["Location"]).get_data(as_text=True),
        "history": client.get("/history").get_data(as_text=True),
        "home": client.get("/").get_data(as_text=True),
    }
    make_user("admin@example.com", admin=True)
    admin = app.test_client()
    type(auth)(admin).login("admin@example.com")
    pages["admin queue"] = admin.get("/admin/").get_data(as_text=True)
    pages["admin detail"] = admin.get(f"/admin/analyses/{analysis.id}").get_data(as_text=True)
    for where, html in pages.items():
        for fragment in dangerous:
            assert fragment not in html, f"{label}: unescaped {fragment!r} on {where}"
        assert "\u202e" not in html
    assert str(escape(shown)) in pages["flash + result"] and str(escape(shown)) in pages["history"]

    exported = client.get("/history/export.json")
    assert json.loads(exported.get_data(as_text=True))["analyses"][0]["original_name"] == shown
    rows = list(csv.DictReader(io.StringIO(client.get("/history/export.csv").get_data(as_text=True))))
    cell = rows[0]["original_name"]
    assert cell[:1] not in ("=", "+", "-", "@"), f"CSV cell would run as a formula: {cell[:20]}"

    download = client.get(f"/analyses/{analysis.id}/original")
    disposition = download.headers["Content-Disposition"]
    assert download.status_code == 200 and disposition.startswith("attachment")
    assert "\r" not in disposition and "\n" not in disposition and "/" not in disposition.split("filename")[1][:3]
    assert "Set-Cookie" not in download.headers or "a=b" not in download.headers.get("Set-Cookie", "")


def test_a_name_that_breaks_the_multipart_header_is_refused_and_leaves_nothing(app, client, auth, user):
    auth.login()
    response = upload(client, jpeg_bytes(99), "evil\r\nContent-Type: text/html\r\n\r\n<script>.jpg")
    assert response.status_code == 400
    assert all_rows(app) == [] and files_in(app.config["UPLOAD_FOLDER"]) == set()
    assert "<script>" not in response.get_data(as_text=True)
