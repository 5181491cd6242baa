"""The AOTI build's choice of C++ compiler (lc_runtime/engines/cxx.py): a package built by a compiler whose libstdc++
is newer than the one the loading process runs crashes in ``load_package``, so the build avoids such a compiler
and the manifest refuses such a package."""

from __future__ import annotations

import shutil

import pytest
import torch

from lc_runtime.engines import EngineMismatchError, cxx
from lc_runtime.engines.manifest import EngineError, Manifest


def test_version_is_read_through_symlinks(tmp_path):
    real = tmp_path / "libstdc++.so.6.0.33"
    real.write_bytes(b"")
    (tmp_path / "libstdc++.so.6").symlink_to(real)
    assert cxx.libstdcxx_version(tmp_path / "libstdc++.so.6") == (6, 0, 33)
    assert cxx.libstdcxx_version(tmp_path / "libfoo.so") is None
    assert cxx.libstdcxx_version(None) is None


def test_loaded_libstdcxx_reads_the_process_maps(tmp_path):
    real = tmp_path / "libstdc++.so.6.0.30"
    real.write_bytes(b"")
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n"
        f"7f02-7f03 r-xp 00000000 08:01 2 {real}\n"
        "7f04-7f05 rw-p 00000000 00:00 0\n"
    )
    assert cxx.loaded_libstdcxx(maps) == (6, 0, 30)
    assert cxx.loaded_libstdcxx(tmp_path / "absent") is None


class FakeCompilers(dict):
    """name -> libstdc++ version of each compiler that exists; ``static``: those that link it statically."""

    static: set


@pytest.fixture
def compilers(monkeypatch):
    table = FakeCompilers()
    table.static = set()
    monkeypatch.setattr(cxx, "_which", lambda c: c if c in table else None)
    monkeypatch.setattr(cxx, "compiler_libstdcxx", lambda c: table.get(c))
    monkeypatch.setattr(cxx, "links_libstdcxx_dynamically", lambda c: None if c not in table else c not in table.static)
    return table


def test_a_compatible_default_is_kept(compilers):
    compilers.update({"/opt/gcc/bin/g++": (6, 0, 33)})
    assert cxx.choose_cxx("/opt/gcc/bin/g++", loaded=(6, 0, 33)) == ("/opt/gcc/bin/g++", (6, 0, 33), "")


def test_a_newer_default_is_replaced_by_a_compatible_compiler(compilers):
    # the GPU machine: CXX=/opt/gcc/bin/g++ (6.0.34) while Python loads the system's 6.0.33
    compilers.update({"/opt/gcc/bin/g++": (6, 0, 34), "g++": (6, 0, 34), "/usr/bin/g++": (6, 0, 33)})
    chosen, version, note = cxx.choose_cxx("/opt/gcc/bin/g++", loaded=(6, 0, 33))
    assert (chosen, version) == ("/usr/bin/g++", (6, 0, 33))
    assert "6.0.34" in note and "6.0.33" in note and "/usr/bin/g++" in note


def test_a_compiler_that_links_libstdcxx_statically_is_replaced(compilers):
    # what the GPU machine has: CXX=/opt/gcc/bin/g++ wraps the system GCC and links libstdc++ into the package
    compilers.update({"/opt/gcc/bin/g++": (6, 0, 33), "g++": (6, 0, 33)})
    compilers.static.add("/opt/gcc/bin/g++")
    chosen, _, note = cxx.choose_cxx("/opt/gcc/bin/g++", loaded=(6, 0, 33))
    assert chosen == "g++" and "statically" in note


def test_no_compatible_compiler_is_an_error_naming_the_versions(compilers):
    compilers.update({"/opt/gcc/bin/g++": (6, 0, 34)})
    with pytest.raises(EngineError, match=r"6\.0\.34.*6\.0\.33.*CXX"):
        cxx.choose_cxx("/opt/gcc/bin/g++", loaded=(6, 0, 33))


def test_unknown_versions_keep_the_default(compilers, monkeypatch):
    assert cxx.choose_cxx("mystery-c++", loaded=(6, 0, 33))[0] == "mystery-c++"
    compilers.update({"g++": (6, 0, 40)})
    monkeypatch.setattr(cxx, "loaded_libstdcxx", lambda: None)  # no /proc: nothing to compare with
    assert cxx.choose_cxx("g++")[0] == "g++"


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine")
def test_the_real_compiler_reports_its_libstdcxx():
    version = cxx.compiler_libstdcxx("g++")
    assert version is not None and version[0] == 6


def _aoti_manifest(libstdcxx):
    return Manifest(
        backend="aoti",
        profile={"name": "p"},
        dtype="float32",
        device="cpu",
        arch="cpu-X",
        versions={"libstdcxx": libstdcxx, "torch": torch.__version__},
    )


def test_a_package_built_against_a_newer_libstdcxx_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cxx, "loaded_libstdcxx", lambda: (6, 0, 33))
    problems = _aoti_manifest("6.0.34").mismatches(tmp_path, graphs=[])
    assert any("6.0.34" in p and "6.0.33" in p for p in problems)
    assert not _aoti_manifest("6.0.33").mismatches(tmp_path, graphs=[])
    with pytest.raises(EngineMismatchError, match="libstdc"):
        _aoti_manifest("6.0.34").check(tmp_path, graphs=[])


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on this machine")
def test_the_static_link_probe_builds_a_real_library():
    # distributions' g++ links libstdc++ dynamically unless told otherwise
    cxx.links_libstdcxx_dynamically.cache_clear()
    assert cxx.links_libstdcxx_dynamically("g++") is True
