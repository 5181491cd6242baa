"""bench/bench_bsa.py's CPU smoke run (toy sizes, Triton kernels under TRITON_INTERPRET=1): the whole script runs
(validation, selection timings incl. the Triton top-k, kernel sweep, op) and its own checks pass."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (not a dependency)")
def test_bench_bsa_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "bench/bench_bsa.py"), "--smoke", "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = tmp_path.glob("bsa_*.json")
    res = json.loads(path.read_text())
    assert res["golden_ok"] and res["random_ok"] and not res["failed_to_run"]
    assert all(r["selection_exact"] for r in res["golden"])
    for kind in ("iid", "rope"):
        entry = res["full"][kind]
        assert entry["selection_ascending_exact"], kind
        assert entry["op_best_spot_check"]["ok"], kind
        assert all(k in entry for k in ("time_pool", "time_scores", "time_topk_ascending_triton"))
    assert (tmp_path / path.name.replace(".json", ".md")).read_text().startswith("# Block-sparse attention")
