"""How much fine detail a face crop still holds, and the wider uncertain band for faces that lost it.

A blurred, upscaled or heavily compressed face carries less of the evidence the detector reads, and
its scores drift: on the validation faces, blurring by 1 px made the shipped model call 22 % of the
FFHQ real faces fake (README, "Detail-aware band"). Such a face should need a stronger score
before the tool says "fake" or "real". `face_detail` measures the loss (no model involved: Laplacian
energy against contrast), and `DetailBands`, fitted on degraded validation faces and kept in the
model card, gives the band for a face at that detail. A band only ever widens: a face with enough
detail keeps the card's own band.

Pure numpy/OpenCV, no TensorFlow: used by the pipeline, the training code and the tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MEASURE = ("log10 of the variance of the Laplacian of the grey face centre (the middle 3/4 of the "
           "crop) over the variance of its grey levels: lower = less fine detail")


def face_detail(crops: np.ndarray) -> np.ndarray:
    """Detail per crop [N, S, S, 3] uint8 (see MEASURE). Medians on the validation faces: -1.0 for
    a DFDC video face as stored, -0.6 for an FFHQ photo, about -1.55 once blurred by 1 px or shrunk
    to half size. A flat crop (no contrast) scores the lowest value, -6."""
    crops = np.asarray(crops)
    if crops.ndim == 3:
        crops = crops[None]
    size = crops.shape[1]
    cut = size // 8
    out = np.empty(len(crops), np.float32)
    for i, crop in enumerate(crops):
        grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.float32)
        grey = grey[cut:size - cut, cut:size - cut]
        contrast = float(grey.var())
        if contrast < 1e-3:
            out[i] = -6.0
            continue
        laplacian = float(cv2.Laplacian(grey, cv2.CV_32F).var())
        out[i] = max(-6.0, np.log10(laplacian + 1e-6) - np.log10(contrast))
    return out


@dataclass(frozen=True)
class DetailBands:
    """edges ascending; a face whose detail is below edges[i] (and not below edges[i-1]) gets
    bands[i]; at or above the last edge, `default` (the card's uncertain band)."""

    edges: tuple[float, ...]
    bands: tuple[tuple[float, float], ...]
    default: tuple[float, float]

    @classmethod
    def from_card(cls, entry: dict | None, default: tuple[float, float]) -> "DetailBands":
        """The card's `detail_bands` entry; absent (older cards) -> one band for every face."""
        if not entry:
            return cls((), (), tuple(default))
        edges = tuple(float(e) for e in entry["edges"])
        bands = tuple((float(lo), float(hi)) for lo, hi in entry["bands"])
        if len(edges) != len(bands) or list(edges) != sorted(edges):
            raise ValueError("detail_bands: edges must be ascending and match the bands one to one")
        return cls(edges, bands, tuple(default))

    def band_for(self, detail: float | None) -> tuple[float, float]:
        """The band for a face (or a person's faces) at this detail; None -> the default band."""
        if detail is None:
            return self.default
        for edge, band in zip(self.edges, self.bands):
            if detail < edge:
                return band
        return self.default

    def with_base(self, base: tuple[float, float]) -> "DetailBands":
        """The same bins around a wider base band (photos: the card's photo_band): every bin's band
        widened to at least `base`, so a face never gets a narrower band than the base."""
        return DetailBands(self.edges, tuple(widened(list(self.bands), tuple(base))), tuple(base))

    def bands_for(self, details: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-face (low, high) arrays for `details`."""
        pairs = [self.band_for(float(d)) for d in np.asarray(details).ravel()]
        low = np.array([p[0] for p in pairs], np.float64)
        high = np.array([p[1] for p in pairs], np.float64)
        return low, high


def widened(bands: list[tuple[float, float]], default: tuple[float, float]) -> list[tuple[float, float]]:
    """Each band made at least as wide as `default` and as every band of a higher-detail bin after
    it (bands are listed from the least detail up): less detail never gives a narrower band."""
    out = [(min(lo, default[0]), max(hi, default[1])) for lo, hi in bands]
    for i in range(len(out) - 2, -1, -1):
        out[i] = (min(out[i][0], out[i + 1][0]), max(out[i][1], out[i + 1][1]))
    return out
