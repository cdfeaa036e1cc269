"""Choosing the Mitsuba variant, done once per process.

drjit 1.5 aborts the whole process (``LLVM ERROR: Cannot select ... fminimum``)
on the first render when it loads libLLVM 14 or 15, and Python cannot catch an
abort. So the LLVM library is found and version-checked here, *before* drjit is
imported, and drjit is pointed at the library we checked through
``DRJIT_LIBLLVM_PATH``.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import RendererError

VARIANTS = ("cuda_ad_rgb", "llvm_ad_rgb", "scalar_rgb")
MIN_LLVM_MAJOR = 16
LLVM_PACKAGE_HINT = "libllvm19 (Debian/Ubuntu: sudo apt-get install libllvm19)"

_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
# libLLVM-19.so, libLLVM.so.19.1, libLLVM-14.0.6.so.1, libLLVM.so.1 (no version)
_VERSION_PATTERNS = (
    re.compile(r"libLLVM-(\d+)(?:\.\d+)*\.so"),
    re.compile(r"libLLVM\.so\.(\d+)(?:\.\d+)*$"),
)


@dataclass(frozen=True)
class LLVMLibrary:
    path: str
    major: int


class VariantError(RendererError):
    pass


def _version_from_name(name: str) -> int | None:
    for pattern in _VERSION_PATTERNS:
        match = pattern.search(name)
        if match and int(match.group(1)) > 1:  # libLLVM.so.1 is an soname bump, not LLVM 1
            return int(match.group(1))
    return None


def _version_from_library(path: str) -> int | None:
    # LLVMGetVersion exists only from LLVM 16 on, so its absence already says "too old".
    try:
        lib = ctypes.CDLL(path)
        get_version = lib.LLVMGetVersion
    except (OSError, AttributeError):
        return None
    major, minor, patch = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    get_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    return int(major.value)


def _candidate_paths() -> list[str]:
    paths: list[str] = []
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
        paths += [line.split("=>")[-1].strip() for line in out.splitlines() if "libLLVM" in line]
    except (OSError, subprocess.SubprocessError):
        pass
    for directory in _LIB_DIRS:
        if os.path.isdir(directory):
            paths += [str(p) for p in Path(directory).glob("libLLVM*.so*")]
    seen: dict[str, str] = {}
    for p in paths:
        seen.setdefault(os.path.realpath(p), p)
    return list(seen.values())


def find_libllvm() -> list[LLVMLibrary]:
    """Every libLLVM on the system with a known major version, newest first."""
    found = []
    for path in _candidate_paths():
        major = _version_from_name(os.path.basename(path))
        if major is None:
            major = _version_from_name(os.path.basename(os.path.realpath(path)))
        if major is not None:
            found.append(LLVMLibrary(path, major))
    return sorted(found, key=lambda lib: -lib.major)


def usable_llvm() -> LLVMLibrary | None:
    """The libLLVM drjit will load, if it is recent enough; None otherwise.

    A user's own ``DRJIT_LIBLLVM_PATH`` is respected but still checked.
    """
    override = os.environ.get("DRJIT_LIBLLVM_PATH")
    if override:
        major = _version_from_name(os.path.basename(os.path.realpath(override)))
        if major is None:
            major = _version_from_library(override)
        if major is None or major < MIN_LLVM_MAJOR:
            raise VariantError(
                f"DRJIT_LIBLLVM_PATH={override} is not libLLVM >= {MIN_LLVM_MAJOR}; "
                f"unset it or point it at a newer one, e.g. from {LLVM_PACKAGE_HINT}"
            )
        return LLVMLibrary(override, major)
    for lib in find_libllvm():
        if lib.major >= MIN_LLVM_MAJOR:
            return lib
    return None


def cuda_usable() -> bool:
    """True when the CUDA driver initialises and sees at least one device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


def choose_variant(requested: str | None = None) -> str:
    """Pick cuda_ad_rgb, then llvm_ad_rgb, then scalar_rgb (with a warning).

    An explicit request is honoured or refused with the reason; it is never
    silently replaced by another variant.
    """
    if requested not in (None, "auto"):
        if requested not in VARIANTS:
            raise VariantError(f"--variant {requested}: expected one of auto, {', '.join(VARIANTS)}")
        if requested == "cuda_ad_rgb" and not cuda_usable():
            raise VariantError("--variant cuda_ad_rgb: no usable NVIDIA GPU (libcuda.so.1 did not initialise)")
        if requested == "llvm_ad_rgb":
            _require_llvm()
        return requested
    if cuda_usable():
        return "cuda_ad_rgb"
    if usable_llvm() is not None:
        return "llvm_ad_rgb"
    have = ", ".join(str(lib.major) for lib in find_libllvm()) or "none"
    warnings.warn(
        f"no libLLVM >= {MIN_LLVM_MAJOR} found (found: {have}); falling back to scalar_rgb, "
        f"about 4x slower. Install {LLVM_PACKAGE_HINT}.",
        RuntimeWarning,
        stacklevel=2,
    )
    return "scalar_rgb"


def _require_llvm() -> LLVMLibrary:
    lib = usable_llvm()
    if lib is None:
        have = ", ".join(str(lib.major) for lib in find_libllvm()) or "none"
        raise VariantError(
            f"--variant llvm_ad_rgb needs libLLVM >= {MIN_LLVM_MAJOR} (found: {have}); "
            f"install {LLVM_PACKAGE_HINT}"
        )
    return lib


def activate(variant: str):
    """Import Mitsuba with ``variant`` set and return the ``mitsuba`` module."""
    if variant.startswith("llvm"):
        os.environ["DRJIT_LIBLLVM_PATH"] = _require_llvm().path
    import mitsuba as mi

    if variant not in mi.variants():
        raise VariantError(f"Mitsuba {mi.__version__} was built without variant {variant}")
    if mi.variant() not in (None, variant):
        raise VariantError(f"Mitsuba already runs variant {mi.variant()} in this process; cannot switch to {variant}")
    mi.set_variant(variant)
    return mi
