"""The generated world's controls: how far appearance is tied to class, object scale, lighting.

Every control defaults to today's world, and at its default draws no random number and changes
no float, so a default world is byte-identical to one rendered before the controls existed.
Randomness a control needs comes from its own generator (`style_rng`), never from the layout's,
so turning a control on changes what it claims (materials, light, sizes) and not, say, where the
buildings stand (except `object_scale`, whose sizes move the layout by construction).

Appearance decoupling works on *material entries* (texture program, base colour, texture scale,
program parameters). Each class has a bank of `materials_per_class` entries -- entry 0 is its
native material of today, the others are drawn programs and colours -- and with probability
`shared_materials` an instance takes an entry of one bank shared by all classes instead (so e.g.
cars and facades are painted from the same bank). At `shared_materials: 1` the texture of a
surface says nothing about its class; shape, layout and depth boundaries still do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .classes import CLASSES, ROAD, SIDEWALK
from .prims import ASPHALT, BARK, FACADE, FOLIAGE, GRAIN, GROUND_COLOR, METAL, PAINT, PAVEMENT, Prims

OBJECT_SCALES = ("default", "near", "far", "wide")
# object_scale preset -> (size multiplier range, extra building set-back range in metres).
# "near": objects larger and the buildings right behind the pavement, so they fill more of the
# frame; "far": smaller and set back; "wide": both ends at once.
_SCALE_RANGES = {"near": ((1.25, 1.6), (0.0, 0.0)), "far": ((0.55, 0.8), (6.0, 16.0)),
                 "wide": ((0.55, 1.6), (0.0, 16.0))}
# Programs a drawn material entry may use: each works on any surface (no window grids or car
# panels tied to a box's geometry, except FACADE, whose grid is in world units).
BANK_PROGRAMS = (GRAIN, PAVEMENT, FACADE, FOLIAGE, BARK, METAL, PAINT)
SHARED_BANK_SIZE = 8
_STYLE_STREAM = 0x57E1E  # generator-key tag of the controls' own random stream


@dataclass(frozen=True)
class Controls:
    """Scene-level controls (see docs/datasets.md). Defaults reproduce today's world."""

    materials_per_class: int = 1
    shared_materials: float = 0.0
    instance_jitter: float = 0.0
    illumination: float = 0.0
    shadows: bool = False
    object_scale: str = "default"

    def __post_init__(self):
        if self.materials_per_class < 1:
            raise ValueError("materials_per_class must be >= 1")
        for name in ("shared_materials", "instance_jitter", "illumination"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.object_scale not in OBJECT_SCALES:
            raise ValueError(f"object_scale must be one of {', '.join(OBJECT_SCALES)}")

    def changed(self) -> dict:
        """The controls set away from their defaults (what meta.json and fingerprints record)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    @property
    def restyles(self) -> bool:
        return self.materials_per_class > 1 or self.shared_materials > 0 or self.instance_jitter > 0

    def as_dict(self) -> dict:
        return asdict(self)


def style_rng(*key) -> np.random.Generator:
    return np.random.default_rng([*key, _STYLE_STREAM])


class SizeDraw:
    """Per-instance size multipliers and building set-backs of the object_scale control; at
    "default" it returns exactly 1.0 and 0.0 without drawing."""

    def __init__(self, object_scale: str, rng: np.random.Generator | None):
        self.ranges = _SCALE_RANGES.get(object_scale)
        self.rng = rng

    def size(self) -> float:
        return 1.0 if self.ranges is None else float(self.rng.uniform(*self.ranges[0]))

    def setback(self) -> float:
        return 0.0 if self.ranges is None else float(self.rng.uniform(*self.ranges[1]))


def _entry(rng: np.random.Generator) -> tuple:
    """One drawn material entry: (program, colour, texture scale, params)."""
    program = int(rng.choice(BANK_PROGRAMS))
    color = rng.uniform(0.08, 0.92, 3)
    scale = float(np.exp(rng.uniform(-0.9, 0.9)))
    param = (rng.uniform(2.0, 3.5), rng.uniform(2.8, 3.6), rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.55))
    return program, color, scale, param


def material_banks(seed: int, materials_per_class: int) -> tuple[list[list], list]:
    """World-wide banks: per class [None (native), drawn...] and the shared bank. Drawn from the
    world seed alone, so every sequence of a world uses the same materials."""
    rng = style_rng(seed, 0xBA4C)
    per_class = [[None] + [_entry(rng) for _ in range(materials_per_class - 1)] for _ in CLASSES]
    shared = [_entry(rng) for _ in range(SHARED_BANK_SIZE)]
    return per_class, shared


@dataclass
class SurfaceStyle:
    """A material entry applied to the ground plane's road or sidewalk part. For ASPHALT (the
    native road, jittered) `color` is a gain on its albedo instead of a base colour."""

    material: int
    color: np.ndarray
    scale: float
    param: np.ndarray


def _pick(rng, cls: int, banks, controls: Controls):
    per_class, shared = banks
    if controls.shared_materials > 0 and rng.random() < controls.shared_materials:
        return shared[rng.integers(len(shared))]
    bank = per_class[cls]
    return bank[rng.integers(len(bank))] if len(bank) > 1 else None


def _jitter(rng, j: float) -> tuple[np.ndarray, float]:
    """Per-instance colour gain (brightness and per-channel tint) and texture-scale factor."""
    gain = np.exp(rng.uniform(-0.7 * j, 0.7 * j)) * np.exp(rng.uniform(-0.35 * j, 0.35 * j, 3))
    return gain, float(np.exp(rng.uniform(-j, j)))


def restyle(prims: Prims, controls: Controls, banks, rng: np.random.Generator):
    """New primitive table with every instance's material re-drawn by the controls, plus the
    ground's road and sidewalk styles. The pavement boxes and the ground beside the road are one
    sidewalk surface per sequence (they are the same pavement), as the road is one surface."""
    material, color = prims.material.copy(), prims.color.copy()
    param, scale = prims.param.copy(), np.ones(len(prims))
    ground = {}
    for cls in (ROAD, SIDEWALK):
        entry = _pick(rng, cls, banks, controls)
        gain, s = _jitter(rng, controls.instance_jitter)
        ground[cls] = (entry, gain, s)
    for obj in np.unique(prims.obj):
        rows = np.flatnonzero(prims.obj == obj)
        cls = int(prims.cls[rows[0]])
        if cls == SIDEWALK:
            entry, gain, s = ground[SIDEWALK]
        else:
            entry = _pick(rng, cls, banks, controls)
            gain, s = _jitter(rng, controls.instance_jitter)
        if entry is not None:
            material[rows], color[rows], scale[rows], param[rows] = entry[0], entry[1], entry[2], entry[3]
        color[rows] = np.clip(color[rows] * gain, 0.02, 0.98)
        scale[rows] *= s
    styles = {}
    for cls, (entry, gain, s) in ground.items():
        if entry is None and controls.instance_jitter == 0:
            styles[cls] = None
            continue
        if entry is None and cls == ROAD:
            # native asphalt (it keeps its markings and ignores a colour): the gain multiplies it
            styles[cls] = SurfaceStyle(ASPHALT, gain, 1.0, np.zeros(4))
            continue
        if entry is None:  # native pavement, jittered
            entry = (PAVEMENT, GROUND_COLOR, 1.0, (0.0, 0.0, 0.0, 0.0))
        styles[cls] = SurfaceStyle(int(entry[0]), np.clip(np.asarray(entry[1]) * gain, 0.02, 0.98),
                                   float(entry[2]) * s, np.asarray(entry[3], float))
    out = Prims(kind=prims.kind, lo=prims.lo, hi=prims.hi, center=prims.center, radius=prims.radius,
                cls=prims.cls, material=material, color=color, velocity=prims.velocity, obj=prims.obj,
                param=param, tex_scale=scale)
    return out, styles


@dataclass
class Light:
    """Per-sequence illumination: sun direction (y down), sun and ambient strength, RGB tint."""

    sun: np.ndarray
    sun_gain: float
    ambient: float
    tint: np.ndarray
    shadows: bool


def direction(azimuth: float, elevation: float) -> np.ndarray:
    """The unit vector at `azimuth` (radians, from +z towards +x) and `elevation` above the
    horizon, in the world frame (y down): a sun, a camera's line of sight."""
    return np.array([np.cos(elevation) * np.sin(azimuth), -np.sin(elevation), np.cos(elevation) * np.cos(azimuth)])


def draw_light(controls: Controls, rng: np.random.Generator, default_sun: np.ndarray) -> Light | None:
    """None at the defaults (the fixed sun of today, no shadows). Strength s in [0, 1] mixes the
    fixed sun with a random one (azimuth anywhere, elevation 12-75 degrees) and spreads sun and
    ambient strength and colour temperature."""
    s = controls.illumination
    if s == 0 and not controls.shadows:
        return None
    az, el = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(12.0, 75.0))
    rand = direction(az, el)
    sun = (1 - s) * default_sun + s * rand
    if sun[1] > -0.15:  # keep the sun above the horizon (y is down)
        sun[1] = -0.15
    sun = sun / np.linalg.norm(sun)
    warm = rng.uniform(-1.0, 1.0) * s
    tint = np.array([1.0 + 0.12 * warm, 1.0, 1.0 - 0.12 * warm])
    return Light(sun=sun, sun_gain=0.6 * float(np.exp(rng.uniform(-0.5, 0.5) * s)),
                 ambient=0.42 * float(np.exp(rng.uniform(-0.35, 0.35) * s)), tint=tint, shadows=controls.shadows)
