"""The manifest: a YAML file describing a benchmark matrix, validated before anything runs.

Every mistake -- an unknown key, a wrong type, a missing file -- is reported as one line naming
the file and the field (`configs/x.yaml: backbones[1].pretrain.steps: ...`), and nothing is
written. Relative paths are resolved against the manifest's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bench.core.errors import UserError
from bench.core.models.backbones import is_known_arch, list_backbones
from bench.core.models.initialisation import DEFAULT_RANDOM_INIT, RandomInit
from bench.core.synth.world import SynthWorld
from bench.core.variants import display_name
from transfer.api import TransferSettings
from transfer.protocols import LINEAR_DECODER, PROTOCOLS, Protocol

# Method options that name files or folders: resolved against the manifest's folder.
PATH_OPTIONS = ("pseudo_labels",)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Strict):
    """The generated world (`synth`) and its named variations (`worlds`): each a set of `synth`
    keys over the base world, one control changed for a study of it (docs/manifest.md#worlds).
    A synth dataset entry or a pre-training names the world it reads with `world: NAME`."""

    synth: SynthWorld = SynthWorld()
    worlds: dict[str, dict] = Field(default_factory=dict)

    @field_validator("worlds")
    @classmethod
    def _worlds_are_named_overrides(cls, v: dict) -> dict:
        import re

        for name, overrides in v.items():
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"world name {name!r}: letters, digits, '_', '.', '-' only")
            if not isinstance(overrides, dict) or not overrides:
                raise ValueError(f"world {name!r}: give the data.synth keys it changes, e.g. {{object_scale: far}}")
        return v

    @model_validator(mode="after")
    def _worlds_are_valid(self):
        seen = {self.synth.fingerprint(): "the base world (data.synth)"}
        for name in self.worlds:
            try:
                world = self.world(name)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ValueError(f"world {name!r}: {_loc(_user_loc(first['loc']))}: "
                                 f"{first['msg'].removeprefix('Value error, ')}") from None
            key = world.fingerprint()
            if key in seen:  # the same world twice would run the same cells under two names
                raise ValueError(f"world {name!r} is the same world as {seen[key]}; a world must change something")
            seen[key] = f"world {name!r}"
        return self

    def world(self, name: str | None) -> SynthWorld:
        """The world an entry names: the base world for None, else the base with the named keys."""
        if name is None:
            return self.synth
        return SynthWorld(**{**self.synth.model_dump(), **self.worlds[name]})


class PretrainSpec(_Strict):
    """A pre-training of `bench pretrain` (docs/pretraining.md). `options` are the
    method's own settings and `source_options` the dataset reader's; both are validated here."""

    method: str
    dataset: str = "synth"
    root: Path | None = None  # default: the generated world of the `data.synth` section
    world: str | None = None  # a named world of `data.worlds` (default: the base world)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int | None = Field(None, ge=0)
    seed: int = 0
    state_every: int = Field(100, ge=1)
    max_bad_steps: int = Field(20, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    resize: str | int | list[int] | None = None
    crop: str | int | list[int] | None = None
    init: Path | None = None
    options: dict = Field(default_factory=dict)
    source_options: dict = Field(default_factory=dict)
    # How it runs (docs/scaling-out.md#running-on-gpus): recorded in summary.json, not fingerprinted.
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool | None = None  # default: on with CUDA
    num_workers: int = Field(0, ge=0)  # DataLoader processes decoding items ahead of the step
    gpus: int = Field(0, ge=0)  # what the pre-training job asks its executor for
    # Data-parallel ranks (default: gpus when more than 1); part of the fingerprint when > 1.
    processes: int | None = Field(None, ge=1)
    sync_batchnorm: bool = False

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from pretrain.methods import list_methods

        if v not in list_methods():
            raise ValueError(f"unknown method {v!r}; available: {', '.join(list_methods())}")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from pretrain.sources import list_sources

        if v not in list_sources():
            raise ValueError(f"unknown pre-training dataset {v!r}; available: {', '.join(list_sources())}")
        return v

    @model_validator(mode="after")
    def _valid_settings(self):
        from bench.core.sizes import parse_size
        from pretrain.methods import method_class, parse_options

        try:
            parse_options(method_class(self.method), self.options)
            parse_size(self.resize, "resize", allow_short_side=False)
            parse_size(self.crop, "crop", allow_short_side=False)
        except UserError as exc:
            raise ValueError(str(exc).replace("--method ", "method ")) from None
        if self.dataset != "synth" and self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs a root folder")
        if self.world is not None and not self.reads_world:
            raise ValueError("world names a generated world: only for the synth dataset without a root")
        return self

    @property
    def reads_world(self) -> bool:
        """Whether this pre-training reads a generated world (the base one or a named one)."""
        return self.dataset == "synth" and self.root is None


class ImportSpec(_Strict):
    """A foreign checkpoint the harness converts before use (docs/adding-a-backbone.md)."""

    file: Path  # a weights file, or a monodepth2 folder
    format: str = "auto"  # auto | harness | torchvision | timm | monodepth2 | moco | dino | mae | ...
    key_map: Path | None = None  # regex renames applied after unwrapping
    allow_partial: bool = False  # accept fewer than all encoder tensors (recorded with every run)
    # The input normalisation the weights expect, over the format's own: imagenet | monodepth2 |
    # half | MEAN/STD | {mean: [r, g, b], std: [r, g, b]} (docs/adding-a-backbone.md).
    normalization: str | dict | None = None

    @field_validator("normalization")
    @classmethod
    def _known_normalization(cls, v):
        from bench.core.models.backbones import parse_normalization

        try:
            parse_normalization(v, "normalization")
        except UserError as exc:
            raise ValueError(str(exc).removeprefix("normalization: ")) from None
        return v


class Backbone(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=NAME_PATTERN)
    # Tells apart entries of one name with different settings (docs/manifest.md#variants): shown
    # and stored as NAME@LABEL.
    variant: str | None = Field(None, pattern=NAME_PATTERN)
    arch: str
    pretrain: PretrainSpec | None = None
    checkpoint: Path | None = None
    import_: ImportSpec | None = Field(None, alias="import")
    # A backbone without pretrain/checkpoint/import is the random baseline; how its encoder is
    # initialised (bench/core/models/initialisation.py, docs/protocols.md).
    random_init: RandomInit = DEFAULT_RANDOM_INIT

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if not is_known_arch(v):
            raise ValueError(f"unknown arch {v!r}; registered: {', '.join(list_backbones())} "
                             f"(or entry:MODULE:FUNCTION for your own encoder)")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("pretrain", "checkpoint", "import_") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of pretrain, checkpoint, import (got {', '.join(given)})"
                             .replace("import_", "import"))
        if given and self.random_init != DEFAULT_RANDOM_INIT:  # (the default is what a re-read dump holds)
            raise ValueError("random_init is for the random baseline, a backbone without pretrain, checkpoint "
                             "or import (pre-trainings record the initialisation they start from)")
        return self

    @property
    def display_name(self) -> str:
        """NAME, or NAME@LABEL for a variant: its leaderboard row, `pretrain/` folder and job name."""
        return display_name(self.name, self.variant)

    @property
    def method(self) -> str:
        if self.pretrain is not None:
            return self.pretrain.method
        if self.import_ is not None:
            return "imported"
        return "checkpoint" if self.checkpoint is not None else "none"


class DatasetSpec(_Strict):
    """A segmentation dataset of the matrix. Geometry left out takes the dataset's defaults
    (docs/datasets.md); `resize`/`eval_resize` are HxW, a short side, or `native`."""

    name: str
    variant: str | None = Field(None, pattern=NAME_PATTERN)  # as a backbone's: shown as NAME@LABEL
    root: Path | None = None  # required for real datasets; default (synth): the generated world
    world: str | None = None  # synth: a named world of `data.worlds` (default: the base world)
    classes: int | None = None  # nyuv2: 40 (default) or 13
    train_split: str | None = None  # default: the dataset's training pool
    eval_split: str | None = None  # default: its evaluation set
    resize: str | int | None = "default"
    crop: str | int | None = "default"
    eval_resize: str | int | None = "default"

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from transfer.datasets import list_datasets

        if v not in list_datasets():
            raise ValueError(f"unknown dataset {v!r}; available: {', '.join(list_datasets())}")
        return v

    @model_validator(mode="after")
    def _real_data_has_root(self):
        if self.name != "synth" and self.root is None:
            raise ValueError(f"dataset {self.name} needs a root folder (docs/datasets.md gives the layout)")
        if self.world is not None and not self.reads_world:
            raise ValueError("world names a generated world: only for the synth dataset without a root")
        try:
            self.settings()  # geometry strings parse, or a one-line error now rather than mid-run
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def display_name(self) -> str:
        """NAME, or NAME@LABEL for a variant: its comparisons' name and its `splits/` folder."""
        return display_name(self.name, self.variant)

    @property
    def reads_world(self) -> bool:
        """Whether this entry is a generated world (the base one or a named one)."""
        return self.name == "synth" and self.root is None

    def geometry(self) -> dict:
        """The dataset as written (name, class set, splits, sizes), for `transfer.api`; which data
        it is (its root, or its world) is the cell's `data_id`."""
        return self.model_dump(exclude={"root", "variant", "world"})

    def settings(self) -> dict:
        """The resolved data settings (the dataset's defaults filled in)."""
        from transfer.data import dataset_settings

        return dataset_settings(**self.geometry())


class TransferSection(TransferSettings):
    """The matrix axes (protocols, decoders, train sizes, seeds) and how every cell trains
    (`transfer.api.TransferSettings`, shared with `bench transfer`)."""

    protocols: list[Protocol] = Field(default_factory=lambda: list(PROTOCOLS), min_length=1)
    # Registered decoders (docs/protocols.md, "Decoders"); `mmseg:CONFIG` runs an MMSegmentation config.
    decoders: list[str] = Field(default_factory=lambda: ["monodepth2"], min_length=1)
    train_sizes: list[int] = Field(default_factory=lambda: [16], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # A backbone pre-trained on one generated world transfers to the datasets of that world only
    # (a world study: every world its own comparison); true pairs it with every dataset too.
    cross_world: bool = False

    @field_validator("train_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("train sizes must be at least 1")
        return v

    @field_validator("decoders")
    @classmethod
    def _known_decoders(cls, v: list[str]) -> list[str]:
        from transfer.decoders import decoder_class

        for name in v:
            try:
                decoder_class(name)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return v


class Resources(_Strict):
    """What one job (a pre-training or a cell) asks of a Ray or Slurm executor."""

    cpus: int = Field(1, ge=1)
    gpus: int = Field(0, ge=0)  # more than 1: the cell runs data-parallel (DDP) on them
    memory_gb: float | None = Field(None, gt=0)
    processes: int | None = Field(None, ge=1)  # DDP ranks per cell (default: gpus when > 1, else 1)

    def ddp_processes(self) -> int:
        return self.processes or (self.gpus if self.gpus > 1 else 1)


class RaySpec(_Strict):
    address: str | None = None  # auto | HOST:PORT (join a cluster); none starts a local Ray
    shared_fs: bool = True  # false: checkpoints and records travel through Ray's object store
    max_retries: int = Field(2, ge=0)  # re-runs of a task whose worker died


class SlurmSpec(_Strict):
    partition: str | None = None
    account: str | None = None
    time_min: int = Field(60, ge=1)  # per job; a timed-out cell is requeued and resumes
    array_parallelism: int = Field(64, ge=1)
    folder: Path | None = None  # submitit's logs and pickles (default: RESULTS/slurm)
    wait: bool = True  # false: submit and exit; `bench status` / `bench run` pick the results up
    cluster: Literal["slurm", "local", "debug"] = "slurm"  # local: submitit's local executor (no Slurm)
    max_requeues: int = Field(3, ge=0)  # preemptions/timeouts a job may be requeued after
    sbatch: dict = Field(default_factory=dict)  # extra sbatch parameters, e.g. {constraint: a100}


class ClaimsSpec(_Strict):
    """How drivers sharing a results folder claim jobs (bench.core.claims): a running job's claim
    is refreshed every `heartbeat_s`; one on another host whose heartbeat is older than
    `stale_after_s` is taken over (on the same host, a claim whose process is gone is at once)."""

    heartbeat_s: float = Field(30.0, gt=0)
    stale_after_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _several_beats(self):
        if self.stale_after_s < 3 * self.heartbeat_s:
            raise ValueError(f"claims.stale_after_s ({self.stale_after_s:g}) must be at least 3 heartbeats "
                             f"(3 x heartbeat_s = {3 * self.heartbeat_s:g}): a slow filesystem would "
                             f"otherwise get live jobs taken over")
        return self


class ExecutorSpec(_Strict):
    kind: Literal["local", "ray", "slurm"] = "local"
    retries: int = Field(1, ge=0)  # re-runs of a failed job within one `bench run`
    resources: Resources = Resources()
    ray: RaySpec = RaySpec()
    slurm: SlurmSpec = SlurmSpec()
    claims: ClaimsSpec = ClaimsSpec()


class TensorBoardSpec(_Strict):
    """TensorBoard event files, one log dir per job under DIR/<matrix name>/."""

    dir: Path | None = None  # default: RESULTS/tensorboard; relative to the manifest's folder


class MlflowSpec(_Strict):
    """One MLflow run per job, in an experiment named after the matrix."""

    # Default: MLFLOW_TRACKING_URI when set, else sqlite:///RESULTS/mlflow.db (artifacts beside it).
    tracking_uri: str | None = None
    experiment: str | None = None  # default: the manifest's name


class TrackingSpec(_Strict):
    """Experiment-tracking sinks (bench/tracking, the `track` extra): what a finished job wrote,
    logged after it finished. Runtime only: no fingerprint sees it."""

    tensorboard: TensorBoardSpec | None = None
    mlflow: MlflowSpec | None = None
    # The most one job's logging may take in one sink; past it (or at any error) that sink is
    # turned off for the rest of the run with one warning, and a later run logs what it missed.
    timeout_s: float = Field(60, gt=0)


class Manifest(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    out: Path | None = None  # relative to the manifest's folder; default: results/<name> under the cwd
    workers: int = Field(1, ge=1)
    data: DataSection = DataSection()
    backbones: list[Backbone] = Field(min_length=1)
    datasets: list[DatasetSpec] = Field(min_length=1)
    transfer: TransferSection = TransferSection()
    executor: ExecutorSpec = ExecutorSpec()
    tracking: TrackingSpec | None = None  # absent: no tracking
    # The command line's `--set` overrides, applied over the file: not a key of the file, so
    # private; `resolved_dump` records them in manifest.resolved.json.
    _overrides: list[str] = PrivateAttr(default_factory=list)

    @property
    def overrides(self) -> list[str]:
        return list(self._overrides)

    def resolved_dump(self) -> dict:
        """What manifest.resolved.json holds: the validated manifest and the `--set`s applied."""
        return {**self.model_dump(mode="json", by_alias=True), RESOLVED_OVERRIDES: self.overrides}

    @model_validator(mode="after")
    def _unique_names(self):
        problem = (_repeat_problem("backbones", "backbone names must be unique", self.backbones)
                   or _repeat_problem("datasets", "each dataset may appear once", self.datasets))
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _named_worlds_exist(self):
        known = ", ".join(self.data.worlds) or "none (data.worlds is empty)"
        entries = [(f"datasets[{i}].world", d.world) for i, d in enumerate(self.datasets)]
        entries += [(f"backbones[{i}].pretrain.world", b.pretrain.world) for i, b in enumerate(self.backbones)
                    if b.pretrain is not None]
        for where, name in entries:
            if name is not None and name not in self.data.worlds:
                raise ValueError(f"{where}: no world {name!r} in data.worlds; named worlds: {known}")
        return self

    @model_validator(mode="after")
    def _world_has_the_crops_asked_for(self):
        # caught here, before anything runs, rather than when the pre-training opens the world
        for i, b in enumerate(self.backbones):
            pre = b.pretrain
            if (pre is not None and pre.reads_world and pre.source_options.get("crops") == "out_of_domain"
                    and not self.data.world(pre.world).ood_crops_per_class):
                where = "data.synth" if pre.world is None else f"world {pre.world!r}"
                raise ValueError(f"backbones[{i}].pretrain.source_options.crops: out_of_domain needs "
                                 f"ood_crops_per_class > 0 in {where} (the world has no out-of-domain crops otherwise)")
        return self

    def backbone_world(self, backbone) -> str | None:
        """The world id a backbone was pre-trained on (None: it was not pre-trained on one)."""
        pre = backbone.pretrain
        return self.data.world(pre.world).fingerprint() if pre is not None and pre.reads_world else None

    def dataset_world(self, spec) -> str | None:
        """The world id a dataset entry reads (None: a real dataset)."""
        return self.data.world(spec.world).fingerprint() if spec.reads_world else None


def _repeat_problem(section: str, rule: str, entries) -> str | None:
    """Why the entries of a section do not name themselves apart (None: they do). A name may
    repeat only as variants: every entry of that name with its own `variant` label."""
    by_name: dict[str, list] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry.variant)
    unlabeled = sorted(n for n, labels in by_name.items() if len(labels) > 1 and None in labels)
    if unlabeled:
        return (f"{rule}; repeated: {', '.join(unlabeled)} (to compare settings of one {section[:-1]}, give "
                f"every entry of that name a distinct `variant` label)")
    for name, labels in by_name.items():
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            return f"{section}: variant {twice[0]!r} of {name!r} is given twice; each variant of a name needs its own label"
    # Variants that differ in their label alone would run the same thing twice under two names:
    # usually a copied entry whose changed setting was forgotten.
    seen: dict[tuple, str] = {}
    for entry in entries:
        if entry.variant is None:
            continue
        settings = (entry.name, repr(entry.model_dump(exclude={"variant"})))
        if settings in seen:
            return (f"{section}: variants {seen[settings]!r} and {entry.variant!r} of {entry.name!r} have the same "
                    f"settings; a variant must differ from the others of its name in something")
        seen[settings] = entry.variant
    return None


RESOLVED_OVERRIDES = "overrides"  # manifest.resolved.json's key for the `--set`s (not a manifest key)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


MAX_LISTED_PROBLEMS = 20  # beyond this, "and N more": the first ones are usually the cause of the rest


def _user_loc(loc: tuple) -> tuple:
    # pydantic adds the union/literal branch to the location; keep only the user's keys.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))


def _problem(error: dict, sets: dict[str, tuple] | None = None) -> str:
    """One pydantic error as `loc: message (got VALUE)`, in the manifest's own key names, led by
    the `--set` whose location it is in (when one is)."""
    user_loc = _user_loc(error["loc"])
    loc = _loc(user_loc)
    by = [text for text, where in (sets or {}).items() if user_loc[:len(where)] == where
          or user_loc and where[:len(user_loc)] == user_loc and error["type"] != "missing"]
    lead = f"--set {by[-1]}: " if by else ""
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling against docs/manifest.md)"
    elif "input" in error and error["type"] not in ("missing",) and not isinstance(error["input"], (dict, list)):
        msg += f" (got {error['input']!r})"
    return f"{lead}{loc or '<top level>'}: {msg}"


def format_problems(path, problems: list[str]) -> str:
    """One problem on one line (`PATH: PROBLEM`); several as a count and one line each."""
    problems = list(dict.fromkeys(problems))  # a union's branches can report the same problem twice
    if len(problems) == 1:
        return f"{path}: {problems[0]}"
    listed = problems[:MAX_LISTED_PROBLEMS]
    lines = [f"{path}: {len(problems)} problems:", *(f"  {p}" for p in listed)]
    if len(problems) > len(listed):
        lines.append(f"  and {len(problems) - len(listed)} more")
    return "\n".join(lines)


def _format_error(path: Path, exc: ValidationError, sets: dict[str, tuple] | None = None) -> str:
    return format_problems(path, [_problem(e, sets) for e in exc.errors()])


def load_manifest(path, sets: list[str] | None = None, *, check_files: bool = True) -> Manifest:
    """The manifest of `path`, with the command line's `--set KEY.PATH=VALUE` overrides applied
    over it (bench/study/overrides.py) before it is validated. `check_files=False` leaves out the checks
    that the files and folders it names exist (`bench run --dry-run --manifest-only`: a manifest
    written before its data is there)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: manifest not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read manifest ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a manifest is a YAML mapping with keys name, backbones, datasets, ...")
    where = {}
    if sets:
        from bench.study.overrides import apply_sets

        raw, where = apply_sets(raw, list(sets))
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_format_error(path, exc, where)) from None
    _resolve_paths(manifest, path.parent, path, check_files)
    manifest._overrides = list(sets or [])
    return manifest


def _resolve_paths(m: Manifest, base: Path, path: Path, check_files: bool = True) -> None:
    """Make relative paths absolute (against the manifest's folder) and check they exist."""
    problems: list[str] = []  # every problem, not only the first
    missing: list[str] = []  # files and folders not (yet) there

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p)).resolve()

    m.out = resolve(m.out)
    m.executor.slurm.folder = resolve(m.executor.slurm.folder)  # written, not read: need not exist
    if m.tracking is not None and m.tracking.tensorboard is not None:  # written too
        m.tracking.tensorboard.dir = resolve(m.tracking.tensorboard.dir)
    for i, b in enumerate(m.backbones):
        if b.checkpoint is not None:
            b.checkpoint = resolve(b.checkpoint)
            if not b.checkpoint.is_file():
                missing.append(f"backbones[{i}].checkpoint: file not found: {b.checkpoint}")
        if b.import_ is not None:
            b.import_.file = resolve(b.import_.file)
            if not b.import_.file.exists():
                missing.append(f"backbones[{i}].import.file: not found: {b.import_.file}")
            if b.import_.key_map is not None:
                b.import_.key_map = resolve(b.import_.key_map)
                if not b.import_.key_map.is_file():
                    missing.append(f"backbones[{i}].import.key_map: file not found: {b.import_.key_map}")
        if b.pretrain is not None and b.pretrain.root is not None:
            b.pretrain.root = resolve(b.pretrain.root)
            if not b.pretrain.root.is_dir():
                missing.append(f"backbones[{i}].pretrain.root: folder not found: {b.pretrain.root}")
        if b.pretrain is not None and b.pretrain.init is not None:
            b.pretrain.init = resolve(b.pretrain.init)
            if not b.pretrain.init.is_file():
                missing.append(f"backbones[{i}].pretrain.init: file not found: {b.pretrain.init}")
        if b.pretrain is not None:
            for key in PATH_OPTIONS:  # folder options of a method, relative to the manifest like every path
                if isinstance(b.pretrain.options.get(key), str):
                    b.pretrain.options[key] = str(resolve(Path(b.pretrain.options[key])))
    try:
        _resolve_decoders(m, resolve, path)
    except UserError as exc:
        problems.append(str(exc).removeprefix(f"{path}: "))
    for i, d in enumerate(m.datasets):
        if d.root is not None:
            d.root = resolve(d.root)
            if not d.root.is_dir():
                missing.append(f"datasets[{i}].root: folder not found: {d.root}")
    problems = (missing if check_files else []) + problems
    if problems:
        raise UserError(format_problems(path, problems))


def _resolve_decoders(m: Manifest, resolve, path: Path) -> None:
    """`PREFIX:FILE` decoders name files relative to the manifest: the decoder keeps the name as
    written (cell names and fingerprints do not depend on where the manifest lives) and its
    options get the resolved file as `spec`. Every decoder's options are checked now, so a typo
    fails before anything runs."""
    from transfer.decoders import parse_decoder_options, split_decoder_name

    t = m.transfer
    unknown = sorted(set(t.decoder_options) - set(t.decoders) - {LINEAR_DECODER})
    if unknown:
        raise UserError(f"{path}: transfer.decoder_options: {unknown[0]!r} is not in transfer.decoders")
    for name in [*t.decoders, LINEAR_DECODER]:
        _, arg = split_decoder_name(name)
        if arg is not None:
            t.decoder_options[name] = {**t.decoder_options.get(name, {}), "spec": str(resolve(Path(arg)))}
        try:
            parse_decoder_options(name, t.decoder_options.get(name))
        except UserError as exc:
            raise UserError(f"{path}: transfer.decoders: {exc}") from None
