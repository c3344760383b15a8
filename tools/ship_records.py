"""Make the shipped records from a full tuning database: `schedules/<class>/` gets the best
schedule per workload re-measured here (the default schedule unless a record beats it), and
`tuning_logs/<class>/` the few best records per workload as a warm start.

    python tools/ship_records.py /tmp/logs --target '{"kind": "llvm", "mcpu": "znver3"}'
    python tools/ship_records.py /tmp/logs --target llvm --keep-logs 4

Run it on the machine that tuned, idle: it times every candidate against the others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvm_convt.remeasure import describe
from tvm_convt.target import host_cores, resolve_target, set_cpu_threads, target_key
from tvm_convt.tuning import prune

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, help="folder with one tuning database per hardware class")
    parser.add_argument("--target", default="llvm", help="the target tuned for (JSON or 'llvm')")
    parser.add_argument("--keep-logs", type=int, default=3, help="records per workload in tuning_logs/")
    args = parser.parse_args()
    set_cpu_threads(host_cores())
    target = resolve_target(args.target)
    key = target_key(target)
    confirmed: dict[str, list] = {}
    shipped = prune(args.logs, ROOT / "schedules", confirm_on=target, confirmed=confirmed)
    logs = prune(args.logs, ROOT / "tuning_logs", target_key_name=key, keep=args.keep_logs)
    print(f"{key}: shipped {shipped or 'nothing: every default schedule won'}; warm start {logs}")
    for workload, ranked in confirmed.items():
        w = json.loads(workload)
        print(f"  {w['params']}, length {w['length']}: kept {ranked[0].source} ({describe(ranked)})")


if __name__ == "__main__":
    main()
