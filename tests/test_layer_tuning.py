"""Tuning a layer once for every length: the fields' checks, the records, their use, and the search."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

import tvm_convt
from tvm_convt.build import schedule_symbolic
from tvm_convt.layer_records import (LAYER_RECORDS, LayerRecord, find_layer_record, read_layer_records,
                                     write_layer_record)
from tvm_convt.layer_tuning import tune_layer, tuning_lengths
from tvm_convt.params import ConvTranspose1dParams, SymbolicWorkload
from tvm_convt.records import TuningLogWarning
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.schedule.cpu import CPU_ARCHS, base_cpu_arch, cpu_arch, tuned_fields
from tvm_convt.schedule.cpu_space import TUNABLE, checked_fields, tuning_space
from tvm_convt.target import resolve_target, target_key

from conftest import assert_close, random_inputs

P = ConvTranspose1dParams
AVX2 = CPU_ARCHS["avx2"]
# A layer of the GEMM form whose register tile every CPU class here can change.
GEMM_LAYER = P(32, 16, 16, stride=8, padding=4)
# A register tile no class takes first (Zen 4 takes (1, 12), AVX2 (2, 6), Intel AVX-512 (4, 6)).
OTHER_TILES = {"gemm_blockings": [[1, 8], [1, 12]]}


@pytest.fixture(scope="module")
def host():
    return resolve_target("llvm")


@pytest.mark.parametrize("fields,message", [
    ({"registers": 64}, "tuned fields must be among"),
    ({"gemm_blockings": []}, "non-empty list of pairs"),
    ({"gemm_blockings": [[1, "12"]]}, "pairs of positive integers"),
    ({"gemm_blockings": [[4, 12]]}, "must fit 16 registers, got vectors=4, rows=12"),
    ({"direct_blocking": [8, 6]}, "must fit 16 registers, got rows=8, vectors=6"),
    ({"gather_tile_bytes": -1}, "positive integer or null"),
    ({"direct_resident_input_bytes": None}, "must be a positive integer, got None"),
    ({"strided_direct_channels": 1.5}, "strided_direct_channels"),
    ({"direct_output_order": 1}, "direct_output_order must be true or false, got 1"),
])
def test_tuned_fields_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        checked_fields(AVX2, fields)


def test_tuning_space_holds_the_archs_own_values_and_fits_the_registers():
    for arch in CPU_ARCHS.values():
        space = tuning_space(arch)
        assert set(space) == set(TUNABLE)
        for name, values in space.items():
            assert getattr(arch, name) in values or name == "gemm_blockings", name
            for value in values:
                checked_fields(arch, {name: value})  # every candidate is a valid record


def test_tuned_fields_apply_inside_the_block_only(host):
    fields = checked_fields(base_cpu_arch(host), {"gather_tile_bytes": 4096})
    with tuned_fields(fields):
        assert cpu_arch(host).gather_tile_bytes == 4096
    assert cpu_arch(host) == base_cpu_arch(host)


def test_layer_records_round_trip_and_replace(tmp_path, host):
    first = LayerRecord(GEMM_LAYER, "float32", OTHER_TILES, (10, 40), (1.0, 2.0), (0.9, 1.5))
    path = write_layer_record(tmp_path, host, first)
    assert path == tmp_path / target_key(host) / LAYER_RECORDS
    second = LayerRecord(GEMM_LAYER, "float32", {"gather_tile_bytes": 8192})
    other = LayerRecord(P(8, 8, 3), "float64", {"gather_tile_bytes": None})
    write_layer_record(tmp_path, host, second)
    write_layer_record(tmp_path, host, other)
    records = read_layer_records(path.parent)
    assert len(records) == 2 and records[second.key] == second and records[other.key] == other
    found, directory = find_layer_record(GEMM_LAYER, "float32", host, logs=tmp_path)
    assert found == second and directory == path.parent
    assert find_layer_record(GEMM_LAYER, "float64", host, logs=tmp_path) is None


@pytest.mark.parametrize("text", ["{", "[]", '{"format": 2, "records": []}',
                                  '{"format": 1, "records": [{"params": {"in_channels": 1}, "fields": {}}]}'])
def test_damaged_layer_records_are_reported_and_skipped(tmp_path, host, text):
    directory = tmp_path / target_key(host)
    directory.mkdir()
    (directory / LAYER_RECORDS).write_text(text)
    with pytest.warns(TuningLogWarning):
        assert find_layer_record(GEMM_LAYER, "float32", host, logs=tmp_path) is None


def test_a_record_tunes_the_symbolic_module_and_keeps_it_exact(tmp_path, host):
    workload = SymbolicWorkload(GEMM_LAYER)
    default, default_source, _ = schedule_symbolic(workload, host, logs=tmp_path)
    write_layer_record(tmp_path, host, LayerRecord(GEMM_LAYER, "float32", OTHER_TILES))
    tuned, source, ranges = schedule_symbolic(workload, host, logs=tmp_path)
    assert default_source.startswith("default:") and source == f"tuned:{tmp_path / target_key(host)}"
    assert tuned.script() != default.script()
    untuned, untuned_source, _ = schedule_symbolic(workload, host, logs=tmp_path, tuned=False)
    assert untuned_source == default_source and untuned.script() == default.script()
    compiled = tvm_convt.compile(GEMM_LAYER, logs=tmp_path, prepack_weight=True)
    assert compiled.metadata.schedule == source
    for batch, length in ((1, 1), (2, 13), (1, 150), (3, 401)):
        x, w, b = random_inputs(GEMM_LAYER, batch, length, "float32", seed=length)
        assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, GEMM_LAYER), "float32")


def test_a_record_tunes_the_static_module_too(tmp_path, host):
    from tvm_convt.build import schedule
    from tvm_convt.params import Workload

    workload = Workload(GEMM_LAYER, 2, 37)
    default, default_source = schedule(workload, host, logs=tmp_path)
    write_layer_record(tmp_path, host, LayerRecord(GEMM_LAYER, "float32", OTHER_TILES))
    tuned, source = schedule(workload, host, logs=tmp_path)
    assert default_source.startswith("default:") and source == f"tuned:{tmp_path / target_key(host)}"
    assert tuned.script() != default.script()
    assert schedule(workload, host, logs=tmp_path, tuned=False)[0].script() == default.script()
    x, w, b = random_inputs(GEMM_LAYER, 2, 37, "float32", seed=3)
    # Checked against the reference before it is kept, as a tuned record is, the packed weight too.
    for prepack in (False, True):
        compiled = tvm_convt.compile(GEMM_LAYER, batch=2, length=37, logs=tmp_path, use_cache=False,
                                     prepack_weight=prepack)
        assert compiled.metadata.schedule == source and compiled.weight_packed == prepack
        assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, GEMM_LAYER), "float32")


def test_a_metaschedule_record_of_the_plain_default_gives_way_to_the_layer_record(tmp_path, host):
    """Tuning seeds MetaSchedule's database with the default schedule: where nothing beat it, that record
    must not hide the layer's record for every length."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    from tvm_convt.build import schedule
    from tvm_convt.params import Workload
    from tvm_convt.records import open_database
    from tvm_convt.remeasure import tuned_module
    from tvm_convt.schedule import default_schedule

    workload = Workload(GEMM_LAYER, 2, 37)
    mod = tuned_module(workload, host)
    plain, _ = default_schedule(workload, host, func=mod["main"])
    database = open_database(tmp_path / target_key(host), create=True)
    database.commit_tuning_record(TuningRecord(plain.trace, database.commit_workload(mod), [1e-3], host,
                                               ArgInfo.from_prim_func(mod["main"])))
    seeded, seeded_source = schedule(workload, host, logs=tmp_path)
    assert seeded_source.startswith("tuned:")  # MetaSchedule's record, the default schedule itself
    write_layer_record(tmp_path, host, LayerRecord(GEMM_LAYER, "float32", OTHER_TILES))
    steered, source = schedule(workload, host, logs=tmp_path)
    assert source == f"tuned:{tmp_path / target_key(host)}" and steered.script() != seeded.script()
    with tuned_fields(checked_fields(base_cpu_arch(host), OTHER_TILES)):
        assert steered.script() == schedule(workload, host, tuned=False)[0].script()


@pytest.mark.parametrize("core,applies", [(None, True), ("host", True), ("other", False)])
def test_a_record_applies_on_the_core_it_was_tuned_on(tmp_path, host, core, applies):
    mcpu = {"host": str(host.attrs["mcpu"]), "other": "a-core-nobody-has"}.get(core)
    notes = {} if mcpu is None else {"target": json.dumps({"kind": "llvm", "mcpu": mcpu})}
    record = LayerRecord(GEMM_LAYER, "float32", OTHER_TILES, notes=notes)
    assert record.core == mcpu
    write_layer_record(tmp_path, host, record)
    found = find_layer_record(GEMM_LAYER, "float32", host, logs=tmp_path)
    assert (found is not None) == applies


def test_a_record_this_version_cannot_use_is_skipped(tmp_path, host):
    write_layer_record(tmp_path, host, LayerRecord(GEMM_LAYER, "float32", {"gemm_blockings": [[9, 9]]}))
    with pytest.warns(TuningLogWarning, match="must fit"):
        _, source, _ = schedule_symbolic(SymbolicWorkload(GEMM_LAYER), host, logs=tmp_path)
    assert source.startswith("default:")


def test_tuning_lengths_surround_the_typical_one():
    assert tuning_lengths(GEMM_LAYER, 100) == (25, 100, 400)
    assert tuning_lengths(P(8, 8, 3, padding=5), 10) == (9, 10, 40)  # its shortest input is 9


def test_tune_layer_searches_and_reports(host):
    p = P(16, 8, 8, stride=4, padding=2)
    lines = []
    found = tune_layer(p, (9, 40), target=host, rounds=1, log=lines.append)
    assert found.lengths == (9, 40) and len(found.default_ms) == len(found.tuned_ms) == 2
    assert set(found.fields) <= set(TUNABLE) and found.candidates > 1
    assert lines and all(line.split(":")[0] in TUNABLE for line in lines)
    if found.fields:  # whichever won, its record is valid and exact
        checked_fields(base_cpu_arch(host), json.loads(json.dumps(found.record(str(host)).fields)))
    else:
        assert found.tuned_ms == found.default_ms and found.speedup == 1.0


def test_tune_layer_needs_a_cpu_target():
    with pytest.raises(ValueError, match="needs an LLVM CPU target"):
        tune_layer(GEMM_LAYER, (10,), target={"kind": "cuda", "arch": "sm_80"})


def test_cli_tunes_for_every_length(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tvm_convt", "tune", "--any-length", "--in-channels", "16", "--out-channels", "8",
         "--kernel-size", "4", "--stride", "2", "--length", "12", "--rounds", "1", "--logs", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "layer: tuning for every length at lengths 3, 12, 48" in result.stdout
    assert ("the default won" in result.stdout) != ("record: " in result.stdout)


def test_cli_tune_any_length_refuses_remote_measurement():
    from tvm_convt.cli import main

    assert main(["tune", "--any-length", "--in-channels", "4", "--out-channels", "4", "--kernel-size", "2",
                 "--length", "8", "--build-only"]) == 2


def test_shipped_layer_records_are_valid_for_their_class():
    from tvm_convt.records import shipped_schedules_dir

    found = sorted(shipped_schedules_dir().glob(f"*/{LAYER_RECORDS}"))
    for path in found:
        isa = path.parent.name.rsplit("-", 1)[-1]  # llvm-x86_64-avx2 -> avx2
        with warnings.catch_warnings():
            warnings.simplefilter("error", TuningLogWarning)
            records = read_layer_records(path.parent)
        assert records, path
        for record in records.values():
            assert record.core is not None, record.key  # else it would apply on every core of the class
            checked_fields(CPU_ARCHS[isa], record.fields)
            assert len(record.tuned_at) == len(record.default_ms) == len(record.tuned_ms) == 3
