"""Procedural street scenes: a table of analytic primitives plus the ego-camera trajectory.

World frame = OpenCV camera frame of an unrotated camera at the start: x right, y DOWN,
z forward along the road. The ground plane is y = GROUND_Y (camera height below the camera
path, which stays at y = 0). Everything is axis-aligned boxes, vertical cylinders and spheres,
so every ray intersection is closed-form; cars move by pure translation along z, so their boxes
stay axis-aligned at every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import BUILDING, CAR, POLE, SIDEWALK, VEGETATION
from .controls import Controls, SizeDraw, draw_light, restyle

# The primitive table and its ids live in prims.py; re-exported here, where the modules that draw
# scenes have always found them.
from .prims import (ASPHALT, BARK, BOX, CAR_BODY, CAR_CABIN, CYLINDER, FACADE, FOLIAGE, GRAIN,  # noqa: F401
                    GROUND_COLOR, METAL, PAINT, PAVEMENT, SPHERE, Prims)

GROUND_Y = 1.5        # camera height above the road, metres
ROAD_HALF = 4.0       # road spans |x| < ROAD_HALF (two 3 m lanes plus parking strips)
LANE_X = 1.5          # ego lane centre; oncoming traffic drives at -LANE_X
PARK_X = 3.05         # parked-car centre line on both kerbs
CURB_H = 0.15         # sidewalk height above the road
SIDEWALK_W = 3.5      # pavement width in front of the building line
FAR = 1000.0          # sidewalks extend this far along z in both directions
SUN = np.array([-0.5, -0.75, -0.45]) / np.linalg.norm([-0.5, -0.75, -0.45])  # y is down: sun is up


@dataclass
class Scene:
    prims: Prims
    poses: np.ndarray      # (T, 4, 4) left camera-to-world per frame
    tex_seed: int
    ground_y: float = GROUND_Y
    road_half: float = ROAD_HALF
    ground_styles: dict | None = None  # {ROAD/SIDEWALK: controls.SurfaceStyle or None}; None: native
    light: object = None               # controls.Light; None: today's fixed sun, no shadows
    has_ground: bool = True            # False: no ground plane (the out-of-domain crops' objects float)
    background: np.ndarray | None = None  # RGB in place of the sky (the out-of-domain crops' backdrop)


@dataclass
class _Builder:
    rows: list = field(default_factory=list)
    next_obj: int = 0

    def _add(self, kind, lo, hi, center, radius, cls, mat, color, vel=(0, 0, 0), obj=None, param=(0, 0, 0, 0)):
        if obj is None:
            obj = self.new_obj()
        self.rows.append((kind, lo, hi, center, radius, cls, mat, color, vel, obj, param))
        return obj

    def new_obj(self) -> int:
        self.next_obj += 1
        return self.next_obj - 1

    def box(self, lo, hi, cls, mat, color, **kw):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        return self._add(BOX, lo, hi, (lo + hi) / 2, 0.0, cls, mat, color, **kw)

    def cylinder(self, x, z, y_top, y_bottom, r, cls, mat, color, **kw):
        return self._add(CYLINDER, (x - r, y_top, z - r), (x + r, y_bottom, z + r), (x, 0.0, z), r, cls, mat, color, **kw)

    def sphere(self, c, r, cls, mat, color, **kw):
        c = np.asarray(c, float)
        return self._add(SPHERE, c - r, c + r, c, r, cls, mat, color, **kw)

    def build(self) -> Prims:
        cols = list(zip(*self.rows))

        def col(i, dtype=float):
            return np.asarray(cols[i], dtype=dtype)

        return Prims(kind=col(0, np.int64), lo=col(1), hi=col(2), center=col(3), radius=col(4),
                     cls=col(5, np.int64), material=col(6, np.int64), color=col(7), velocity=col(8),
                     obj=col(9, np.int64), param=col(10))


def trajectory(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Ego poses: forward ~1 m/frame, smooth yaw oscillation of a few degrees, lateral drift."""
    k = np.arange(frames, dtype=float)
    speed = rng.uniform(0.8, 1.3)
    z = speed * k + 0.08 * speed * np.sin(rng.uniform(0.2, 0.5) * k + rng.uniform(0, 6.3))
    x = LANE_X + rng.uniform(0.08, 0.25) * np.sin(rng.uniform(0.1, 0.35) * k + rng.uniform(0, 6.3))
    yaw = np.deg2rad(rng.uniform(1.0, 4.0)) * np.sin(rng.uniform(0.15, 0.45) * k + rng.uniform(0, 6.3))
    poses = np.tile(np.eye(4), (frames, 1, 1))
    c, s = np.cos(yaw), np.sin(yaw)
    # Rotation about the (down-pointing) y axis; positive yaw turns the view towards +x.
    poses[:, 0, 0], poses[:, 0, 2], poses[:, 2, 0], poses[:, 2, 2] = c, s, -s, c
    poses[:, 0, 3], poses[:, 2, 3] = x, z
    return poses


_FACADES = np.array([[0.72, 0.62, 0.50], [0.58, 0.30, 0.22], [0.62, 0.62, 0.64], [0.82, 0.78, 0.70],
                     [0.45, 0.36, 0.28], [0.70, 0.55, 0.40], [0.50, 0.55, 0.60], [0.85, 0.84, 0.80]])
_PAINTS = np.array([[0.75, 0.08, 0.08], [0.10, 0.22, 0.65], [0.88, 0.88, 0.90], [0.08, 0.08, 0.09],
                    [0.55, 0.56, 0.60], [0.85, 0.65, 0.10], [0.15, 0.45, 0.25], [0.40, 0.10, 0.35]])


def _jitter(rng, base, amount=0.06):
    return np.clip(base + rng.uniform(-amount, amount, 3), 0.02, 0.98)


def _buildings(b: _Builder, rng, z0, z1, sz):
    for side in (-1.0, 1.0):
        z = z0
        while z < z1:
            width = rng.uniform(6.0, 18.0) * sz.size()
            if rng.random() < 0.3:  # gap between buildings, sometimes filled by a hedge
                gap = rng.uniform(3.0, 9.0)
                if rng.random() < 0.6:
                    x_in = ROAD_HALF + SIDEWALK_W + rng.uniform(0.2, 1.0)
                    xs = sorted((side * x_in, side * (x_in + rng.uniform(0.8, 2.0))))
                    b.box((xs[0], GROUND_Y - rng.uniform(0.9, 1.8) * sz.size(), z + 0.5), (xs[1], GROUND_Y, z + gap - 0.5),
                          VEGETATION, FOLIAGE, _jitter(rng, np.array([0.22, 0.42, 0.16]), 0.05))
                z += gap
            x_in = ROAD_HALF + SIDEWALK_W + rng.uniform(0.0, 3.0) + sz.setback()
            depth = rng.uniform(8.0, 15.0)
            xs = sorted((side * x_in, side * (x_in + depth)))
            height = rng.uniform(6.0, 24.0) * sz.size()
            # param: window period along the facade, period vertically, open fractions (u, v)
            param = (rng.uniform(2.0, 3.5), rng.uniform(2.8, 3.6), rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.55))
            b.box((xs[0], GROUND_Y - height, z), (xs[1], GROUND_Y, z + width), BUILDING, FACADE,
                  _jitter(rng, _FACADES[rng.integers(len(_FACADES))]), param=param)
            z += width
        # A taller back row fills the gaps so they show buildings instead of empty ground.
        z = z0
        while z < z1:
            width = rng.uniform(15.0, 35.0)
            x_in = ROAD_HALF + SIDEWALK_W + rng.uniform(22.0, 30.0)
            xs = sorted((side * x_in, side * (x_in + 12.0)))
            param = (rng.uniform(2.0, 3.5), rng.uniform(2.8, 3.6), rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.55))
            b.box((xs[0], GROUND_Y - rng.uniform(12.0, 35.0) * sz.size(), z), (xs[1], GROUND_Y, z + width),
                  BUILDING, FACADE,
                  _jitter(rng, _FACADES[rng.integers(len(_FACADES))]), param=param)
            z += width + rng.uniform(0.0, 6.0)


def _tree(b: _Builder, rng, x, z, sz):
    s = sz.size()
    trunk_h = rng.uniform(2.0, 3.2) * s
    r = rng.uniform(1.2, 2.2) * s
    top = GROUND_Y - CURB_H - trunk_h
    b.cylinder(x, z, top + 0.5 * s, GROUND_Y - CURB_H, rng.uniform(0.12, 0.22) * s, VEGETATION, BARK,
               _jitter(rng, np.array([0.36, 0.26, 0.17]), 0.04))
    b.sphere((x, top - 0.6 * r, z), r, VEGETATION, FOLIAGE, _jitter(rng, np.array([0.20, 0.40, 0.13]), 0.06))


def _pole(b: _Builder, rng, side, z, sz):
    s = sz.size()
    x = side * (ROAD_HALF + 0.45)
    h = rng.uniform(4.5, 8.0) * s
    r = rng.uniform(0.08, 0.14) * s
    col = _jitter(rng, np.array([0.52, 0.53, 0.55]), 0.08)
    obj = b.cylinder(x, z, GROUND_Y - CURB_H - h, GROUND_Y - CURB_H, r, POLE, METAL, col)
    if rng.random() < 0.6:  # street-light arm reaching over the road
        xs = sorted((x, x - side * rng.uniform(1.0, 2.0)))
        y = GROUND_Y - CURB_H - h
        b.box((xs[0], y, z - 0.07), (xs[1], y + 0.14, z + 0.07), POLE, METAL, col, obj=obj)


def _street_furniture(b: _Builder, rng, z0, z1, near_z, sz):
    """Trees and poles on both sidewalks; one of each is forced close ahead of the start."""
    for side in (-1.0, 1.0):
        taken = []

        def free(z, half):
            return all(abs(z - t) > half + h for t, h in taken)

        # Guarantees that every sequence shows a pole and a tree early on.
        if side > 0:
            z = near_z + rng.uniform(8.0, 14.0)
            _pole(b, rng, side, z, sz)
            taken.append((z, 0.5))
        else:
            z = near_z + rng.uniform(10.0, 18.0)
            _tree(b, rng, side * (ROAD_HALF + rng.uniform(1.6, 2.4)), z, sz)
            taken.append((z, 2.5))
        z = z0
        while z < z1:
            z += rng.uniform(6.0, 16.0)
            if rng.random() < 0.5 and free(z, 2.5):
                _tree(b, rng, side * (ROAD_HALF + rng.uniform(1.6, 2.4)), z, sz)
                taken.append((z, 2.5))
            elif free(z, 0.5):
                _pole(b, rng, side, z, sz)
                taken.append((z, 0.5))


def _car_boxes(rng, x, z, length, facing, s=1.0):
    """Body and cabin AABBs of a car centred at (x, z); the cabin sits towards the rear. `s`
    scales the car (length is given already scaled)."""
    width = rng.uniform(1.6, 1.8) * s
    body_h = rng.uniform(0.65, 0.85) * s
    lo = np.array([x - width / 2, GROUND_Y - body_h, z - length / 2])
    hi = np.array([x + width / 2, GROUND_Y, z + length / 2])
    cab_len = length * rng.uniform(0.45, 0.6)
    cab_z = z - facing * length * rng.uniform(0.05, 0.15)
    cab_lo = np.array([x - width / 2 + 0.08, GROUND_Y - body_h - rng.uniform(0.45, 0.6) * s, cab_z - cab_len / 2])
    cab_hi = np.array([x + width / 2 - 0.08, GROUND_Y - body_h, cab_z + cab_len / 2])
    return (lo, hi), (cab_lo, cab_hi)


class _Traffic:
    """Places cars so that, at every frame, no two overlap and none comes near the camera."""

    def __init__(self, b: _Builder, rng, poses, sz):
        self.b, self.rng, self.sz = b, rng, sz
        self.frames = np.arange(len(poses) + 1, dtype=float)  # +1: flow looks one frame ahead
        cam = poses[:, :3, 3]
        cam = np.vstack([cam, 2 * cam[-1] - cam[-2] if len(cam) > 1 else cam[-1]])
        margin = np.array([0.55, 5.0, 3.0])
        self.cam = (cam - margin, cam + margin)  # (T+1, 3) each
        self.cars = []  # (lo, hi, vel)

    def _clear(self, lo, hi, vel) -> bool:
        off = self.frames[:, None] * vel
        lo_t, hi_t = lo + off, hi + off
        if np.any(np.all((lo_t < self.cam[1]) & (hi_t > self.cam[0]), axis=1)):
            return False
        for lo2, hi2, vel2 in self.cars:
            off2 = self.frames[:, None] * vel2
            if np.any(np.all((lo_t < hi2 + off2 + 0.4) & (hi_t > lo2 + off2 - 0.4), axis=1)):
                return False
        return True

    def add(self, x, z, vel_z, tries=1) -> bool:
        for _ in range(tries):
            facing = 1.0 if x > 0 else -1.0  # right-hand traffic: cars on the left face -z
            s = self.sz.size()
            length = self.rng.uniform(3.8, 4.8) * s
            body, cab = _car_boxes(self.rng, x, z, length, facing, s)
            vel = np.array([0.0, 0.0, vel_z])
            if self._clear(body[0], body[1], vel):
                self.cars.append((body[0], body[1], vel))
                color = _jitter(self.rng, _PAINTS[self.rng.integers(len(_PAINTS))], 0.05)
                obj = self.b.box(*body, CAR, CAR_BODY, color, vel=vel)
                self.b.box(*cab, CAR, CAR_CABIN, color, vel=vel, obj=obj)
                return True
            z += self.rng.uniform(-3.0, 3.0)
        return False


def _traffic(b: _Builder, rng, poses, z0, z1, sz):
    t = _Traffic(b, rng, poses, sz)
    cam_z, speed = poses[0, 2, 3], (poses[-1, 2, 3] - poses[0, 2, 3]) / max(len(poses) - 1, 1)
    # Guaranteed: a car ahead in our lane that pulls away, an oncoming car close enough that its
    # flow clearly differs from ego-motion flow, and a parked car in view.
    t.add(LANE_X + rng.uniform(-0.2, 0.2), cam_z + rng.uniform(10.0, 18.0), speed * rng.uniform(1.2, 1.6), tries=8)
    t.add(-LANE_X + rng.uniform(-0.2, 0.2), cam_z + rng.uniform(14.0, 24.0), -rng.uniform(0.7, 1.4), tries=8)
    t.add(-PARK_X, cam_z + rng.uniform(7.0, 14.0), 0.0, tries=8)
    z = z0
    while z < z1:
        z += rng.uniform(4.0, 10.0)
        u = rng.random()
        if u < 0.25:
            t.add(PARK_X, z, 0.0)
        elif u < 0.5:
            t.add(-PARK_X, z, 0.0)
        elif u < 0.62:
            t.add(-LANE_X + rng.uniform(-0.2, 0.2), z, -rng.uniform(0.6, 1.5))
        elif u < 0.7 and z > cam_z + 25.0:
            t.add(LANE_X + rng.uniform(-0.2, 0.2), z, speed * rng.uniform(1.1, 1.5))


def generate_scene(rng: np.random.Generator, frames: int, controls=None, style=None) -> Scene:
    """One sequence's world: layout covers the whole drive plus the 80 m view distance.

    controls: a controls.Controls (None: the defaults); style: (material banks, the controls'
    own generator), needed when a control is set (writer.py passes them)."""
    controls = controls or Controls()
    banks, srng = style if style is not None else (None, None)
    sz = SizeDraw(controls.object_scale, srng)
    poses = trajectory(rng, frames)
    z_start, z_end = poses[0, 2, 3], poses[-1, 2, 3]
    z0, z1 = z_start - 30.0, z_end + 120.0
    b = _Builder()
    pave = _jitter(rng, np.array([0.60, 0.58, 0.55]), 0.05)
    for side in (-1.0, 1.0):
        xs = sorted((side * ROAD_HALF, side * (ROAD_HALF + 80.0)))
        b.box((xs[0], GROUND_Y - CURB_H, -FAR), (xs[1], GROUND_Y, FAR), SIDEWALK, PAVEMENT, pave)
    _buildings(b, rng, z0, z1, sz)
    _street_furniture(b, rng, z0, z1, z_start, sz)
    _traffic(b, rng, poses, z0 + 20.0, z1 - 20.0, sz)
    scene = Scene(prims=b.build(), poses=poses, tex_seed=int(rng.integers(0, 2**31 - 1)))
    if controls.restyles:
        scene.prims, scene.ground_styles = restyle(scene.prims, controls, banks, srng)
    scene.light = draw_light(controls, srng, SUN) if srng is not None else None
    return scene
