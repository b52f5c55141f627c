"""Run records: one JSON file per matrix cell, the single source of truth for results.

Writes are atomic (`bench.core.atomic`), so a crash at any moment leaves either the old record or
the new one, never a torn one. A cell is finished when its record exists,
parses, carries the same config fingerprint, and has a final status (`ok` or `diverged`);
`failed` cells are retried on the next run because failures are usually environmental.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench.core import results_folder as rf
from bench.core.atomic import write_text_atomic

# The cell fields that make a comparison: cells that differ only in backbone and seed are compared
# (ranked, contrasted, drawn side by side). Every report groups by this one key.
COMPARISON = ["dataset", "protocol", "decoder", "init", "train_size"]


def fingerprint(config: dict) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_json_atomic(path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_record(folder, record: dict) -> Path:
    """A job's record (`rf.RECORD`), written atomically with the schema version: the one writer of
    records."""
    return write_json_atomic(Path(folder) / rf.RECORD, {"schema": rf.RECORD_SCHEMA, **record})


def read_json(path) -> dict | None:
    """The parsed file, or None when it is missing or unreadable (treated as not done)."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def is_finished(record_path, expected_fingerprint: str) -> bool:
    record = read_json(record_path)
    return (
        record is not None
        and record.get("fingerprint") == expected_fingerprint
        and record.get("status") in rf.FINAL_STATUSES
    )


def iter_records(results_dir):
    """All parseable run records below `results_dir` (corrupt ones are skipped)."""
    for path in rf.record_paths(results_dir):
        record = read_json(path)
        if record is not None and "cell" in record:
            yield path, record
