"""The GPU benchmarks' CPU smoke runs (toy sizes, ``--smoke``): bench/bench_dit.py with every section and
bench/bench_e2e.py run to the end, every section ends "ok", and the summary carries the rows the issues' targets
are read from. They measure nothing on a CPU; they keep the scripts runnable for the GPU machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, tmp_path: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / script), "--smoke", "--out", str(tmp_path), *extra]
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = tmp_path.glob(f"{script.removesuffix('.py')}_*.json")
    res = json.loads(path.read_text())
    assert {name: sec.get("status") for name, sec in res["sections"].items()} == dict.fromkeys(res["sections"], "ok")
    assert path.with_suffix(".md").exists()
    return res


def test_bench_dit_smoke(tmp_path):
    res = _run("bench_dit.py", tmp_path, "--sections", "all")
    assert set(res["sections"]) >= {"floor", "fast", "eager", "cond_cached", "agreement", "compiled", "720p"}
    floor = res["sections"]["floor"]
    for key in ("b1", "b2", "cached_b2"):  # the floor and the same kernels back to back, per shape
        assert floor[key]["floor_s"] > 0 and floor[key]["sustained_floor_s"] > 0, key
    assert res["sections"]["720p"]["fast_bsa"]["s"] > 0
    metrics = {row["metric"] for row in res["summary"]}
    assert {"fast / floor b2", "fast / compiled b2", "cached fast / original eager cached"} <= metrics


def test_bench_e2e_smoke(tmp_path):
    res = _run("bench_e2e.py", tmp_path)
    assert set(res["sections"]) >= {"build", "warmup", "generate", "again", "baseline"}
