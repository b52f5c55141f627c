"""Per-plugin options (pre-training methods, transfer decoders): a pydantic model validated from
`-o KEY=VALUE` / `--decoder-option KEY=VALUE` or a manifest mapping, and listed in `--help`."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from bench.core.errors import UserError


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
