"""Cast shadows of the illumination control: is the sun visible from a surface point?

The sun is a directional light, so every shadow ray is parallel. Points and primitives are
projected onto the plane perpendicular to the sun, where a primitive can only block the points
inside its projected bounding rectangle; each primitive is tested against those points only (the
shadow analogue of the camera rays' screen-space culling in render.py).
"""

from __future__ import annotations

import itertools

import numpy as np

from .scene import BOX, CYLINDER, Prims

_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=bool)
EPS = 1e-6


def _basis(sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0.0, 0.0]) if abs(sun[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(sun, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(sun, e1)


def _box_blocks(lo, hi, o, d):
    tn, tf = np.full(len(o), -np.inf), np.full(len(o), np.inf)
    for k in range(3):
        if abs(d[k]) < 1e-12:
            inside = (o[:, k] >= lo[k]) & (o[:, k] <= hi[k])
            tn, tf = np.where(inside, tn, np.inf), np.where(inside, tf, -np.inf)
            continue
        t1, t2 = (lo[k] - o[:, k]) / d[k], (hi[k] - o[:, k]) / d[k]
        tn, tf = np.maximum(tn, np.minimum(t1, t2)), np.minimum(tf, np.maximum(t1, t2))
    return (tf >= tn) & (tf > EPS)


def _sphere_blocks(center, r, o, d):
    oc = o - center
    b = oc @ d
    disc = b * b - (np.einsum("ij,ij->i", oc, oc) - r * r)
    return (disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0.0)) > EPS)


def _cylinder_blocks(lo, hi, center, r, o, d):
    """Side of a vertical cylinder, either root (a ray through the cap leaves through the side,
    or through the bottom, which rests on the ground the ray cannot come from)."""
    ox, oz = o[:, 0] - center[0], o[:, 2] - center[2]
    a = d[0] ** 2 + d[2] ** 2
    if a < 1e-12:
        return (ox * ox + oz * oz <= r * r) & (o[:, 1] > lo[1])
    b = ox * d[0] + oz * d[2]
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    root = np.sqrt(np.maximum(disc, 0.0))
    hit = np.zeros(len(o), bool)
    for t in ((-b - root) / a, (-b + root) / a):
        y = o[:, 1] + t * d[1]
        hit |= (disc >= 0) & (t > EPS) & (y >= lo[1]) & (y <= hi[1])
    return hit


def sun_blocked(prims: Prims, pts: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """(M,) bool: whether a primitive lies between each point and the sun (direction `sun`)."""
    blocked = np.zeros(len(pts), bool)
    if len(pts) == 0 or len(prims) == 0:
        return blocked
    e1, e2 = _basis(sun)
    a, b, s = pts @ e1, pts @ e2, pts @ sun
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]
    corners = np.where(_CORNERS[None], prims.hi[:, None], prims.lo[:, None])  # (N, 8, 3)
    ca, cb, cs = corners @ e1, corners @ e2, corners @ sun
    for i in range(len(prims)):
        j0, j1 = np.searchsorted(a_sorted, (ca[i].min(), ca[i].max()))
        sel = order[j0:j1]
        sel = sel[(b[sel] >= cb[i].min()) & (b[sel] <= cb[i].max()) & (s[sel] < cs[i].max()) & ~blocked[sel]]
        if len(sel) == 0:
            continue
        o = pts[sel]
        if prims.kind[i] == BOX:
            hit = _box_blocks(prims.lo[i], prims.hi[i], o, sun)
        elif prims.kind[i] == CYLINDER:
            hit = _cylinder_blocks(prims.lo[i], prims.hi[i], prims.center[i], prims.radius[i], o, sun)
        else:
            hit = _sphere_blocks(prims.center[i], prims.radius[i], o, sun)
        blocked[sel[hit]] = True
    return blocked
