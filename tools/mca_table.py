"""Predict the default CPU rules' inner-loop throughput on ARM cores with llvm-mca (issue #25).

    .venv/bin/python tools/mca_table.py                          # every suite layer, the three cores
    .venv/bin/python tools/mca_table.py --mca llvm-mca-19 --markdown  # the table in docs/performance.md
    .venv/bin/python tools/mca_table.py --mcpu neoverse-v1 --layers hifigan_v1_up0 --show-loop
    .venv/bin/python tools/mca_table.py --json mca.json --mca llvm-mca-19
    .venv/bin/python tools/mca_table.py --blocking 2x8 --direct 4x6    # try other CpuArch blockings

No ARM machine is needed: each layer of the suite is scheduled by the package's default rules for
``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": MCPU}`` (the static module at the suite's
shape, ``build.schedule``, and the any-length module's function for that length,
``build.schedule_symbolic``), compiled to AArch64 assembly (code generation only, nothing is linked),
and in each function the innermost loop holding the most FMAs is fed to ``llvm-mca``. From its
report: cycles per iteration (Total Cycles / Iterations), FMAs per iteration (128-bit vector FMA
equivalents: ``fmla``/``fmls`` on ``.4s``/``.2d`` count 1, on 64-bit vectors 1/2, SVE ``fmla z`` the
core's SVE width / 128, a vector ``fmul`` + ``fadd`` pair 1), and so the fraction of the core's FMA
pipes kept busy: FMAs per cycle / pipes (``CORE_PIPES``). The model's own FMA rate (1 / the
reciprocal throughput llvm-mca gives a 128-bit ``fmla``) and the units it issues FMAs to are
printed too, to show what the scheduling model assumes. A load or store addressed off ``sp`` or
``x29`` inside the loop is flagged as a spill.

llvm-mca's scheduling model matters: LLVM 14 (Debian 12's default) models cortex-a76,
neoverse-n1 and neoverse-v1 all with the Cortex-A57 model (two 64-bit FP units: one 128-bit FMA a
cycle); LLVM 17 and later have Neoverse N1 and V1 models, but still model cortex-a76 as a
Cortex-A57. So ``--mca`` defaults to the newest ``llvm-mca-NN`` on PATH, and ``--model`` analyses one
core's code with another core's model: by default cortex-a76's code with the Neoverse N1 model
(N1 is Arm's server core built on the Cortex-A76 microarchitecture: same pipes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MCPUS = ("cortex-a76", "neoverse-n1", "neoverse-v1")
# 128-bit FMA pipes of each core (Arm's software optimization guides): Cortex-A76 and Neoverse N1
# two (V0, V1), Neoverse V1 four 128-bit NEON pipes (or two 256-bit SVE).
CORE_PIPES = {"cortex-a72": 2, "cortex-a76": 2, "neoverse-n1": 2, "neoverse-n2": 2, "neoverse-v1": 4}
# SVE vector length of the cores that have SVE (bits).
SVE_BITS = {"neoverse-v1": 256, "neoverse-n2": 128}
# The llvm-mca model that stands for a core whose own model llvm-mca lacks.
DEFAULT_MODELS = {"cortex-a76": "neoverse-n1"}
# Layers the goal (80 % of the FMA peak) is for: many channels in one group.
DENSE_MIN_CHANNELS = 256

BRANCH = re.compile(r"^(b|b\.\w+|cbn?z|tbn?z)$")
LABEL = re.compile(r"^([.\w$]+):")


@dataclass
class Loop:
    """One innermost loop of a function's assembly: its lines, label first, branch back last."""

    function: str
    label: str
    lines: list[str]
    blocks: int  # basic blocks inside (1: a single block ending in the backward branch)

    @property
    def instructions(self) -> list[str]:
        return [line for line in self.lines if not LABEL.match(line)]


@dataclass
class Row:
    layer: str
    module: str  # "static" or "any-length:<function>"
    rule: str
    mcpu: str
    model: str  # the -mcpu llvm-mca ran with
    dense: bool
    fmas: float = 0.0
    cycles: float = 0.0
    peak_fraction: float = 0.0
    model_fmas_per_cycle: float | None = None
    model_fma_units: str = ""
    instructions: int = 0
    loads: int = 0
    stores: int = 0
    by_lane_fmla: int = 0
    ld1r: int = 0
    spill_loads: int = 0
    spill_stores: int = 0
    blocks: int = 0
    bottleneck: str = ""
    loop: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def spills(self) -> bool:
        return bool(self.spill_loads or self.spill_stores)


# ---------------------------------------------------------------------------------------------------
# Assembly


def _clean(line: str) -> str:
    line = line.split("//")[0].rstrip()
    return line.strip()


def split_functions(asm: str) -> dict[str, list[str]]:
    """``{function: its instruction and label lines}`` (directives dropped, labels kept)."""
    functions: dict[str, list[str]] = {}
    current: list[str] | None = None
    names = set(re.findall(r"\.type\s+([^,\s]+)\s*,\s*@function", asm))
    for raw in asm.splitlines():
        line = _clean(raw)
        if not line:
            continue
        m = LABEL.match(line)
        if m and m.group(1) in names:
            current = functions.setdefault(m.group(1), [])
            continue
        if current is None:
            continue
        if line.startswith(".") and not m:
            if line.startswith(".Lfunc_end"):
                current = None
            continue  # a directive
        current.append(line)
    return functions


def _branch_target(line: str) -> str | None:
    parts = line.split(None, 1)
    if len(parts) < 2 or not BRANCH.match(parts[0]):
        return None
    return parts[1].split(",")[-1].strip()


def innermost_loops(function: str, lines: list[str]) -> list[Loop]:
    """The loops of a function that hold no other loop: a label and a later branch back to it."""
    where = {LABEL.match(line).group(1): i for i, line in enumerate(lines) if LABEL.match(line)}
    spans = []
    for i, line in enumerate(lines):
        target = _branch_target(line)
        if target is not None and target in where and where[target] < i:
            spans.append((where[target], i))
    named = _all_targets(lines)
    loops = []
    for start, end in spans:
        if any((s, e) != (start, end) and start <= s and e <= end for s, e in spans):
            continue
        body = lines[start:end + 1]
        # Blocks: the loop's label, and each label inside that a branch names.
        blocks = 1 + sum(1 for line in body[1:] if LABEL.match(line) and LABEL.match(line).group(1) in named)
        loops.append(Loop(function, body[0][:-1], body, blocks))
    return loops


def _all_targets(lines: list[str]) -> set[str]:
    return {t for t in (_branch_target(line) for line in lines) if t}


def _mnemonic(instruction: str) -> str:
    return instruction.split(None, 1)[0]


def _operands(instruction: str) -> str:
    parts = instruction.split(None, 1)
    return parts[1] if len(parts) > 1 else ""


def fma_equivalents(instructions: list[str], sve_bits: int) -> float:
    """128-bit vector FMAs in ``instructions`` (see the module's doc)."""
    fmas = 0.0
    fmul = fadd = 0.0

    def width(ops: str) -> float:
        first = ops.split(",")[0].strip()
        if first.startswith("z"):
            return sve_bits / 128
        if re.search(r"\.(4s|2d|8h)\b", first):
            return 1.0
        if re.search(r"\.(2s|4h|1d)\b", first):
            return 0.5
        return 0.0  # a scalar

    for ins in instructions:
        mn, ops = _mnemonic(ins), _operands(ins)
        if mn in ("fmla", "fmls"):
            fmas += width(ops)
        elif mn == "fmul":
            fmul += width(ops)
        elif mn in ("fadd", "fsub"):
            fadd += width(ops)
    return fmas + min(fmul, fadd)


LOAD = re.compile(r"^(ldr\w*|ldp\w*|ldur\w*|ld[1-4]\w*|ldnp|ld1r\w*)$")
STORE = re.compile(r"^(str\w*|stp\w*|stur\w*|st[1-4]\w*|stnp)$")
FRAME = re.compile(r"\[\s*(sp|x29)\b")


def loop_stats(loop: Loop) -> dict[str, int]:
    stats = dict(loads=0, stores=0, spill_loads=0, spill_stores=0, by_lane_fmla=0, ld1r=0)
    for ins in loop.instructions:
        mn, ops = _mnemonic(ins), _operands(ins)
        if LOAD.match(mn):
            stats["loads"] += 1
            stats["spill_loads"] += bool(FRAME.search(ops))
            stats["ld1r"] += mn.startswith("ld1r")
        elif STORE.match(mn):
            stats["stores"] += 1
            stats["spill_stores"] += bool(FRAME.search(ops))
        elif mn == "fmla" and re.search(r"\]\s*$", ops) and "[" in ops.split(",")[-1]:
            stats["by_lane_fmla"] += 1
    return stats


# ---------------------------------------------------------------------------------------------------
# llvm-mca


def find_mca(requested: str | None) -> str:
    if requested:
        path = shutil.which(requested)
        if path is None:
            raise SystemExit(f"mca_table: {requested} is not on PATH")
        return path
    for version in range(30, 13, -1):
        path = shutil.which(f"llvm-mca-{version}")
        if path:
            return path
    path = shutil.which("llvm-mca")
    if path is None:
        raise SystemExit("mca_table: no llvm-mca on PATH (Debian: apt-get install llvm-19)")
    return path


def mca_version(mca: str) -> str:
    out = subprocess.run([mca, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"LLVM version (\S+)", out)
    return m.group(1) if m else "?"


def run_mca(mca: str, model: str, loop: Loop, iterations: int) -> str:
    text = "\n".join(line if LABEL.match(line) else "\t" + line for line in loop.lines) + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        proc = subprocess.run([mca, "-mtriple=aarch64-linux-gnu", f"-mcpu={model}", f"-iterations={iterations}",
                               "-bottleneck-analysis", "-instruction-info", "-resource-pressure", path],
                              capture_output=True, text=True)
    finally:
        Path(path).unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"llvm-mca failed on {loop.function}/{loop.label}: {proc.stderr.strip()[:2000]}")
    return proc.stdout


def parse_mca(report: str) -> dict[str, Any]:
    """Cycles per iteration, the model's 128-bit FMA rate and units, and its bottleneck."""
    iterations = int(re.search(r"^Iterations:\s+(\d+)", report, re.M).group(1))
    cycles = int(re.search(r"^Total Cycles:\s+(\d+)", report, re.M).group(1))
    out: dict[str, Any] = {"cycles": cycles / iterations}
    # Instruction info: [1] uops [2] latency [3] RThroughput ... then the instruction.
    rthroughputs = []
    info = report.split("Instruction Info:", 1)[-1].split("Resources:", 1)[0]
    for line in info.splitlines():
        m = re.match(r"^\s*\d+\s+\d+\s+([\d.]+)\s.*?\s(fmla\s+v\d+\.(4s|2d).*)$", line)
        if m:
            rthroughputs.append(float(m.group(1)))
    out["model_fmas_per_cycle"] = 1 / min(rthroughputs) if rthroughputs else None
    # Units: "[5]   - N1UnitV0"; pressure by instruction: columns in that order.
    units = re.findall(r"^\[([\d.]+)\]\s+-\s+(\S+)", report, re.M)
    names = [name + (f".{index.split('.')[1]}" if "." in index else "") for index, name in units]
    used = set()
    by_ins = report.split("Resource pressure by instruction:", 1)[-1]
    for line in by_ins.splitlines()[1:]:
        cells = line.split()
        if len(cells) > len(names) and cells[len(names)] == "fmla":
            used |= {names[i] for i, c in enumerate(cells[:len(names)]) if c != "-"}
    out["model_fma_units"] = ",".join(sorted(used))
    out["bottleneck"] = parse_bottleneck(report)
    return out


def parse_bottleneck(report: str) -> str:
    if "No resource or data dependency bottlenecks discovered" in report:
        return "none"
    m = re.search(r"Cycles with backend pressure increase \[\s*([\d.]+)%\s*\]", report)
    if not m:
        return ""
    parts = [f"backend +{m.group(1)}%"]
    section = report.split("Throughput Bottlenecks:", 1)[-1]
    res = re.search(r"Resource Pressure\s+\[\s*([\d.]+)%\s*\]", section)
    if res and float(res.group(1)) > 0:
        units = re.findall(r"^\s+-\s+(\S+)\s+\[\s*([\d.]+)%\s*\]", section.split("Data Dependencies", 1)[0], re.M)
        top = max(units, key=lambda u: float(u[1]))[0] if units else ""
        parts.append(f"resources {res.group(1)}% {top}".rstrip())
    dep = re.search(r"Data Dependencies:\s+\[\s*([\d.]+)%\s*\]", section)
    if dep and float(dep.group(1)) > 0:
        kinds = re.findall(r"^\s+-\s+(Register|Memory) Dependencies\s+\[\s*([\d.]+)%\s*\]", section, re.M)
        top = max(kinds, key=lambda k: float(k[1]))[0].lower() if kinds else ""
        parts.append(f"dependencies {dep.group(1)}% {top}".rstrip())
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------
# Scheduling and compiling


def patch_blockings(gemm: str | None, direct: str | None) -> None:
    """Replace the CPU rules' blockings for this process (``VxR`` vectors x rows; direct ``RxV``)."""
    from tvm_convt.schedule import cpu, cpu_blocked, cpu_direct

    original = cpu.cpu_arch
    changes: dict[str, Any] = {}
    if gemm:
        changes["gemm_blockings"] = tuple(tuple(map(int, b.split("x"))) for b in gemm.split(","))
    if direct:
        changes["direct_blocking"] = tuple(map(int, direct.split("x")))

    def arch(target):
        return dataclasses.replace(original(target), **changes)

    cpu.cpu_arch = cpu_direct.cpu_arch = cpu_blocked.cpu_arch = arch


def compiled_functions(workload, target, modules: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``(module, rule, assembly)`` for each of ``modules``: ``static``, the default module at the
    workload's shape (``build.schedule``; ``cpu-gemm`` packs the weight in every call); ``prepacked``,
    the same reading the weight packed once (``prepack_weight=True``, as ``tvm_convt.runtime``'s layers
    compile it; only where the rule can); ``any-length``, the function of the symbolic module
    (``build.schedule_symbolic``) that serves the workload's length. Each is compiled alone."""
    import tvm

    from tvm_convt import build
    from tvm_convt.params import SymbolicWorkload
    from tvm_convt.schedule import symbolic_choice
    from tvm_convt.schedule.lengths import planned_length

    out = []
    for module in modules:
        if module in ("static", "prepacked"):
            mod, source = build.schedule(workload, target, tuned=False, prepack_weight=module == "prepacked")
            if module == "prepacked" and build.weight_block_of(mod) is None:
                continue  # the rule reads the weight as it is: the static row holds it
            main = tvm.IRModule({"main": mod["main"]})
            out.append((module, source.split(":", 1)[1], _asm(tvm.compile(main, target=target))))
        elif module == "any-length":
            mod, _source, ranges = build.schedule_symbolic(SymbolicWorkload(workload.params, workload.dtype),
                                                           target, tuned=False)
            [held] = [r for r in ranges if r.holds(workload.length)]
            at = workload.params, 1, planned_length(workload.params, workload.length), workload.dtype
            rule = symbolic_choice(type(workload)(*at), target)[0].name
            single = tvm.IRModule({held.function: mod[held.function]})
            out.append((f"any-length:{held.function}", rule, _asm(tvm.compile(single, target=target))))
        else:
            raise ValueError(f"unknown module {module!r}")
    return out


def _asm(executable) -> str:
    mod = executable.mod
    for m in [mod, *mod.imports]:
        if m.kind == "llvm":
            return m.inspect_source("asm")
    raise RuntimeError("no LLVM module in the executable")


def hottest_loop(asm: str, sve_bits: int) -> Loop | None:
    loops = [loop for name, lines in split_functions(asm).items() for loop in innermost_loops(name, lines)]
    if not loops:
        return None
    return max(loops, key=lambda loop: (fma_equivalents(loop.instructions, sve_bits), -len(loop.lines)))


def analyse(layer: str, workload, mcpu: str, model: str, mca: str, iterations: int,
            modules: tuple[str, ...]) -> list[Row]:
    from tvm_convt.target import resolve_target

    target = resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu})
    p = workload.params
    dense = p.in_per_group >= DENSE_MIN_CHANNELS and p.out_per_group * p.kernel_size >= DENSE_MIN_CHANNELS
    rows = []
    sve_bits = SVE_BITS.get(mcpu, 128)
    for module, rule, asm in compiled_functions(workload, target, modules):
        row = Row(layer, module, rule, mcpu, model, dense)
        loop = hottest_loop(asm, sve_bits)
        if loop is None:
            row.note = "no loop"
            rows.append(row)
            continue
        row.fmas = fma_equivalents(loop.instructions, sve_bits)
        row.instructions = len(loop.instructions)
        row.blocks = loop.blocks
        row.loop = loop.lines
        for key, value in loop_stats(loop).items():
            setattr(row, key, value)
        parsed = parse_mca(run_mca(mca, model, loop, iterations))
        row.cycles = parsed["cycles"]
        row.model_fmas_per_cycle = parsed["model_fmas_per_cycle"]
        row.model_fma_units = parsed["model_fma_units"]
        row.bottleneck = parsed["bottleneck"]
        row.peak_fraction = row.fmas / row.cycles / CORE_PIPES[mcpu] if row.cycles else 0.0
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# Output


HEADER = ("layer", "module", "rule", "mcpu (model)", "FMA/it", "cyc/it", "% peak", "ld/it", "lane", "spill",
          "model FMA/cyc", "bottleneck")


def table_lines(rows: list[Row]) -> list[str]:
    """One line per row, aligned."""
    cells = []
    for r in rows:
        model = r.mcpu if r.model == r.mcpu else f"{r.mcpu} ({r.model})"
        cells.append((r.layer + (" *" if r.dense else ""), r.module, r.rule, model, f"{r.fmas:g}", f"{r.cycles:.2f}",
                      f"{100 * r.peak_fraction:.0f}", str(r.loads), f"{r.by_lane_fmla}/{r.ld1r}",
                      "yes" if r.spills else "no",
                      "-" if r.model_fmas_per_cycle is None else f"{r.model_fmas_per_cycle:g}",
                      r.bottleneck or r.note))
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(HEADER)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*HEADER), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c).rstrip() for c in cells]


def markdown_lines(rows: list[Row], mcpus: list[str]) -> list[str]:
    """One line per (layer, module), a column per core: cycles per iteration and % of the FMA peak."""
    keys = list(dict.fromkeys((r.layer, r.module) for r in rows))
    by = {(r.layer, r.module, r.mcpu): r for r in rows}
    model = {r.mcpu: r.model for r in rows}
    cores = [m if model.get(m, m) == m else f"{m} ({model[m]} model)" for m in mcpus]
    head = ["layer", "module", "rule", "FMA/it", "loads/it", *(f"{c}: cyc/it, % peak" for c in cores), "spills"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer, module in keys:
        cells = [by.get((layer, module, m)) for m in mcpus]
        first = next(c for c in cells if c is not None)
        spills = [m for m, c in zip(mcpus, cells) if c is not None and c.spills]
        out.append("| " + " | ".join([
            layer + (" *" if first.dense else ""), module.split(":")[0], first.rule,
            "/".join(dict.fromkeys(f"{c.fmas:g}" for c in cells if c)),
            "/".join(dict.fromkeys(str(c.loads) for c in cells if c)),
            *("-" if c is None else f"{c.cycles:.2f}, **{100 * c.peak_fraction:.0f} %**" for c in cells),
            ", ".join(f"{m} ({by[(layer, module, m)].spill_loads} ld, {by[(layer, module, m)].spill_stores} st)"
                      for m in spills) or "no"]) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mcpu", action="append", help=f"core(s) to analyse (default: {', '.join(MCPUS)}); "
                                                         "repeat or comma-separate")
    parser.add_argument("--suite", help="suite file (default: the package's default suite)")
    parser.add_argument("--layers", nargs="+", help="only these layers of the suite")
    parser.add_argument("--modules", default="static,prepacked,any-length",
                        help="comma-separated: static, prepacked, any-length (default: all three)")
    parser.add_argument("--mca", help="llvm-mca binary (default: the newest llvm-mca-NN on PATH)")
    parser.add_argument("--model", action="append", default=[], metavar="MCPU=MODEL",
                        help="analyse MCPU's code with llvm-mca's MODEL (default: cortex-a76=neoverse-n1; "
                             "cortex-a76=cortex-a76 for llvm-mca's own, a Cortex-A57 model)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--blocking", help="override CpuArch.gemm_blockings, e.g. 2x12,1x12 (vectors x rows)")
    parser.add_argument("--direct", help="override CpuArch.direct_blocking, e.g. 4x6 (rows x vectors)")
    parser.add_argument("--json", help="also write the rows (and each loop's assembly) to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--show-loop", action="store_true", help="print each analysed loop's assembly")
    args = parser.parse_args(argv)

    from tvm_convt.suite import default_suite, load_suite

    mcpus = [m for spec in (args.mcpu or [",".join(MCPUS)]) for m in spec.split(",") if m]
    unknown = [m for m in mcpus if m not in CORE_PIPES]
    if unknown:
        parser.error(f"--mcpu: no FMA pipe count known for {unknown}; known: {sorted(CORE_PIPES)}")
    models = dict(DEFAULT_MODELS)
    for spec in args.model:
        core, _, model = spec.partition("=")
        models[core] = model
    suite = load_suite(args.suite) if args.suite else default_suite()
    if args.layers:
        missing = sorted(set(args.layers) - set(suite))
        if missing:
            parser.error(f"--layers: not in the suite: {missing}")
        suite = {name: suite[name] for name in args.layers}
    if args.blocking or args.direct:
        patch_blockings(args.blocking, args.direct)
    mca = find_mca(args.mca)
    version = mca_version(mca)
    print(f"# {Path(mca).name} (LLVM {version}), {args.iterations} iterations; * = dense layer "
          f"(>= {DENSE_MIN_CHANNELS} channels a group); % peak = FMA/cycle / core's 128-bit FMA pipes "
          f"({', '.join(f'{m} {CORE_PIPES[m]}' for m in mcpus)}); lane = by-lane fmla / ld1r", flush=True)
    rows: list[Row] = []
    for mcpu in mcpus:
        for layer, workload in suite.items():
            new = analyse(layer, workload, mcpu, models.get(mcpu, mcpu), mca, args.iterations,
                          tuple(args.modules.split(",")))
            rows += new
            if args.show_loop:
                for r in new:
                    print(f"\n## {r.layer} {r.module} {r.rule} {r.mcpu}\n" + "\n".join(r.loop))
    print("\n".join(markdown_lines(rows, mcpus) if args.markdown else table_lines(rows)))
    for mcpu in mcpus:
        mine = [r for r in rows if r.mcpu == mcpu and r.model_fmas_per_cycle]
        if mine:
            units = sorted({u for r in mine for u in r.model_fma_units.split(",") if u})
            print(f"# {mcpu}: llvm-mca -mcpu={mine[0].model} issues 128-bit fmla to {', '.join(units)}: "
                  f"{max(r.model_fmas_per_cycle for r in mine):g} a cycle; the core has {CORE_PIPES[mcpu]}")
    dense = [r for r in rows if r.dense]
    if dense:
        low = [r for r in dense if r.peak_fraction < 0.8 or r.spills]
        print(f"# dense rows: {len(dense)}, below 80 % or spilling: {len(low)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "mca": Path(mca).name, "llvm": version, "iterations": args.iterations, "core_pipes": CORE_PIPES,
            "models": {m: models.get(m, m) for m in mcpus},
            "blocking_override": {"gemm": args.blocking, "direct": args.direct},
            "rows": [dataclasses.asdict(r) | {"spills": r.spills} for r in rows]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
