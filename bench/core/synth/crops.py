"""Object-centric crops (the ImageNet stand-in): one object or surface of a class, centred.

Each crop is rendered directly at its final square size from a camera that looks at a sampled
object of a fresh scene. A view is accepted only if its own label map confirms it (centre pixel
of the class for objects, the class covering most of the crop for surfaces); rejected views are
re-drawn, so e.g. a car parked in front of a pole cannot turn into a "pole" crop.
"""

from __future__ import annotations

import numpy as np

from .classes import BUILDING, CAR, CLASSES, POLE, ROAD, SIDEWALK, SKY, VEGETATION
from .controls import direction
from .render import color_map, label_map, trace
from .scene import BOX, CURB_H, CYLINDER, ROAD_HALF, SIDEWALK_W, SPHERE, Scene, generate_scene

# Minimum share of the crop the class must cover to accept a view.
_MIN_FRACTION = {ROAD: 0.9, SIDEWALK: 0.85, BUILDING: 0.5, POLE: 0.06, VEGETATION: 0.3, CAR: 0.2, SKY: 0.95}
_TRIES = 40


def look_at(eye, target) -> np.ndarray:
    """Camera-to-world pose at `eye` looking at `target`, image x horizontal (y is down)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    pose[:3, 3] = eye
    return pose


def _inside_any(scene: Scene, eye, margin=0.25) -> bool:
    p = scene.prims
    return bool(np.any(np.all((p.lo - margin < eye) & (eye < p.hi + margin), axis=1)))


def _view(scene: Scene, cls: int, rng: np.random.Generator):
    """(eye, target, view width in metres at the target) for one attempt at a crop of `cls`."""
    p, g = scene.prims, scene.ground_y
    z_mid = scene.poses[0, 2, 3] + rng.uniform(0.0, 60.0)
    az = rng.uniform(-np.pi, np.pi)
    if cls in (ROAD, SIDEWALK):
        if cls == ROAD:
            target = np.array([rng.uniform(-ROAD_HALF + 0.3, ROAD_HALF - 0.3), g, z_mid])
        else:
            side = rng.choice([-1.0, 1.0])
            target = np.array([side * rng.uniform(ROAD_HALF + 0.4, ROAD_HALF + SIDEWALK_W - 0.4), g - CURB_H, z_mid])
        dist = rng.uniform(1.0, 3.0)
        eye = target + np.array([dist * np.sin(az), -rng.uniform(1.8, 3.5), dist * np.cos(az)])
        return eye, target, rng.uniform(1.5, 3.5)
    if cls == SKY:
        # up the street canyon (buildings line both sides), tilted well above the roofs
        eye = np.array([rng.uniform(-2.0, 2.0), 0.0, z_mid])
        az = rng.uniform(-0.4, 0.4) + rng.choice([0.0, np.pi])
        pitch = np.deg2rad(rng.uniform(50.0, 85.0))
        return eye, eye + direction(az, pitch), rng.uniform(0.8, 1.6)  # width at distance 1 ⇒ field of view
    if cls == BUILDING:
        # rows by class and shape, not material: the appearance controls may repaint any of them
        near = np.where(p.cls == BUILDING, np.minimum(np.abs(p.lo[:, 0]), np.abs(p.hi[:, 0])), np.inf)
        rows = np.flatnonzero(near < ROAD_HALF + SIDEWALK_W + 3.5)
        if len(rows) == 0:  # object_scale "far" sets the front row back: take the nearest ones
            rows = np.flatnonzero(near < near.min() + 3.5)
        i = rng.choice(rows)
        side = np.sign(p.lo[i, 0])
        x_face = p.lo[i, 0] if side > 0 else p.hi[i, 0]
        top = min(g - p.lo[i, 1], 12.0)
        target = np.array([x_face, g - rng.uniform(2.0, max(top - 1.0, 2.5)),
                           rng.uniform(p.lo[i, 2] + 1.0, p.hi[i, 2] - 1.0)])
        eye = np.array([x_face - side * rng.uniform(5.0, 11.0), g - rng.uniform(1.3, 2.2),
                        target[2] + rng.uniform(-4.0, 4.0)])
        return eye, target, rng.uniform(5.0, 10.0)
    if cls == CAR:
        i = rng.choice(np.flatnonzero((p.cls == CAR) & (p.hi[:, 1] == g)))  # the body rests on the ground
        target = (p.lo[i] + p.hi[i]) / 2 - np.array([0.0, 0.3, 0.0])
        dist = rng.uniform(4.5, 8.0)
        eye = np.array([target[0] + dist * np.sin(az), g - rng.uniform(1.0, 2.5), target[2] + dist * np.cos(az)])
        return eye, target, (p.hi[i, 2] - p.lo[i, 2]) * rng.uniform(1.2, 1.6)
    if cls == POLE:
        i = rng.choice(np.flatnonzero((p.cls == POLE) & (p.kind != BOX)))
        target = np.array([p.center[i, 0], g - rng.uniform(1.5, 3.5), p.center[i, 2]])
        width = rng.uniform(1.0, 2.2)  # a pole is ~0.2 m thick: keep it a visible share of the crop
    else:  # vegetation: a tree crown or a hedge
        i = rng.choice(np.flatnonzero((p.cls == VEGETATION) & (p.kind != CYLINDER)))  # crowns, hedges
        target = (p.lo[i] + p.hi[i]) / 2
        r = p.radius[i] if p.kind[i] == SPHERE else np.linalg.norm(p.hi[i] - p.lo[i]) / 2
        width = 2 * r * rng.uniform(1.1, 1.5)
    # poles and vegetation sit beside the road: look at them from the road side
    side = np.sign(target[0])
    a = rng.uniform(-1.1, 1.1)
    dist = width * rng.uniform(1.3, 2.0)
    eye = np.array([target[0] - side * dist * np.cos(a), g - rng.uniform(1.3, 2.2), target[2] + dist * np.sin(a)])
    return eye, target, width


def render_crop(scene: Scene, cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One accepted crop (uint8 size×size×3); the best-covering attempt if none passes. Views
    are judged on their (cheap) label map before any shading."""
    best, best_frac = None, -1.0
    for _ in range(_TRIES):
        eye, target, width = _view(scene, cls, rng)
        if _inside_any(scene, eye) or eye[1] > scene.ground_y - 0.5:
            continue
        f = size * np.linalg.norm(target - eye) / width
        K = np.array([[f, 0.0, size / 2.0], [0.0, f, size / 2.0], [0.0, 0.0, 1.0]])
        tr = trace(scene, 0, look_at(eye, target), K, size, size)
        label = label_map(tr)
        frac = float(np.mean(label == cls))
        centre_ok = cls in (ROAD, SIDEWALK, SKY) or label[size // 2, size // 2] == cls
        if centre_ok and frac >= _MIN_FRACTION[cls]:
            return color_map(tr)
        if centre_ok and frac > best_frac:
            best, best_frac = tr, frac
    if best is None:
        raise RuntimeError(f"could not frame a {CLASSES[cls]} crop")
    return color_map(best)


def crop_scenes(seed: int, count: int, controls=None) -> list[Scene]:
    """Scenes the crops are taken from, independent of the sequences' scenes. `controls` (the
    world's, or None) give them the world's materials, light and object scales, so the in-domain
    crops show the same surfaces as the sequences."""
    if controls is None:
        return [generate_scene(np.random.default_rng([seed, 0xC409, j]), 2) for j in range(count)]
    from .controls import material_banks, style_rng

    banks = material_banks(seed, controls.materials_per_class) if controls.restyles else None
    return [generate_scene(np.random.default_rng([seed, 0xC409, j]), 2, controls,
                           (banks, style_rng(seed, 0xC409, j))) for j in range(count)]
