"""Which C++ compiler AOTInductor may build with: one that links libstdc++ dynamically, and whose libstdc++ is not
newer than the one this process loads.

Why: the wrapper ``.so`` of an AOTInductor package uses libstdc++ (``std::regex`` among others, to parse the device
string when the package loads) alongside the ``libstdc++.so.6`` that the Python process has already loaded. It
must share that one library: a wrapper that carries its own static copy of libstdc++, or one compiled against newer
headers than the loaded library, disagrees with it about locale facets and the load dies with SIGSEGV inside
``std::regex``. Seen on our GPU machine: ``CXX=/opt/gcc/bin/g++`` is a wrapper around the system GCC 13.3 that
links libstdc++ statically; every package built with it, even a toy model on the CPU, crashed in ``load_package``
(cuda-gdb backtrace: ``parse_device_str`` -> ``std::regex`` -> a wrong virtual call inside the wrapper's own copy of
libstdc++), while the same packages built with ``/usr/bin/g++``, or loaded with that libstdc++ in ``LD_PRELOAD``,
load and match eager exactly (``bench/results/aoti_load_probe_h200_20261121.md``).

:func:`choose_cxx` keeps Inductor's compiler when it is compatible, otherwise picks the first compatible one of
``g++``, ``/usr/bin/g++``, ``c++``, ``clang++``, and says which; the manifest records the libstdc++ of the compiler
used so that loading a package in a process with an older libstdc++ is refused with a message instead of a crash.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .manifest import EngineError

_VERSION = re.compile(r"libstdc\+\+\.so\.(\d+(?:\.\d+)*)$")
FALLBACKS = ("g++", "/usr/bin/g++", "c++", "/usr/bin/c++", "clang++")
_which = shutil.which  # (tests replace it)


def libstdcxx_version(path: str | Path | None) -> tuple[int, ...] | None:
    """(6, 0, 33) for ``.../libstdc++.so.6.0.33`` (symlinks resolved); None when it is no such file name."""
    if not path:
        return None
    m = _VERSION.search(Path(path).resolve().name)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def version_text(version: tuple[int, ...] | None) -> str | None:
    return None if version is None else ".".join(map(str, version))


def loaded_libstdcxx(maps: str | Path = "/proc/self/maps") -> tuple[int, ...] | None:
    """Version of the libstdc++ mapped into this process (None where /proc is absent or none is loaded)."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "libstdc++.so" in path:
            return libstdcxx_version(path)
    return None


@functools.lru_cache
def compiler_libstdcxx(cxx: str) -> tuple[int, ...] | None:
    """Version of the libstdc++ that compiler ``cxx`` links against (None if it is not found or does not say)."""
    exe = _which(cxx)
    if exe is None:
        return None
    try:
        p = subprocess.run([exe, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = p.stdout.strip()
    return libstdcxx_version(path) if p.returncode == 0 and Path(path).is_absolute() else None


@functools.lru_cache
def links_libstdcxx_dynamically(cxx: str) -> bool | None:
    """Whether a shared library built by ``cxx`` loads libstdc++ as a shared library (True), carries a static copy
    (False), or it could not tell (None: no compiler, or the test build failed)."""
    exe = _which(cxx)
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        src.write_text('#include <string>\nstd::string lc_probe(const char* s) { return std::string(s) + "x"; }\n')
        try:
            p = subprocess.run(
                [exe, "-shared", "-fPIC", "-O0", "-o", str(lib), str(src)], capture_output=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if p.returncode != 0 or not lib.is_file():
            return None
        return b"libstdc++.so" in lib.read_bytes()  # the DT_NEEDED entry's name in .dynstr


def inductor_cxx() -> str:
    """The compiler Inductor would use (``$CXX`` or ``g++``)."""
    from torch._inductor import config

    cxx = config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, (list, tuple)) else (cxx,)) if c]
    return names[-1] if names else "g++"


def choose_cxx(
    default: str | None = None, loaded: tuple[int, ...] | None = None, candidates=FALLBACKS
) -> tuple[str, tuple[int, ...] | None, str]:
    """(compiler, its libstdc++ version, note): ``default`` (Inductor's) when it is compatible (a property that
    cannot be checked counts as compatible), else the first compatible candidate, with a note saying why. Raises
    EngineError when there is none (a package built anyway would crash when loaded)."""
    default = default or inductor_cxx()
    loaded = loaded if loaded is not None else loaded_libstdcxx()

    def problem(cxx: str) -> str | None:
        have = compiler_libstdcxx(cxx)
        if loaded is not None and have is not None and have > loaded:
            return f"ships libstdc++ {version_text(have)}, newer than the {version_text(loaded)} this process loads"
        if links_libstdcxx_dynamically(cxx) is False:
            return "links libstdc++ statically into the package"
        return None

    why = problem(default)
    if why is None:
        return default, compiler_libstdcxx(default), ""
    for cand in candidates:
        if cand != default and _which(cand) is not None and problem(cand) is None:
            note = f"C++ compiler {default} {why} (its packages crash when loaded); building with {cand}"
            return cand, compiler_libstdcxx(cand), note
    raise EngineError(
        f"the C++ compiler {default} {why}, and no other compiler fits (tried "
        + ", ".join(candidates)
        + "): AOTInductor packages built with it crash when loaded. Set CXX to a compiler that links the libstdc++ "
        "this process loads, or preload the compiler's libstdc++ (LD_PRELOAD) when building and running."
    )
