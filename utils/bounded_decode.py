"""Decoding untrusted media in a child process with a memory cap and a time limit.

Pillow and FFmpeg (inside OpenCV) are large C decoders: a crafted file can make them loop, allocate
gigabytes or crash the process. Pixel and duration limits in convert.py refuse absurd *declared*
sizes before decoding; this module bounds what the declared sizes cannot: the decode runs in a
forked child with RLIMIT_AS (memory) and RLIMIT_CPU, under a wall-clock deadline enforced by the
parent, which kills the child on expiry. A bad file then costs one failed analysis with a reason,
never a stuck job slot or a dead worker.

Children come from a multiprocessing fork server (a clean process with convert.py pre-imported, never
a fork of a web or worker process holding threads and TensorFlow), so starting one costs tens of
milliseconds.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import convert

Progress = Callable[[str, float], None]

DEFAULT_MAX_SECONDS = 120.0
DEFAULT_MAX_MEMORY_MB = 2048


class DecodeTimedOut(convert.MediaError):
    """The decoder ran past its time limit (a damaged or crafted file, or one far too long)."""


class DecodeOutOfMemory(convert.MediaTooLarge):
    """Decoding needed more memory than the limit allows."""


class DecoderCrashed(convert.CorruptMedia):
    """The decoder process died on this file."""


@dataclass
class DecodeLimits:
    max_seconds: float = DEFAULT_MAX_SECONDS
    max_memory_mb: int = DEFAULT_MAX_MEMORY_MB
    enabled: bool = True  # False: decode in this process (no isolation), e.g. where fork is unavailable


def decode_limits_from_config(config) -> DecodeLimits:
    """DECODE_MAX_SECONDS, DECODE_MAX_MEMORY_MB and DECODE_SANDBOX from the app config, else the
    environment, else the defaults."""

    def setting(name, default, cast):
        value = config.get(name)
        if value is None:
            value = os.environ.get(name, default)
        return cast(value)

    enabled = setting("DECODE_SANDBOX", "1", str).strip().lower() not in {"0", "false", "no", "off"}
    return DecodeLimits(max_seconds=setting("DECODE_MAX_SECONDS", DEFAULT_MAX_SECONDS, float),
                        max_memory_mb=setting("DECODE_MAX_MEMORY_MB", DEFAULT_MAX_MEMORY_MB, int),
                        enabled=enabled)


_context = None
_context_lock = threading.Lock()


def _mp_context():
    global _context
    with _context_lock:
        if _context is None:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(["convert"])
        return _context


def _child(conn, path: str, kwargs: dict, max_seconds: float, max_memory_bytes: int) -> None:
    """Runs in the child: set the limits, decode, send ("progress", ...) then ("ok", media) or an error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(5)  # decoding is background work: requests served by the same machine come first
    cpu = max(1, int(max_seconds) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (max_memory_bytes, max_memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def progress(stage: str, fraction: float) -> None:
        conn.send(("progress", stage, fraction))

    try:
        media = convert.extract_faces(path, progress=progress, **kwargs)
        conn.send(("ok", media))
    except convert.MediaError as exc:
        conn.send(("media_error", type(exc).__name__, str(exc)))
    except MemoryError:
        conn.send(("memory", "", ""))
    except Exception as exc:  # a decoder bug: report it, do not hide it
        conn.send(("crash", type(exc).__name__, str(exc)[:500]))
    finally:
        conn.close()


_MEDIA_ERRORS = {cls.__name__: cls for cls in (convert.MediaError, convert.UnsupportedMedia,
                                              convert.CorruptMedia, convert.MediaTooLarge)}


def extract_faces_bounded(path: str | Path, *, decode_limits: DecodeLimits | None = None,
                          progress: Progress | None = None, **kwargs) -> convert.Media:
    """convert.extract_faces(path, **kwargs) under decode_limits. Raises convert.MediaError subclasses
    (with messages for the uploader) for bad media, including DecodeTimedOut, DecodeOutOfMemory and
    DecoderCrashed. An exception raised by `progress` (a job's own time limit) kills the child and
    propagates."""
    limits = decode_limits or DecodeLimits()
    progress = progress or (lambda stage, fraction: None)
    if not limits.enabled:
        return convert.extract_faces(path, progress=progress, **kwargs)

    ctx = _mp_context()
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, name="bounded-decode",
                        args=(sender, str(path), kwargs, limits.max_seconds, limits.max_memory_mb * 1024 * 1024))
    child.start()
    sender.close()
    deadline = time.monotonic() + limits.max_seconds
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DecodeTimedOut(
                    f"Reading this file took longer than {limits.max_seconds:.0f} s, so it was stopped. "
                    "It may be damaged or far too long; try a shorter clip or another copy.")
            if not receiver.poll(min(remaining, 0.5)):
                if not child.is_alive() and not receiver.poll(0):
                    raise _died(child)
                continue
            try:
                message = receiver.recv()
            except EOFError:
                raise _died(child) from None
            kind = message[0]
            if kind == "progress":
                progress(message[1], message[2])
            elif kind == "ok":
                return message[1]
            elif kind == "media_error":
                raise _MEDIA_ERRORS.get(message[1], convert.MediaError)(message[2])
            elif kind == "memory":
                raise DecodeOutOfMemory(_memory_message(limits))
            else:
                raise DecoderCrashed("The file could not be decoded (the decoder failed on it). "
                                     "It may be damaged; try another copy.")
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join(timeout=5)


def _memory_message(limits: DecodeLimits) -> str:
    return (f"Decoding this file needed more than {limits.max_memory_mb} MB of memory, so it was stopped. "
            "Try a smaller picture or a lower-resolution video.")


def _died(child) -> convert.MediaError:
    child.join(timeout=5)
    code = child.exitcode
    if code is not None and code < 0 and -code == signal.SIGXCPU:
        return DecodeTimedOut("Reading this file used more processor time than allowed, so it was stopped. "
                              "It may be damaged or crafted; try another copy.")
    return DecoderCrashed("The decoder stopped on this file (it may be damaged or crafted to break it), "
                          "so it was not analysed. Try another copy.")
