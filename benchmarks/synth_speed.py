"""Time `render_world` at the speed constraint's size (issue 19: 40 frames at 64x192, default
settings, one worker), so a change to the generated world can be checked against the 1.5x budget.

    PYTHONPATH=$PWD python benchmarks/synth_speed.py [--sequences 4 --frames 10] [KEY=VALUE ...]

KEY=VALUE pairs are extra `render_world` arguments (e.g. materials_per_class=4), parsed as YAML
scalars. Prints one JSON line: seconds (best of --repeat) and the arguments.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from bench.core.synth import render_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--crops-per-class", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="KEY=VALUE render_world arguments")
    args = ap.parse_args()
    extra = {k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in args.extra)}
    kw = dict(sequences=args.sequences, frames=args.frames, height=args.height, width=args.width,
              crops_per_class=args.crops_per_class, **extra)
    best = float("inf")
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            render_world(Path(tmp) / "w", **kw)
            best = min(best, time.perf_counter() - t0)
    print(json.dumps({"seconds": round(best, 2), **kw}))


if __name__ == "__main__":
    main()
