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
