"""Who may do what, for every route the app serves: anonymous, user A (the owner of the analysis and
the token in the URL), user B (another user) and an admin, against every (endpoint, method) in
app.url_map. A new route without an entry in ACCESS fails test_every_route_has_an_access_entry, so
nobody adds a page without deciding who may open it.

Outcomes: "ok" (served: 2xx, or a 3xx that does not go to the sign-in page), "login" (302 to the
sign-in page), or an exact status code. For refused requests that would change something, the
`unchanged` check proves nothing changed; for allowed ones, `changed` proves the change happened.
Pages the owner and admin may see are checked not to leak into B's pages and exports.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import pytest
from werkzeug.security import generate_password_hash

from conftest import PASSWORD, jpeg_bytes
from extensions import db
from models import Analysis, ApiToken, Review, User
from utils import storage

ROLES = ("anonymous", "A", "B", "admin")
A_SECRET_NAME = "alice-private-holiday.jpg"
A_TOKEN_NAME = "alice-laptop-token"
_HASH = generate_password_hash(PASSWORD)  # once per module: scrypt per user would dominate the run time


@dataclass
class World:
    users: dict[str, int]
    tokens: dict[str, str]  # role -> bearer secret
    analysis: int  # user A's finished, flagged image with a file and derived images
    b_analysis: int
    a_token_id: int
    a_face_id: int
    live_session: str  # a live camera session A started


@dataclass
class Case:
    path: str  # may name {analysis} and {token}
    expect: dict[str, object]  # role -> "ok" | "login" | status code
    data: Callable[[], dict] | None = None  # form or multipart body for POST
    api: bool = False  # authenticate with the role's bearer token instead of a session cookie
    changed: Callable[[World, object], bool] | None = None  # did the allowed request take effect?
    unchanged: Callable[[World, object], bool] | None = None  # is everything as before a refusal?
    hidden_from_b: bool = False  # B's (and for own-only pages, the admin's) view must not name A's data


def _analysis(world, app) -> Analysis | None:
    with app.app_context():
        return db.session.get(Analysis, world.analysis)


def _token_active(world, app) -> bool:
    with app.app_context():
        return db.session.get(ApiToken, world.a_token_id).revoked_at is None


def _review_count(app) -> int:
    with app.app_context():
        return db.session.scalar(db.select(db.func.count(Review.id)))


def _live_session_exists(world, app) -> bool:
    from blueprints.live.routes import _store

    with app.test_request_context():
        return _store().get(world.live_session, world.users["A"]) is not None


def _upload_data():
    return {"files": [(io.BytesIO(jpeg_bytes(77)), "new.jpg")]}


def _api_upload_data():
    return {"file": (io.BytesIO(jpeg_bytes(78)), "new.jpg")}


OWNER_OR_ADMIN = {"anonymous": "login", "A": "ok", "B": 404, "admin": "ok"}
OWNER_ONLY = {"anonymous": "login", "A": "ok", "B": 404, "admin": 404}
ANY_SIGNED_IN = {"anonymous": "login", "A": "ok", "B": "ok", "admin": "ok"}
ADMIN_ONLY = {"anonymous": "login", "A": 403, "B": 403, "admin": "ok"}
PUBLIC = {role: "ok" for role in ROLES}
SIGNED_OUT_ONLY = {"anonymous": "ok", "A": 302, "B": 302, "admin": 302}  # signed-in: sent home
API_OWN = {"anonymous": 401, "A": 200, "B": 404, "admin": 404}
# A form with nothing valid in it: reachable by any signed-in user, refused as incomplete (no id in
# the URL, so it can only ever touch the caller's own account).
OWN_ACCOUNT_FORM = {"anonymous": "login", "A": 400, "B": 400, "admin": 400}

ACCESS: dict[tuple[str, str], Case] = {
    ("main.index", "GET"): Case("/", PUBLIC, hidden_from_b=True),
    ("main.healthz", "GET"): Case("/healthz", {r: "public" for r in ROLES}),
    ("static", "GET"): Case("/static/style.css", PUBLIC),
    ("auth.login", "GET"): Case("/login", SIGNED_OUT_ONLY),
    ("auth.login", "POST"): Case("/login", {"anonymous": 400, "A": 302, "B": 302, "admin": 302},
                                 data=lambda: {"email": "x@example.com", "password": "wrong"}),
    ("auth.register", "GET"): Case("/register", SIGNED_OUT_ONLY),
    ("auth.register", "POST"): Case("/register", {"anonymous": 400, "A": 302, "B": 302, "admin": 302},
                                    data=lambda: {"email": "bad"}),
    ("auth.logout", "POST"): Case("/logout", {r: 302 for r in ROLES}, data=dict),
    ("auth.account", "GET"): Case("/account", ANY_SIGNED_IN, hidden_from_b=True),
    ("auth.change_password", "POST"): Case("/account/password", OWN_ACCOUNT_FORM, data=dict),
    ("auth.create_token", "POST"): Case("/account/tokens", OWN_ACCOUNT_FORM, data=dict),
    ("auth.end_other_sessions", "POST"): Case("/account/sessions/end",
                                              {"anonymous": "login", "A": 302, "B": 302, "admin": 302},
                                              data=dict),
    ("auth.delete_account", "POST"): Case(
        "/account/delete", OWN_ACCOUNT_FORM, data=dict,
        unchanged=lambda w, app: _analysis(w, app) is not None),
    ("auth.revoke_token", "POST"): Case(
        "/account/tokens/{token}/revoke", {"anonymous": "login", "A": 302, "B": 404, "admin": 404},
        data=dict, changed=lambda w, app: not _token_active(w, app),
        unchanged=lambda w, app: _token_active(w, app)),
    ("upload.upload", "GET"): Case("/upload", ANY_SIGNED_IN),
    ("upload.upload", "POST"): Case("/upload", {"anonymous": "login", "A": 302, "B": 302, "admin": 302},
                                    data=_upload_data),
    ("upload.result", "GET"): Case("/analyses/{analysis}", OWNER_OR_ADMIN),
    ("upload.status", "GET"): Case("/analyses/{analysis}/status", OWNER_OR_ADMIN),
    ("upload.derived_file", "GET"): Case("/analyses/{analysis}/files/face-000.jpg", OWNER_OR_ADMIN),
    ("upload.thumbnail", "GET"): Case("/analyses/{analysis}/thumb", OWNER_OR_ADMIN),
    ("upload.original", "GET"): Case("/analyses/{analysis}/original", OWNER_OR_ADMIN),
    ("upload.dispute", "POST"): Case(
        "/analyses/{analysis}/dispute", {"anonymous": "login", "A": 302, "B": 404, "admin": 404},
        data=lambda: {"reason": "The face looks pasted on"},
        changed=lambda w, app: _analysis(w, app).flag_reason == "dispute",
        unchanged=lambda w, app: _analysis(w, app).flag_reason == "auto"),
    # Consent to show one's faces in the game is the owner's alone: an admin cannot give it for them.
    ("upload.game_consent", "POST"): Case(
        "/analyses/{analysis}/game-consent", {"anonymous": "login", "A": 302, "B": 404, "admin": 404},
        data=lambda: {"allow": "Allow in the game"},
        changed=lambda w, app: _analysis(w, app).game_consent,
        unchanged=lambda w, app: not _analysis(w, app).game_consent),
    # So is consent to retrain the model on one's upload.
    ("upload.training_consent", "POST"): Case(
        "/analyses/{analysis}/training-consent", {"anonymous": "login", "A": 302, "B": 404, "admin": 404},
        data=lambda: {"allow": "Allow for training"},
        changed=lambda w, app: _analysis(w, app).training_consent,
        unchanged=lambda w, app: not _analysis(w, app).training_consent),
    ("history.index", "GET"): Case("/history", ANY_SIGNED_IN, hidden_from_b=True),
    ("history.export_csv", "GET"): Case("/history/export.csv", ANY_SIGNED_IN, hidden_from_b=True),
    ("history.export_json", "GET"): Case("/history/export.json", ANY_SIGNED_IN, hidden_from_b=True),
    ("history.delete", "POST"): Case(
        "/analyses/{analysis}/delete", {"anonymous": "login", "A": 302, "B": 404, "admin": 404}, data=dict,
        changed=lambda w, app: _analysis(w, app) is None,
        unchanged=lambda w, app: _analysis(w, app) is not None),
    ("admin.queue", "GET"): Case("/admin/", ADMIN_ONLY),
    ("admin.detail", "GET"): Case("/admin/analyses/{analysis}", ADMIN_ONLY),
    ("admin.detail", "POST"): Case(
        "/admin/analyses/{analysis}", {"anonymous": "login", "A": 403, "B": 403, "admin": 302},
        data=lambda: {"decision": "fake", "note": "checked"},
        changed=lambda w, app: _review_count(app) == 1, unchanged=lambda w, app: _review_count(app) == 0),
    # evidence: per-analysis report and timeline follow the result page; the model page is public;
    # the game serves only faces an admin released for it, so A's unreleased face is 404 even to A.
    ("evidence.report", "GET"): Case("/analyses/{analysis}/report", OWNER_OR_ADMIN),
    ("evidence.report_json", "GET"): Case("/analyses/{analysis}/report.json", OWNER_OR_ADMIN),
    ("evidence.timeline", "GET"): Case("/analyses/{analysis}/timeline.svg", OWNER_OR_ADMIN),
    ("evidence.model_card", "GET"): Case("/model", PUBLIC),
    ("evidence.evaluation_png", "GET"): Case("/model/roc.png", {r: (200, 404) for r in ROLES}),
    ("evidence.evaluation_set_png", "GET"): Case("/model/eval/dfdc/roc.png", {r: (200, 404) for r in ROLES}),
    ("evidence.play", "GET"): Case("/game", ANY_SIGNED_IN),
    ("evidence.play", "POST"): Case("/game", {"anonymous": "login", "A": 302, "B": 302, "admin": 302},
                                    data=lambda: {"face_id": "1", "fake": "y"}),
    ("evidence.reveal", "GET"): Case("/game/reveal", ANY_SIGNED_IN),
    ("evidence.reset_score", "POST"): Case("/game/reset", {"anonymous": "login", "A": 302, "B": 302, "admin": 302},
                                           data=dict),
    ("evidence.game_image", "GET"): Case("/game/faces/{face}/crop.jpg",
                                         {"anonymous": "login", "A": 404, "B": 404, "admin": 404}),
    # live camera: JSON for scripts (401, not a redirect); a session belongs to the user who started it.
    ("live.page", "GET"): Case("/live", ANY_SIGNED_IN),
    ("live.start", "POST"): Case("/live/sessions", {"anonymous": 401, "A": 201, "B": 201, "admin": 201}, data=dict),
    ("live.frame", "POST"): Case("/live/sessions/{live}/frames", {"anonymous": 401, "A": 400, "B": 404, "admin": 404},
                                 data=dict),
    ("live.save", "POST"): Case("/live/sessions/{live}/save", {"anonymous": 401, "A": 409, "B": 404, "admin": 404},
                                data=dict),
    ("live.discard", "POST"): Case(
        "/live/sessions/{live}/discard", {"anonymous": 401, "A": 204, "B": 404, "admin": 404}, data=dict,
        changed=lambda w, app: not _live_session_exists(w, app),
        unchanged=lambda w, app: _live_session_exists(w, app)),
    ("api.list_analyses", "GET"): Case("/api/v1/analyses", {"anonymous": 401, "A": 200, "B": 200, "admin": 200},
                                       api=True, hidden_from_b=True),
    ("api.get_analysis", "GET"): Case("/api/v1/analyses/{analysis}", API_OWN, api=True),
    ("api.create_analysis", "POST"): Case("/api/v1/analyses", {"anonymous": 401, "A": 202, "B": 202, "admin": 202},
                                          data=_api_upload_data, api=True),
    # Live camera (issue 7): JSON endpoints answer 401 rather than redirect; a session id that is not
    # the caller's own (here: none exists) is unknown to them.
    ("live.page", "GET"): Case("/live", ANY_SIGNED_IN),
    ("live.start", "POST"): Case("/live/sessions", {"anonymous": 401, "A": 201, "B": 201, "admin": 201}, data=dict),
    ("live.frame", "POST"): Case("/live/sessions/nosuch/frames", {"anonymous": 401, "A": 404, "B": 404, "admin": 404},
                                 data=dict),
    ("live.save", "POST"): Case("/live/sessions/nosuch/save", {"anonymous": 401, "A": 404, "B": 404, "admin": 404},
                                data=dict, unchanged=lambda w, app: _analysis_count(app) == 2),
    ("live.discard", "POST"): Case("/live/sessions/nosuch/discard",
                                   {"anonymous": 401, "A": 404, "B": 404, "admin": 404}, data=dict),
}


def _analysis_count(app) -> int:
    with app.app_context():
        return db.session.scalar(db.select(db.func.count(Analysis.id)))


def route_keys(app) -> set[tuple[str, str]]:
    return {(rule.endpoint, method) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_route_has_an_access_entry(app):
    missing = sorted(route_keys(app) - ACCESS.keys())
    assert not missing, f"routes without a decision on who may use them (add them to ACCESS): {missing}"
    stale = sorted(ACCESS.keys() - route_keys(app))
    assert not stale, f"ACCESS names routes that no longer exist: {stale}"


@pytest.fixture
def world(app, make_analysis, enqueued) -> World:
    users, tokens = {}, {}
    with app.app_context():
        for role, email, admin in (("A", "a@example.com", False), ("B", "b@example.com", False),
                                   ("admin", "admin@example.com", True)):
            user = User(email=email, is_admin=admin, password_hash=_HASH)
            db.session.add(user)
            db.session.flush()
            users[role] = user.id
            token, tokens[role] = ApiToken.issue(user, A_TOKEN_NAME if role == "A" else f"{role}-token")
            db.session.add(token)
        db.session.commit()
        a_token_id = db.session.scalar(db.select(ApiToken.id).filter_by(user_id=users["A"]))
    analysis = make_analysis(users["A"], content=jpeg_bytes(1), original_name=A_SECRET_NAME, verdict="fake",
                             score=0.91, flagged=True, flag_reason="auto", faces=[(10, 10, 40, 40, 0.91)])
    b_analysis = make_analysis(users["B"], content=jpeg_bytes(2), original_name="bob-photo.jpg")
    with app.app_context():
        folder = storage.derived_dir(analysis)
        folder.mkdir(parents=True)
        for name in ("frame-000.jpg", "face-000.jpg", "heat-000.jpg"):
            (folder / name).write_bytes(jpeg_bytes(3))
        row = db.session.get(Analysis, analysis)
        row.frames[0].thumb_name = "frame-000.jpg"
        row.faces[0].crop_name, row.faces[0].heatmap_name = "face-000.jpg", "heat-000.jpg"
        db.session.commit()
        face_id = row.faces[0].id
    from blueprints.live.routes import _store
    from utils.live import LiveSettings

    with app.test_request_context():
        live_session = _store().create(users["A"], LiveSettings.from_config(app.config)).id
    return World(users, tokens, analysis, b_analysis, a_token_id, face_id, live_session)


def sign_in_as(client, world: World, role: str) -> None:
    if role == "anonymous":
        return
    with client.session_transaction() as session:
        session["_user_id"] = f"{world.users[role]}:1"
        session["_fresh"] = True


def outcome_matches(response, expected) -> bool:
    location = response.headers.get("Location", "")
    if expected == "login":
        return response.status_code == 302 and "/login" in location
    if expected == "ok":
        return 200 <= response.status_code < 300 or (300 <= response.status_code < 400 and "/login" not in location)
    if expected == "public":  # served to anyone; /healthz answers 503 when the model or database is down
        return response.status_code in (200, 503)
    if isinstance(expected, tuple):  # e.g. a public chart that exists only once a model was evaluated
        return response.status_code in expected
    return response.status_code == expected


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("key", sorted(ACCESS), ids=lambda k: f"{k[1]} {k[0]}")
def test_access(app, client, world, key, role):
    endpoint, method = key
    case = ACCESS[key]
    path = case.path.format(analysis=world.analysis, token=world.a_token_id, face=world.a_face_id,
                            live=world.live_session)
    headers = {}
    if case.api:
        if role != "anonymous":
            headers["Authorization"] = f"Bearer {world.tokens[role]}"
    else:
        sign_in_as(client, world, role)
    kwargs = {"headers": headers}
    if method == "POST":
        kwargs["data"] = case.data() if case.data else {}
        if any(isinstance(v, tuple) or isinstance(v, list) for v in kwargs["data"].values()):
            kwargs["content_type"] = "multipart/form-data"
    response = client.open(path, method=method, **kwargs)

    expected = case.expect[role]
    assert outcome_matches(response, expected), (
        f"{method} {path} as {role}: got {response.status_code} {response.headers.get('Location', '')}, "
        f"expected {expected}")
    allowed = expected in ("ok", "public") or (isinstance(expected, int) and expected < 400 and role != "anonymous")
    if isinstance(expected, tuple):
        allowed = True
    if allowed and case.changed is not None:
        assert case.changed(world, app), f"{method} {path} as {role} was answered but changed nothing"
    if not allowed and case.unchanged is not None:
        assert case.unchanged(world, app), f"{method} {path} as {role} was refused yet changed something"
    if case.hidden_from_b and role in ("B", "admin") and response.status_code == 200:
        body = response.get_data(as_text=True)
        assert A_SECRET_NAME not in body and A_TOKEN_NAME not in body, f"{path} shows A's data to {role}"
    if endpoint in ("upload.derived_file", "upload.thumbnail", "upload.original") and response.status_code == 200:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "private" in response.headers["Cache-Control"]


def test_owner_pages_do_show_their_own_data(app, client, world):
    """The leak checks above would pass vacuously if the pages never named anything: they do."""
    sign_in_as(client, world, "A")
    for path in ("/", "/history", "/history/export.csv", "/history/export.json"):
        assert A_SECRET_NAME in client.get(path).get_data(as_text=True), path
    assert A_TOKEN_NAME in client.get("/account").get_data(as_text=True)
    listing = client.get("/api/v1/analyses", headers={"Authorization": f"Bearer {world.tokens['A']}"})
    assert A_SECRET_NAME in listing.get_data(as_text=True)
    sign_in_as(client, world, "admin")
    assert A_SECRET_NAME in client.get("/admin/").get_data(as_text=True)


def test_api_ignores_a_session_cookie_even_on_every_api_route(app, client, world):
    sign_in_as(client, world, "A")
    for (endpoint, method), case in ACCESS.items():
        if not case.api:
            continue
        path = case.path.format(analysis=world.analysis, token=world.a_token_id)
        response = client.open(path, method=method, data=case.data() if case.data else None)
        assert response.status_code == 401, f"{method} {path} accepted a session cookie"


def test_ids_that_do_not_exist_answer_like_other_peoples(app, client, world):
    """404 for a missing id and for B's id alike, so ids cannot be probed for existence."""
    sign_in_as(client, world, "A")
    for suffix in ("", "/status", "/thumb", "/original", "/files/face-000.jpg"):
        assert client.get(f"/analyses/{world.b_analysis}{suffix}").status_code == 404
        assert client.get(f"/analyses/999999{suffix}").status_code == 404
    assert client.post("/account/tokens/999999/revoke").status_code == 404


def test_a_face_released_for_the_game_is_served_only_through_the_game(app, client, world):
    """Once the owner consents and an admin releases an analysis for the game, other players see its
    face crop there, and still nothing else of it: not the result, not the frame, not the original."""
    with app.app_context():
        db.session.add(Review(analysis_id=world.analysis, decision="fake", usable_for_game=True,
                              reviewer_id=world.users["admin"]))
        db.session.commit()
    sign_in_as(client, world, "B")
    assert client.get(f"/game/faces/{world.a_face_id}/crop.jpg").status_code == 404  # no consent yet
    with app.app_context():
        db.session.get(Analysis, world.analysis).game_consent = True
        db.session.commit()
    assert client.get(f"/game/faces/{world.a_face_id}/crop.jpg").status_code == 200
    for suffix in ("", "/thumb", "/original", "/files/face-000.jpg", "/files/frame-000.jpg", "/report"):
        assert client.get(f"/analyses/{world.analysis}{suffix}").status_code == 404, suffix
    game = client.get("/game").get_data(as_text=True)
    assert A_SECRET_NAME not in game


@pytest.mark.parametrize("source", ["..", "..%2F..%2Finstance", "..%5C..%5Cinstance", ".hidden", "a%00b"])
def test_public_model_charts_do_not_reach_outside_their_folder(client, source):
    assert client.get(f"/model/eval/{source}/roc.png").status_code == 404
