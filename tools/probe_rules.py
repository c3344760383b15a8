"""Time default CPU rules against each other on the same layers, interleaved in one process.

    python tools/probe_rules.py cpu-direct cpu-gemm
    python tools/probe_rules.py cpu-direct cpu-gemm --suite my_layers.json --layers up2 up3
    python tools/probe_rules.py cpu-direct cpu-gemm --target '{"kind": "llvm", "mcpu": "znver3"}'

The first rule is the baseline of the ratios; a rule that does not apply to a layer is left out
of its row. Prints median ms per layer and rule.
"""

from __future__ import annotations

from _probe import probe

from tvm_convt.build import build_library


def _build(w, target, rule: str):
    try:
        return build_library(w, target=target, rule=rule, use_cache=False, tuned=False)[0]
    except ValueError:
        return None  # the rule does not apply to this layer


def main() -> None:
    probe(__doc__.splitlines()[0], "rule names, e.g. cpu-direct cpu-gemm", _build)


if __name__ == "__main__":
    main()
