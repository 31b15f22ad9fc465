"""The latency lookup table (LUT): measured rows per signature, model structures, prediction.

On disk a LUT is one Parquet file (or CSV plus a ``.meta.json`` sidecar with ``--format
csv``). Rows are per measured signature on one device (fingerprinted); the file's metadata
holds, per profiled model, its groups, width grids and units, and the fitted calibration.
The table only grows: rows are never rewritten, and every save is atomic.

Example:
    >>> from hwprune.lut import LatencyLUT
    >>> lut = LatencyLUT.load("lut.parquet")  # doctest: +SKIP
    >>> pred = lut.predictor("resnet20@1x1x28x28")  # doctest: +SKIP
    >>> pred.predict({"conv1": 8, "layer1.0.conv1": 12})  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from hwprune.errors import HwpruneError
from profilers.fileio import atomic_write, atomic_write_json

LUT_FORMAT = 1
META_KEY = b"hwprune.lut"

COLUMNS = [
    "device_fingerprint", "device", "signature", "op", "cin", "cout", "kernel", "stride",
    "groups", "in_h", "in_w", "batch", "precision", "n", "mean_ms", "std_ms", "p50_ms",
    "p90_ms", "p99_ms", "ci_low_ms", "ci_high_ms", "cv", "stable", "overhead_ms",
    "reference_ms", "timed_s", "measured_at", "samples_ms",
]
STAT_COLUMNS = {"p50": "p50_ms", "p90": "p90_ms", "p99": "p99_ms", "mean": "mean_ms"}


def model_key(model: str, input_shape: Sequence[int]) -> str:
    """How a model's structure is keyed in a LUT: name and full input shape (batch first)."""
    name = model
    if ":" in model and not model.startswith(("torchvision:", "timm:", "pytorchcv:")):
        file, factory = model.rsplit(":", 1)
        name = f"{Path(file).name}:{factory}"  # the same file given by another path is the same model
    return f"{name}@{'x'.join(str(d) for d in input_shape)}"


def structure_sha(model) -> str:
    """A model's identity beyond its name and input shape: a hash of its printed structure (layer
    types and settings, so the class count and any builder option), not of its weights."""
    import hashlib

    return hashlib.sha1(repr(model).encode()).hexdigest()[:16]


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


class LatencyLUT:
    """Rows of measured latencies on one device plus per-model structure and calibration."""

    def __init__(self, rows: pd.DataFrame | None = None, meta: dict[str, Any] | None = None):
        self.rows = rows if rows is not None else pd.DataFrame(columns=COLUMNS)
        self.meta: dict[str, Any] = meta or {"format": LUT_FORMAT, "models": {}}
        self.meta.setdefault("models", {})
        self._index: dict[str, int] | None = None
        self.path: Path | None = None  # where it was loaded from or last saved to

    # -- storage ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LatencyLUT":
        path = Path(path)
        if not path.is_file():
            raise HwpruneError(f"LUT not found: {path}")
        try:
            # Read through a handle: pandas and pyarrow expand a leading "~" in a path and our
            # writers do not, so '~/l.parquet' was written under ./~ and read from $HOME.
            if path.suffix == ".csv":
                with open(path, "rb") as f:
                    rows = pd.read_csv(f)
                if "samples_ms" in rows:
                    rows["samples_ms"] = rows["samples_ms"].map(lambda s: json.loads(s) if isinstance(s, str) else [])
                mp = _meta_path(path)
                meta = json.loads(mp.read_text()) if mp.is_file() else None
                if meta is None:
                    raise HwpruneError(f"{path}: the CSV LUT's metadata file {mp.name} is missing")
            else:
                import pyarrow.parquet as pq

                with open(path, "rb") as f:
                    table = pq.read_table(f)
                raw = (table.schema.metadata or {}).get(META_KEY)
                if raw is None:
                    raise HwpruneError(f"{path}: not an hwprune LUT (no hwprune metadata)")
                meta = json.loads(raw)
                rows = table.to_pandas()
        except HwpruneError:
            raise
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HwpruneError(f"{path}: corrupt or truncated LUT: {first}") from None
        missing = [c for c in COLUMNS if c not in rows.columns]
        if missing:
            raise HwpruneError(f"{path}: corrupt LUT: missing column(s) {', '.join(missing)}")
        for col in ("batch", "n", *STAT_COLUMNS.values(), "overhead_ms", "ci_low_ms", "ci_high_ms", "reference_ms"):
            # a CSV edited by hand can hold text where every reader needs a number
            bad = rows[col].notna() & pd.to_numeric(rows[col], errors="coerce").isna()
            if bad.any():
                raise HwpruneError(f"{path}: corrupt LUT: column {col} holds {rows[col][bad].iloc[0]!r} (not a number) "
                                   f"in row {int(bad.to_numpy().nonzero()[0][0]) + 1}")
        if not isinstance(meta, dict) or not isinstance(meta.get("models", {}), dict):
            raise HwpruneError(f"{path}: corrupt LUT: its hwprune metadata is not a JSON object with 'models'")
        if meta.get("format") != LUT_FORMAT:
            raise HwpruneError(f"{path}: LUT format {meta.get('format')} is not supported (expected {LUT_FORMAT})")
        lut = cls(rows, meta)
        lut.path = path
        return lut

    @staticmethod
    @contextlib.contextmanager
    def locked(path: str | os.PathLike[str]) -> Iterator[None]:
        """Hold an exclusive lock while merging and saving the LUT at ``path``, so that two processes
        extending one LUT never overwrite each other's rows. The lock is on the LUT's folder (the
        file itself is replaced by every save, and a lock file would be left behind); saves of
        other LUTs in that folder wait the few milliseconds a save takes."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: saves are still atomic
            yield
            return
        folder = Path(path).resolve().parent
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError as err:
            raise HwpruneError(f"cannot lock {path}: {err.strerror or err}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a file system without flock (some NFS mounts): atomic, not merged-safe
                pass
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def merge_saved(self, path: str | os.PathLike[str], own_model: str) -> None:
        """Take in what another process saved at ``path``: its rows and its other models
        (``own_model``'s entry stays this table's). Call it under :meth:`locked`, then :meth:`save`.

        The file is read every time: a modification time cannot tell two saves apart within one
        tick of the file system's clock (milliseconds on many), and a save skipped on it would
        lose the other process's rows."""
        path = Path(path)
        if not path.is_file():
            return
        disk = LatencyLUT.load(path)
        if len(disk.rows):
            self.add_rows(disk.rows.to_dict("records"))
        for k, v in disk.meta["models"].items():
            if k != own_model:
                self.meta["models"][k] = v
        for k in ("fingerprint", "environment"):
            if self.meta.get(k) is None and disk.meta.get(k) is not None:
                self.meta[k] = disk.meta[k]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: Parquet with metadata, or CSV with a ``.meta.json`` sidecar."""
        path = Path(path)
        rows = self.rows[COLUMNS] if len(self.rows) else pd.DataFrame(columns=COLUMNS)
        if path.suffix == ".csv":
            out = rows.copy()
            out["samples_ms"] = out["samples_ms"].map(lambda s: json.dumps(list(s)) if s is not None else "[]")
            # Rows first: the table only grows, so a crash between the two renames leaves old
            # metadata over a superset of its rows (consistent), never new metadata over old rows.
            atomic_write(path, lambda tmp: out.to_csv(tmp, index=False))
            atomic_write_json(_meta_path(path), self.meta)
            self.path = path
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(rows, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               META_KEY: json.dumps(self.meta).encode()})
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self.path = path

    # -- rows ---------------------------------------------------------------------------
    def has(self, signature: str, fingerprint: str, precision: str, batch: int) -> bool:
        return self._key(signature, fingerprint, precision, batch) in self._lookup()

    @staticmethod
    def _key(signature: str, fingerprint: str, precision: str, batch: int) -> str:
        return f"{fingerprint}/{precision}/{int(batch)}/{signature}"

    def _lookup(self) -> dict[str, int]:
        if self._index is None:
            self._index = {}
            for i, r in enumerate(self.rows.itertuples(index=False)):
                self._index[self._key(r.signature, r.device_fingerprint, r.precision, r.batch)] = i
        return self._index

    def add_rows(self, rows: Sequence[dict[str, Any]]) -> int:
        """Append rows whose signature is not in the table yet; returns how many were new."""
        lookup = self._lookup()
        new = []
        for r in rows:
            k = self._key(r["signature"], r["device_fingerprint"], r["precision"], r["batch"])
            if k in lookup:
                continue
            lookup[k] = len(self.rows) + len(new)
            new.append({c: r.get(c) for c in COLUMNS})
        if new:
            frame = pd.DataFrame(new, columns=COLUMNS)
            self.rows = frame if not len(self.rows) else pd.concat([self.rows, frame], ignore_index=True)
        return len(new)

    def reference_ms(self, fingerprint: str, statistic: str) -> float | None:
        """The drift reference's typical (median) time over this device's rows, if recorded."""
        sel = self.rows[self.rows.device_fingerprint == fingerprint]
        ref = pd.to_numeric(sel["reference_ms"], errors="coerce").dropna()
        return float(ref.median()) if len(ref) else None

    def latency_ms(self, fingerprint: str, precision: str, batch: int, statistic: str) -> dict[str, float]:
        """Per-signature latency with the runtime's per-call overhead taken off (≥ 0)."""
        sel, factor = self._device_rows(fingerprint, precision, batch)
        vals = (sel[STAT_COLUMNS[statistic]].astype(float) - sel["overhead_ms"].astype(float)).clip(lower=0.0)
        return dict(zip(sel["signature"], vals * factor))

    def noise_ms(self, fingerprint: str, precision: str, batch: int) -> dict[str, float]:
        """Per-signature half-width of the measurement's confidence interval (ms, on the same speed scale)."""
        sel, factor = self._device_rows(fingerprint, precision, batch)
        half = (pd.to_numeric(sel["ci_high_ms"], errors="coerce") - pd.to_numeric(sel["ci_low_ms"], errors="coerce")) / 2
        return dict(zip(sel["signature"], (half.fillna(0.0).clip(lower=0.0) * factor)))

    def _device_rows(self, fingerprint: str, precision: str, batch: int) -> tuple[pd.DataFrame, Any]:
        """This device's rows and each row's factor to the machine's typical speed."""
        sel = self.rows[(self.rows.device_fingerprint == fingerprint) & (self.rows.precision == precision)
                        & (self.rows.batch.astype(int) == int(batch))]
        # Put every row on the machine's typical speed: each was timed interleaved with the
        # same reference conv, whose time says how fast the machine was at that moment.
        ref = pd.to_numeric(sel["reference_ms"], errors="coerce")
        if ref.notna().any():
            return sel, (float(ref.median()) / ref).fillna(1.0)
        return sel, 1.0

    # -- models -------------------------------------------------------------------------
    def check_device(self, fingerprint: str, allow_other_device: bool = False, path: str = "LUT") -> None:
        mine = self.meta.get("fingerprint")
        if mine and mine != fingerprint and not allow_other_device:
            raise HwpruneError(f"{path} was measured on device '{self.meta.get('device')}' (fingerprint {mine}); "
                               f"this device's fingerprint is {fingerprint}: re-profile, or pass "
                               "--allow-other-device to use it anyway")

    def model(self, key: str, path: str = "LUT") -> dict[str, Any]:
        try:
            return self.meta["models"][key]
        except KeyError:
            known = ", ".join(sorted(self.meta["models"])) or "none"
            raise HwpruneError(f"{path} has no profile of model {key} (profiled: {known})") from None

    def key_for(self, key: str, model) -> str:
        """``key``, or the one other profile at its input shape made of the same layers: a model
        profiled through the Python API (keyed by class name) is the same model to the CLI's
        ``file.py:factory``, and the other way round."""
        models = self.meta["models"]
        if key in models:
            return key
        shape, sha = key.rsplit("@", 1)[-1], structure_sha(model)
        same = [k for k, m in models.items() if k.rsplit("@", 1)[-1] == shape and m.get("structure_sha") == sha]
        return same[0] if len(same) == 1 else key

    def check_structure(self, key: str, model, path: str = "LUT") -> None:
        """Refuse a profile made for another variant of the model (same name and input shape, other
        layers: a class count, a width option). LUTs older than the check carry no hash and pass."""
        stored = self.model(key, path).get("structure_sha")
        if stored is not None and stored != structure_sha(model):
            raise HwpruneError(f"{path}: its profile of {key} was made for another variant of the model (other "
                               f"layers, e.g. another --num-classes); profile this one into another LUT")

    def predictor(self, key: str, statistic: str | None = None, path: str = "LUT") -> "Predictor":
        m = self.model(key, path)
        stat = statistic or self.meta.get("statistic", "p50")
        lat = self.latency_ms(self.meta.get("fingerprint"), m["precision"], m["batch"], stat)
        if not lat and len(self.rows):
            # Rows exist, none under the device the metadata names: an inconsistent file, not a
            # missing unit (saying "incomplete for unit ..." sent users to re-profile one model).
            found = sorted(set(self.rows.device_fingerprint.astype(str)))
            raise HwpruneError(f"{path}: its rows were measured on device fingerprint(s) {', '.join(found[:3])}, "
                               f"but its metadata names {self.meta.get('fingerprint')}: the LUT is inconsistent; "
                               f"re-profile into a new file")
        return Predictor(m, lat, statistic=stat)


def _bracket(grid: Sequence[int], w: float) -> tuple[int, int, float]:
    """Indices around ``w`` in a sorted grid and the fraction between them."""
    j = bisect.bisect_left(grid, w)
    if j < len(grid) and grid[j] == w:
        return j, j, 0.0
    lo, hi = j - 1, j
    return lo, hi, (w - grid[lo]) / (grid[hi] - grid[lo])


@dataclass
class _UnitTable:
    groups: tuple[int, ...]
    table: np.ndarray  # latency (ms) indexed by grid position of each group


class Predictor:
    """Predicts a sub-network's latency from a LUT: multilinear interpolation per unit, summed.

    ``predict`` adds the runtime's one per-call overhead and applies the calibration fitted
    on whole-model measurements (``measured ≈ a + b · raw``). Widths outside a group's
    profiled grid are refused, never silently extrapolated.
    """

    def __init__(self, structure: dict[str, Any], latency_by_signature: Mapping[str, float],
                 statistic: str = "p50"):
        self.structure = structure
        self.statistic = statistic
        self.group_names = [g["name"] for g in structure["groups"]]
        self.dense = [int(g["channels"]) for g in structure["groups"]]
        self.grids = [list(map(int, g["grid"])) for g in structure["groups"]]
        # the widths the device's measured staircase allows (channel_multiple auto), else None
        self.allowed = ([list(map(int, g["allowed"])) for g in structure["groups"]]
                        if structure["groups"] and all("allowed" in g for g in structure["groups"]) else None)
        self.overhead_ms = float(structure.get("overhead_ms", 0.0))
        cal = structure.get("calibration") or {}
        self.cal_a = float(cal.get("a", 0.0))
        self.cal_b = float(cal.get("b", 1.0))
        self.units: list[_UnitTable] = []
        for u in structure["units"]:
            gs = tuple(u["groups"])
            shape = tuple(len(self.grids[g]) for g in gs)
            table = np.full(shape, np.nan)
            for point_key, sig in u["table"].items():
                point = [int(v) for v in point_key.split(",")] if point_key else []
                idx = tuple(self.grids[g].index(w) for g, w in zip(gs, point))
                if sig in latency_by_signature:
                    table[idx] = latency_by_signature[sig]
            if np.isnan(table).any():
                raise HwpruneError(f"LUT is incomplete for unit {u['name']}: "
                                   f"{int(np.isnan(table).sum())} grid point(s) not measured; re-run hwprune profile")
            self.units.append(_UnitTable(gs, table))

    def _vector(self, widths: Mapping[str, int] | Sequence[int]) -> list[int]:
        if isinstance(widths, Mapping):
            unknown = set(widths) - set(self.group_names)
            if unknown:
                raise HwpruneError(f"unknown group(s): {', '.join(sorted(unknown))}")
            return [int(widths.get(n, d)) for n, d in zip(self.group_names, self.dense)]
        vec = [int(w) for w in widths]
        if len(vec) != len(self.dense):
            raise HwpruneError(f"expected {len(self.dense)} group widths, got {len(vec)}")
        return vec

    def predict_raw(self, widths: Mapping[str, int] | Sequence[int]) -> float:
        """Overhead + Σ unit latencies, before calibration (ms)."""
        vec = self._vector(widths)
        brackets = []
        for g, w in enumerate(vec):
            grid = self.grids[g]
            if not grid[0] <= w <= grid[-1]:
                raise HwpruneError(f"group '{self.group_names[g]}': width {w} is outside the profiled grid "
                                   f"[{grid[0]}, {grid[-1]}]; profile a finer --grid rather than extrapolate")
            brackets.append(_bracket(grid, w))
        total = self.overhead_ms
        for u in self.units:
            if not u.groups:
                total += float(u.table)
                continue
            acc = 0.0
            # Σ over the corners of the enclosing grid cell, each weighted by its volume; a
            # width on a grid point contributes one corner, so on-grid lookups are exact.
            corners = [((lo, 1.0),) if lo == hi else ((lo, 1.0 - f), (hi, f))
                       for lo, hi, f in (brackets[g] for g in u.groups)]
            for combo in itertools.product(*corners):
                wt = 1.0
                for _, f in combo:
                    wt *= f
                acc += wt * u.table[tuple(i for i, _ in combo)]
            total += acc
        return total

    def predict(self, widths: Mapping[str, int] | Sequence[int]) -> float:
        """Calibrated latency prediction (ms) of the sub-network with these group widths."""
        return self.cal_a + self.cal_b * self.predict_raw(widths)


def fit_calibration(raw_ms: Sequence[float], measured_ms: Sequence[float], line=None) -> dict[str, float]:
    """Robust ``measured ≈ a + b · raw`` on relative errors, with its fit error; identity with < 3 points.

    Huber regression on relative residuals (iteratively reweighted least squares): the errors
    that matter are relative ones, so each point counts by its relative residual, and a point
    far off the line (a sub-network measured while the machine was briefly busy) counts less
    the further off it is instead of tilting the line. It replaced Theil-Sen (the same guards
    below): on random 9-point subsets of seven committed 50-sample checks, one subset in three
    with a point 20% slow, its median error on the other points was lower or equal in six of
    seven (by up to 0.16 points) and 0.01 point higher in one (``bench/line_fit.py``, which
    passes another estimator as ``line``: a function ``(x, y) -> (a, b)``).
    """
    x = np.asarray(raw_ms, float)
    y = np.asarray(measured_ms, float)
    if len(x) < 3 or np.ptp(x) == 0:
        a, b = 0.0, 1.0
    else:
        a, b = (line or _huber_line)(x, y)
        scale = float(np.median(y / x))

        def med_err(a_: float, b_: float) -> float:
            return float(np.median(np.abs(a_ + b_ * x - y) / y))

        # Samples bunched in a narrow range can give a steep line with a large negative
        # intercept: it would predict ≤ 0 ms for small architectures outside that range.
        # A pure scale is the safer correction then, or whenever it fits as well.
        if b > 0 and (a < -0.5 * b * float(x.min()) or med_err(0.0, scale) <= med_err(a, b)):
            a, b = 0.0, scale
        if b <= 0:  # a degenerate fit would invert the ordering of architectures
            a, b = 0.0, float(np.median(y / x))
    pred = a + b * x
    err = np.abs(pred - y) / y * 100 if len(y) else np.array([math.nan])
    return {"a": float(a), "b": float(b), "n": int(len(x)),
            "median_abs_error_pct": float(np.median(err)) if len(err) else math.nan,
            "raw_median_abs_error_pct": float(np.median(np.abs(x - y) / y * 100)) if len(y) else math.nan}


# Huber's constant for 95% efficiency under normal errors, in units of the residuals' robust scale.
_HUBER_K = 1.345


def _huber_line(x: np.ndarray, y: np.ndarray, iterations: int = 30) -> tuple[float, float]:
    """``a, b`` minimising Huber's loss of the relative residuals ``(a + b·x - y) / y``."""
    design = np.c_[np.ones_like(x), x]

    def solve(w: np.ndarray) -> np.ndarray:
        root = np.sqrt(w / y ** 2)
        return np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0]

    coef = solve(np.ones_like(y))
    for _ in range(iterations):
        rel = (design @ coef - y) / y
        spread = 1.4826 * float(np.median(np.abs(rel))) or 1e-12  # MAD about zero
        u = np.abs(rel) / spread
        new = solve(np.where(u <= _HUBER_K, 1.0, _HUBER_K / np.maximum(u, 1e-12)))
        if np.allclose(new, coef, rtol=1e-10, atol=1e-12):
            break
        coef = new
    return float(coef[0]), float(coef[1])


def unit_breakdown(lut: "LatencyLUT", key: str, widths: Mapping[str, int] | None = None,
                   statistic: str | None = None) -> list[dict[str, Any]]:
    """Per-unit latency (ms) of a model at ``widths`` (dense by default), for tables."""
    pred = lut.predictor(key, statistic)
    vec = pred._vector(widths or {})
    m = lut.model(key)
    out = []
    for u, table in zip(m["units"], pred.units):
        single = Predictor({**m, "units": [u], "overhead_ms": 0.0, "calibration": None},
                           lut.latency_ms(lut.meta["fingerprint"], m["precision"], m["batch"], pred.statistic),
                           pred.statistic)
        out.append({"unit": u["name"], "ops": u["label"],
                    "groups": [pred.group_names[g] for g in u["groups"]],
                    "widths": [vec[g] for g in u["groups"]], "latency_ms": single.predict_raw(vec)})
    return out
