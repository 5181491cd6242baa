"""Which AOTInductor package settings load on CUDA? A probe for the engine loader's crash (docs/engines.md).

A toy model (two linears around SDPA, bf16) is exported and packaged with each variant of the inductor settings
and loaded with each variant of ``load_package`` arguments, every variant in a fresh subprocess so that a
segfault is recorded instead of ending the run; the output is compared with eager. Prints one line per variant
and writes ``<out>/aoti_load_probe.json``.

    python bench/aoti_load_probe.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "constants_in_so": ({}, {}),
    "cpu_constants_in_so": ({"_device": "cpu"}, {}),
    # the crash is inside std::regex in the wrapper .so (cuda-gdb backtrace): suspect the precompiled header
    "no_precompiled_headers": ({"aot_inductor.precompile_headers": False}, {}),
    "cpu_no_precompiled_headers": ({"_device": "cpu", "aot_inductor.precompile_headers": False}, {}),
    # the fix under test: the system compiler (its libstdc++ is the one the process loads)
    "cpu_system_gxx": ({"_device": "cpu", "cpp.cxx": [None, "/usr/bin/g++"]}, {}),
    "system_gxx": ({"cpp.cxx": [None, "/usr/bin/g++"]}, {}),
    # or: the compiler's own (newer) libstdc++ preloaded into the process
    "cpu_preload_compiler_libstdcxx": ({"_device": "cpu", "_preload": True}, {}),
    "no_constants+load_constants": ({"aot_inductor.package_constants_in_so": False}, {}),
    "no_constants+load_constants+single_threaded": (
        {"aot_inductor.package_constants_in_so": False},
        {"run_single_threaded": True},
    ),
    "no_constants+device_index0": ({"aot_inductor.package_constants_in_so": False}, {"device_index": 0}),
    "constants_on_disk_binary_blob": (
        {"aot_inductor.package_constants_in_so": False, "aot_inductor.package_constants_on_disk_format": "binary_blob"},
        {},
    ),
    "constants_on_disk_pickle": (
        {
            "aot_inductor.package_constants_in_so": False,
            "aot_inductor.package_constants_on_disk_format": "pickle_weights",
        },
        {},
    ),
}

CHILD = r"""
import json, sys, torch
from torch import nn
import torch.nn.functional as F
cfg, load_kw, path = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
dev = cfg.pop("_device", "cuda")
cfg.pop("_preload", None)
if "cpp.cxx" in cfg:
    cfg["cpp.cxx"] = tuple(cfg["cpp.cxx"])
dt = torch.bfloat16 if dev == "cuda" else torch.float32
class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(256, 768), nn.Linear(256, 256)
    def forward(self, x):
        q, k, v = self.a(x).view(2, 64, 3, 4, 64).permute(2, 0, 3, 1, 4)
        return self.b(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 64, 256))
m = Toy().to(dev, dt).eval()
x = torch.randn(2, 64, 256, device=dev, dtype=dt)
with torch.no_grad():
    ref = m(x)
    prog = torch.export.export(m, (x,), strict=False)
    torch._inductor.aoti_compile_and_package(prog, package_path=path, inductor_configs=cfg)
    print("built", flush=True)
    from torch._inductor.package import load_package
    c = load_package(path, **load_kw)
    print("loaded", flush=True)
    if not cfg.get("aot_inductor.package_constants_in_so", True) and "package_constants_on_disk_format" not in str(cfg):
        c.load_constants(dict(m.state_dict()), check_full_update=True, user_managed=True)
        print("constants bound", flush=True)
    out = c(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    print("max_abs_diff", float((out.float() - ref.float()).abs().max()), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--gdb", action="store_true", help="run each child under cuda-gdb and keep its backtrace")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cfg, load_kw) in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            path = str(Path(tmp) / f"{name}.pt2")
            script = Path(tmp) / "child.py"
            script.write_text(CHILD)
            cmd = [sys.executable, str(script), json.dumps(cfg), json.dumps(load_kw), path]
            if args.gdb:  # a native backtrace of the crash (the GPU machine has cuda-gdb but no gdb)
                gdb = ["cuda-gdb", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "info sharedlibrary"]
                cmd = [*gdb, "-ex", "bt 40", "--args", *cmd]
            env = None
            if cfg.get("_preload"):
                import os

                from lc_runtime.engines.cxx import inductor_cxx

                lib = subprocess.run(
                    [inductor_cxx(), "-print-file-name=libstdc++.so.6"], capture_output=True, text=True
                )
                env = dict(os.environ, LD_PRELOAD=str(Path(lib.stdout.strip()).resolve()))
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
                tail = (p.stdout + p.stderr).strip().splitlines()[-(400 if args.gdb else 4) :]
                results[name] = {"returncode": p.returncode, "tail": tail}
            except subprocess.TimeoutExpired:
                results[name] = {"returncode": "timeout", "tail": []}
            print(f"{name:48s} rc={results[name]['returncode']} {' | '.join(results[name]['tail'])[:300]}", flush=True)
            if args.gdb:
                print("\n".join(results[name]["tail"][-60:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "aoti_load_probe.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
