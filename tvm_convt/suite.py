"""Suites: named workloads in a JSON file, the format ``tune`` and ``bench`` read.

A suite file is a JSON list of objects, one per layer: ``name``, ``batch`` and
``length`` (L_in), the fields of :class:`ConvTranspose1dParams` (those without a
default are required) and optionally ``dtype``. The package ships a default
suite of real model layers (:func:`default_suite`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ._files import read_json, write_atomic
from .params import OP, ConvTranspose1dParams, Workload

DEFAULT_SUITE = Path(__file__).resolve().parent / "default_suite.json"

_PARAM_FIELDS = {f.name: f for f in dataclasses.fields(ConvTranspose1dParams)}
_REQUIRED = {"name", "batch", "length"} | {
    name for name, f in _PARAM_FIELDS.items()
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
_KNOWN = {"name", "batch", "length", "dtype"} | set(_PARAM_FIELDS)


def _entry_workload(entry: Any, where: str) -> tuple[str, Workload]:
    if not isinstance(entry, dict):
        raise ValueError(f"{OP}: {where} must be an object, got {type(entry).__name__}")
    missing = sorted(_REQUIRED - set(entry))
    unknown = sorted(set(entry) - _KNOWN)
    if missing or unknown:
        raise ValueError(f"{OP}: {where}: missing keys {missing}, unknown keys {unknown}")
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{OP}: {where}: name must be a unique non-empty string, got {name!r}")
    params = {k: v for k, v in entry.items() if k in _PARAM_FIELDS}
    try:
        return name, Workload(ConvTranspose1dParams(**params), entry["batch"], entry["length"],
                              entry.get("dtype", "float32"))
    except (TypeError, ValueError) as err:
        rule = str(err).removeprefix(f"{OP}: ")
        raise type(err)(f"{OP}: {where} ({name}): {rule}") from None


def load_suite(path: str | Path) -> dict[str, Workload]:
    """Read a suite file into ``{name: workload}``, in the file's order."""
    path = Path(path)
    entries = read_json(path, "suite file")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{OP}: suite file {path} must hold a non-empty JSON list of layers")
    suite: dict[str, Workload] = {}
    for i, entry in enumerate(entries):
        name, workload = _entry_workload(entry, f"suite file {path}, entry {i}")
        if name in suite:
            raise ValueError(f"{OP}: suite file {path}, entry {i}: name must be a unique non-empty "
                             f"string, got {name!r} twice")
        suite[name] = workload
    return suite


def default_suite() -> dict[str, Workload]:
    """The shipped suite: upsampling layers of HiFi-GAN, EnCodec and Mimi, a dilated
    stride-1 layer and a grouped one (batch 1 unless a training batch is the point)."""
    return load_suite(DEFAULT_SUITE)


def suite_entry(name: str, workload: Workload) -> dict[str, Any]:
    """One suite-file object for ``workload``: the inverse of :func:`load_suite`'s parsing."""
    return {"name": name, "batch": workload.batch, "length": workload.length,
            "dtype": workload.dtype, **workload.params.to_dict()}


def write_suite(path: str | Path, suite: dict[str, Workload]) -> Path:
    """Write ``suite`` as a suite file that :func:`load_suite` reads back unchanged."""
    path = Path(path)
    text = json.dumps([suite_entry(n, w) for n, w in suite.items()], indent=1)
    write_atomic(path, lambda tmp: tmp.write_text(text + "\n"))
    return path
