"""`bench list [WHAT]`: what the registries hold, one line each, so nobody has to learn the
names from error messages."""

from __future__ import annotations

WHAT = ("archs", "methods", "sources", "datasets", "decoders", "protocols", "formats")


def add_parser(sub) -> None:
    ls = sub.add_parser("list", help="list registered archs, methods, sources, datasets, decoders, protocols, formats",
                        description="Prints each registered name with a one-line description. Without WHAT: "
                        "every registry.")
    ls.add_argument("what", nargs="?", choices=WHAT, help="which registry (default: all)")
    ls.set_defaults(fn=main)


def entries(what: str) -> list[tuple[str, str]]:
    """(name as users write it, one-line description) of one registry, sorted by name."""
    if what == "protocols":
        from transfer.protocols import PROTOCOL_DESCRIPTIONS, PROTOCOLS

        return [(p, PROTOCOL_DESCRIPTIONS[p]) for p in PROTOCOLS]
    registry = _registry(what)
    return sorted((registry.shown(name), registry.describe(name)) for name, _ in registry.items())


def _registry(what: str):
    if what == "archs":
        from bench.core.models.backbones import BACKBONES

        return BACKBONES
    if what == "methods":
        import pretrain.methods  # noqa: F401  (registers every method)
        from pretrain.methods.base import METHODS

        return METHODS
    if what == "sources":
        import pretrain.sources  # noqa: F401
        from pretrain.sources.base import SOURCES

        return SOURCES
    if what == "datasets":
        import transfer.datasets  # noqa: F401
        from transfer.datasets.base import DATASETS

        return DATASETS
    if what == "decoders":
        import transfer.decoders  # noqa: F401
        from transfer.decoders.base import DECODERS

        return DECODERS
    from bench.importers.formats import IMPORT_FORMATS

    return IMPORT_FORMATS


def main(args) -> int:
    for what in [args.what] if args.what else WHAT:
        rows = entries(what)
        if not args.what:
            print(f"{what}:")
        width = max(len(name) for name, _ in rows)
        indent = "" if args.what else "  "
        for name, description in rows:
            print(f"{indent}{name:<{width}}  {description}".rstrip())
    return 0
