"""Tuned records of layers for every length: what the rules plan differently for a layer's module that
serves every length, and for its static modules that MetaSchedule has no record of.

A record is keyed by the layer without its length or batch (parameters and dtype) and holds the
:class:`~tvm_convt.schedule.cpu.CpuArch` fields its tuning changed
(:mod:`tvm_convt.schedule.cpu_space`), so it applies at every batch and length; the tuning's
lengths and times travel with it for people. A record applies on the core it was tuned on (its
``mcpu``, :attr:`LayerRecord.core`), and a class's file holds one record a layer: tuning the layer on
another core of the class into the same folder replaces it. Records live beside MetaSchedule's, per hardware
class: ``<root>/<target key>/layer_records.json``, looked up in the user's tuning logs
(``logs`` or ``$TVM_CONVT_TUNING_LOGS``) and then the shipped ``schedules/``. A record that
cannot be read is reported (:class:`~tvm_convt.records.TuningLogWarning`) and skipped.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvm.target import Target

from ._files import read_json, write_atomic
from .params import OP, ConvTranspose1dParams, check_dtype
from .records import TuningLogWarning, default_logs_dir, shipped_schedules_dir
from .target import target_key

LAYER_RECORDS = "layer_records.json"
FORMAT = 1


@dataclass(frozen=True)
class LayerRecord:
    """The tuned fields of one layer (parameters and dtype) on one hardware class; ``tuned_at`` the
    input lengths it was measured at, ``default_ms`` and ``tuned_ms`` its times there."""

    params: ConvTranspose1dParams
    dtype: str
    fields: dict[str, Any]
    tuned_at: tuple[int, ...] = ()
    default_ms: tuple[float, ...] = ()
    tuned_ms: tuple[float, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return layer_key(self.params, self.dtype)

    @property
    def core(self) -> str | None:
        """The LLVM ``mcpu`` the record was tuned on (its notes' target); None where they do not say."""
        try:
            mcpu = json.loads(self.notes.get("target", "")).get("mcpu")
        except (TypeError, ValueError, AttributeError):
            return None
        return mcpu if isinstance(mcpu, str) else None

    def applies_on(self, target: Target) -> bool:
        """Whether the record serves ``target``: tuned on its core, or on a core it does not name."""
        return self.core in (None, target.attrs.get("mcpu"))

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params.to_dict(), "dtype": self.dtype, "fields": self.fields,
                "tuned_at": list(self.tuned_at), "default_ms": list(self.default_ms),
                "tuned_ms": list(self.tuned_ms), "notes": self.notes}

    @classmethod
    def from_dict(cls, d: Any) -> LayerRecord:
        if not isinstance(d, dict) or not isinstance(d.get("fields"), dict) or not isinstance(d.get("params"), dict):
            raise ValueError(f"{OP}: a layer record must be an object with params and fields, got {str(d)[:80]}")
        numbers = {name: tuple(d.get(name, ())) for name in ("tuned_at", "default_ms", "tuned_ms")}
        return cls(ConvTranspose1dParams.from_dict(d["params"]), check_dtype(d.get("dtype", "float32")),
                   dict(d["fields"]), notes=dict(d.get("notes", {})), **numbers)


def layer_key(params: ConvTranspose1dParams, dtype: str) -> str:
    return json.dumps([params.to_dict(), dtype], sort_keys=True)


def read_layer_records(directory: Path) -> dict[str, LayerRecord]:
    """The records of ``directory`` (one hardware class) by :func:`layer_key`; a file or entry that
    cannot be read is warned about and skipped."""
    path = Path(directory) / LAYER_RECORDS
    if not path.exists():
        return {}
    try:
        data = read_json(path, "layer records")
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("records"), list):
            raise ValueError(f"{OP}: layer records {path} must be an object of format {FORMAT} with a records list")
    except ValueError as err:
        warnings.warn(str(err), TuningLogWarning, stacklevel=2)
        return {}
    found = {}
    for number, entry in enumerate(data["records"], 1):
        try:
            record = LayerRecord.from_dict(entry)
        except (ValueError, TypeError) as err:
            warnings.warn(f"{OP}: layer records {path}, record {number} skipped: {err}", TuningLogWarning,
                          stacklevel=2)
            continue
        found[record.key] = record
    return found


def write_layer_record(root: Path, target: Target, record: LayerRecord) -> Path:
    """Add ``record`` to ``root``'s folder for ``target``'s hardware class, replacing the layer's
    earlier one; return the file."""
    directory = Path(root) / target_key(target)
    records = read_layer_records(directory)
    records[record.key] = record
    body = {"format": FORMAT, "records": [records[k].to_dict() for k in sorted(records)]}
    path = directory / LAYER_RECORDS
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(body, indent=1) + "\n"))
    return path


def find_layer_record(params: ConvTranspose1dParams, dtype: str, target: Target, *,
                      logs: str | Path | None = None) -> tuple[LayerRecord, Path] | None:
    """The layer's record for ``target``'s hardware class and the folder it came from: the user's
    tuning logs first, then the shipped ``schedules/``; None without one. A record tuned on another
    core than ``target``'s (its ``mcpu``) is passed over: a class holds cores whose best plans differ
    (Zen 4 and Intel's AVX-512 cores), and a record is measured on one."""
    key = layer_key(params, dtype)
    for root in (Path(logs) if logs is not None else default_logs_dir(), shipped_schedules_dir()):
        directory = root / target_key(target)
        record = read_layer_records(directory).get(key)
        if record is not None and record.applies_on(target):
            return record, directory
    return None


__all__ = ["LAYER_RECORDS", "LayerRecord", "find_layer_record", "layer_key", "read_layer_records",
           "write_layer_record"]
