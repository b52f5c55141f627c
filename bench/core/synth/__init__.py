"""The generated world: a procedural 3-D street scene rendered by vectorised numpy ray casting.

Sequences of a forward-driving stereo camera with metric depth, forward optical flow and
semantic labels, plus object-centric crops (an ImageNet stand-in). See writer.render_world for
the on-disk layout; scene.py, render.py, crops.py hold the generator, renderer and crop framing;
controls.py the world's controls (appearance decoupled from class, lighting, object scale),
shadows.py their cast shadows and object_crops.py the out-of-domain object-centric crops.
"""

from .classes import BASELINE, CLASSES, IGNORE_INDEX, MAX_DEPTH, PALETTE
from .writer import load_meta, read_frame, read_scene, render_world, right_pose

__all__ = ["BASELINE", "CLASSES", "IGNORE_INDEX", "MAX_DEPTH", "PALETTE", "load_meta", "read_frame",
           "read_scene", "render_world", "right_pose"]
