"""The device check's helper (``scripts/device_check.sh``): what the machine is,
and one report of everything the check measured.

  python scripts/device_report.py devices [--out devices.json]
  python scripts/device_report.py report PARTS_DIR_OR_JSON [--json all.json] [--md report.md]
      [--peak_tflops=989] [--total_s=S]

``devices`` prints and writes nvidia-smi's GPU model, driver and memory, the jax
version and ``jax.devices()``. ``report`` reads the step JSON files of a check's
folder (``steps.jsonl``, ``devices.json``, ``seeds_*.json``, ``bench_*.json``,
``run_breakout.json``), or a ``device_check.json`` it wrote before, and writes them
as one JSON and a Markdown report: steps, bench_seeds (aggregate env steps/s
against the issue's targets), bench.py (where an iteration's time goes, the
learner's FLOP/s as a share of the device's dense bfloat16 peak) and the timed run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# Dense bfloat16 peak TFLOP/s by device name (NVIDIA's data sheets, SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
# Issue 19's targets: aggregate env steps/s at and above a seed count.
TARGETS = {"cartpole": (512, 5e6), "breakout": (64, 1e6)}
TARGET_COMPILE_S = 10.0


def nvidia_smi() -> list[dict]:
    query = "name,driver_version,memory.total,clocks.max.sm"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    keys = ("name", "driver", "memory", "max_sm_clock")
    return [dict(zip(keys, (v.strip() for v in line.split(",")), strict=False))
            for line in out.strip().splitlines()]  # fmt: skip


def devices_info() -> dict:
    import jax

    info = {"jax": jax.__version__, "backend": jax.default_backend(), "gpus": nvidia_smi()}
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        pass
    devices = jax.devices()
    info["devices"] = [str(d) for d in devices]
    info["device_kind"] = devices[0].device_kind
    info["platform_version"] = getattr(devices[0].client, "platform_version", "")
    stats = devices[0].memory_stats() or {}
    if "bytes_limit" in stats:
        info["memory_limit_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    from dqnx import platforms

    info["platform_choices"] = vars(platforms.current()).copy()
    return info


def read_parts(path: Path) -> dict:
    """Every part of a check: a folder of step files, or a JSON ``report`` wrote."""
    if path.is_file():
        return json.loads(path.read_text())
    parts = {"steps": []}
    steps = path / "steps.jsonl"
    if steps.exists():
        parts["steps"] = [json.loads(line) for line in steps.read_text().splitlines() if line]
    for f in sorted(path.glob("*.json")):
        try:
            parts[f.stem] = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            parts[f.stem] = {"error": f"unreadable: {e}"}
    return parts


def peak_tflops(parts: dict, given: float | None) -> float | None:
    if given:
        return given
    kind = (parts.get("devices") or {}).get("device_kind", "")
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def fmt(x, spec=",.0f", missing="-"):
    return missing if x is None else format(x, spec)


def seeds_rows(parts: dict) -> list[list]:
    rows = []
    for name in ("cartpole", "breakout"):
        at, target = TARGETS[name]
        for r in (parts.get(f"seeds_{name}") or {}).get("results", []):
            met = "" if r["num_seeds"] < at else ("yes" if r["sps"] >= target else "no")
            goal = f">= {target / 1e6:g}M at >= {at}" if r["num_seeds"] >= at else ""
            compile_met = "yes" if r["compile_s"] <= TARGET_COMPILE_S else "no"
            rows.append([
                name, r["num_seeds"], "x".join(map(str, r["layout"])),
                f"{r['compile_s']:.1f} ({compile_met})", f"{r['evaluate_compile_s']:.1f}",
                fmt(r["sps"]), goal, met,
            ])  # fmt: skip
    return rows


def bench_rows(parts: dict, peak: float | None) -> list[list]:
    rows = []
    for key in sorted(k for k in parts if k.startswith("bench_")):
        r = parts[key]
        if "full_loop" not in r:
            continue
        f, p = r["learner_flops"], r["parts"]
        share = f"{f['gflops_isolated'] / (peak * 1e3):.2%}" if peak else "-"
        cfg = r.get("config", {})
        rows.append([
            key.removeprefix("bench_"), cfg.get("compute_dtype", "float32"),
            cfg.get("conv_impl", "auto"), r["num_seeds"],
            f"{r['full_loop']['us_per_iteration']:.1f}",
            *(f"{p[k]['us_per_iteration']:.1f}" for k in ("acting", "replay", "learner")),
            f"{r['overhead']:.2f}", fmt(r["full_loop"]["sps"]),
            f"{f['gflops_isolated']:,.1f}", f"{f['gflops_full_loop']:,.1f}", share,
        ])  # fmt: skip
    return rows


def markdown(parts: dict, peak: float | None, total_s: float | None) -> str:
    dev = parts.get("devices") or {}
    gpus = dev.get("gpus") or []
    gpu = ", ".join(f"{g.get('name')} (driver {g.get('driver')}, {g.get('memory')})" for g in gpus)
    lines = [
        "# dqnx device check",
        "",
        f"- device: {gpu or dev.get('device_kind', 'unknown')}; backend "
        f"{dev.get('backend', '?')}, {len(dev.get('devices', []))} device(s)",
        f"- jax {dev.get('jax', '?')} (jaxlib {dev.get('jaxlib', '?')}); "
        f"{dev.get('platform_version', '')}".rstrip("; "),
        f"- platform choices: {dev.get('platform_choices', {})}",
        f"- dense bf16 peak used for shares: {fmt(peak, ',.0f')} TFLOP/s"
        + (f"; whole check {total_s:.0f} s" if total_s is not None else ""),
        "",
        "## Steps",
        "",
    ]
    steps = [[s["name"], s["status"], s.get("rc"), s.get("seconds")] for s in parts["steps"]]
    lines += table(["step", "status", "rc", "seconds"], steps)
    lines += ["", "## Aggregate env steps/s (`scripts/bench_seeds.py`)", ""]
    lines += table(
        ["config", "seeds", "seeds x data", "compile s (<= 10 s)", "evaluate compile s",
         "env steps/s", "target", "met"],
        seeds_rows(parts),
    )  # fmt: skip
    lines += ["", "## Where an iteration goes (`scripts/bench.py`)", ""]
    lines += table(
        ["run", "dtype", "conv", "seeds", "full us/iter", "acting", "replay", "learner",
         "overhead", "env steps/s", "learner GFLOP/s isolated", "in loop",
         "share of bf16 peak (isolated)"],
        bench_rows(parts, peak),
    )  # fmt: skip
    run = parts.get("run_breakout")
    if run:
        lines += ["", "## Timed run (`experiments/run.py`, breakout_minatar.flags)", ""]
        evals = run.get("eval_return_per_seed") or []
        mean = sum(evals) / len(evals) if evals else None
        seconds = [fmt(run.get(k), ".1f") for k in ("wall_s", "compile_s", "train_s", "eval_s")]
        row = [run.get("num_seeds"), fmt(run.get("env_steps_per_seed")), *seconds]
        header = ["seeds", "env steps/seed", "wall s", "compile s", "train s", "eval s"]
        lines += table(
            [*header, "env steps/s", "final eval (mean)"],
            [[*row, fmt(run.get("sps")), fmt(mean, ".2f")]],
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("devices")
    d.add_argument("--out", default="")
    r = sub.add_parser("report")
    r.add_argument("parts", type=Path)
    r.add_argument("--json", default="")
    r.add_argument("--md", default="")
    r.add_argument("--peak_tflops", type=float, default=None)
    r.add_argument("--total_s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "devices":
        info = devices_info()
        print(json.dumps(info, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(info, indent=2))
        return 0
    parts = read_parts(args.parts)
    if args.total_s is not None:
        parts["total_s"] = args.total_s
    peak = peak_tflops(parts, args.peak_tflops)
    text = markdown(parts, peak, parts.get("total_s"))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(parts, indent=2))
    if args.md:
        Path(args.md).write_text(text)
    failed = [s["name"] for s in parts["steps"] if s["status"] != "ok"]
    if failed:
        print(f"steps not ok: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
