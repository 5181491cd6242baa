"""Shared helpers of the benchmarks: environment report, fast random weights on the GPU, CUDA-event timing,
FLOP counts, a time budget, and a report that is written after every section (JSON + markdown).

Every section runs inside ``Report.section``: an exception is recorded (with the traceback tail) and the run
goes on; a section whose estimated cost exceeds the time left is recorded as skipped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GB = 1e9
# Dense bf16 tensor-core peaks (NVIDIA datasheets, no sparsity), for MFU.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "H800": 989e12}


# ---------------------------------------------------------------------------------------------- environment
def peak_bf16_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # most specific names first
        if key in name:
            return value
    return None


def env_info() -> dict:
    """GPU, versions and the repo revision, for the report header."""
    info: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gb": round(props.total_memory / GB, 1),
            "sm_count": props.multi_processor_count,
            "peak_bf16_tflops": (peak_bf16_flops(props.name) or 0) / 1e12 or None,
            "cudnn": torch.backends.cudnn.version(),
        }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # triton is optional
        info["triton"] = None
    from lc_runtime.ops.attention import fa3_interface

    fa3 = fa3_interface()
    info["fa3"] = None if fa3 is None else fa3.__name__
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        info["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        info["git"] = None
    return info


def gpu_slug() -> str:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


# ---------------------------------------------------------------------------------------------- weights
@torch.no_grad()
def fast_random_init_(module: nn.Module, *, device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Materialise a meta-built module on ``device`` with random weights drawn on that device (seconds for 13.6B
    parameters, where ``weights.init_random_`` draws on the CPU). Same scales as ``init_random_``: norm gains
    1 + 0.1·N, biases 0.05·N, weights N(0, 1/fan_in). Tied parameters stay tied."""
    gen = torch.Generator(device=device).manual_seed(seed)
    done: dict[int, nn.Parameter] = {}
    # The fp32 draws go through one scratch buffer, allocated first: a fresh fp32 temporary per weight would leave
    # freed holes between the weights that later allocations only partly reuse (~10 GB of reserved, unusable
    # cache at full size, seen on an H200), which no real checkpoint load has.
    largest = max((p.numel() for p in module.parameters()), default=0)
    scratch = torch.empty(largest, device=device, dtype=torch.float32)
    for mod_name, mod in module.named_modules():
        for leaf, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in done:
                name = f"{mod_name}.{leaf}"
                t = scratch[: p.numel()].view(p.shape)
                if p.dim() <= 1 and ("norm" in name or leaf in ("gamma", "weight")):
                    t.normal_(generator=gen).mul_(0.1).add_(1.0)
                elif leaf == "bias" or p.dim() <= 1:
                    t.normal_(generator=gen).mul_(0.05)
                else:
                    t.normal_(generator=gen).mul_(1.0 / math.sqrt(math.prod(p.shape[1:])))
                w = torch.empty(p.shape, device=device, dtype=dtype)
                done[id(p)] = nn.Parameter(w.copy_(t), requires_grad=False)
            mod._parameters[leaf] = done[id(p)]
        for leaf, b in list(mod._buffers.items()):
            if b is not None and b.device.type == "meta":
                mod._buffers[leaf] = torch.zeros(
                    b.shape, device=device, dtype=dtype if b.is_floating_point() else b.dtype
                )
    del scratch
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return module


def build_dit(config, *, device="cuda", dtype=torch.bfloat16, seed: int = 0):
    from lc_runtime.models.dit import LongCatDiT

    return fast_random_init_(LongCatDiT(config), device=device, dtype=dtype, seed=seed).eval()


# ---------------------------------------------------------------------------------------------- timing
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_times(fn, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` (CUDA events around each call; no warm-up here)."""
    out = []
    if not torch.cuda.is_available():  # CPU smoke runs
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3)
    return out


def wall(fn) -> float:
    """Wall-clock seconds of one call, synchronised (for warm-up / compile / capture times)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def timed(fn, iters: int) -> dict:
    """Time ``fn`` (already warm) ``iters`` times; seconds (median, min, all) and peak allocated memory."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ts = cuda_times(fn, iters)
    peak = torch.cuda.max_memory_allocated() / GB if cuda else None
    return {"s": median(ts), "min_s": min(ts), "all_s": ts, "peak_gb": peak}


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_breakdown() -> dict:
    """Where the caching allocator's reserved memory is, now: segments grouped by memory pool (the default pool is
    pool (0, 0); a CUDA graph's private pool has its own id) and stream, with their allocated (live) bytes, in GB,
    plus the allocator's current and peak totals. {} without CUDA."""
    if not torch.cuda.is_available():
        return {}
    groups: dict[str, dict] = {}
    for seg in torch.cuda.memory._snapshot()["segments"]:
        key = f"pool {tuple(seg.get('segment_pool_id', (0, 0)))} stream {seg.get('stream', 0)}"
        g = groups.setdefault(key, {"segments": 0, "reserved_gb": 0.0, "allocated_gb": 0.0, "largest_gb": 0.0})
        g["segments"] += 1
        g["reserved_gb"] += seg["total_size"] / 1e9
        g["allocated_gb"] += seg["allocated_size"] / 1e9
        g["largest_gb"] = max(g["largest_gb"], seg["total_size"] / 1e9)
    stats = torch.cuda.memory_stats()
    return {
        "allocated_gb": stats.get("allocated_bytes.all.current", 0) / 1e9,
        "reserved_gb": stats.get("reserved_bytes.all.current", 0) / 1e9,
        "peak_allocated_gb": stats.get("allocated_bytes.all.peak", 0) / 1e9,
        "peak_reserved_gb": stats.get("reserved_bytes.all.peak", 0) / 1e9,
        "by_pool": dict(sorted(groups.items(), key=lambda kv: -kv[1]["reserved_gb"])),
    }


# ---------------------------------------------------------------------------------------------- FLOPs
def linear_flops(m: int, k: int, n: int) -> float:
    return 2.0 * m * k * n


def attention_flops(b: int, h: int, sq: int, sk: int, d: int) -> float:
    return 4.0 * b * h * sq * sk * d  # QK^T and PV


def dit_forward_flops(cfg, batch: int, tokens: int, *, cond_tokens: int = 0, cache_tokens: int = 0, text=512):
    """FLOPs of one DiT forward: token GEMMs (qkv, proj, cross q/proj, w1/w3, w2, final linear, patch embed),
    self-attention (conditioned: cond queries see cond keys; cached: keys = cache + tokens) and cross-attention
    to ``text`` slots; the adaLN / timestep MLPs (batch x frames rows) are negligible and left out."""
    c, f, h, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_heads, cfg.head_dim
    m = batch * tokens
    per_block = linear_flops(m, c, 3 * c) + 3 * linear_flops(m, c, c) + linear_flops(m, c, 2 * f)
    per_block += linear_flops(m, f, c)
    if cond_tokens:
        per_block += attention_flops(batch, h, cond_tokens, cond_tokens, d)
        per_block += attention_flops(batch, h, tokens - cond_tokens, tokens, d)
        per_block += attention_flops(batch, h, tokens - cond_tokens, text, d)
    else:
        per_block += attention_flops(batch, h, tokens, tokens + cache_tokens, d)
        per_block += attention_flops(batch, h, tokens, text, d)
    patch = cfg.in_channels * math.prod(cfg.patch_size)
    return cfg.depth * per_block + linear_flops(m, c, cfg.patch_channels) + linear_flops(m, patch, c)


# ---------------------------------------------------------------------------------------------- budget + report
@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


class Report:
    """Results of one benchmark run, written to ``<out>/<name>_<gpu>_<date>.{json,md}`` after every section."""

    def __init__(self, name: str, out_dir: str | Path, config: dict, budget: Budget):
        self.name, self.budget = name, budget
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / f"{name}_{gpu_slug()}_{stamp}.json"
        self.md_path = self.json_path.with_suffix(".md")
        self.data: dict = {"bench": name, "date": stamp, "env": env_info(), "config": config, "sections": {}}
        self.summary: list[dict] = []
        self.write()

    @contextlib.contextmanager
    def section(self, name: str, estimate_s: float = 0.0):
        """Run a section body; yields a dict to fill. Errors and budget skips are recorded, never raised."""
        rec: dict = {"status": "ok"}
        self.data["sections"][name] = rec
        if not self.budget.allows(estimate_s):
            rec["status"] = f"skipped: {self.budget.left():.0f} s left of the time budget, needs ~{estimate_s:.0f} s"
            print(f"[{name}] {rec['status']}", flush=True)
            self.write()
            yield None
            return
        print(f"[{name}] start ({self.budget.left():.0f} s of budget left)", flush=True)
        t0 = time.perf_counter()
        try:
            yield rec
        except Exception as e:  # a failed section is a result too
            rec["status"] = "error"
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()[-3000:]
            print(f"[{name}] ERROR {rec['error']}\n{rec['traceback']}", flush=True)
        finally:
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            free_memory()
            self.write()
            print(f"[{name}] {rec['status']} in {rec['seconds']} s", flush=True)

    def add_summary(self, metric: str, value, *, target: str = "", ok: bool | None = None, note: str = "") -> None:
        self.summary.append({"metric": metric, "value": value, "target": target, "ok": ok, "note": note})
        self.data["summary"] = self.summary
        self.write()

    def write(self) -> None:
        self.json_path.write_text(json.dumps(self.data, indent=2, default=str))
        self.md_path.write_text(self.markdown())

    def markdown(self) -> str:
        env = self.data["env"]
        lines = [f"# {self.name} — {env.get('gpu', 'no GPU')} — {self.data['date']}", ""]
        lines += [f"- {k}: `{v}`" for k, v in env.items()]
        lines += ["", "## Config", "", "```json", json.dumps(self.data["config"], indent=2, default=str), "```", ""]
        lines += ["## Summary", "", "| metric | value | target | ok | note |", "|---|---|---|---|---|"]
        for r in self.summary:
            ok = "" if r["ok"] is None else ("yes" if r["ok"] else "**NO**")
            lines.append(f"| {r['metric']} | {fmt(r['value'])} | {r['target']} | {ok} | {r['note']} |")
        lines += ["", "## Sections", ""]
        for name, rec in self.data["sections"].items():
            lines.append(f"### {name} ({rec.get('status')}, {rec.get('seconds', '?')} s)")
            body = {k: v for k, v in rec.items() if k not in ("status", "seconds", "traceback")}
            lines += ["", "```json", json.dumps(body, indent=2, default=str), "```", ""]
        return "\n".join(lines) + "\n"

    def print_summary(self) -> None:
        rows = [("metric", "value", "target", "ok", "note")]
        for r in self.summary:
            ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
            rows.append((r["metric"], fmt(r["value"]), r["target"], ok, r["note"]))
        widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
        print("\n" + "=" * 100)
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        status = {n: r.get("status") for n, r in self.data["sections"].items()}
        print(f"sections: {status}")
        print(f"written: {self.json_path} and {self.md_path}", flush=True)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def ratio(a, b) -> float | None:
    return None if a is None or b in (None, 0) else a / b
