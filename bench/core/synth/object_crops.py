"""Out-of-domain, object-centric crops: the ImageNet analogue beside the in-domain crops.

The in-domain crops (crops.py) are views of the world's own surfaces at the world's own scales,
so classifying them teaches exactly what segmenting this world needs. These differ on purpose in
the ways the paper attributes to ImageNet:

- one object per image, alone (no street around it), centred, at a fixed apparent scale (its
  bounding sphere spans the same share of every crop);
- a separate material bank: the class's own texture programs in colours and texture scales the
  world never uses (saturated random hues, a wider scale range);
- other camera statistics: a narrower field of view, any azimuth, views from above, its own sun;
- a background of distant clutter (random shapes in the bank's materials) or a plain colour.

Sky crops are views of the sky (there is no sky "object"); every other class is one object.
"""

from __future__ import annotations

import colorsys

import numpy as np

from .classes import BUILDING, CAR, POLE, ROAD, SIDEWALK, SKY, VEGETATION
from .controls import Light, direction
from .crops import look_at
from .render import color_map, trace
from .scene import (ASPHALT, BARK, CAR_BODY, CAR_CABIN, FACADE, FOLIAGE, GRAIN, GROUND_Y, METAL, PAINT,
                    PAVEMENT, Scene, _Builder, _car_boxes)

BACKGROUNDS = ("clutter", "plain")
_STREAM = 0x00D0
_FOCAL = 1.3          # focal length in crop widths (the world's is 0.58 image widths): ~42 degrees
_OBJECT_SHARE = 0.42  # projected bounding-sphere radius as a share of the crop size
_CLUTTER = (BOX, CYL, SPH) = (0, 1, 2)
_CLUTTER_PROGRAMS = (GRAIN, PAVEMENT, FOLIAGE, BARK, METAL, PAINT, FACADE)


def _colour(rng) -> np.ndarray:
    """A saturated random hue: the world's palettes are muted greys, browns and greens."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.95)))


def _window_param(rng):
    return (rng.uniform(1.2, 4.5), rng.uniform(2.0, 4.5), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.7))


def _object(b: _Builder, cls: int, rng) -> None:
    """One object of `cls` near the origin (world frame: y down, the object's base at GROUND_Y)."""
    col = _colour(rng)
    if cls == CAR:
        body, cab = _car_boxes(rng, 0.0, 0.0, rng.uniform(3.8, 4.8), 1.0)
        obj = b.box(*body, CAR, CAR_BODY, col)
        b.box(*cab, CAR, CAR_CABIN, col, obj=obj)
    elif cls == POLE:
        h = rng.uniform(4.5, 8.0)
        obj = b.cylinder(0.0, 0.0, GROUND_Y - h, GROUND_Y, rng.uniform(0.08, 0.14), POLE, METAL, col)
        if rng.random() < 0.6:
            b.box((-rng.uniform(1.0, 2.0), GROUND_Y - h, -0.07), (0.0, GROUND_Y - h + 0.14, 0.07), POLE, METAL, col,
                  obj=obj)
    elif cls == VEGETATION:
        trunk_h, r = rng.uniform(1.5, 3.0), rng.uniform(1.0, 2.2)
        top = GROUND_Y - trunk_h
        b.cylinder(0.0, 0.0, top + 0.5, GROUND_Y, rng.uniform(0.1, 0.25), VEGETATION, BARK, _colour(rng))
        b.sphere((0.0, top - 0.6 * r, 0.0), r, VEGETATION, FOLIAGE, col)
    elif cls == BUILDING:
        w, d, h = rng.uniform(6.0, 14.0), rng.uniform(6.0, 12.0), rng.uniform(5.0, 16.0)
        b.box((-w / 2, GROUND_Y - h, -d / 2), (w / 2, GROUND_Y, d / 2), BUILDING, FACADE, col, param=_window_param(rng))
    elif cls == ROAD:  # a tile of road, centre line included
        w = rng.uniform(4.0, 7.0)
        b.box((-w / 2, GROUND_Y - 0.05, -w / 2), (w / 2, GROUND_Y, w / 2), ROAD, ASPHALT, col)
    elif cls == SIDEWALK:
        w = rng.uniform(3.0, 5.0)
        b.box((-w / 2, GROUND_Y - 0.15, -w / 2), (w / 2, GROUND_Y, w / 2), SIDEWALK, PAVEMENT, col)
    else:
        raise ValueError(cls)


def _clutter(b: _Builder, rng, target, view_dir, radius, count: int) -> None:
    """Random shapes behind the object (never between it and the camera), labelled sky: they are
    background, and an image-level label ignores them anyway."""
    side = np.cross(view_dir, [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    up = np.cross(view_dir, side)
    for _ in range(count):
        depth = radius + rng.uniform(3.0, 25.0)
        c = target + view_dir * depth + (side * rng.uniform(-1, 1) + up * rng.uniform(-1, 1)) * depth * 0.6
        r = rng.uniform(0.3, 1.5) * (1 + depth / 10)
        kind = rng.integers(3)
        mat, col = int(rng.choice(_CLUTTER_PROGRAMS)), _colour(rng)
        if kind == BOX:
            half = r * rng.uniform(0.4, 1.0, 3)
            b.box(c - half, c + half, SKY, mat, col, param=_window_param(rng))
        elif kind == CYL:
            b.cylinder(c[0], c[2], c[1] - r * 1.5, c[1] + r * 1.5, r * 0.4, SKY, mat, col, param=_window_param(rng))
        else:
            b.sphere(c, r, SKY, mat, col, param=_window_param(rng))


def render_object_crop(rng: np.random.Generator, cls: int, size: int, background: str) -> np.ndarray:
    """One out-of-domain crop (uint8 size x size x 3) of class `cls`."""
    b = _Builder()
    f = _FOCAL * size
    K = np.array([[f, 0.0, size / 2.0], [0.0, f, size / 2.0], [0.0, 0.0, 1.0]])
    az = rng.uniform(-np.pi, np.pi)
    if cls == SKY:
        eye = np.zeros(3)
        el = np.deg2rad(rng.uniform(15.0, 80.0))
        target = direction(az, el)
    else:
        _object(b, cls, rng)
        lo = np.min([r[1] for r in b.rows], 0)
        hi = np.max([r[2] for r in b.rows], 0)
        target = (lo + hi) / 2
        radius = np.linalg.norm(hi - lo) / 2
        dist = _FOCAL * radius / _OBJECT_SHARE  # fixed apparent scale: radius -> share of the crop
        el = np.deg2rad(rng.uniform(35.0, 75.0) if cls in (ROAD, SIDEWALK) else rng.uniform(0.0, 35.0))
        eye = target + dist * direction(az, el)
        if background == "clutter":
            view_dir = (target - eye) / dist
            _clutter(b, rng, target, view_dir, radius, int(rng.integers(6, 14)))
    prims = b.build() if b.rows else _empty_prims()
    # texture scale: the separate bank's wider range (in-domain drawn materials use exp(+-0.9))
    prims.tex_scale = np.exp(rng.uniform(-1.4, 1.4, len(prims)))
    sun_az, sun_el = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(20.0, 80.0))
    light = Light(sun=direction(sun_az, sun_el),
                  sun_gain=float(rng.uniform(0.35, 0.7)), ambient=float(rng.uniform(0.35, 0.6)),
                  tint=np.ones(3), shadows=False)
    bg = None if cls == SKY else np.clip(_colour(rng) * rng.uniform(0.3, 1.0) + rng.uniform(0.0, 0.3), 0, 1)
    scene = Scene(prims=prims, poses=np.eye(4)[None], tex_seed=int(rng.integers(0, 2**31 - 1)),
                  light=light, has_ground=False, background=bg)
    return color_map(trace(scene, 0, look_at(eye, target), K, size, size))


def _empty_prims():
    b = _Builder()
    b.box((0.0, -1e6, 0.0), (0.0, -1e6, 0.0), SKY, PAINT, (0.5, 0.5, 0.5))  # a degenerate box: never hit
    return b.build()


def object_crops(seed: int, cls: int, count: int, size: int, background: str) -> list[np.ndarray]:
    """All out-of-domain crops of one class (one unit of work for a worker process)."""
    return [render_object_crop(np.random.default_rng([seed, _STREAM, cls, i]), cls, size, background)
            for i in range(count)]
