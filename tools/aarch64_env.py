"""An aarch64 Linux to run tvm_convt's modules on, under emulation, on an x86 machine.

Makes (once; later runs reuse it) a folder holding an aarch64 Python 3.11 from Debian's arm64
packages and a ``python3.11`` script that starts it under ``qemu-aarch64``; where ``qemu-aarch64``
or a cross linker (``aarch64-linux-gnu-gcc``, ``ld.lld``) is missing and apt is usable (root), it
installs Debian's qemu-user and gcc-aarch64-linux-gnu first. The script is a real interpreter path:
Python run through it finds it as ``sys.executable``, so the subprocesses it starts (TVM's RPC
server workers) are emulated too.

    python tools/aarch64_env.py            # prints the interpreter's path; exit 1 and why if it cannot
    python tools/aarch64_env.py --check    # also runs it once
    python tools/aarch64_env.py --mca      # and installs llvm-mca-19 for tools/mca_table.py where apt can

Folder: ``$TVM_CONVT_AARCH64_ROOT``, else ``~/.cache/tvm_convt/aarch64``. The tests
(``tests/test_aarch64.py``) call this and skip, with its reason, where it fails.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Debian 12's aarch64 Python 3.11 and the libraries its interpreter and standard library load.
PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1",
            "zlib1g", "libffi8", "libssl3", "libgcc-s1", "libstdc++6", "libbz2-1.0", "liblzma5", "libsqlite3-0",
            "libuuid1", "libncursesw6", "libtinfo6", "libreadline8", "libcrypt1", "libtirpc3", "libnsl2")
HOST_PACKAGES = {"qemu-aarch64": "qemu-user", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu"}
# llvm-mca with scheduling models of Neoverse N1 and V1 (LLVM 14's use Cortex-A57's), for
# tools/mca_table.py; installed where apt has it, not needed to run anything.
MCA_PACKAGES = {"llvm-mca-19": "llvm-19"}
PYTHON = "3.11"


class Unavailable(Exception):
    """The environment cannot be made here; the message says why."""


def env_dir() -> Path:
    return Path(os.environ.get("TVM_CONVT_AARCH64_ROOT", Path.home() / ".cache" / "tvm_convt" / "aarch64"))


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"{what} failed ({' '.join(cmd[:3])} ...): {' | '.join(tail)}")


def _apt_usable() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg") is not None and os.geteuid() == 0


def _arm64_known() -> bool:
    done = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=False)
    return "arm64" in done.stdout.split()


def ensure_host_tools() -> None:
    """qemu-aarch64 and a cross linker on PATH, installed with apt where missing."""
    missing = [pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None]
    if "gcc-aarch64-linux-gnu" in missing and shutil.which("ld.lld"):
        missing.remove("gcc-aarch64-linux-gnu")  # ld.lld links aarch64 as well
    if not missing:
        return
    if not _apt_usable():
        raise Unavailable(f"{', '.join(missing)} missing, and apt-get is not usable here (needs root)")
    _run(["apt-get", "update", "-qq"], "apt-get update")
    _run(["apt-get", "install", "-y", "-qq", *missing], f"apt-get install {' '.join(missing)}")


def ensure_mca() -> str | None:
    """llvm-mca-19 on PATH, installed with apt where missing and possible; None (and why) otherwise."""
    missing = [pkg for tool, pkg in MCA_PACKAGES.items() if shutil.which(tool) is None]
    if missing and _apt_usable():
        try:
            _run(["apt-get", "update", "-qq"], "apt-get update")
            _run(["apt-get", "install", "-y", "-qq", *missing], f"apt-get install {' '.join(missing)}")
        except Unavailable as err:
            return str(err)
    return None if all(shutil.which(tool) for tool in MCA_PACKAGES) else f"{', '.join(MCA_PACKAGES)} missing"


def make_root(root: Path) -> None:
    """Unpack Debian's arm64 Python into ``root`` (dpkg -x; nothing is installed on this machine)."""
    if not _apt_usable():
        raise Unavailable("the aarch64 Python comes from Debian's arm64 packages, and apt-get is not usable "
                          "here (needs root)")
    if not _arm64_known():
        _run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64")
        _run(["apt-get", "update", "-qq"], "apt-get update")
    with tempfile.TemporaryDirectory(prefix="aarch64-debs-") as tmp:
        _run(["apt-get", "download", *(f"{p}:arm64" for p in PACKAGES)], "apt-get download", cwd=Path(tmp))
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for deb in sorted(Path(tmp).glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(partial)], f"dpkg -x {deb.name}")
        partial.rename(root)


def write_interpreter(folder: Path, root: Path) -> Path:
    """The ``python3.11`` script: qemu with the arm64 root as its library prefix, and the script's own
    path as argv[0], so that the emulated Python reports it as sys.executable."""
    script = folder / f"python{PYTHON}"
    qemu = shutil.which("qemu-aarch64")
    text = f'#!/bin/sh\nexec "{qemu}" -L "{root}" -0 "{script}" "{root}/usr/bin/python{PYTHON}" "$@"\n'
    if script.exists() and script.read_text() == text:
        return script
    # Written beside it and renamed over it: another test worker may be executing the script, and an
    # exec of a file open for writing fails ("Text file busy").
    partial = folder / f".python{PYTHON}.{os.getpid()}"
    partial.write_text(text)
    partial.chmod(0o755)
    os.replace(partial, script)
    return script


def ensure() -> Path:
    """The emulated interpreter's path, making what is missing (raises :class:`Unavailable`)."""
    if sys.platform != "linux":
        raise Unavailable("emulating aarch64 Linux needs a Linux machine")
    ensure_host_tools()
    folder = env_dir()
    folder.mkdir(parents=True, exist_ok=True)
    root = folder / "root"
    if not (root / "usr" / "bin" / f"python{PYTHON}").exists():
        make_root(root)
    return write_interpreter(folder, root)


def check(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import platform, sys; print(platform.machine(), sys.version.split()[0])"],
                          capture_output=True, text=True, timeout=120, check=False, env={"PATH": os.environ["PATH"]})
    if done.returncode != 0 or not done.stdout.startswith("aarch64"):
        raise Unavailable(f"the emulated Python does not run: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One process at a time makes the folder and runs apt (test workers start this together)."""
    folder = env_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="run the interpreter once and print what it is")
    parser.add_argument("--mca", action="store_true", help="also install llvm-mca-19 (llvm-19) where apt can")
    args = parser.parse_args()
    try:
        with locked():
            if args.mca and (why := ensure_mca()) is not None:
                print(f"aarch64_env: no llvm-mca-19: {why}", file=sys.stderr)
            python = ensure()
        if args.check:
            print(check(python), file=sys.stderr)
    except Unavailable as err:
        print(f"aarch64_env: {err}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
