"""convert.py on synthetic media and a real photo: decoding, limits, faces, crops, frame sampling."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import convert

SIZE = 64
ASTRONAUT_HEAD = (150, 40, 150, 170)  # x, y, w, h: a generous box around the astronaut's face


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


def write_jpeg(path, rgb, quality=92):
    Image.fromarray(rgb).save(path, "JPEG", quality=quality)
    return path


def write_video(path, frames: list[np.ndarray], fps=10.0):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def inside(box, region) -> bool:
    x, y, w, h = box
    rx, ry, rw, rh = region
    cx, cy = x + w / 2, y + h / 2
    return rx <= cx <= rx + rw and ry <= cy <= ry + rh


# ---------------------------------------------------------------- kinds and broken media

def test_kind_is_sniffed_from_content_not_name(tmp_path, astronaut):
    jpeg_named_mp4 = write_jpeg(tmp_path / "photo.mp4", astronaut)
    assert convert.detect_media_kind(jpeg_named_mp4) == "image"
    video = write_video(tmp_path / "clip.mp4", [astronaut] * 3).rename(tmp_path / "clip.jpg")
    assert convert.detect_media_kind(video) == "video"


def test_text_file_named_mp4_is_unsupported(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("just some text, not a video\n" * 20)
    with pytest.raises(convert.UnsupportedMedia):
        convert.extract_faces(path, input_size=SIZE)


def test_empty_file_is_corrupt(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(convert.CorruptMedia, match="empty"):
        convert.extract_faces(path, input_size=SIZE)


def test_truncated_jpeg_is_corrupt(tmp_path, astronaut):
    full = write_jpeg(tmp_path / "full.jpg", astronaut).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(convert.CorruptMedia):
        convert.extract_faces(path, input_size=SIZE)


def test_image_over_pixel_limit_is_too_large(tmp_path, astronaut):
    path = write_jpeg(tmp_path / "big.jpg", astronaut)
    with pytest.raises(convert.MediaTooLarge, match="megapixels"):
        convert.load_image(path, convert.MediaLimits(image_max_pixels=100_000))


def test_decompression_bomb_is_too_large(tmp_path, monkeypatch):
    # Pillow's own bomb guard (twice MAX_IMAGE_PIXELS) must surface as MediaTooLarge too.
    path = tmp_path / "bomb.png"
    Image.new("L", (400, 400)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(convert.MediaTooLarge):
        convert.load_image(path)


def test_video_without_frames_is_corrupt(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(convert.CorruptMedia):
        convert.extract_faces(path, input_size=SIZE)


def test_video_over_limits_is_refused(tmp_path, astronaut):
    frames = [cv2.resize(astronaut, (160, 120))] * 30
    path = write_video(tmp_path / "clip.mp4", frames, fps=10.0)  # 3 s
    with pytest.raises(convert.MediaTooLarge, match="lasts"):
        convert.extract_faces(path, input_size=SIZE, limits=convert.MediaLimits(video_max_seconds=2))
    with pytest.raises(convert.MediaTooLarge):
        convert.extract_faces(path, input_size=SIZE, limits=convert.MediaLimits(video_max_pixels=160 * 100))


# ---------------------------------------------------------------- image modes

@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "RGBA", "P", "I;16", "I"])
def test_any_mode_decodes_to_rgb(tmp_path, astronaut, mode):
    image = Image.fromarray(astronaut[:200, :300])
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image.convert("L"), np.uint16) * 200))
    elif mode == "I":
        image = image.convert("L").convert("I")
    else:
        image = image.convert(mode)
    path = tmp_path / f"img-{mode.replace(';', '')}.{'tif' if mode in ('CMYK', 'I;16', 'I') else 'png'}"
    image.save(path)
    rgb = convert.load_image(path)
    assert rgb.shape == (200, 300, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 10  # the content survived, not a blank image


def test_transparency_is_flattened_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(path)
    assert (convert.load_image(path) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, "JPEG", exif=exif.tobytes())
    assert convert.load_image(path).shape == (60, 20, 3)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb = convert.load_image(path)
    assert rgb[..., 0].mean() > 200 and rgb[..., 2].mean() < 50


# ---------------------------------------------------------------- HEIC/HEIF and AVIF photos

def phone_photo(astronaut, fmt: str, **options) -> bytes:
    """The astronaut (512x400) stored a quarter turn rotated with EXIF Orientation=6, as cameras do."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(astronaut[:400], k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, fmt, exif=exif.tobytes(), **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, suffix", [("HEIF", "heic"), ("AVIF", "avif")])
def test_heic_and_avif_photos_decode_upright_and_their_face_is_found(tmp_path, astronaut, fmt, suffix):
    path = tmp_path / f"IMG_0001.{suffix}"
    path.write_bytes(phone_photo(astronaut, fmt, quality=90))
    assert convert.detect_media_kind(path) == "image"
    rgb = convert.load_image(path)
    assert rgb.shape == (400, 512, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - astronaut[:400]).mean() < 6  # upright, not turned or mirrored
    media = convert.extract_faces(path, input_size=SIZE)
    assert media.kind == "image" and media.frames[0].faces
    assert any(inside(face.box, ASTRONAUT_HEAD) for face in media.frames[0].faces)


def test_ten_bit_heic_decodes_to_eight_bit_rgb(tmp_path, astronaut):
    import pillow_heif

    deep = pillow_heif.from_bytes(mode="RGB;16", size=(512, 512), data=(astronaut.astype(np.uint16) * 257).tobytes())
    path = tmp_path / "hdr.heic"
    deep.save(path, quality=90)
    assert Image.open(path).info["bit_depth"] == 10
    rgb = convert.load_image(path)
    assert rgb.dtype == np.uint8 and np.abs(rgb.astype(int) - astronaut).mean() < 6


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_truncated_heic_or_avif_is_damaged_not_unrecognised(tmp_path, astronaut, fmt):
    whole = phone_photo(astronaut, fmt)
    for keep in (len(whole) // 2, 300):
        path = tmp_path / f"cut{keep}.img"
        path.write_bytes(whole[:keep])
        assert convert.detect_media_kind(path) == "image"
        with pytest.raises(convert.CorruptMedia, match="damaged"):
            convert.load_image(path)


def test_heic_size_is_checked_before_decoding(tmp_path, astronaut):
    whole = phone_photo(astronaut, "HEIF")
    path = tmp_path / "photo.heic"
    path.write_bytes(whole)
    with pytest.raises(convert.MediaTooLarge, match="megapixels"):
        convert.load_image(path, convert.MediaLimits(image_max_pixels=100_000))
    at = whole.index(b"ispe") + 8  # the declared width and height follow the box's version and flags
    path.write_bytes(whole[:at] + (60_000).to_bytes(4, "big") * 2 + whole[at + 8:])
    with pytest.raises(convert.MediaTooLarge):
        convert.load_image(path)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00" * 64


@pytest.mark.parametrize("header, kind", [
    (ftyp(b"heic", b"mif1", b"heic"), "image"),
    (ftyp(b"mif1", b"heic"), "image"),
    (ftyp(b"avif", b"avif", b"mif1"), "image"),
    (ftyp(b"avis", b"avis", b"msf1"), "image"),  # an animated AVIF: its first frame
    (ftyp(b"msf1", b"msf1", b"mif1"), "image"),  # a sequence that also holds a still
    (ftyp(b"isom", b"isom", b"avc1", b"mp41"), "video"),
    (ftyp(b"qt  ", b"qt  "), "video"),
])
def test_iso_media_brands_decide_image_or_video(header, kind):
    assert convert.media_kind_of(header) == kind


def test_heif_image_sequence_without_a_still_is_refused_with_its_reason():
    with pytest.raises(convert.UnsupportedMedia, match="sequences"):
        convert.media_kind_of(ftyp(b"msf1", b"msf1", b"hevc"))


# ---------------------------------------------------------------- faces and crops

def test_real_photo_face_is_found_and_cropped(tmp_path, astronaut):
    media = convert.extract_faces(write_jpeg(tmp_path / "astronaut.jpg", astronaut), input_size=SIZE)
    assert media.kind == "image" and (media.width, media.height) == (512, 512)
    faces = media.frames[0].faces
    assert len(faces) == 1
    assert inside(faces[0].box, ASTRONAUT_HEAD)
    assert faces[0].crop.shape == (SIZE, SIZE, 3) and faces[0].crop.dtype == np.uint8


def test_tight_face_crop_is_still_found(tmp_path, astronaut):
    box = convert.find_faces(astronaut)[0][0]
    x, y, w, h = box
    tight = np.ascontiguousarray(astronaut[y:y + h, x:x + w])
    assert convert.find_faces(tight), "a face filling the image must be found (padding retry)"


def test_faceless_image_has_no_faces(tmp_path):
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    rgb = np.stack([gradient, gradient[::-1], np.full_like(gradient, 90)], axis=-1)
    media = convert.extract_faces(write_jpeg(tmp_path / "wall.jpg", rgb), input_size=SIZE)
    assert media.frames[0].faces == []


def test_several_faces_in_one_frame(astronaut):
    head = astronaut[0:300, 100:400]
    canvas = np.full((320, 700, 3), 200, np.uint8)
    canvas[10:310, 20:320] = head
    canvas[10:310, 380:680] = head
    boxes = [box for box, _ in convert.find_faces(canvas)]
    assert len(boxes) == 2
    assert {box[0] < 350 for box in boxes} == {True, False}


def test_whole_image_mode_is_one_centred_face(tmp_path, astronaut):
    rgb = astronaut[:, :400]
    media = convert.extract_faces(write_jpeg(tmp_path / "wide.jpg", rgb), input_size=SIZE, whole_image=True)
    (face,) = media.frames[0].faces
    assert face.box == (0, 56, 400, 400)  # the centred square of a 400x512 image
    assert face.crop.shape == (SIZE, SIZE, 3)


def test_prepare_face_uses_the_shared_resize(astronaut):
    box = (200, 100, 80, 80)
    x0, y0, side = convert.face_square(box, 512, 512)
    expected = convert.resize_face(astronaut[y0:y0 + side, x0:x0 + side], SIZE)
    assert np.array_equal(convert.prepare_face(astronaut, box, SIZE), expected)
    assert side == round(80 * convert.FACE_MARGIN)


def test_face_square_stays_inside_the_image():
    x0, y0, side = convert.face_square((0, 0, 100, 100), 120, 90)
    assert side == 90 and x0 >= 0 and y0 == 0 and x0 + side <= 120


def test_training_crop_matches_inference_crop(astronaut):
    crop, found = convert.crop_training_face(astronaut, SIZE)
    box = convert.find_faces(astronaut)[0][0]
    assert found and np.array_equal(crop, convert.prepare_face(astronaut, box, SIZE))


# ---------------------------------------------------------------- video

def test_frames_are_sampled_evenly():
    assert convert.sample_frame_indices(100, 4) == [12, 37, 62, 87]
    assert convert.sample_frame_indices(3, 32) == [0, 1, 2]


def test_video_frames_and_tracks(tmp_path, astronaut):
    small = cv2.resize(astronaut, (256, 256))
    frames = []
    for i in range(40):  # the face drifts slowly to the right
        canvas = np.full((240, 360, 3), 128, np.uint8)
        canvas[0:240, 10 + i * 2:10 + i * 2 + 240] = small[8:248, 8:248]
        frames.append(canvas)
    path = write_video(tmp_path / "drift.mp4", frames, fps=20.0)
    media = convert.extract_faces(path, input_size=SIZE, frames=8)
    assert media.kind == "video" and media.frame_count == 40 and media.fps == pytest.approx(20.0)
    assert media.duration_s == pytest.approx(2.0)
    assert [f.index for f in media.frames] == convert.sample_frame_indices(40, 8)
    assert [f.time_s for f in media.frames] == [pytest.approx(f.index / 20.0) for f in media.frames]
    assert sum(len(f.faces) for f in media.frames) >= 6
    persons = convert.assign_persons(media.frames)
    assert set(persons) == {0}


def test_two_people_keep_their_own_tracks():
    def frame(i, boxes):
        return convert.Frame(index=i, time_s=float(i), image=np.zeros((4, 4, 3), np.uint8), faces=[
            convert.Face(box=b, confidence=0.9, crop=np.zeros((2, 2, 3), np.uint8)) for b in boxes])

    frames = [frame(0, [(10, 10, 50, 50), (300, 20, 60, 60)]),
              frame(1, [(305, 22, 60, 60), (14, 12, 50, 50)]),  # listed in the other order
              frame(2, [(18, 10, 52, 52)])]
    assert convert.assign_persons(frames) == [0, 1, 1, 0, 0]
