"""History: own analyses only, newest first, pages, filters, delete (rows and files), exports."""
import csv
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import jpeg_bytes
from extensions import db
from models import Analysis, FaceResult, FrameResult, Review, utcnow
from utils import storage


def names_in(html: str) -> list[str]:
    import re

    return re.findall(r'class="name">([^<]+)</a>', html)


def test_history_lists_own_analyses_newest_first(client, auth, user, other_user, make_analysis):
    now = utcnow()
    make_analysis(user, original_name="old.jpg", created_at=now - timedelta(days=2))
    make_analysis(user, original_name="new.jpg", created_at=now)
    make_analysis(other_user, original_name="someone-else.jpg", created_at=now)
    auth.login()
    html = client.get("/history").get_data(as_text=True)
    assert names_in(html) == ["new.jpg", "old.jpg"]


@pytest.mark.app_config(HISTORY_PAGE_SIZE=2)
def test_history_is_paginated(client, auth, user, make_analysis):
    now = utcnow()
    for i in range(5):
        make_analysis(user, original_name=f"n{i}.jpg", created_at=now + timedelta(minutes=i))
    auth.login()
    page1 = client.get("/history").get_data(as_text=True)
    page3 = client.get("/history?page=3").get_data(as_text=True)
    assert names_in(page1) == ["n4.jpg", "n3.jpg"] and "Page 1 of 3" in page1 and 'rel="next"' in page1
    assert names_in(page3) == ["n0.jpg"] and 'rel="next"' not in page3
    assert names_in(client.get("/history?page=9").get_data(as_text=True)) == []


@pytest.mark.app_config(HISTORY_PAGE_SIZE=1)
def test_filters_by_verdict_and_kind_and_keeps_them_across_pages(client, auth, user, make_analysis):
    make_analysis(user, original_name="fake-img.jpg", verdict="fake")
    make_analysis(user, original_name="fake-vid.mp4", verdict="fake", kind="video")
    make_analysis(user, original_name="fake-vid2.mp4", verdict="fake", kind="video")
    make_analysis(user, original_name="real-img.jpg", verdict="real")
    auth.login()
    html = client.get("/history?verdict=fake&kind=video").get_data(as_text=True)
    assert names_in(html) == ["fake-vid2.mp4"]
    assert "/history?page=2&amp;verdict=fake&amp;kind=video" in html or \
        "/history?page=2&amp;kind=video&amp;verdict=fake" in html
    assert names_in(client.get("/history?verdict=real").get_data(as_text=True)) == ["real-img.jpg"]
    # An unknown filter value is ignored rather than an error.
    assert client.get("/history?verdict=bogus").status_code == 200


def test_thumbnails_link_to_the_private_thumbnail_route(app, client, auth, user, make_analysis):
    analysis_id = make_analysis(user, frames=[(0, 0.0, 1, 0.2)])
    with app.app_context():
        db.session.get(Analysis, analysis_id).frames[0].thumb_name = "frame-000.jpg"
        db.session.commit()
    auth.login()
    assert f'src="/analyses/{analysis_id}/thumb"' in client.get("/history").get_data(as_text=True)


def test_delete_removes_rows_derived_files_and_the_upload(app, client, auth, user, admin_user, make_analysis):
    analysis_id = make_analysis(user, content=jpeg_bytes(1), faces=[(1, 2, 3, 4, 0.9)],
                                frames=[(0, 0.0, 1, 0.9)], flagged=True)
    with app.app_context():
        db.session.add(Review(analysis_id=analysis_id, reviewer_id=admin_user, decision="fake"))
        db.session.commit()
        a = db.session.get(Analysis, analysis_id)
        upload_file = storage.upload_path(a.stored_name)
        derived = storage.derived_dir(analysis_id)
    derived.mkdir(parents=True)
    (derived / "frame-000.jpg").write_bytes(b"x")
    assert upload_file.exists()
    auth.login()
    response = client.post(f"/analyses/{analysis_id}/delete")
    assert response.status_code == 302 and response.headers["Location"] == "/history"
    assert not upload_file.exists() and not derived.exists()
    with app.app_context():
        assert db.session.get(Analysis, analysis_id) is None
        for table in (FaceResult, FrameResult, Review):
            assert db.session.scalar(db.select(db.func.count(table.id))) == 0
    assert client.get(f"/analyses/{analysis_id}").status_code == 404


def test_delete_keeps_a_file_another_user_still_uses(app, client, auth, user, other_user, make_analysis):
    content = jpeg_bytes(2)
    mine = make_analysis(user, content=content)
    make_analysis(other_user, content=content)
    with app.app_context():
        path = storage.upload_path(db.session.get(Analysis, mine).stored_name)
    auth.login()
    client.post(f"/analyses/{mine}/delete")
    assert path.exists()


def test_cannot_delete_another_users_analysis(app, client, auth, user, other_user, make_analysis):
    theirs = make_analysis(other_user, content=jpeg_bytes(3))
    auth.login()
    assert client.post(f"/analyses/{theirs}/delete").status_code == 404
    assert client.get(f"/analyses/{theirs}/delete").status_code == 405
    with app.app_context():
        assert db.session.get(Analysis, theirs) is not None


def test_export_csv_and_json_contain_only_own_rows(app, client, auth, user, other_user, make_analysis):
    make_analysis(user, original_name="=HYPERLINK(\"http://evil\")", verdict="fake", score=0.8)
    make_analysis(user, original_name="plain.jpg", verdict="real", score=0.1)
    make_analysis(other_user, original_name="not-mine.jpg")
    auth.login()
    response = client.get("/history/export.csv")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert sorted(r["original_name"] for r in rows) == ["'=HYPERLINK(\"http://evil\")", "plain.jpg"]
    assert {r["verdict"] for r in rows} == {"fake", "real"}
    data = json.loads(client.get("/history/export.json").get_data(as_text=True))
    assert sorted(a["original_name"] for a in data["analyses"]) == ["=HYPERLINK(\"http://evil\")", "plain.jpg"]
    assert {a["score"] for a in data["analyses"]} == {0.8, 0.1}


def test_history_pages_need_sign_in(client):
    for path in ("/history", "/history/export.csv", "/history/export.json"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_running_analysis_cannot_be_deleted_until_it_finishes(app, client, auth, user, make_analysis):
    analysis_id = make_analysis(user, status="running", verdict=None, content=jpeg_bytes(4))
    auth.login()
    response = client.post(f"/analyses/{analysis_id}/delete")
    assert response.status_code == 302 and response.headers["Location"] == f"/analyses/{analysis_id}"
    with app.app_context():
        assert db.session.get(Analysis, analysis_id) is not None
    assert "once it has finished" in client.get(f"/analyses/{analysis_id}").get_data(as_text=True)
