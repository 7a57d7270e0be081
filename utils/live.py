"""Live camera check: score single frames as they arrive, keep a rolling verdict, save on request.

A LiveSession holds the per-frame scores of one camera session in memory (never on disk): the
rolling verdict over the last N seconds uses the same aggregation as video files
(utils.aggregate.aggregate_faces with person tracks from convert.assign_persons). Frames are scored
one at a time per session: a frame that arrives while the previous one is still being scored is
dropped and counted, never queued. Pressing "save" turns the session into an ordinary Analysis
(kind "live") through utils.analysis.store_report, with key frames as its thumbnails.

Web (blueprints/live) and command line (utils/live_cli) both use this module; it has no Flask.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

import convert
from utils.aggregate import MediaVerdict, aggregate_faces
from utils.analysis import MediaReport, ScoredFace, ScoredFrame
from utils.detail import face_detail

# Kept per frame for a possible save, as JPEG bytes (a few kB each) rather than pixels.
KEPT_IMAGE_MAX_SIDE = 480
KEPT_IMAGE_QUALITY = 80


class FrameRejected(Exception):
    """A frame that cannot be scored; str(exc) is the message for the client. status: HTTP code."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_frame"):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class LiveSettings:
    window_seconds: float = 10.0  # the rolling verdict looks this far back
    rate_window_seconds: float = 10.0  # scored/dropped frames per second are measured over this span
    max_frames: int = 300  # a session keeps at most this many recent frames (what a save can hold)
    key_frames: int = 32  # thumbnails written when a session is saved
    max_frame_pixels: int = 4_000_000
    idle_seconds: float = 300.0  # an unsaved session nobody sends frames to is forgotten after this
    max_sessions_per_user: int = 3
    max_in_flight_per_user: int = 2  # frames of one user being scored at once (all their sessions)

    @classmethod
    def from_config(cls, config) -> LiveSettings:
        return cls(
            window_seconds=float(config["LIVE_WINDOW_SECONDS"]),
            max_frames=int(config["LIVE_MAX_SESSION_FRAMES"]),
            key_frames=int(config["LIVE_KEY_FRAMES"]),
            max_frame_pixels=int(config["LIVE_MAX_FRAME_PIXELS"]),
            idle_seconds=float(config["LIVE_SESSION_IDLE_SECONDS"]),
            max_sessions_per_user=int(config["LIVE_MAX_SESSIONS_PER_USER"]),
            max_in_flight_per_user=int(config["LIVE_MAX_IN_FLIGHT_PER_USER"]),
        )


@dataclass
class LiveFace:
    box: tuple[int, int, int, int]
    score: float
    detail: float | None = None  # fine detail left in the crop (utils.detail)
    crop_jpeg: bytes | None = field(default=None, repr=False)


@dataclass
class LiveFrame:
    seq: int  # 0, 1, 2 ... in arrival order within the session
    time_s: float  # seconds since the session started
    width: int
    height: int
    faces: list[LiveFace]
    image_jpeg: bytes | None = field(default=None, repr=False)

    @property
    def score(self) -> float | None:
        """The frame's score is its most suspicious face (as for video frames); None without a face."""
        return max((f.score for f in self.faces), default=None)


@dataclass
class RollingVerdict:
    verdict: str  # real | fake | uncertain | no_face | waiting (no frame scored yet)
    score: float | None
    explanation: str
    window_seconds: float
    frames: int
    frames_with_faces: int
    band: tuple[float, float] | None = None  # the uncertain band the verdict used (wider without detail)

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "score": self.score, "explanation": self.explanation,
                "window_s": self.window_seconds, "frames": self.frames,
                "frames_with_faces": self.frames_with_faces,
                "uncertain_band": None if self.band is None else list(self.band)}


@dataclass
class Rates:
    scored_fps: float
    dropped_fps: float
    scored: int
    dropped: int

    def to_json(self) -> dict:
        return {"scored_fps": round(self.scored_fps, 2), "dropped_fps": round(self.dropped_fps, 2),
                "scored": self.scored, "dropped": self.dropped}


def _jpeg(rgb: np.ndarray, max_side: int = KEPT_IMAGE_MAX_SIDE) -> bytes:
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, KEPT_IMAGE_QUALITY])
    return encoded.tobytes() if ok else b""


def _from_jpeg(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def decode_frame(data: bytes, max_pixels: int) -> np.ndarray:
    """JPEG/PNG/WebP bytes from a browser -> RGB uint8, or FrameRejected with a clear reason."""
    if not data:
        raise FrameRejected("The frame was empty.")
    head = data[:12]
    if not (head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n")
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        raise FrameRejected("The frame is not a JPEG, PNG or WebP image.", 415, "unsupported_frame")
    try:
        return convert.load_image(io.BytesIO(data), convert.MediaLimits(image_max_pixels=max_pixels))
    except convert.MediaTooLarge as exc:
        raise FrameRejected(str(exc), 413, "frame_too_large") from exc
    except convert.MediaError as exc:
        raise FrameRejected(str(exc)) from exc


def score_frame(rgb: np.ndarray, detector, *, keep_images: bool = True) -> tuple[list[LiveFace], bytes | None]:
    """Faces in one RGB frame with their calibrated P(fake): convert.py finds and crops them,
    the detector scores them, exactly as for uploads. Optionally the JPEG bytes kept for a save."""
    faces = convert.faces_in_frame(rgb, detector.input_size)
    crops = np.stack([f.crop for f in faces]) if faces else None
    scores = detector.score(crops) if faces else np.zeros(0)
    details = face_detail(crops) if faces else np.zeros(0)
    live_faces = [LiveFace(box=tuple(int(v) for v in face.box), score=float(score), detail=float(detail),
                           crop_jpeg=_jpeg(face.crop) if keep_images else None)
                  for face, score, detail in zip(faces, scores, details)]
    return live_faces, (_jpeg(rgb) if keep_images else None)


def _as_convert_frames(frames: list[LiveFrame]) -> list[convert.Frame]:
    """Stand-ins for convert.assign_persons, which only looks at the boxes."""
    empty = np.zeros((1, 1, 3), np.uint8)
    return [convert.Frame(index=f.seq, time_s=f.time_s, image=empty,
                          faces=[convert.Face(box=face.box, confidence=1.0, crop=empty) for face in f.faces])
            for f in frames]


def aggregate_frames(frames: list[LiveFrame], detector) -> MediaVerdict:
    """The verdict over some frames with the video rule: person tracks, upper-half mean, steadiest person."""
    persons = convert.assign_persons(_as_convert_frames(frames))
    faces, k = [], 0
    for frame in frames:
        for face in frame.faces:
            faces.append((frame.seq, persons[k], face.score, face.detail))
            k += 1
    return aggregate_faces(faces, frames_sampled=len(frames), threshold=detector.threshold,
                           uncertain_band=detector.uncertain_band, kind="video",
                           detail_bands=detector.detail_bands)


class LiveSession:
    """One camera session's recent frames and counters. add_frame() is called with the session's
    scoring slot held (see try_begin_scoring), so frames are appended in order."""

    def __init__(self, user_id: int | None, settings: LiveSettings, clock=time.monotonic):
        self.id = uuid.uuid4().hex
        self.user_id = user_id
        self.settings = settings
        self.clock = clock
        self.started = clock()
        self.last_seen = self.started
        self.frames: deque[LiveFrame] = deque(maxlen=settings.max_frames)
        self.scored_times: deque[float] = deque()
        self.dropped_times: deque[float] = deque()
        self.scored = 0
        self.dropped = 0
        self.next_seq = 0
        self.saved_analysis_id: int | None = None
        self._scoring = threading.Lock()
        self._state = threading.Lock()

    # -- back-pressure
    def try_begin_scoring(self) -> bool:
        """Take the session's one scoring slot without waiting; False means "busy, drop this frame"."""
        return self._scoring.acquire(blocking=False)

    def end_scoring(self) -> None:
        self._scoring.release()

    def note_dropped(self) -> None:
        with self._state:
            now = self.clock()
            self.dropped += 1
            self.dropped_times.append(now)
            self.last_seen = now

    # -- frames
    def add_frame(self, width: int, height: int, faces: list[LiveFace], image_jpeg: bytes | None,
                  time_s: float | None = None) -> LiveFrame:
        with self._state:
            now = self.clock()
            frame = LiveFrame(seq=self.next_seq, time_s=round(now - self.started if time_s is None else time_s, 3),
                              width=width, height=height, faces=faces, image_jpeg=image_jpeg)
            self.next_seq += 1
            self.frames.append(frame)
            self.scored += 1
            self.scored_times.append(now)
            self.last_seen = now
            return frame

    def kept_frames(self) -> list[LiveFrame]:
        """The frames a save would hold, oldest first (pictures may be left out: see with_images)."""
        with self._state:
            return list(self.frames)

    def recent_frames(self, n: int) -> list[LiveFrame]:
        with self._state:
            return list(self.frames)[-n:]

    def kept_count(self) -> int:
        return len(self.frames)

    def with_images(self, frames: list[LiveFrame], seqs: set[int]) -> list[LiveFrame]:
        """The frames with their kept JPEGs filled in for seqs (already there in memory)."""
        return frames

    def window(self) -> list[LiveFrame]:
        """Frames of the last window_seconds (by session time of the newest frame). Reads the tail
        first: at a frame a second that is all of them; only a faster sender needs more."""
        tail = 64
        frames = self.recent_frames(tail)
        if not frames:
            return []
        since = frames[-1].time_s - self.settings.window_seconds
        if len(frames) == tail and frames[0].time_s > since:
            frames = self.kept_frames()
        return [f for f in frames if f.time_s > since]

    def rolling_verdict(self, detector) -> RollingVerdict:
        frames = self.window()
        if not frames:
            return RollingVerdict("waiting", None, "No frame has been scored yet.",
                                  self.settings.window_seconds, 0, 0)
        verdict = aggregate_frames(frames, detector)
        explanation = verdict.explanation
        if verdict.verdict == "no_face":
            explanation = (f"No face was seen in the last {self.settings.window_seconds:g} s "
                           f"({len(frames)} frame{'s' if len(frames) != 1 else ''}), so there is no verdict.")
        return RollingVerdict(verdict.verdict, verdict.score, explanation, self.settings.window_seconds,
                              len(frames), verdict.frames_with_faces, verdict.band)

    def rates(self) -> Rates:
        """Frames actually scored and dropped per second over the recent rate window."""
        with self._state:
            now = self.clock()
            span = self.settings.rate_window_seconds
            for times in (self.scored_times, self.dropped_times):
                while times and times[0] < now - span:
                    times.popleft()
            scored = self.scored_times
            # n frames one interval apart span n - 1 intervals: measure from the oldest frame kept.
            scored_fps = (len(scored) - 1) / (now - scored[0]) if len(scored) >= 2 and now > scored[0] else 0.0
            dropped_fps = len(self.dropped_times) / max(1.0, min(span, now - self.started))
            return Rates(scored_fps, dropped_fps, self.scored, self.dropped)

    # -- saving
    def key_frame_seqs(self, frames: list[LiveFrame]) -> set[int]:
        """Which frames keep a thumbnail when saved: evenly spread, plus the most suspicious ones
        (the result page opens on the highest-scoring frame, so it must have its picture)."""
        n = self.settings.key_frames
        if len(frames) <= n:
            return {f.seq for f in frames}
        scored = sorted((f for f in frames if f.score is not None), key=lambda f: -f.score)
        worst = {f.seq for f in scored[: max(1, n // 4)]}
        rest = [f for f in frames if f.seq not in worst]
        spread = n - len(worst)
        return worst | {rest[int((i + 0.5) * len(rest) / spread)].seq for i in range(spread)}

    def report(self, detector) -> MediaReport:
        """The whole kept session as a MediaReport (kind video for the rules; the row says live)."""
        frames = self.kept_frames()
        if not frames:
            raise FrameRejected("Nothing to save yet: no frame of this session has been scored.", 409, "empty_session")
        verdict = aggregate_frames(frames, detector)
        persons = convert.assign_persons(_as_convert_frames(frames))
        keep = self.key_frame_seqs(frames)
        frames = self.with_images(frames, keep)
        scored_faces, scored_frames, k = [], [], 0
        for frame in frames:
            with_image = frame.seq in keep
            for face in frame.faces:
                scored_faces.append(ScoredFace(
                    frame_index=frame.seq, person=persons[k], box=face.box, score=face.score, detail=face.detail,
                    crop=_from_jpeg(face.crop_jpeg) if (with_image and face.crop_jpeg) else None))
                k += 1
            scored_frames.append(ScoredFrame(
                index=frame.seq, time_s=frame.time_s, faces_count=len(frame.faces), score=frame.score,
                image=_from_jpeg(frame.image_jpeg) if (with_image and frame.image_jpeg) else None))
        first = frames[0]
        return MediaReport(
            kind="video", verdict=verdict, threshold=detector.threshold,
            uncertain_low=verdict.band[0], uncertain_high=verdict.band[1],
            model_version=detector.version, width=first.width, height=first.height,
            duration_s=round(frames[-1].time_s - first.time_s, 3) if len(frames) > 1 else 0.0,
            fps=None, frame_count=len(frames), faces=scored_faces, frames=scored_frames,
        )

    @property
    def fingerprint(self) -> str:
        """Stands in for the file hash on the Analysis row (unique per user): one row per session."""
        return hashlib.sha256(f"live-session:{self.id}".encode()).hexdigest()


class LiveStore:
    """Unsaved sessions of this process, forgotten after idle_seconds without a frame. Also the
    per-user count of frames being scored, so one user cannot occupy every scoring thread."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._sessions: dict[str, LiveSession] = {}
        self._in_flight: dict[int, int] = {}
        self._lock = threading.Lock()

    def _expire(self) -> None:
        now = self.clock()
        for sid in [sid for sid, s in self._sessions.items()
                    if now - s.last_seen > s.settings.idle_seconds]:
            del self._sessions[sid]

    def create(self, user_id: int, settings: LiveSettings) -> LiveSession:
        with self._lock:
            self._expire()
            mine = sorted((s for s in self._sessions.values() if s.user_id == user_id), key=lambda s: s.last_seen)
            while len(mine) >= settings.max_sessions_per_user:
                oldest = mine.pop(0)  # a reloaded page leaves its old session behind: replace the oldest
                del self._sessions[oldest.id]
            session = LiveSession(user_id, settings, clock=self.clock)
            self._sessions[session.id] = session
            return session

    def get(self, session_id: str, user_id: int) -> LiveSession | None:
        """The user's own session, or None (unknown, expired, or someone else's: all look the same)."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            return session if session is not None and session.user_id == user_id else None

    def discard(self, session_id: str, user_id: int) -> bool:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.user_id != user_id:
                return False
            del self._sessions[session_id]
            return True

    def count(self) -> int:
        with self._lock:
            self._expire()
            return len(self._sessions)

    def try_begin_user(self, user_id: int, limit: int) -> bool:
        with self._lock:
            if self._in_flight.get(user_id, 0) >= limit:
                return False
            self._in_flight[user_id] = self._in_flight.get(user_id, 0) + 1
            return True

    def end_user(self, user_id: int) -> None:
        with self._lock:
            left = self._in_flight.get(user_id, 1) - 1
            if left > 0:
                self._in_flight[user_id] = left
            else:
                self._in_flight.pop(user_id, None)


class RedisLiveSession(LiveSession):
    """A session whose frames and counters live in Redis, so every web process sees the same one
    (gunicorn's workers do not share memory). Keys expire idle_seconds after the last frame;
    pictures stay in Redis memory, never on disk, until a save."""

    LOCK_SECONDS = 60  # a process that dies mid-frame frees the session's scoring slot after this
    SUFFIXES = (":meta", ":frames", ":img", ":crop", ":scored_t", ":dropped_t")

    def __init__(self, redis, key: str, session_id: str, user_id: int, started: float, settings: LiveSettings):
        self.redis, self.key, self.id, self.user_id = redis, key, session_id, user_id
        self.started, self.settings = started, settings
        self.clock = time.time  # shared by every process, unlike monotonic clocks

    def _touch(self, pipe) -> None:
        ttl = max(1, int(self.settings.idle_seconds))
        for suffix in self.SUFFIXES:
            pipe.expire(self.key + suffix, ttl)

    @property
    def saved_analysis_id(self) -> int | None:
        value = self.redis.hget(self.key + ":meta", "saved")
        return int(value) if value else None

    @saved_analysis_id.setter
    def saved_analysis_id(self, value: int) -> None:
        self.redis.hset(self.key + ":meta", "saved", value)

    def try_begin_scoring(self) -> bool:
        return bool(self.redis.set(self.key + ":lock", 1, nx=True, ex=self.LOCK_SECONDS))

    def end_scoring(self) -> None:
        self.redis.delete(self.key + ":lock")

    def note_dropped(self) -> None:
        now = self.clock()
        pipe = self.redis.pipeline()
        pipe.hincrby(self.key + ":meta", "dropped", 1)
        pipe.zadd(self.key + ":dropped_t", {uuid.uuid4().hex: now})
        self._touch(pipe)
        pipe.execute()

    def add_frame(self, width: int, height: int, faces: list[LiveFace], image_jpeg: bytes | None,
                  time_s: float | None = None) -> LiveFrame:
        now = self.clock()
        seq = self.redis.hincrby(self.key + ":meta", "next_seq", 1) - 1
        frame = LiveFrame(seq=seq, time_s=round(now - self.started if time_s is None else time_s, 3),
                          width=width, height=height, faces=faces, image_jpeg=image_jpeg)
        record = {"seq": seq, "time_s": frame.time_s, "width": width, "height": height,
                  "faces": [{"box": list(f.box), "score": f.score, "detail": f.detail} for f in faces]}
        pipe = self.redis.pipeline()
        pipe.rpush(self.key + ":frames", json.dumps(record))
        if image_jpeg:
            pipe.hset(self.key + ":img", str(seq), image_jpeg)
        for i, face in enumerate(faces):
            if face.crop_jpeg:
                pipe.hset(self.key + ":crop", f"{seq}:{i}", face.crop_jpeg)
        pipe.hincrby(self.key + ":meta", "scored", 1)
        pipe.zadd(self.key + ":scored_t", {str(seq): now})
        pipe.llen(self.key + ":frames")
        self._touch(pipe)
        length = pipe.execute()[-1 - len(self.SUFFIXES)]
        excess = length - self.settings.max_frames
        if excess > 0:  # keep the most recent max_frames, with their pictures
            for raw in self.redis.lpop(self.key + ":frames", excess) or []:
                old = json.loads(raw)
                self.redis.hdel(self.key + ":img", str(old["seq"]))
                if old["faces"]:
                    self.redis.hdel(self.key + ":crop", *[f"{old['seq']}:{i}" for i in range(len(old["faces"]))])
        return frame

    def kept_frames(self) -> list[LiveFrame]:
        return self.recent_frames(0)

    def recent_frames(self, n: int) -> list[LiveFrame]:
        """The last n frames (all of them for n = 0), without their pictures."""
        frames = []
        for raw in self.redis.lrange(self.key + ":frames", -n if n else 0, -1):
            r = json.loads(raw)
            frames.append(LiveFrame(seq=r["seq"], time_s=r["time_s"], width=r["width"], height=r["height"],
                                    faces=[LiveFace(box=tuple(f["box"]), score=f["score"], detail=f.get("detail"))
                                           for f in r["faces"]]))
        return frames

    def with_images(self, frames: list[LiveFrame], seqs: set[int]) -> list[LiveFrame]:
        for frame in frames:
            if frame.seq not in seqs:
                continue
            frame.image_jpeg = self.redis.hget(self.key + ":img", str(frame.seq))
            if frame.faces:
                crops = self.redis.hmget(self.key + ":crop", [f"{frame.seq}:{i}" for i in range(len(frame.faces))])
                for face, crop in zip(frame.faces, crops):
                    face.crop_jpeg = crop
        return frames

    def kept_count(self) -> int:
        return self.redis.llen(self.key + ":frames")

    def rates(self) -> Rates:
        now = self.clock()
        span = self.settings.rate_window_seconds
        pipe = self.redis.pipeline()
        for suffix in (":scored_t", ":dropped_t"):
            pipe.zremrangebyscore(self.key + suffix, "-inf", now - span)
        pipe.zrange(self.key + ":scored_t", 0, 0, withscores=True)
        pipe.zcard(self.key + ":scored_t")
        pipe.zcard(self.key + ":dropped_t")
        pipe.hmget(self.key + ":meta", ["scored", "dropped"])
        _, _, oldest, recent, dropped_recent, (scored, dropped) = pipe.execute()
        scored_fps = (recent - 1) / (now - oldest[0][1]) if recent >= 2 and now > oldest[0][1] else 0.0
        dropped_fps = dropped_recent / max(1.0, min(span, now - self.started))
        return Rates(scored_fps, dropped_fps, int(scored or 0), int(dropped or 0))


class RedisLiveStore:
    """LiveStore's contract on Redis: sessions and per-user in-flight counts shared by all processes."""

    IN_FLIGHT_SECONDS = 120  # a count left by a process that died mid-frame lapses after this

    def __init__(self, url: str, prefix: str = "live:"):
        from redis import Redis

        self.redis = Redis.from_url(url)
        self.prefix = prefix

    def _user_key(self, user_id: int) -> str:
        return f"{self.prefix}user:{user_id}"

    def _session(self, session_id: str, meta: dict, settings: LiveSettings) -> RedisLiveSession:
        return RedisLiveSession(self.redis, self.prefix + session_id, session_id, int(meta[b"user_id"]),
                                float(meta[b"started"]), settings)

    def _delete(self, session_id: str) -> None:
        key = self.prefix + session_id
        self.redis.delete(*[key + suffix for suffix in RedisLiveSession.SUFFIXES], key + ":lock")

    def create(self, user_id: int, settings: LiveSettings) -> RedisLiveSession:
        now = time.time()
        user_key = self._user_key(user_id)
        # Forget this user's sessions that expired, then make room by replacing the oldest.
        for sid in self.redis.zrange(user_key, 0, -1):
            if not self.redis.exists(self.prefix + sid.decode() + ":meta"):
                self.redis.zrem(user_key, sid)
        while self.redis.zcard(user_key) >= settings.max_sessions_per_user:
            oldest = self.redis.zpopmin(user_key)[0][0].decode()
            self._delete(oldest)
        session_id = uuid.uuid4().hex
        key = self.prefix + session_id
        pipe = self.redis.pipeline()
        pipe.hset(key + ":meta", mapping={"user_id": user_id, "started": repr(now), "settings": json.dumps(
            {"window_seconds": settings.window_seconds, "max_frames": settings.max_frames,
             "key_frames": settings.key_frames, "idle_seconds": settings.idle_seconds})})
        pipe.expire(key + ":meta", max(1, int(settings.idle_seconds)))
        pipe.zadd(user_key, {session_id: now})
        pipe.expire(user_key, max(1, int(settings.idle_seconds)) * 4)
        pipe.execute()
        return RedisLiveSession(self.redis, key, session_id, user_id, now, settings)

    def get(self, session_id: str, user_id: int, settings: LiveSettings | None = None) -> RedisLiveSession | None:
        if not session_id.isalnum() or len(session_id) > 64:
            return None
        meta = self.redis.hgetall(self.prefix + session_id + ":meta")
        if not meta or int(meta[b"user_id"]) != user_id:
            return None
        return self._session(session_id, meta, settings or LiveSettings(**json.loads(meta[b"settings"])))

    def discard(self, session_id: str, user_id: int) -> bool:
        if self.get(session_id, user_id) is None:
            return False
        self._delete(session_id)
        self.redis.zrem(self._user_key(user_id), session_id)
        return True

    def try_begin_user(self, user_id: int, limit: int) -> bool:
        key = self._user_key(user_id) + ":in_flight"
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, self.IN_FLIGHT_SECONDS)
        count, _ = pipe.execute()
        if count > limit:
            self.redis.decr(key)
            return False
        return True

    def end_user(self, user_id: int) -> None:
        self.redis.decr(self._user_key(user_id) + ":in_flight")


def make_store(config) -> LiveStore | RedisLiveStore:
    """Redis when the app has REDIS_URL (several web processes must see the same sessions; LIVE_STORE=memory
    opts out), else this process's memory (one process: `flask run`, tests, a single gunicorn worker)."""
    choice = str(config.get("LIVE_STORE", "auto")).lower()
    url = config.get("REDIS_URL") or ""
    if choice == "redis" or (choice == "auto" and url):
        return RedisLiveStore(url, prefix=config.get("LIVE_REDIS_PREFIX", "live:"))
    return LiveStore()


def save_session(session: LiveSession, user, detector, name: str):
    """Turn a session into a finished Analysis (kind live) with frames, faces and key-frame images.
    Saving the same session twice returns the first analysis. Caller has an app context."""
    from extensions import db
    from models import Analysis, utcnow
    from utils import storage
    from utils.analysis import store_report

    if session.saved_analysis_id is not None:
        existing = db.session.get(Analysis, session.saved_analysis_id)
        if existing is not None:
            return existing
    report = session.report(detector)
    now = utcnow()
    analysis = Analysis(user_id=user.id, kind="live", original_name=name, sha256=session.fingerprint,
                        stored_name=None, size_bytes=0, status="running", stage="saving", progress=0.0,
                        started_at=now)
    db.session.add(analysis)
    db.session.flush()  # the id names the derived folder
    try:
        store_report(analysis, report)
        analysis.status, analysis.stage, analysis.progress = "done", "done", 1.0
        analysis.finished_at = utcnow()
        db.session.commit()
    except BaseException:
        analysis_id = analysis.id
        db.session.rollback()
        storage.delete_derived(analysis_id)
        raise
    session.saved_analysis_id = analysis.id
    return analysis
