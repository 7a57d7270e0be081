"""The documented rule from face scores to a file verdict (utils/aggregate.py)."""
import pytest

from utils.aggregate import aggregate_faces, person_score, verdict_for

BAND = (0.35, 0.65)


def test_no_face_gives_no_score():
    verdict = aggregate_faces([], frames_sampled=32, threshold=0.5, uncertain_band=BAND, kind="video")
    assert verdict.verdict == "no_face" and verdict.score is None and verdict.frames_with_faces == 0
    assert "32 sampled frames" in verdict.explanation


@pytest.mark.parametrize("score, expected", [(0.9, "fake"), (0.65, "fake"), (0.5, "uncertain"),
                                             (0.35, "uncertain"), (0.2, "real")])
def test_band_decides_between_real_uncertain_fake(score, expected):
    assert verdict_for(score, 0.5, BAND) == expected


def test_without_a_band_the_threshold_decides():
    assert verdict_for(0.51, 0.5, (0.5, 0.5)) == "fake"
    assert verdict_for(0.49, 0.5, (0.5, 0.5)) == "real"


def test_person_score_is_mean_of_upper_half():
    assert person_score([0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.85)
    assert person_score([0.3]) == pytest.approx(0.3)
    assert person_score([0.1, 0.9, 0.5]) == pytest.approx(0.7)  # ceil(3/2) = 2 highest


def test_one_fake_person_makes_the_image_fake():
    faces = [(0, 0, 0.05), (0, 1, 0.92), (0, 2, 0.10)]
    verdict = aggregate_faces(faces, frames_sampled=1, threshold=0.5, uncertain_band=BAND, kind="image")
    assert verdict.verdict == "fake" and verdict.score == pytest.approx(0.92)
    assert verdict.decisive_person == 1 and "3 faces" in verdict.explanation


def test_video_counts_frames_with_faces_and_ignores_stray_detections():
    faces = [(i, 0, 0.1) for i in range(10)]  # one person, ten frames, clearly real
    faces.append((4, 1, 0.99))  # a one-frame false detection
    verdict = aggregate_faces(faces, frames_sampled=32, threshold=0.5, uncertain_band=BAND, kind="video")
    assert verdict.verdict == "real" and verdict.frames_with_faces == 10
    assert "10 of 32" in verdict.explanation


def test_video_is_fake_when_a_steady_person_is_fake_in_most_frames():
    faces = [(i, 0, 0.9 if i % 4 else 0.2) for i in range(12)]
    faces += [(i, 1, 0.05) for i in range(12)]
    verdict = aggregate_faces(faces, frames_sampled=12, threshold=0.5, uncertain_band=BAND, kind="video")
    assert verdict.verdict == "fake" and verdict.decisive_person == 0
    assert verdict.score == pytest.approx(0.9)
