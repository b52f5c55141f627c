"""Vectorised ray casting of a `Scene`: colour, metric z-depth, class labels and forward flow.

Rays are d = R·[(u-cx)/fx, (v-cy)/fy, 1], deliberately NOT normalised: the ray parameter t of a
hit is then exactly the camera z-depth stored in depth maps. Pixel (row i, column j) has image
coordinates (u, v) = (j, i) (OpenCV convention: integer pixel centres).

Speed comes from screen-space culling: each primitive's AABB is projected (with near-plane
clipping) to an image rectangle and only rays inside it are tested, so the cost scales with the
pixels each object covers rather than pixels × objects. Colour is shaded once per pixel centre;
only silhouette pixels get 2 extra sub-samples (adaptive anti-aliasing), since textures are
already band-limited by their footprint. Depth, labels and flow come from the centre rays only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .classes import MAX_DEPTH, ROAD, SIDEWALK, SKY
from .scene import ASPHALT, BOX, CYLINDER, GROUND_COLOR, PAVEMENT, SPHERE, SUN, Prims, Scene
from .shadows import sun_blocked
from .textures import albedo, sky_color

SKY_ID, GROUND_ID = -1, -2   # pseudo primitive ids in the id buffer
EPS = 1e-6
T_MAX = 1e5                  # ground hits farther than this (the horizon row) count as sky
_SUN = SUN
_GROUND_COLOR = GROUND_COLOR
# Extra (du, dv) sub-samples of silhouette pixels: a diagonal pair, which together with the
# centre sample resolves both horizontal and vertical edges at a third of a 2×2 grid's cost.
_SUBSAMPLES = np.array([[-1 / 3, -1 / 3], [1 / 3, 1 / 3]])

_CORNER_SEL = np.array(list(itertools.product((0, 1), repeat=3)), dtype=bool)   # (8, 3) lo/hi choice
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8)
                   if np.sum(_CORNER_SEL[a] != _CORNER_SEL[b]) == 1])            # the 12 box edges


def intrinsics(height: int, width: int) -> np.ndarray:
    """KITTI-like pinhole (monodepth2's normalised fx = 0.58·W) with square pixels."""
    f = 0.58 * width
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def rays(K: np.ndarray, R: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World ray directions (..., 3) through image points (u, v), camera-z component = 1."""
    d = np.stack(np.broadcast_arrays((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u * v)), -1)
    d = d @ R.T
    # Exact zeros (the centre row/column of an unrotated camera) would give 0·inf = nan in the
    # slab test; nudging them by 1e-12 changes no hit measurably.
    tiny = 1e-12
    return np.where(np.abs(d) < tiny, np.where(d < 0, -tiny, tiny), d)


def _screen_bounds(prims: Prims, origin, R, K, near: float = 0.05):
    """Image-space bounds (u_lo, u_hi, v_lo, v_hi) of each primitive's AABB, and visibility."""
    corners = np.where(_CORNER_SEL[None], prims.hi[:, None], prims.lo[:, None])      # (N, 8, 3)
    cam = (corners - origin) @ R                                                       # world → camera
    a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - near) * (zb - near) < 0
    s = (near - za) / np.where(crosses, zb - za, 1.0)
    pts = np.concatenate([cam, a + s[..., None] * (b - a)], axis=1)  # corners + near-plane piercings
    valid = np.concatenate([cam[..., 2] >= near, crosses], axis=1)
    z = np.where(valid, pts[..., 2], 1.0)
    u = K[0, 0] * pts[..., 0] / z + K[0, 2]
    v = K[1, 1] * pts[..., 1] / z + K[1, 2]
    big = 1e9
    bounds = np.stack([np.where(valid, u, big).min(1), np.where(valid, u, -big).max(1),
                       np.where(valid, v, big).min(1), np.where(valid, v, -big).max(1)], 1)
    return np.clip(bounds, -big, big), valid.any(1)


# Intersection kernels. Direction components are passed separately (contiguous arrays of any
# shape); all return t (inf where missed).

def _box_t(lo, hi, o, ix, iy, iz):
    tn = tf = None
    for k, inv in enumerate((ix, iy, iz)):
        t1, t2 = (lo[k] - o[k]) * inv, (hi[k] - o[k]) * inv
        a, b = np.minimum(t1, t2), np.maximum(t1, t2)
        tn = a if tn is None else np.maximum(tn, a)
        tf = b if tf is None else np.minimum(tf, b)
    return np.where((tf >= tn) & (tn > EPS), tn, np.inf)


def _cylinder_t(lo, hi, center, r, o, dx, dy, dz):
    """Vertical cylinder: side (first root only) plus its top cap; the bottom rests on the ground."""
    ox, oz = o[0] - center[0], o[2] - center[2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    y = o[1] + t * dy
    side = np.where((disc >= 0) & (t > EPS) & (y >= lo[1]) & (y <= hi[1]), t, np.inf)
    if o[1] >= lo[1]:
        return side  # camera below the top (y is down): the cap cannot be seen
    tc = (lo[1] - o[1]) / dy
    xc, zc = ox + tc * dx, oz + tc * dz
    return np.minimum(side, np.where((tc > EPS) & (xc * xc + zc * zc <= r * r), tc, np.inf))


def _sphere_t(center, r, o, dx, dy, dz):
    oc = o - center
    a = dx * dx + dy * dy + dz * dz
    b = dx * oc[0] + dy * oc[1] + dz * oc[2]
    disc = b * b - a * (oc @ oc - r * r)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def _hit(prims: Prims, i: int, o, d, inv):
    kind = prims.kind[i]
    if kind == BOX:
        return _box_t(prims.lo[i], prims.hi[i], o, *inv)
    if kind == CYLINDER:
        return _cylinder_t(prims.lo[i], prims.hi[i], prims.center[i], prims.radius[i], o, *d)
    return _sphere_t(prims.center[i], prims.radius[i], o, *d)


def cast(prims: Prims, ground_y: float, origin, R, K, d: np.ndarray, u=None, v=None):
    """Nearest hit per ray: (t, id), id a primitive row, GROUND_ID or SKY_ID.

    d is either an image grid (H, W, 3) of rays through pixel centres (culled by slicing the
    primitives' rectangles) or a flat list (M, 3) of rays through image points (u, v), sorted
    by v (culled by a row-range search plus a column mask)."""
    shape = d.shape[:-1]
    dc = np.ascontiguousarray(np.moveaxis(d, -1, 0))   # (3, ...) component-major
    inv = 1.0 / dc
    t = np.full(shape, np.inf)
    idx = np.full(shape, SKY_ID, np.int64)
    with np.errstate(divide="ignore"):
        tg = (ground_y - origin[1]) / dc[1]
    g = (tg > EPS) & (tg < T_MAX)
    t[g], idx[g] = tg[g], GROUND_ID
    bounds, visible = _screen_bounds(prims, origin, R, K)
    grid = u is None
    if grid:
        h, w = shape
        c0 = np.clip(np.floor(bounds[:, 0]) - 1, 0, w).astype(np.int64)
        c1 = np.clip(np.ceil(bounds[:, 1]) + 2, 0, w).astype(np.int64)
        r0 = np.clip(np.floor(bounds[:, 2]) - 1, 0, h).astype(np.int64)
        r1 = np.clip(np.ceil(bounds[:, 3]) + 2, 0, h).astype(np.int64)
        visible &= (c1 > c0) & (r1 > r0)
    for i in np.flatnonzero(visible):
        if grid:
            sl = (slice(r0[i], r1[i]), slice(c0[i], c1[i]))
            th = _hit(prims, i, origin, dc[(slice(None),) + sl], inv[(slice(None),) + sl])
            tv, iv = t[sl], idx[sl]
            better = th < tv
            tv[better] = th[better]
            iv[better] = i
        else:
            # rays are sorted by v: the primitive's rows are one contiguous run of the list
            a, b = np.searchsorted(v, (bounds[i, 2] - 1, bounds[i, 3] + 1))
            sel = a + np.flatnonzero((u[a:b] >= bounds[i, 0] - 1) & (u[a:b] <= bounds[i, 1] + 1))
            if len(sel) == 0:
                continue
            th = _hit(prims, i, origin, dc[:, sel], inv[:, sel])
            better = th < t[sel]
            t[sel[better]] = th[better]
            idx[sel[better]] = i
    return t, idx


def _normals(prims: Prims, ids: np.ndarray, p: np.ndarray) -> np.ndarray:
    n = np.zeros_like(p)
    n[:, 1] = -1.0  # ground (and cylinder caps) face up
    kind = np.where(ids >= 0, prims.kind[np.maximum(ids, 0)], -1)
    m = np.flatnonzero(kind == BOX)
    if len(m):
        i, q = ids[m], p[m].T
        lo, hi = prims.lo[i].T, prims.hi[i].T
        dlo, dhi = np.abs(q - lo), np.abs(q - hi)          # (3, M) distances to the two faces
        dist = np.minimum(dlo, dhi)
        # the face the hit point lies on: the axis with the nearest face plane
        axis = np.where((dist[0] <= dist[1]) & (dist[0] <= dist[2]), 0, np.where(dist[1] <= dist[2], 1, 2))
        ar = np.arange(len(m))
        sign = np.where(dlo[axis, ar] < dhi[axis, ar], -1.0, 1.0)
        nb = np.zeros((len(m), 3))
        nb[ar, axis] = sign
        n[m] = nb
    m = kind == CYLINDER
    if m.any():
        i, q = ids[m], p[m]
        radial = q - prims.center[i]
        radial[:, 1] = 0.0
        rn = np.linalg.norm(radial, axis=1, keepdims=True)
        on_side = rn[:, 0] > prims.radius[i] * (1 - 1e-4)
        n[m] = np.where(on_side[:, None], radial / np.maximum(rn, 1e-12), [0.0, -1.0, 0.0])
    m = kind == SPHERE
    if m.any():
        i = ids[m]
        n[m] = (p[m] - prims.center[i]) / prims.radius[i][:, None]
    return n


def shade(scene: Scene, prims: Prims, time: float, origin, d, t, ids, fx: float) -> np.ndarray:
    """Linear RGB in [0, 1] (M, 3) for a flat list of traced rays."""
    rgb = np.empty((len(ids), 3))
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    sky = ids == SKY_ID
    if sky.any():
        rgb[sky] = sky_color(dn[sky], 1.0 / fx, scene.tex_seed) if scene.background is None else scene.background
    hit = np.flatnonzero(~sky)
    if len(hit) == 0:
        return np.clip(rgb, 0.0, 1.0)
    hid, dh = ids[hit], d[hit]
    p = origin + t[hit, None] * dh
    n = _normals(prims, hid, p)
    fp = t[hit] * np.linalg.norm(dh, axis=1) / fx                  # pixel footprint, metres
    cos = np.abs(np.einsum("ij,ij->i", n, dn[hit]))
    fpg = fp / np.maximum(cos, 0.08)                               # stretched at grazing angles
    pid = np.maximum(hid, 0)
    ground = hid == GROUND_ID
    # Surface-attached texture coordinates: object-local (time-0 position) for moving primitives.
    q = p - prims.velocity[pid] * (~ground * float(time))[:, None]
    on_road = np.abs(p[:, 0]) < scene.road_half
    mat = np.where(ground, np.where(on_road, ASPHALT, PAVEMENT), prims.material[pid])
    color = np.where(ground[:, None], _GROUND_COLOR, prims.color[pid])
    seed = scene.tex_seed + 1013 * np.where(ground, 0, prims.obj[pid] + 1)
    param = prims.param[pid]
    scale = None if prims.tex_scale is None else prims.tex_scale[pid]
    gain = None
    if scene.ground_styles:  # the appearance controls restyled the road and/or sidewalk surface
        mat, color, param, scale, gain = _ground_styles(scene, ground, on_road, mat, color, param, scale)
    alb = albedo(mat, q, n, fp, fpg, color, param, scene.prims.lo[pid], scene.prims.hi[pid],
                 seed, scene.ground_y, scene.road_half, scale)
    if gain is not None:
        alb = alb * gain
    lt = scene.light
    if lt is None:
        # Lambert with a fixed sun plus a sky-light term that favours upward-facing surfaces.
        light = 0.42 + 0.12 * (-n[:, 1]) + 0.6 * np.maximum(n @ _SUN, 0.0)
        rgb[hit] = np.clip(alb, 0.0, 1.0) * light[:, None]
        return np.clip(rgb, 0.0, 1.0)
    # The illumination control: this sequence's sun, strengths and tint; optionally cast shadows.
    direct = lt.sun_gain * np.maximum(n @ lt.sun, 0.0)
    if lt.shadows:
        lit = np.flatnonzero(direct > 0)
        blocked = sun_blocked(prims, p[lit] + 1e-3 * n[lit], lt.sun)
        direct[lit[blocked]] = 0.0
    light = (lt.ambient + 0.12 * (-n[:, 1]) + direct)[:, None] * lt.tint
    rgb[hit] = np.clip(alb, 0.0, 1.0) * light
    return np.clip(rgb, 0.0, 1.0)


def _ground_styles(scene: Scene, ground, on_road, mat, color, param, scale):
    """Per-point material inputs with the ground's road/sidewalk parts restyled."""
    from .classes import ROAD, SIDEWALK

    color, param = color.copy(), param.copy()
    scale = np.ones(len(mat)) if scale is None else scale.copy()
    scale[ground] = 1.0
    gain = np.ones((len(mat), 3))
    for cls, where in ((ROAD, ground & on_road), (SIDEWALK, ground & ~on_road)):
        style = scene.ground_styles.get(cls)
        if style is None or not where.any():
            continue
        if style.material == ASPHALT:
            gain[where] = style.color  # the native asphalt, jittered: its colour is a gain
            continue
        mat = np.where(where, style.material, mat)
        color[where], param[where], scale[where] = style.color, style.param, style.scale
    return mat, color, param, scale, gain


@dataclass
class Trace:
    """Pixel-centre rays of one camera at one frame and what they hit."""

    scene: Scene
    prims: Prims        # the scene's primitives moved to `time`
    time: int
    K: np.ndarray
    R: np.ndarray
    origin: np.ndarray
    d: np.ndarray       # (H, W, 3)
    t: np.ndarray       # (H, W) ray parameter = z-depth
    idx: np.ndarray     # (H, W) primitive row / GROUND_ID / SKY_ID


def trace(scene: Scene, time: int, pose: np.ndarray, K: np.ndarray, height: int, width: int) -> Trace:
    R, o = pose[:3, :3], pose[:3, 3].astype(float)
    prims = scene.prims.at(time)
    jj, ii = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    d = rays(K, R, jj, ii)
    t, idx = cast(prims, scene.ground_y if scene.has_ground else np.inf, o, R, K, d)
    return Trace(scene, prims, time, K, R, o, d, t, idx)


def depth_map(tr: Trace) -> np.ndarray:
    """float32 z-depth in metres; sky and anything beyond MAX_DEPTH is MAX_DEPTH."""
    return np.where(tr.idx == SKY_ID, MAX_DEPTH, np.minimum(tr.t, MAX_DEPTH)).astype(np.float32)


def label_map(tr: Trace) -> np.ndarray:
    ids = tr.idx
    label = np.full(ids.shape, SKY, np.int64)
    hit = ids != SKY_ID
    x = tr.origin[0] + tr.t[hit] * tr.d[hit][:, 0]
    ground_cls = np.where(np.abs(x) < tr.scene.road_half, ROAD, SIDEWALK)
    label[hit] = np.where(ids[hit] == GROUND_ID, ground_cls, tr.prims.cls[np.maximum(ids[hit], 0)])
    return label.astype(np.uint8)


def flow_map(tr: Trace, next_pose: np.ndarray) -> np.ndarray:
    """Forward flow (H, W, 2): each visible surface point moved with its object for one frame
    (static scene: not at all), projected into the next camera; sky is a point at infinity.
    Occlusion is ignored, as usual."""
    h, w = tr.t.shape
    d, t, ids = tr.d.reshape(-1, 3), tr.t.reshape(-1), tr.idx.reshape(-1)
    hit = ids != SKY_ID
    vel = np.where((ids >= 0)[:, None], tr.prims.velocity[np.maximum(ids, 0)], 0.0)
    pts = np.where(hit[:, None], tr.origin + np.where(hit, t, 0.0)[:, None] * d + vel, d)
    R, c = next_pose[:3, :3], next_pose[:3, 3]
    pc = (pts - hit[:, None] * c) @ R   # directions (w = 0) are only rotated
    z = np.where(np.abs(pc[:, 2]) < 1e-9, 1e-9, pc[:, 2])
    uv = np.stack([tr.K[0, 0] * pc[:, 0] / z + tr.K[0, 2], tr.K[1, 1] * pc[:, 1] / z + tr.K[1, 2]], 1)
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    return (uv.reshape(h, w, 2) - np.stack([jj, ii], -1)).astype(np.float32)


def color_map(tr: Trace, antialias: bool = True) -> np.ndarray:
    """uint8 RGB (H, W, 3). With antialias, pixels on a silhouette (a 4-neighbour sees another
    primitive) average their centre sample with extra sub-samples."""
    h, w = tr.t.shape
    d, t, idx = tr.d.reshape(-1, 3), tr.t.reshape(-1), tr.idx.reshape(-1)
    ii = np.zeros(0, np.int64)
    if antialias:
        edge = np.zeros((h, w), bool)
        dx, dy = tr.idx[:, 1:] != tr.idx[:, :-1], tr.idx[1:] != tr.idx[:-1]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:] |= dy
        edge[:-1] |= dy
        ii, jj = np.nonzero(edge)
    k = len(_SUBSAMPLES)
    if len(ii):
        u = (jj[:, None] + _SUBSAMPLES[:, 0]).reshape(-1)
        v = (ii[:, None] + _SUBSAMPLES[:, 1]).reshape(-1)
        order = np.argsort(v, kind="stable")
        ds = rays(tr.K, tr.R, u[order], v[order])
        ground_y = tr.scene.ground_y if tr.scene.has_ground else np.inf
        ts, idxs = cast(tr.prims, ground_y, tr.origin, tr.R, tr.K, ds, u[order], v[order])
        back = np.argsort(order)  # sub-samples back in (pixel, sample) order
        # one shading call for centres and sub-samples: shading has a sizeable per-call cost
        d = np.concatenate([d, ds[back]])
        t = np.concatenate([t, ts[back]])
        idx = np.concatenate([idx, idxs[back]])
    col = shade(tr.scene, tr.prims, tr.time, tr.origin, d, t, idx, tr.K[0, 0])
    rgb = col[: h * w].reshape(h, w, 3)
    if len(ii):
        rgb[ii, jj] = (rgb[ii, jj] + col[h * w:].reshape(len(ii), k, 3).sum(1)) / (k + 1)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)  # clip: never wrap around


def render_view(scene: Scene, time: int, pose: np.ndarray, K: np.ndarray, height: int, width: int,
                color: bool = True, next_pose: np.ndarray | None = None, antialias: bool = True) -> dict:
    """Convenience: depth, label, flow (if next_pose) and rgb of one camera."""
    tr = trace(scene, time, pose, K, height, width)
    out = {"depth": depth_map(tr), "label": label_map(tr)}
    if next_pose is not None:
        out["flow"] = flow_map(tr, next_pose)
    if color:
        out["rgb"] = color_map(tr, antialias)
    return out
