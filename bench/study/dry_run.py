"""What `bench run --dry-run` checks of the data before anything is written or rendered.

The manifest's own validation has already checked its keys, values and that the files and
folders it names exist. Here, where the data is on this machine, each real dataset is opened
and its training pool, validation and evaluation sets listed (so a wrong layout or split name
shows now, not after the world is rendered and the pre-trainings have run), every few-shot size
is checked against its pool, and every pre-training dataset with a root is opened and its items
of the method's data kind listed. The generated world needs no check: it is rendered to order.
"""

from __future__ import annotations

from bench.core.errors import UserError
from bench.core.sizes import parse_size, too_small


def size_problems(m, backbones) -> list[str]:
    """One line per image size the manifest names that no stride-32 encoder can take (a side under
    MIN_SIDE): a dataset entry's training crop or resize and evaluation resize, a pre-training's
    crop or resize, and the generated world's own size where a stage keeps it. Only what the
    manifest states is checked (a real dataset's native size shows when it is opened), so it needs
    no data: `bench run` refuses such a manifest before anything runs, where a cell or a
    pre-training would otherwise fail on it later."""
    problems = []

    def world(name):  # the size of the world an entry reads (a named world may change it)
        w = m.data.world(name)
        return [("the world's size", (w.height, w.width))]

    def check(where: str, candidates) -> None:
        """`candidates`: (what, value) in the order a stage applies them; the first one set decides."""
        for what, value in candidates:
            size = value if what == "the world's size" else parse_size(value, what)
            if size is None:
                continue
            why = too_small(size)
            if why:
                problems.append(f"{where}: {what} {why}")
            return

    for i, spec in enumerate(m.datasets):
        settings = spec.settings()
        native = world(spec.world) if spec.reads_world else []
        where = f"datasets[{i}] ({spec.display_name})"
        check(where, [("crop", settings.get("crop")), ("resize", settings.get("resize")), *native])
        check(where, [("eval_resize", settings.get("eval_resize")), *native])
    for b in backbones:
        if b.pretrain is not None:
            native = world(b.pretrain.world) if b.pretrain.reads_world else []
            check(f"backbones.{b.display_name}.pretrain",
                  [("crop", b.pretrain.crop), ("resize", b.pretrain.resize), *native])
    return problems


def data_problems(m, backbones) -> list[str]:
    """One line per problem of the manifest's real data (empty: all fits)."""
    problems = []
    for i, spec in enumerate(m.datasets):
        if spec.root is not None:
            problems += _dataset_problems(f"datasets[{i}] ({spec.display_name})", spec, m.transfer.train_sizes)
    for b in backbones:
        if b.pretrain is not None and b.pretrain.root is not None:
            problems += _pretrain_problems(b)
    return problems


def _dataset_problems(where: str, spec, train_sizes: list[int]) -> list[str]:
    from transfer.data import open_pools

    try:
        _, pool, validation, evaluation = open_pools(spec.settings(), spec.root)
    except UserError as exc:
        return [f"{where}: {exc}"]
    problems = [f"{where}: the {what} set is empty" for what, items in
                (("validation", validation), ("evaluation", evaluation)) if not items]
    problems += [f"transfer.train_sizes: {n} exceeds the {len(pool)} labelled training images of {spec.display_name}"
                 for n in sorted(set(train_sizes)) if n > len(pool)]
    return problems


def _pretrain_problems(b) -> list[str]:
    from pretrain.methods import method_class
    from pretrain.sources.base import open_source

    where = f"backbones.{b.display_name}.pretrain"
    try:
        source = open_source(b.pretrain.dataset, b.pretrain.root, b.pretrain.source_options)
        kind = method_class(b.pretrain.method).kind
        source.check_kind(kind, b.pretrain.method)
        source.items(kind)  # none: a UserError naming the folder
    except UserError as exc:
        return [f"{where}: {exc}"]
    return []
