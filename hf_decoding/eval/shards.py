"""Shard files of the evidence runs: one JSON per (unit, problem range), written once when the unit finishes,
skipped when it already exists, merged by whatever has landed.

A *unit* is `"pool"` or a step-method spec `"method:reward:N"` (e.g. `"particle_filter:prm:8"`); its file is
`<dir>/<unit with ':' -> '_'>__<start>-<stop>.json` and holds `{"unit", "range", "config", "records", ...}`, one
record per problem (each with its problem `id`). Files are written to a temporary name and renamed, so an
interrupted run never leaves a half-written shard that a later run would skip.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["load_units", "parse_range", "shard_path", "split_range", "write_shard"]

_NAME = re.compile(r"^(?P<unit>.+)__(?P<start>\d+)-(?P<stop>\d+)\.json$")


def parse_range(text: str) -> tuple[int, int]:
    """`"0:50"` -> `(0, 50)` (problems 0..49); requires `0 <= start < stop`."""
    start_text, sep, stop_text = text.partition(":")
    try:
        start, stop = int(start_text), int(stop_text)
    except ValueError:
        raise ValueError(f"problem range must look like START:STOP, got {text!r}") from None
    if not sep or not 0 <= start < stop:
        raise ValueError(f"problem range must satisfy 0 <= START < STOP, got {text!r}")
    return start, stop


def split_range(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """`[start, stop)` cut into consecutive shards of at most `size` problems."""
    if size < 1:
        raise ValueError(f"shard size must be positive, got {size}")
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def shard_path(directory: str | os.PathLike[str], unit: str, start: int, stop: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"{unit.replace(':', '_')}__{start}-{stop}.json"


def write_shard(path: pathlib.Path, document: dict[str, Any]) -> None:
    """Atomic write (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_units(directory: str | os.PathLike[str], units: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every landed shard in `directory`, merged per unit: `{unit: {"config", "records": {id: record}, "ranges"}}`.

    Shards of one unit must share their `config` (else `ValueError`: two settings would be mixed); a problem that
    appears in two shards keeps its first record (overlapping ranges give identical records, problems being seeded
    per id).
    """
    wanted = set(units) if units is not None else None
    merged: dict[str, dict[str, Any]] = {}
    for path in sorted(pathlib.Path(directory).glob("*__*-*.json")):
        if not _NAME.match(path.name):
            continue
        document = json.loads(path.read_text(encoding="utf-8"))
        unit = document["unit"]
        if wanted is not None and unit not in wanted:
            continue
        entry = merged.setdefault(unit, {"config": document["config"], "records": {}, "ranges": []})
        if entry["config"] != document["config"]:
            raise ValueError(f"{path} was run with another config than the other {unit!r} shards; move one away")
        entry["ranges"].append(list(document["range"]))
        for record in document["records"]:
            entry["records"].setdefault(record["id"], record)
    for entry in merged.values():
        entry["ranges"].sort()
    return merged
