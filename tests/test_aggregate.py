"""The documented rule from face scores to a file verdict (utils/aggregate.py)."""
import pytest

from utils.aggregate import aggregate_faces, person_score, verdict_for
from utils.detail import DetailBands

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


DETAIL_BANDS = DetailBands.from_card({"edges": [-2.0, -1.5], "bands": [[0.1, 0.9], [0.2, 0.8]]}, BAND)


def test_a_face_without_detail_needs_a_stronger_score():
    """0.75 is fake under the card's band (0.35-0.65); for a face that lost its fine detail the band
    widens to 0.2-0.8, the verdict becomes uncertain, and the explanation says why."""
    sharp = aggregate_faces([(0, 0, 0.75, -1.0)], frames_sampled=1, threshold=0.5, uncertain_band=BAND,
                            kind="image", detail_bands=DETAIL_BANDS)
    assert sharp.verdict == "fake" and sharp.band == BAND and "detail" not in sharp.explanation
    soft = aggregate_faces([(0, 0, 0.75, -1.7)], frames_sampled=1, threshold=0.5, uncertain_band=BAND,
                           kind="image", detail_bands=DETAIL_BANDS)
    assert soft.verdict == "uncertain" and soft.band == (0.2, 0.8)
    assert "lost fine detail" in soft.explanation and "0.35-0.65 to 0.20-0.80" in soft.explanation
    assert "between 0.20 and 0.80" in soft.explanation
    very_soft = aggregate_faces([(0, 0, 0.85, -2.5)], frames_sampled=1, threshold=0.5, uncertain_band=BAND,
                                kind="image", detail_bands=DETAIL_BANDS)
    assert very_soft.verdict == "uncertain" and very_soft.band == (0.1, 0.9)
    assert aggregate_faces([(0, 0, 0.95, -2.5)], 1, 0.5, BAND, "image", DETAIL_BANDS).verdict == "fake"


def test_the_decisive_persons_median_detail_picks_the_band():
    """Person 1 decides (highest score); most of their faces are sharp, so one blurred frame does not
    widen the band; person 0's blur is irrelevant."""
    faces = [(i, 1, 0.7, -1.0) for i in range(4)] + [(4, 1, 0.7, -2.5)] + [(i, 0, 0.1, -2.5) for i in range(5)]
    verdict = aggregate_faces(faces, frames_sampled=5, threshold=0.5, uncertain_band=BAND, kind="video",
                              detail_bands=DETAIL_BANDS)
    assert verdict.decisive_person == 1 and verdict.verdict == "fake" and verdict.band == BAND
    assert verdict.persons[1].detail == pytest.approx(-1.0) and verdict.persons[0].detail == pytest.approx(-2.5)


def test_faces_without_a_detail_keep_the_cards_band():
    verdict = aggregate_faces([(0, 0, 0.75)], frames_sampled=1, threshold=0.5, uncertain_band=BAND,
                              kind="image", detail_bands=DETAIL_BANDS)
    assert verdict.verdict == "fake" and verdict.band == BAND and verdict.persons[0].detail is None
