"""Image sizes as users write them (`192x640`, `512`, `native`), shared by both stages."""

from __future__ import annotations

from bench.core.errors import UserError

# A stride-32 encoder needs at least 2 pixels at its deepest level (the decoders' reflection
# padding needs a 2x2 feature map); smaller inputs would fail deep inside a convolution. Both
# stages check their images against it, and `bench run` checks a manifest's sizes before it starts.
MIN_SIDE = 33


def too_small(size) -> str | None:
    """Why `size` (H, W), or a short side, is too small for a stride-32 encoder; None when it fits.
    The one wording of the rule, which each stage prefixes with where the size comes from."""
    shortest = size if isinstance(size, int) else min(size)
    if shortest >= MIN_SIDE:
        return None
    shown = f"a short side of {size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"
    return f"{shown} is too small for a stride-32 encoder (at least {MIN_SIDE} pixels a side)"


def parse_size(text, what: str, allow_short_side: bool = True):
    """`"192x640"` -> (192, 640); `512` or `"512"` -> 512 (short side, if allowed);
    `"native"`/`"none"`/None -> None. Accepts the YAML/JSON forms too ([192, 640])."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("native", "none", "")):
        return None
    if isinstance(text, (list, tuple)) and len(text) == 2:
        h, w = text
    elif isinstance(text, int) or (isinstance(text, str) and text.strip().isdigit()):
        if not allow_short_side:
            raise UserError(f"{what}: give HxW (e.g. 512x512), got {text!r}")
        side = int(text)
        if side < 8:
            raise UserError(f"{what}: a short side of {side} pixels is too small")
        return side
    elif isinstance(text, str) and "x" in text.lower():
        h, _, w = text.lower().partition("x")
    else:
        raise UserError(f"{what}: expected HxW (e.g. 192x640){', a short side (e.g. 512)' if allow_short_side else ''} "
                        f"or 'native', got {text!r}")
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected HxW with integers, got {text!r}") from None
    if h < 8 or w < 8:
        raise UserError(f"{what}: {h}x{w} is too small (at least 8x8)")
    return (h, w)


def size_text(size) -> str:
    """A resolved size in words for tables and records: `192x640`, `short side 512`, or `native`
    (None: the images as they are)."""
    if size is None:
        return "native"
    if isinstance(size, int):
        return f"short side {size}"
    h, w = size
    return f"{int(h)}x{int(w)}"


def pretrain_image_size(meta: dict) -> str | None:
    """The HxW a harness checkpoint's encoder was pre-trained at, from its metadata: its
    `image_size`, else (a checkpoint written before that key) the crop, else the resize, its
    config spelled; None when it does not say (imports, and pre-trainings at their data's own
    size written before `image_size` existed)."""
    if meta.get("image_size"):
        return size_text(meta["image_size"])
    config = meta.get("config") or {}
    for key in ("crop", "resize"):
        if config.get(key):
            return size_text(config[key])
    return None
