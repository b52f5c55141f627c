"""Procedural materials: albedo as a function of surface-attached coordinates.

Every function takes texture coordinates q (world coordinates for static surfaces, object-local
ones for moving cars), so a surface point has one colour in every frame and in both cameras.
`fp` is the pixel footprint in metres and `fpg` the same stretched by the viewing angle; they
band-limit noise octaves and line patterns so distant detail fades to its mean instead of
aliasing (which would make frames disagree photometrically).
"""

from __future__ import annotations

import numpy as np

from .noise import fbm, value_noise
from .scene import ASPHALT, BARK, CAR_BODY, CAR_CABIN, FACADE, FOLIAGE, GRAIN, METAL, PAINT, PAVEMENT


def _rgb(*v):
    # float32 constants: shading runs in float32 (half the memory traffic of float64) and a
    # float64 constant would silently promote every array it touches
    return np.array(v, np.float32)


def _tangent_uv(q, n):
    """Two in-surface coordinates of an axis-aligned face (u horizontal, w the other axis)."""
    ax = np.abs(n).argmax(1)
    u = np.where(ax == 0, q[:, 2], q[:, 0])
    w = np.where(ax == 1, q[:, 2], q[:, 1])
    return u, w, ax


def _lines(x, period, half_width, fp):
    """Anti-aliased coverage of parallel lines x = k·period, faded to their mean when too fine."""
    d = np.abs(x / period - np.round(x / period)) * period
    cov = np.clip((half_width - d) / np.maximum(fp, 1e-6) + 0.5, 0.0, 1.0)
    fade = np.clip(2.0 - 4.0 * fp / period, 0.0, 1.0)
    return cov * fade + (2 * half_width / period) * (1 - fade)


def _cells(x, period, frac, fp):
    """Coverage of centred openings `frac` of each cell of a grid of `period` (windows)."""
    c = np.abs(x / period - np.floor(x / period) - 0.5) * period
    cov = np.clip((frac * period / 2 - c) / np.maximum(fp, 1e-6) + 0.5, 0.0, 1.0)
    fade = np.clip(2.0 - 4.0 * fp / period, 0.0, 1.0)
    return cov * fade + frac * (1 - fade)


def asphalt(q, n, fp, fpg, seed, road_half):
    fpm = np.sqrt(fp * fpg)
    xz = q[:, [0, 2]]  # planar: 2-D noise in the plane's own coordinates
    grain = fbm(xz, 3.0, 6, fpm, seed)
    patches = fbm(xz, 0.25, 2, fpm, seed + 1)
    alb = _rgb(0.30, 0.30, 0.32) * (1 + 0.9 * grain + 0.6 * patches)[:, None]
    x, z = q[:, 0], q[:, 2]
    # Dashed centre line (3 m on, 3 m off) and solid lines 1.1 m inside each kerb (parking strips).
    # Across a line the footprint is fp; along the road it is the grazing-stretched fpg.
    on = np.clip((1.5 - np.abs(np.mod(z, 6.0) - 1.5)) / np.maximum(fpg, 1e-6) + 0.5, 0, 1)
    keep = np.clip(2.0 - fpg / 1.5, 0, 1)
    mark = np.clip((0.08 - np.abs(x)) / fp + 0.5, 0, 1) * (on * keep + 0.5 * (1 - keep))
    for edge in (-(road_half - 1.1), road_half - 1.1):
        mark = np.maximum(mark, np.clip((0.07 - np.abs(x - edge)) / fp + 0.5, 0, 1))
    paint = _rgb(0.88, 0.87, 0.82) * (1 + 0.3 * grain)[:, None]
    return alb + (paint - alb) * mark[:, None]


def pavement(q, n, fp, fpg, color, seed):
    u, w, _ = _tangent_uv(q, n)
    fpm = np.sqrt(fp * fpg)
    # per-slab brightness: value noise sampled at integer lattice points is a pure hash
    tile = value_noise(np.stack([np.floor(u / 0.6), np.floor(w / 0.6), np.zeros_like(u)], 1), seed + 5)
    grout = np.maximum(_lines(u, 0.6, 0.02, fpm), _lines(w, 0.6, 0.02, fpm))
    grain = fbm(np.stack([u, w], 1), 4.0, 5, fpm, seed)
    return color * ((1 + 0.7 * grain + 0.25 * (tile - 0.5)) * (1 - 0.45 * grout))[:, None]


def facade(q, n, fp, fpg, color, param, ground_y, seed):
    """Wall with noise and staining, a window grid (param: periods and open fractions), roof."""
    u, w, ax = _tangent_uv(q, n)
    uw = np.stack([u, w], 1)
    fpm = np.sqrt(fp * fpg)
    out = color * (1 + 0.6 * fbm(uw, 2.0, 6, fpm, seed) + 0.4 * fbm(uw, 0.15, 2, fpm, seed + 3))[:, None]
    above = ground_y - q[:, 1]
    win = _cells(u, param[:, 0], param[:, 2], fpm) * _cells(above, param[:, 1], param[:, 3], fpm)
    win = win * (ax != 1) * (above > 0.6)
    m = np.flatnonzero(win > 0)  # glass noise only where there is glass
    glass = _rgb(0.14, 0.17, 0.22) * (1 + 1.2 * fbm(uw[m], 1.0, 4, fpm[m], seed[m] + 9))[:, None]
    out[m] += (glass - out[m]) * win[m, None]
    m = np.flatnonzero(ax == 1)
    out[m] = _rgb(0.28, 0.27, 0.27) * (1 + 0.8 * fbm(uw[m], 3.0, 5, fpm[m], seed[m] + 2))[:, None]
    return out


def car(q, n, fp, fpg, color, lo0, hi0, cabin, ground_y, seed):
    """Body: paint with a dark sill/tyre band. Cabin: glass with pillars, painted roof.
    lo0/hi0 are the primitive's time-0 box, i.e. in the same local frame as q."""
    u, w, ax = _tangent_uv(q, n)
    uw = np.stack([u, w], 1)
    fpm = np.sqrt(fp * fpg)
    paint = color * (1 + 0.35 * fbm(uw, 4.0, 5, fpm, seed))[:, None]
    if not cabin:
        band = np.clip((ground_y - q[:, 1] - 0.3) / fpm + 0.5, 0, 1)
        return paint * (0.12 + 0.88 * band)[:, None]
    rel = (q - lo0) / np.maximum(hi0 - lo0, 1e-6)
    horiz = np.where(ax == 0, rel[:, 2], rel[:, 0])
    glass = (ax != 1) & (rel[:, 1] > 0.12) & (horiz > 0.06) & (horiz < 0.94)
    glass &= ~((ax == 0) & (np.abs(rel[:, 2] - 0.5) < 0.04))  # B-pillar on the sides
    m = np.flatnonzero(glass)
    paint[m] = _rgb(0.10, 0.12, 0.16) * (1 + 1.0 * fbm(uw[m], 2.0, 4, fpm[m], seed[m] + 4))[:, None]
    return paint


def foliage(q, fp, fpg, color, seed):
    fpm = np.sqrt(fp * fpg)
    alb = color * (1 + 1.6 * fbm(q, 4.0, 6, fpm, seed))[:, None]
    return alb + _rgb(0.08, 0.06, -0.03) * fbm(q, 0.7, 2, fpm, seed + 1)[:, None]


def bark(q, fp, fpg, color, seed):
    # squashed along y: vertical streaks
    return color * (1 + 1.2 * fbm(q * _rgb(1.0, 0.12, 1.0), 12.0, 4, np.sqrt(fp * fpg), seed))[:, None]


def metal(q, fp, fpg, color, seed):
    return color * (1 + 0.5 * fbm(q, 5.0, 4, np.sqrt(fp * fpg), seed))[:, None]


def grain(q, n, fp, fpg, color, seed):
    """Asphalt-like grain and patches in any colour, without road markings (a drawn material)."""
    u, w, _ = _tangent_uv(q, n)
    uw = np.stack([u, w], 1)
    fpm = np.sqrt(fp * fpg)
    return color * (1 + 0.9 * fbm(uw, 3.0, 6, fpm, seed) + 0.6 * fbm(uw, 0.25, 2, fpm, seed + 1))[:, None]


def paint(q, fp, fpg, color, seed):
    """Smooth paint: the base colour with faint large-scale mottling (a drawn material)."""
    return color * (1 + 0.25 * fbm(q, 0.8, 3, np.sqrt(fp * fpg), seed))[:, None]


# Programs whose look does not depend on absolute geometry (window grids in metres, a car's box,
# the road's lane lines), so a texture scale may stretch their coordinates.
_SCALABLE = (PAVEMENT, FOLIAGE, BARK, METAL, GRAIN, PAINT)


def albedo(mat, q, n, fp, fpg, color, param, lo0, hi0, seed, ground_y, road_half, scale=None):
    """Dispatch per material; all inputs are per-point arrays of the same length. Points are
    sorted by material once so each texture works on a contiguous slice (cheaper than one
    boolean gather of every input per material). `scale` (per point, or None) multiplies the
    texture coordinates and footprints of the scalable programs: a finer or coarser texture."""
    order = np.argsort(mat, kind="stable")
    mat, seed = mat[order], seed[order]
    q, n, fp, fpg, color, param, lo0, hi0 = (
        x[order].astype(np.float32) for x in (q, n, fp, fpg, color, param, lo0, hi0))
    if scale is not None:
        scale = scale[order].astype(np.float32)
    ids, starts = np.unique(mat, return_index=True)
    ends = np.append(starts[1:], len(mat))
    out = np.empty_like(q)
    for m_id, a, b in zip(ids, starts, ends):
        m = slice(a, b)
        g = (q[m], n[m], fp[m], fpg[m])
        if scale is not None and m_id in _SCALABLE:
            s = scale[m]
            g = (q[m] * s[:, None], n[m], fp[m] * s, fpg[m] * s)
        if m_id == ASPHALT:
            out[m] = asphalt(*g, seed[m], road_half)
        elif m_id == PAVEMENT:
            out[m] = pavement(*g, color[m], seed[m])
        elif m_id == FACADE:
            out[m] = facade(*g, color[m], param[m], ground_y, seed[m])
        elif m_id in (CAR_BODY, CAR_CABIN):
            out[m] = car(*g, color[m], lo0[m], hi0[m], m_id == CAR_CABIN, ground_y, seed[m])
        elif m_id == FOLIAGE:
            out[m] = foliage(g[0], g[2], g[3], color[m], seed[m])
        elif m_id == BARK:
            out[m] = bark(g[0], g[2], g[3], color[m], seed[m])
        elif m_id == METAL:
            out[m] = metal(g[0], g[2], g[3], color[m], seed[m])
        elif m_id == GRAIN:
            out[m] = grain(*g, color[m], seed[m])
        elif m_id == PAINT:
            out[m] = paint(g[0], g[2], g[3], color[m], seed[m])
        else:
            raise ValueError(f"unknown material {m_id}")
    result = np.empty_like(out)
    result[order] = out
    return result


def sky_color(dn: np.ndarray, pixel_angle: float, seed: int) -> np.ndarray:
    """Vertical gradient plus clouds from noise over unit directions: a function of direction
    only, like a sky at infinity, so sky flow is rotation-only and sky disparity zero."""
    dn = dn.astype(np.float32)
    elev = np.clip(-dn[:, 1], -0.2, 1.0)
    k = np.clip(elev * 2.5, 0.0, 1.0) ** 0.7
    horizon, zenith = _rgb(0.80, 0.85, 0.90), _rgb(0.30, 0.50, 0.82)
    base = horizon + (zenith - horizon) * k[:, None]
    cloud = fbm(dn, 2.5, 6, np.full(len(dn), pixel_angle, np.float32), seed + 77)
    c = np.clip((cloud + 0.02) * 5.0, 0.0, 1.0) * 0.85
    return np.clip(base + (_rgb(0.95, 0.95, 0.97) * (1 + 0.5 * cloud)[:, None] - base) * c[:, None], 0.0, 1.0)
