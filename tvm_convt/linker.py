"""Linking a CPU module's object code into a shared library, for this machine or another one.

TVM 0.27 writes object files with LLVM for any architecture it has a backend for, and links
them with the host's C compiler, which cannot link another architecture's objects. For the
architectures below, a module for another machine (an aarch64 board, cross-compiled on an
x86 workstation) is linked with a cross linker found on this machine: a GCC cross compiler
or LLVM's ``ld.lld``, which links any ELF architecture LLVM knows.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import tvm
from tvm.target import Target

from ._runtime_only import ARCH_ALIASES
from .params import OP

# Per architecture: the cross linkers to look for, in order, and the Debian/Ubuntu packages that
# install them (for the error message). ld.lld links a shared library of position-independent
# objects without a C library, which is all a TVM module needs.
CROSS_LINKERS: dict[str, tuple[str, ...]] = {
    "aarch64": ("aarch64-linux-gnu-gcc", "ld.lld", "ld.lld-18", "ld.lld-17", "ld.lld-16", "ld.lld-15",
                "ld.lld-14"),
}
_PACKAGES = {"aarch64": "gcc-aarch64-linux-gnu (or lld)"}
# Object formats the host's linker cannot put into a Linux shared library.
_FOREIGN_SYSTEMS = ("windows", "win32", "mingw", "cygwin", "msvc", "coff", "darwin", "macos", "ios",
                    "tvos", "watchos", "xros", "uefi", "macho")


def triple_arch(triple: str) -> str:
    """The architecture of an LLVM triple, by its canonical name (``arm64-...`` is ``aarch64``)."""
    arch = triple.split("-")[0]
    return ARCH_ALIASES.get(arch, arch)


def host_arch() -> str:
    return triple_arch(tvm.target.codegen.llvm_get_system_triple())


def target_arch(target: Target) -> str:
    """The architecture an LLVM target's code is for (this machine's without an ``mtriple``)."""
    return triple_arch(str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple())


@dataclass(frozen=True)
class Linker:
    """How a module's objects become a shared library: ``command`` None is TVM's default (the host's
    C compiler); otherwise a cross linker's path, ``gcc`` saying whether it is a GCC driver."""

    arch: str
    command: str | None = None

    @property
    def gcc(self) -> bool:
        return self.command is not None and "lld" not in self.command.rsplit("/", 1)[-1]

    def link(self, output: str, objects: list[str] | str, options: list[str] | None = None) -> None:
        """Link ``objects`` into the shared library ``output`` (TVM's ``fcompile`` signature)."""
        objects = [objects] if isinstance(objects, str) else list(objects)
        flags = ["-shared", "-fPIC"] if self.gcc else ["-shared"]
        # TVM passes compiler options meant for its host compiler; a linker takes none of them.
        cmd = [str(self.command), *flags, "-o", output, *objects]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{OP}: linking a module for {self.arch} failed: {' '.join(cmd)}\n"
                               f"{done.stdout}{done.stderr}")

    def export_options(self) -> dict[str, Any]:
        """Keyword arguments for TVM's ``export_library`` that link with this linker."""
        return {} if self.command is None else {"fcompile": self.link}


def find_cross_linker(arch: str) -> str | None:
    """The first cross linker for ``arch`` on this machine's PATH (None: none there)."""
    for name in CROSS_LINKERS.get(arch, ()):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def linker_for(target: Target) -> Linker:
    """The linker of a CPU target's modules, checked: this machine's for its own architecture, a
    cross linker for another one listed in :data:`CROSS_LINKERS`. A ValueError names what to
    install when none is found, or why no library can be made here (a non-ELF system)."""
    if target.host is not None and target.host.kind.name == "llvm" and not target.host.same_as(target):
        # Before the host's linker is looked for: no linker makes such a pair linkable.
        if target.kind.name == "llvm" and target_arch(target) != target_arch(target.host):
            raise ValueError(f"{OP}: a target and its host must be for one architecture, got "
                             f"{target_arch(target)} and {target_arch(target.host)}")
        host_part = linker_for(target.host)
        if target.kind.name != "llvm":
            return host_part
    if target.kind.name != "llvm":
        return Linker(host_arch())
    triple = str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()
    arch, here = triple_arch(triple), host_arch()
    if any(part.startswith(_FOREIGN_SYSTEMS) for part in triple.split("-")[1:]) or (
            arch != here and arch not in CROSS_LINKERS):
        known = ", ".join(sorted({here, *CROSS_LINKERS}))
        raise ValueError(
            f"{OP}: a CPU module is linked into a Linux shared library (ELF), so mtriple must name an "
            f"architecture this machine links for ({known}) and an ELF system such as "
            f"{tvm.target.codegen.llvm_get_system_triple()}, got mtriple={triple!r}")
    if arch == here:
        return Linker(arch)
    command = find_cross_linker(arch)
    if command is None:
        raise ValueError(
            f"{OP}: a module for {arch} is linked by a cross linker, and none of "
            f"{', '.join(CROSS_LINKERS[arch])} is on PATH; install one (Debian/Ubuntu: apt-get install "
            f"{_PACKAGES[arch]}), got mtriple={triple!r}")
    return Linker(arch, command)


def check_linkable(target: Target) -> None:
    """Refuse a CPU target whose library this machine cannot link, before anything compiles."""
    linker_for(target)
