"""The primitive table of a scene and the ids it holds (primitive kinds, materials).

Its own module so that scene.py (which builds tables) and controls.py (which restyles them) both
stand on it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Primitive kinds.
BOX, CYLINDER, SPHERE = 0, 1, 2
# Materials (texture programs in textures.py). ASPHALT is used only by the ground plane; GRAIN
# and PAINT only by the appearance controls' drawn materials (controls.py).
ASPHALT, PAVEMENT, FACADE, CAR_BODY, CAR_CABIN, METAL, BARK, FOLIAGE, GRAIN, PAINT = range(10)
GROUND_COLOR = np.array([0.60, 0.58, 0.55])  # base albedo of the ground plane's pavement part


@dataclass
class Prims:
    """Struct-of-arrays primitive table (N rows). `lo`/`hi` is the AABB of every kind, which is
    also the exact shape of a box. Geometry is given at time 0; `velocity` is metres per frame."""

    kind: np.ndarray       # (N,) int
    lo: np.ndarray         # (N, 3)
    hi: np.ndarray         # (N, 3)
    center: np.ndarray     # (N, 3) sphere centre / cylinder axis point (y unused)
    radius: np.ndarray     # (N,)
    cls: np.ndarray        # (N,) train id
    material: np.ndarray   # (N,)
    color: np.ndarray      # (N, 3) base albedo in [0, 1]
    velocity: np.ndarray   # (N, 3)
    obj: np.ndarray        # (N,) instance id (a car's body and cabin share one)
    param: np.ndarray      # (N, 4) material parameters (e.g. window grid)
    tex_scale: np.ndarray | None = None  # (N,) texture-coordinate scale; None: 1 (the controls set it)

    def __len__(self) -> int:
        return len(self.kind)

    def at(self, time: float) -> "Prims":
        """The table with moving primitives translated to frame `time`."""
        off = self.velocity * float(time)
        return replace(self, lo=self.lo + off, hi=self.hi + off, center=self.center + off)

    def to_json(self) -> dict:
        return {"kind": self.kind.tolist(), "lo": self.lo.round(6).tolist(), "hi": self.hi.round(6).tolist(),
                "center": self.center.round(6).tolist(), "radius": self.radius.round(6).tolist(),
                "class": self.cls.tolist(), "velocity": self.velocity.round(6).tolist(), "object": self.obj.tolist()}
