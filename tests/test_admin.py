"""Admin review: the queue, a decision stored with who and when, counts, and 403 for everyone else."""
import re
from datetime import timedelta

import pytest

from extensions import db
from models import Analysis, Review, utcnow


@pytest.fixture
def flagged(user, make_analysis):
    now = utcnow()
    return {
        "newer_dispute": make_analysis(user, original_name="disputed.jpg", verdict="real", flagged=True,
                                       flag_reason="dispute", dispute_reason="It's a swap",
                                       created_at=now - timedelta(hours=1)),
        "older_auto": make_analysis(user, original_name="auto-fake.jpg", verdict="fake", score=0.9,
                                    flagged=True, flag_reason="auto", created_at=now - timedelta(days=1)),
        "not_flagged": make_analysis(user, original_name="clean.jpg", verdict="real"),
    }


def queue_names(html: str) -> list[str]:
    return re.findall(r'/admin/analyses/\d+">([^<]+)</a>', html)


@pytest.mark.parametrize("path", ["/admin/", "/admin/analyses/1"])
def test_admin_pages_are_403_for_a_plain_user(client, auth, user, make_analysis, path):
    make_analysis(user)
    auth.login()
    assert client.get(path).status_code == 403
    assert client.post("/admin/analyses/1", data={"decision": "fake"}).status_code == 403


def test_admin_pages_send_anonymous_to_sign_in(client):
    response = client.get("/admin/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_queue_lists_flagged_unreviewed_oldest_first(client, auth, admin_user, flagged):
    auth.login("admin@example.com")
    html = client.get("/admin/").get_data(as_text=True)
    assert queue_names(html) == ["auto-fake.jpg", "disputed.jpg"]
    assert "Disputed: “It&#39;s a swap”" in html
    assert '<span class="num" id="queue-length">2</span>' in html


def test_decision_is_stored_with_reviewer_and_time_and_leaves_the_queue(app, client, auth, user, admin_user,
                                                                         flagged):
    auth.login("admin@example.com")
    analysis_id = flagged["older_auto"]
    detail = client.get(f"/admin/analyses/{analysis_id}").get_data(as_text=True)
    assert "auto-fake.jpg" in detail and "user@example.com" in detail and "Record decision" in detail
    before = utcnow()
    response = client.post(f"/admin/analyses/{analysis_id}",
                           data={"decision": "fake", "note": "Blending seam at the jaw", "usable_for_game": "y"})
    assert response.status_code == 302
    with app.app_context():
        review = db.session.get(Analysis, analysis_id).review
        assert review.decision == "fake" and review.reviewer_id == admin_user
        assert review.note == "Blending seam at the jaw" and review.usable_for_game
        assert review.created_at >= before - timedelta(seconds=1)
    html = client.get("/admin/").get_data(as_text=True)
    assert queue_names(html) == ["disputed.jpg"]
    # A second decision on the same item changes nothing.
    client.post(f"/admin/analyses/{analysis_id}", data={"decision": "real"})
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Review.id))) == 1
        assert db.session.get(Analysis, analysis_id).review.decision == "fake"
    # The owner sees it.
    auth.logout()
    auth.login()
    page = client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
    assert "Confirmed fake" in page and "Blending seam at the jaw" in page


def test_decision_must_be_one_of_the_choices(app, client, auth, admin_user, flagged):
    auth.login("admin@example.com")
    response = client.post(f"/admin/analyses/{flagged['newer_dispute']}", data={"decision": "maybe"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(Review.id))) == 0


def test_counts_show_per_day_verdict_mix_and_queue_length(client, auth, admin_user, flagged):
    auth.login("admin@example.com")
    html = client.get("/admin/").get_data(as_text=True)
    today = utcnow().date().isoformat()
    yesterday = (utcnow() - timedelta(days=1)).date().isoformat()
    per_day = dict(re.findall(r"<tr><td>(\d{4}-\d\d-\d\d)</td><td>(\d+)</td></tr>", html))
    assert sum(int(n) for n in per_day.values()) == 3
    assert set(per_day) <= {today, yesterday}
    assert "<li>real: 2</li>" in html and "<li>fake: 1</li>" in html
    assert "3</span> analyses in all" in html


def test_admin_may_open_any_result_and_its_media(client, auth, admin_user, flagged):
    auth.login("admin@example.com")
    assert client.get(f"/analyses/{flagged['not_flagged']}").status_code == 200
    assert client.get(f"/admin/analyses/{flagged['not_flagged']}").status_code == 200
    assert client.get("/admin/analyses/99999").status_code == 404


def test_detail_says_whether_the_owner_allows_training(client, auth, admin_user, user, make_analysis):
    """The reviewer sees whether a decision will feed export-reviewed before making it."""
    allowed = make_analysis(user, verdict="fake", flagged=True, flag_reason="auto", training_consent=True)
    refused = make_analysis(user, verdict="fake", flagged=True, flag_reason="auto")
    auth.login("admin@example.com")
    allowed_html = client.get(f"/admin/analyses/{allowed}").get_data(as_text=True)
    refused_html = client.get(f"/admin/analyses/{refused}").get_data(as_text=True)
    assert "the owner allows this upload to be used to improve the model" in allowed_html
    assert "has not allowed this upload to be used for training" in refused_html
    assert "has not allowed" not in allowed_html.split('id="owner-training-consent"')[1].split("</p>")[0]
