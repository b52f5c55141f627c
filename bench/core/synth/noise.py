"""Hashed value noise, the only source of texture detail.

Noise is a pure function of (position, seed): no random state, so a surface point gets the same
colour in every frame and in both stereo cameras, and renders are bit-reproducible.
"""

from __future__ import annotations

import itertools

import numpy as np

# Odd 32-bit constants: per-axis lattice multipliers and the finaliser of a murmur/lowbias-style
# integer hash. Exact values matter only in that they decorrelate the axes.
_PRIMES = (np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F))
_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_INV32 = np.float32(1.0 / 4294967296.0)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(15))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def _lattice(x: np.ndarray, mult: np.uint32) -> np.ndarray:
    # floor → int64 → uint32 wraps negatives modulo 2**32, which is all a hash needs.
    return x.astype(np.int64).astype(np.uint32) * mult


def value_noise(p: np.ndarray, seed) -> np.ndarray:
    """Smooth value noise in [0, 1] at points p (M, D), D = 2 or 3; seed: scalar or (M,) ints.

    2-D noise (4 lattice corners) is used on planar faces, in their own in-plane coordinates, at
    half the cost of 3-D noise (8 corners)."""
    p = np.asarray(p, dtype=np.float32)
    fl = np.floor(p)
    w = p - fl
    w = w * w * (3.0 - 2.0 * w)  # smoothstep: C1-continuous, so image gradients stay finite
    with np.errstate(over="ignore"):
        seed = np.asarray(seed).astype(np.int64).astype(np.uint32)
        axes = []
        for k in range(p.shape[1]):
            h0 = _lattice(fl[:, k], _PRIMES[k])
            axes.append((h0, h0 + _PRIMES[k]))  # (i+1)*P = i*P + P (mod 2**32)
        # Hash all 2**D corners (x varies fastest), then interpolate one axis at a time.
        vals = []
        for corner in itertools.product((0, 1), repeat=p.shape[1]):
            h = seed
            for k, bit in enumerate(reversed(corner)):
                h = h ^ axes[k][bit]
            vals.append(_mix(h).astype(np.float32) * _INV32)
        for k in range(p.shape[1]):
            wk = w[:, k]
            vals = [a + (b - a) * wk for a, b in zip(vals[0::2], vals[1::2])]
    return vals[0]


def fbm(p: np.ndarray, freq: float, octaves: int, footprint: np.ndarray, seed,
        lacunarity: float = 2.0, gain: float = 0.5) -> np.ndarray:
    """Fractal noise at points p (M, D), zero-mean, roughly in [-0.5, 0.5].

    `footprint` is the world size of one pixel at each point. Octaves whose cells are smaller
    than a pixel are faded to their mean (frequency clamping), which stops the sub-pixel detail
    from aliasing into frame-to-frame flicker that would break photometric consistency.
    """
    p = np.asarray(p, dtype=np.float32)
    footprint = np.asarray(footprint, dtype=np.float32)
    seed = np.broadcast_to(np.asarray(seed, dtype=np.int64), (len(p),))
    total = np.zeros(len(p), np.float32)
    norm, amp, f = 0.0, 1.0, float(freq)
    for octave in range(octaves):
        norm += amp
        weight = np.clip(2.0 - 2.0 * footprint * f, 0.0, 1.0)
        live = np.flatnonzero(weight)
        if len(live) == 0:
            break  # higher octaves are finer still, so they are faded out too
        # Evaluate only where the octave is resolved (far points drop the fine octaves).
        sub = slice(None) if len(live) == len(p) else live
        # A per-octave shift keeps the lattices of successive octaves from lining up.
        n = value_noise(p[sub] * np.float32(f) + np.float32(17.31 * (octave + 1)), seed[sub] + 7919 * octave)
        total[sub] += np.float32(amp) * weight[sub] * (n - np.float32(0.5))
        amp *= gain
        f *= lacunarity
    return total / np.float32(norm)
