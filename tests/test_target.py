"""Targets: the host CPU's instruction set as the CPU reports it, JSON round trips, hardware-class keys."""

from __future__ import annotations

import json

import pytest
import tvm
from tvm.target import codegen

from tvm_convt.target import _host_cpu_features, host_cpu_config, resolve_target, target_json, target_key

ISA_FEATURES = ["avx512f", "avx512bw", "avx512vl", "avx2", "avx", "fma", "sse4.2", "neon", "sve"]


def test_host_target_enables_only_features_the_cpu_reports():
    # A VM may hide AVX-512 from a CPU LLVM names znver4 or skylake-avx512; code using it dies with SIGILL.
    host = {str(k): bool(v) for k, v in dict(_host_cpu_features()).items()}
    target = resolve_target("llvm")
    with target:
        for feature in ISA_FEATURES:
            if feature in host and not host[feature]:
                assert not codegen.llvm_cpu_has_features(feature, target), feature
    isa = target_key(target).rsplit("-", 1)[1]
    if isa == "avx512":
        assert host.get("avx512f")
    if isa == "avx2":
        assert host.get("avx2") and not host.get("avx512f")


def test_host_cpu_config_switches_off_only_what_the_named_cpu_implies():
    config = host_cpu_config()
    implied = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": config["mcpu"]}))
    for flag in config.get("mattr", []):
        assert flag.startswith("-") and flag[1:] in implied


@pytest.mark.parametrize("spec", ["llvm", {"kind": "llvm", "mcpu": "znver3"},
                                  {"kind": "llvm", "mcpu": "znver4", "mattr": ["-avx512f"]}])
def test_target_json_round_trips(spec):
    target = resolve_target(spec)
    text = target_json(target)
    assert isinstance(json.loads(text).get("mattr", []), list)
    again = resolve_target(text)
    assert target_json(again) == text
    assert target_key(again) == target_key(target)


@pytest.mark.parametrize("spec, key", [({"kind": "llvm", "mcpu": "znver3"}, "llvm-x86_64-avx2"),
                                       ({"kind": "llvm", "mcpu": "znver4"}, "llvm-x86_64-avx512"),
                                       ({"kind": "llvm", "mcpu": "znver4", "mattr": ["-avx512f"]},
                                        "llvm-x86_64-avx2"),
                                       ({"kind": "cuda", "arch": "sm_90"}, "cuda-sm_90")])
def test_target_key_follows_the_target_not_the_host(spec, key):
    assert target_key(resolve_target(spec)) == key
