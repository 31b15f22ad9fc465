"""Are a LUT's rows the noise in its predictions? Two profiles of one model compared row by row, and
checks re-scored with the two profiles' rows averaged.

1. Rows: every signature both LUTs measured, drift-corrected with the per-call overhead taken off
   (`LatencyLUT.latency_ms`), as the ratio second/first over its median (the machine's level taken out).
2. Averaged rows: each LUT's rows replaced by the geometric mean with the other's (rescaled to its
   level), written back through its own drift factors and overhead.
3. Each ``--check`` JSON (`hwprune lut check --json`, made with the first or second LUT) is re-scored
   offline on its own measured values, with the LUT it was made with and with the averaged one:
   leave-one-out, the scale fitted as the median measured/predicted ratio of the other samples.
   Same measurements, two predictors: the difference is the rows'.

    .venv/bin/python bench/lut_rows.py A.parquet B.parquet --check A=check_A_1.json --check B=check_B_1.json \
        --json bench/results/lut_rows.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def latencies(lut) -> pd.Series:
    return pd.Series(lut.latency_ms(lut.meta["fingerprint"], "fp32", 1, "p50"))


def row_ratios(a: pd.Series, b: pd.Series) -> pd.Series:
    common = a.index.intersection(b.index)
    r = (b[common] / a[common]).replace([np.inf, -np.inf], np.nan).dropna()
    r = r[r > 0]
    return r / r.median()


def averaged(base, other):
    """``base`` with each row's drift-corrected latency the geometric mean with ``other``'s."""
    import copy

    lat_a, lat_b = latencies(base), latencies(other)
    common = lat_a.index.intersection(lat_b.index)
    scale = float(np.median(lat_b[common] / lat_a[common]))
    target = lat_a.copy()
    target[common] = np.sqrt(lat_a[common].clip(lower=1e-9) * (lat_b[common] / scale).clip(lower=1e-9))
    _, factor = base._device_rows(base.meta["fingerprint"], "fp32", 1)
    factor = np.broadcast_to(np.asarray(factor, dtype=float), (len(base.rows),))
    out = copy.deepcopy(base)
    out.rows["p50_ms"] = base.rows["overhead_ms"].astype(float).values + \
        target.reindex(base.rows["signature"]).values / factor
    out._index = None
    return out, int(len(common))


def loo(measured: np.ndarray, raw: np.ndarray) -> dict:
    errs = []
    for i in range(len(measured)):
        keep = np.arange(len(measured)) != i
        errs.append(100 * (raw[i] * np.median(measured[keep] / raw[keep]) / measured[i] - 1))
    e = np.abs(errs)
    return {"median_abs_error_pct": float(np.median(e)), "within_5pct": float(np.mean(e <= 5)),
            "p90_abs_error_pct": float(np.quantile(e, 0.9))}


def main() -> int:
    from hwprune.lut import LatencyLUT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--model-key", default="resnet20@1x1x28x28")
    ap.add_argument("--check", action="append", default=[], help="A=path or B=path: a lut check JSON and its LUT")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    luts = {"A": LatencyLUT.load(args.first), "B": LatencyLUT.load(args.second)}
    r = row_ratios(latencies(luts["A"]), latencies(luts["B"]))
    rows = {"rows_compared": int(len(r)), "quantiles": {q: float(r.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}}
    print(f"{len(r)} rows in both; second/first over its median: p5 {r.quantile(.05):.3f}, p25 {r.quantile(.25):.3f}, "
          f"p75 {r.quantile(.75):.3f}, p95 {r.quantile(.95):.3f}")
    merged = {"A": averaged(luts["A"], luts["B"])[0], "B": averaged(luts["B"], luts["A"])[0]}
    checks = []
    for spec in args.check:
        which, _, path = spec.partition("=")
        found = json.loads(Path(path).read_text())["rows"]
        measured = np.array([x["measured_ms"] for x in found])
        scores = {}
        for name, lut in (("own rows", luts[which]), ("averaged rows", merged[which])):
            p = lut.predictor(args.model_key)
            scores[name] = loo(measured, np.array([p.predict_raw(x["widths"]) for x in found]))
        checks.append({"check": path, "lut": which, **scores})
        print(f"{path} ({which}): " + " | ".join(f"{k}: median {v['median_abs_error_pct']:.2f}%, within ±5% "
                                                 f"{v['within_5pct']:.0%}" for k, v in scores.items()))
    if args.json:
        from profilers.fileio import atomic_write_json

        atomic_write_json(Path(args.json), {"command": " ".join(["bench/lut_rows.py", *sys.argv[1:]]),
                                            "rows": rows, "checks": checks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
