"""The shapes the world can draw, as signed distance fields, and the map symbol of each."""

from __future__ import annotations

import numpy as np


# Signed distance fields in shape coordinates (y up, "radius" about 1, negative inside), after
# Inigo Quilez's 2D distance functions. Exact distances keep the anti-aliasing and the shape
# morphs of ambiguous samples well behaved.
def _sd_box(x, y, hx, hy):
    dx, dy = np.abs(x) - hx, np.abs(y) - hy
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _sd_triangle(x, y, r=1.04):  # equilateral, pointing up, centred on its centroid
    k = np.float32(np.sqrt(3.0))
    px, py = np.abs(x) - r, y + r / k
    flip = px + k * py > 0
    px, py = np.where(flip, (px - k * py) / 2, px), np.where(flip, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


def _sd_star(x, y, r=1.2, rf=0.5):  # five points, one pointing up; rf sets the inner radius
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = np.abs(x), y
    for kx in (k1x, -k1x):  # fold the plane into one tenth of the star
        d = 2 * np.maximum(kx * px + k1y * py, 0)
        px, py = px - d * kx, py - d * k1y
    px, py = np.abs(px), py - r
    bax, bay = -rf * k1y, rf * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0, r)
    return np.hypot(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)


def _sd_hexagon(x, y, r=0.9):  # regular, flat top and bottom; r is the inner radius
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(x), np.abs(y)
    d = 2 * np.minimum(kx * px + ky * py, 0)
    px, py = px - d * kx, py - d * ky
    px = px - np.clip(px, -kz * r, kz * r)
    py = py - r
    return np.hypot(px, py) * np.sign(py)


SHAPE_SDFS = {
    "circle": lambda x, y: np.hypot(x, y) - 1.0,
    "square": lambda x, y: _sd_box(x, y, 0.85, 0.85),
    "triangle": _sd_triangle,
    "cross": lambda x, y: np.minimum(_sd_box(x, y, 1.0, 0.34), _sd_box(x, y, 0.34, 1.0)),
    "star": _sd_star,
    # shapes of the second vocabulary (cross-dataset transfer): never in the default world's classes
    "hexagon": _sd_hexagon,
    "diamond": lambda x, y: _sd_box((x + y) * np.float32(0.70710678), (x - y) * np.float32(0.70710678), 0.72, 0.72),
    "ring": lambda x, y: np.abs(np.hypot(x, y) - 0.72) - 0.28,
}


# shape -> Plotly marker symbol, so that maps draw each class as itself
SHAPE_SYMBOLS = {"circle": "circle", "square": "square", "triangle": "triangle-up", "cross": "cross",
                 "star": "star", "hexagon": "hexagon", "diamond": "diamond", "ring": "octagon"}
