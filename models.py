"""The tables: who uploaded what, what the detector said about it, and what a reviewer decided."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone

from flask_login import UserMixin
from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from extensions import db


def utcnow() -> datetime:
    """Naive UTC, so SQLite and PostgreSQL round-trip the same values."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


# Values stored in the string columns below (kept as plain strings: portable across engines).
STATUSES = ("queued", "running", "done", "failed")
VERDICTS = ("real", "fake", "uncertain", "no_face")
KINDS = ("image", "video", "live")
DECISIONS = ("fake", "real", "cannot_tell")


class User(UserMixin, db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(default=False)
    # Part of the login cookie: bumping it (password change, "sign out everywhere") ends other sessions.
    session_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    analyses: Mapped[list[Analysis]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True,
        foreign_keys="Analysis.user_id",
    )
    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"


class ApiToken(db.Model):
    """A bearer token for the JSON API. Only its SHA-256 is stored; the secret is shown once."""

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="tokens")

    @staticmethod
    def hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def issue(cls, user: User, name: str) -> tuple[ApiToken, str]:
        """A new token row and its secret (the only time the secret exists in clear)."""
        secret = "dfd_" + secrets.token_urlsafe(32)
        token = cls(user=user, name=name, token_hash=cls.hash(secret), prefix=secret[:10])
        return token, secret

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Analysis(db.Model):
    """One uploaded file (or saved live session) and everything the detector concluded about it."""

    __table_args__ = (
        UniqueConstraint("user_id", "sha256", name="uq_analysis_user_sha256"),
        # History pages: one user's analyses, newest first.
        Index("ix_analysis_user_created", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # image | video | live
    original_name: Mapped[str] = mapped_column(String(255))  # display text only, never a path
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    stored_name: Mapped[str | None] = mapped_column(String(100))  # content-hash name; None once purged
    size_bytes: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    # Job state
    status: Mapped[str] = mapped_column(String(10), default="queued", index=True)
    error: Mapped[str | None] = mapped_column(Text)  # human reason when failed
    stage: Mapped[str | None] = mapped_column(String(40))  # decoding | finding faces | scoring ...
    progress: Mapped[float] = mapped_column(default=0.0)  # 0..1
    job_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]  # lease: a running job refreshes it; a stale one is dead
    finished_at: Mapped[datetime | None]

    # Media facts
    width: Mapped[int | None]
    height: Mapped[int | None]
    duration_s: Mapped[float | None]
    fps: Mapped[float | None]
    frame_count: Mapped[int | None]

    # Verdict
    verdict: Mapped[str | None] = mapped_column(String(10), index=True)  # real|fake|uncertain|no_face
    score: Mapped[float | None]  # calibrated probability that the media is fake
    threshold: Mapped[float | None]
    uncertain_low: Mapped[float | None]
    uncertain_high: Mapped[float | None]
    model_version: Mapped[str | None] = mapped_column(String(64))
    faces_found: Mapped[int] = mapped_column(default=0)
    frames_sampled: Mapped[int] = mapped_column(default=0)
    frames_with_faces: Mapped[int] = mapped_column(default=0)
    explanation: Mapped[str | None] = mapped_column(Text)  # how the verdict was reached, in words

    # Review loop
    flagged: Mapped[bool] = mapped_column(default=False, index=True)
    flag_reason: Mapped[str | None] = mapped_column(String(20))  # auto | dispute
    dispute_reason: Mapped[str | None] = mapped_column(String(500))
    disputed_at: Mapped[datetime | None]
    media_purged_at: Mapped[datetime | None]
    # Faces are personal data: the game shows them only if the owner opted in (and may withdraw).
    game_consent: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Likewise for retraining: `flask export-reviewed` exports only analyses whose owner opted in.
    training_consent: Mapped[bool] = mapped_column(default=False, server_default=false())

    user: Mapped[User] = relationship(back_populates="analyses", foreign_keys=[user_id])
    faces: Mapped[list[FaceResult]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", passive_deletes=True,
        order_by="FaceResult.id",
    )
    frames: Mapped[list[FrameResult]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", passive_deletes=True,
        order_by="FrameResult.index",
    )
    review: Mapped[Review | None] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


class FaceResult(db.Model):
    """One face found in one frame (an image has one frame, index 0), with its calibrated score."""

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analysis.id", ondelete="CASCADE"), index=True)
    frame_index: Mapped[int] = mapped_column(default=0)
    person: Mapped[int] = mapped_column(default=0)  # track id across frames
    x: Mapped[int]
    y: Mapped[int]
    w: Mapped[int]
    h: Mapped[int]
    score: Mapped[float]
    crop_name: Mapped[str | None] = mapped_column(String(100))  # file under the analysis's derived dir
    heatmap_name: Mapped[str | None] = mapped_column(String(100))

    analysis: Mapped[Analysis] = relationship(back_populates="faces")


class FrameResult(db.Model):
    """One sampled frame of a video (or the single frame of an image)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analysis.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]  # frame number in the source
    time_s: Mapped[float] = mapped_column(default=0.0)
    faces_count: Mapped[int] = mapped_column(default=0)
    score: Mapped[float | None]  # max face score in the frame; None when no face was found
    thumb_name: Mapped[str | None] = mapped_column(String(100))

    analysis: Mapped[Analysis] = relationship(back_populates="frames")


class Review(db.Model):
    """An admin's decision on a flagged analysis; its existence takes the item off the queue."""

    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analysis.id", ondelete="CASCADE"), unique=True, index=True
    )
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    decision: Mapped[str] = mapped_column(String(12))  # fake | real | cannot_tell
    note: Mapped[str | None] = mapped_column(String(2000))
    usable_for_game: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    analysis: Mapped[Analysis] = relationship(back_populates="review")
    reviewer: Mapped[User | None] = relationship(foreign_keys=[reviewer_id])
