"""Per-plugin options (pre-training methods, transfer decoders): a pydantic model validated from
`-o KEY=VALUE` / `--decoder-option KEY=VALUE` or a manifest mapping, and listed in `--help`."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationError

from bench.core.errors import UserError


def _hw_from_text(value):
    if isinstance(value, str):  # `-o view_size=96x96` arrives as a string; YAML gives [96, 96]
        parts = value.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"expected HxW such as 96x96, got {value!r}")
        return int(parts[0]), int(parts[1])
    return value


def _positive_hw(value):
    if value is not None and min(value) < 1:
        raise ValueError(f"sides must be positive, got {value[0]}x{value[1]}")
    return value


# An option that is an image size (H, W), or None for the method's default: one parser for every
# plugin's HxW option (DINO's crops, MoCo's views), so all accept and refuse the same spellings.
ImageSizeOption = Annotated[tuple[int, int] | None, BeforeValidator(_hw_from_text), AfterValidator(_positive_hw)]


def parse_options(model: type[BaseModel], options: dict, label: str, hidden: tuple[str, ...] = ()) -> BaseModel:
    """`model(**options)`; the first problem becomes one line `LABEL option KEY: why (options: ...)`.
    `hidden` fields are set by the harness, not the user, and are not offered."""
    try:
        return model(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        known = ", ".join(k for k in model.model_fields if k not in hidden) or "none"
        raise UserError(f"{label} option {where}: {err['msg']} (options: {known})") from None


def options_help(model: type[BaseModel], hidden: tuple[str, ...] = ()) -> list[str]:
    """One line per option: name, default, description (for --help and the docs)."""
    return [f"{k}={f.default!r}: {f.description or ''}".rstrip(": ")
            for k, f in model.model_fields.items() if k not in hidden]
