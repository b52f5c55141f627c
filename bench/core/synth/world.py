"""The generated world's parameters: their defaults and bounds, the controls among them, and the
world's identity and id. The manifest's `data.synth` and `data.worlds` validate with `SynthWorld`."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


# The generated world's controls (docs/datasets.md): keys that enter the world's identity only
# when set away from their defaults, so the worlds of manifests written before them keep theirs.
WORLD_CONTROLS = ("materials_per_class", "shared_materials", "instance_jitter", "illumination", "shadows",
                  "object_scale", "pretrain_sequences", "pretrain_frames", "ood_crops_per_class", "ood_background")


class SynthWorld(BaseModel):
    """Parameters of `bench data synth` for the generated world, and its controls."""

    model_config = ConfigDict(extra="forbid")

    sequences: int = Field(4, ge=2)
    frames: int = Field(10, ge=2)
    height: int = Field(64, ge=32)
    width: int = Field(192, ge=32)
    seed: int = 0
    crops_per_class: int = Field(40, ge=1)
    # appearance decoupled from class
    materials_per_class: int = Field(1, ge=1, le=64)
    shared_materials: float = Field(0.0, ge=0, le=1)
    instance_jitter: float = Field(0.0, ge=0, le=1)
    illumination: float = Field(0.0, ge=0, le=1)
    shadows: bool = False
    # object scale
    object_scale: Literal["default", "near", "far", "wide"] = "default"
    # amount of pre-training data, apart from the labelled sequences
    pretrain_sequences: int = Field(0, ge=0)
    pretrain_frames: int | None = Field(None, ge=3)  # a video item needs a previous and a next frame
    # the out-of-domain, object-centric classification source
    ood_crops_per_class: int = Field(0, ge=0)
    ood_background: Literal["clutter", "plain"] = "clutter"

    @staticmethod
    @functools.cache
    def defaults() -> dict:
        """Every parameter's default, computed once (shared: callers only read it)."""
        return SynthWorld.model_construct().model_dump()

    def identity(self) -> dict:
        """What names the world: every parameter, and each control only when set."""
        defaults = self.defaults()
        return {k: v for k, v in self.model_dump().items() if k not in WORLD_CONTROLS or v != defaults[k]}

    def controls(self) -> dict:
        """The controls set away from their defaults (what a cell's record shows of the world)."""
        return {k: v for k, v in self.identity().items() if k in WORLD_CONTROLS}

    def fingerprint(self) -> str:
        """The world's id: its folder name under RESULTS/data and the `data_id` of everything on it."""
        from bench.core.records import fingerprint

        # identity(): a control enters only when set, so worlds made before the controls keep their id
        return fingerprint({"synth": self.identity()})
