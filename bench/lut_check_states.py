"""Does `lut check` do better judged within one machine state? The same measurement scored pooled and in one state.

`hwprune lut check` times its calibration and checked sub-networks interleaved in one process and
pools every sample. On a machine with two speeds each model's p50 can mix them. This runs the check
once, restricted to the state with the most dense-model samples that every model has enough samples
in (`hwprune.states.common_states`), and then scores the same timings pooled, as shipped (the second
scoring measures nothing: the timings are replayed).

    .venv/bin/python bench/lut_check_states.py LUT.parquet --seeds 3,4 --json bench/results/lut_check_states.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FIGURES = ("median_abs_error_pct", "within_5pct", "within_10pct", "kendall_tau")


def one_seed(lut: str, seed: int, model: str, samples: int) -> dict:
    import hwprune.lutcheck as lc
    from hwprune.models.spec import ModelSpec
    from hwprune.states import common_states, in_state
    from profilers.config import load_device_config

    cfg = load_device_config("x86-cpu-ort")
    real, seen = lc.measure_many, {}

    def in_one_state(items, cfg_, desc="measuring", show_progress=True, with_reference=False):
        t = real(items, cfg_, desc, False, with_reference)
        states = common_states(t)
        seen.update(raw=t, states=[{"probe_us": p, "dense_samples": len(per["dense"])} for p, per in states])
        if len(states) < 2:
            return t
        probe, per = max(states, key=lambda s: len(s[1]["dense"]))
        seen["chosen_probe_us"] = probe
        return {k: (in_state(v, per[k], probe, cfg_) if k in per else v) for k, v in t.items()}

    spec = ModelSpec(model, (1, 28, 28), 10)
    try:
        lc.measure_many = in_one_state
        one = lc.lut_check(spec, cfg, lut, samples=samples, seed=seed, show_progress=False)
        lc.measure_many = lambda *a, **k: seen["raw"]
        pooled = lc.lut_check(spec, cfg, lut, samples=samples, seed=seed, show_progress=False)
    finally:
        lc.measure_many = real
    return {"seed": seed, "states": seen["states"], "chosen_probe_us": seen.get("chosen_probe_us"),
            "pooled": {k: pooled[k] for k in FIGURES},
            "one_state": {k: one[k] for k in FIGURES} if seen.get("chosen_probe_us") else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lut")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seeds", default="3,4")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = []
    for seed in (int(s) for s in args.seeds.split(",")):
        r = one_seed(args.lut, seed, args.model, args.samples)
        out.append(r)
        fmt = lambda f: (f"median {f['median_abs_error_pct']:.2f}%, within ±5% {f['within_5pct']:.0%}, "
                         f"τ {f['kendall_tau']:.3f}")
        states = ", ".join(f"{s['probe_us']:.0f} µs ({s['dense_samples']} dense samples)" for s in r["states"])
        print(f"seed {seed}: states {states}")
        print(f"  pooled:    {fmt(r['pooled'])}")
        print(f"  one state: {fmt(r['one_state']) if r['one_state'] else 'one state only, the same'}")
    if args.json:
        from profilers.fileio import atomic_write_json

        atomic_write_json(Path(args.json), {"command": " ".join(["bench/lut_check_states.py", *sys.argv[1:]]),
                                            "seeds": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
