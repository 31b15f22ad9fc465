"""Peer benchmark (issue 23, item 3): hwprune against plain Torch-Pruning at equal measured latency.

For each model (resnet20 on Fashion-MNIST from its committed checkpoint; others with --models),
budget (a fraction of the dense model's measured p50) and seed, on one device config:

- **Torch-Pruning as a user runs it without hwprune**: one ``BasePruner`` step with L1
  (``GroupMagnitudeImportance(p=1)``) or Taylor (``GroupTaylorImportance``, gradients of 8 fixed
  training batches of 64, BatchNorm in eval mode) importance, local or global ranking, with and
  without ``round_to=8``, the classifier ignored. Its ``pruning_ratio`` is tuned by bisection until
  the exported ONNX model's p50, measured interleaved with the dense model in one fresh process
  (``python -m profilers interleave``), is within the budget: the least pruning that meets it.
  The bisection starts from the strongest pruning, the fewest MACs over ratios 0.05, 0.10 ... 0.95
  (Torch-Pruning skips a group it would empty, so a larger ratio can prune less); when even that
  misses the budget the cell is "cannot meet", with the best ratio reached, and is not fine-tuned.
  Tuning depends on nothing but timing noise, so it runs once per (config, budget) and serves every
  seed (each seed's wall time includes it). The model is then recovered exactly as
  ``hwprune prune --finetune standard`` recovers its own cut (:func:`finetune_standard`).
- **hwprune**: ``hwprune prune`` as a command line, default settings, ``--speedup 1/budget``, the
  same seed, recovered with ``--finetune standard`` and with the default ``agp``, both
  ``--finetune-epochs 2 --lr 0.05``; its report.json gives certified, test accuracy and size. Its
  LUT is ``bench/results/peer-lut-<model>.parquet`` (``-<device>`` added for another device config;
  ``hwprune profile`` runs first every time: it resumes and measures nothing when the LUT is complete).

Then every final model (and, for "cannot meet", the strongest cut) is timed in ONE interleaved
session beside the dense model, in a fresh process: the "x dense" column (p50 ratio). On a shared
machine each process runs at its own speed, and the same pruned/dense ratio has been seen to differ
by a fifth between processes here; ``--processes N`` takes every Torch-Pruning measurement and the
final session in N fresh processes and uses the median ratio (hwprune keeps its default, 1). Results go
to ``bench/results/peer_<model>.json`` after every cell; run the same command again and finished
cells are kept (``--fresh`` starts over). A Markdown table of mean ± std over seeds per (method,
budget) goes to stdout, with the command, the machine and the date.

    .venv/bin/python bench/peer.py                      # resnet20, budgets 0.5,0.3, seeds 0,1,2 (hours)
    .venv/bin/python bench/peer.py --models mobilenetv2 --budgets 0.5 --seeds 0 --weights mobilenetv2=PATH
    .venv/bin/python bench/peer.py --quick              # smoke test: 1,200 training images, seed 0, 50%

``--quick`` trains on a small subset (written as Fashion-MNIST files under the results folder, used by
both sides), tunes with 3 bisection steps and gives ``hwprune prune`` a short search; its results
(``peer_<model>_quick.json``) say nothing about accuracy.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from _common import hwprune_script, mean_std  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# name -> (importance, global ranking, round_to)
TP_CONFIGS = {f"{imp}-{scope}{'-r8' if r8 else ''}": (imp, scope == "global", 8 if r8 else None)
              for imp in ("l1", "taylor") for scope in ("local", "global") for r8 in (False, True)}
RECOVERIES = ("standard", "agp")
IMPORTANCES = ("l1", "l2", "bn-scale", "taylor")
DEFAULT_IMPORTANCE = "l1"  # PruneOptions.importance's default (checked in parse_args)
SCAN = [round(0.05 * i, 2) for i in range(1, 20)]  # ratios searched for the strongest pruning
TAYLOR_BATCHES, TAYLOR_BATCH_SIZE = 8, 64
QUICK = {"train": 1200, "test": 1000, "steps": 3,
         "hwprune": ["--max-evaluations", "8", "--calibration-samples", "2", "--certify-rounds", "2",
                     "--measure-top", "1"]}


class BenchError(Exception):
    """Bad input or a state file this run cannot continue: one line, exit code 2."""


@dataclass
class Settings:
    """What one invocation runs (validated by :func:`parse_args`)."""

    models: list[str]
    budgets: list[float]
    seeds: list[int]
    configs: list[str]
    recoveries: list[str]
    device: str = "x86-cpu-ort"
    steps: int = 8
    processes: int = 1
    epochs: int = 2
    lr: float = 0.05
    batch_size: int = 128
    quick: bool = False
    results: Path = RESULTS
    weights: dict[str, str] = field(default_factory=dict)
    fresh: bool = False
    hwprune_extra: list[str] = field(default_factory=list)
    # hwprune's channel importance criteria to run (issue 23 item 2); hwprune's default alone by default
    importances: list[str] = field(default_factory=lambda: [DEFAULT_IMPORTANCE])

    def recipe(self, model: str) -> dict:
        """What a results file must have been written with for this run to continue it."""
        return {"model": model, "device": self.device, "steps": self.steps, "processes": self.processes,
                "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "quick": self.quick, "weights": self.weights.get(model),
                "hwprune_extra": self.hwprune_extra}


def _floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"{flag} must be comma-separated numbers, got '{text}'") from None
    bad = [v for v in vals if not 0.0 < v < 1.0]
    if not vals or bad:
        raise BenchError(f"{flag} must be fractions of the dense p50 strictly between 0 and 1, got '{text}'")
    return vals


def _names(text: str, known, flag: str) -> list[str]:
    """Comma-separated names, each one of ``known``; ``none`` (or nothing) for none."""
    names = [v.strip() for v in text.split(",") if v.strip() and v.strip() != "none"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchError(f"unknown {flag} '{unknown[0]}' (known: {', '.join(known)})")
    return names


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise BenchError(message)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20", help="comma-separated zoo names (default resnet20)")
    ap.add_argument("--budgets", help="fractions of dense p50 (default 0.5,0.3; --quick 0.5)")
    ap.add_argument("--seeds", help="comma-separated (default 0,1,2; --quick 0)")
    ap.add_argument("--configs", default=",".join(TP_CONFIGS), help="Torch-Pruning configurations ('none' for none)")
    ap.add_argument("--recoveries", default=",".join(RECOVERIES), help="hwprune runs ('none' for none)")
    ap.add_argument("--importances", default=DEFAULT_IMPORTANCE,
                    help=f"hwprune --importance criteria, each run with every recovery ({', '.join(IMPORTANCES)})")
    ap.add_argument("--device", default="x86-cpu-ort")
    ap.add_argument("--steps", type=int, help="bisection steps (default 8; --quick 3)")
    ap.add_argument("--processes", type=int, default=1,
                    help="fresh processes per Torch-Pruning measurement and final session (median ratio)")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                    help="dense checkpoint for a model without a committed one (repeatable)")
    ap.add_argument("--results", default=str(RESULTS), help="folder of results, LUTs and run folders")
    ap.add_argument("--quick", action="store_true", help="smoke test (see above)")
    ap.add_argument("--fresh", action="store_true", help="discard earlier results of these settings")
    return ap


def parse_args(argv: list[str] | None = None) -> Settings:
    """Command line -> :class:`Settings`; any bad value raises :class:`BenchError`."""
    from hwprune.models import list_models
    from hwprune.pruning import PruneOptions

    a = build_parser().parse_args(argv)
    steps = QUICK["steps"] if a.steps is None and a.quick else (8 if a.steps is None else a.steps)
    if steps < 1 or a.processes < 1 or a.finetune_epochs < 0 or not a.lr > 0:
        raise BenchError("--steps and --processes must be at least 1, --finetune-epochs at least 0, --lr positive")
    weights = {}
    for item in a.weights:
        model, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise BenchError(f"--weights must be MODEL=PATH to an existing file, got '{item}'")
        weights[model] = str(Path(path).resolve())
    try:
        seeds = [int(v) for v in (a.seeds or ("0" if a.quick else "0,1,2")).split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"--seeds must be comma-separated integers, got '{a.seeds}'") from None
    if not seeds or min(seeds) < 0:
        raise BenchError(f"--seeds must be non-negative integers, got '{a.seeds}'")
    models = _names(a.models, list_models(), "model")
    if not models:
        raise BenchError("--models names no model")
    # The recipe's batch size is hwprune prune's default (the bench passes no --batch-size to it).
    batch_size = PruneOptions.__dataclass_fields__["batch_size"].default
    if PruneOptions.__dataclass_fields__["importance"].default != DEFAULT_IMPORTANCE:
        raise BenchError("hwprune's default --importance changed: update DEFAULT_IMPORTANCE in bench/peer.py")
    importances = _names(a.importances, IMPORTANCES, "importance criterion")
    if not importances:
        raise BenchError("--importances names no criterion")
    return Settings(models, _floats(a.budgets or ("0.5" if a.quick else "0.5,0.3"), "--budgets"), seeds,
                    _names(a.configs, list(TP_CONFIGS), "Torch-Pruning config"),
                    _names(a.recoveries, RECOVERIES, "recovery"), a.device, steps, a.processes,
                    a.finetune_epochs, a.lr, batch_size, a.quick, Path(a.results).resolve(), weights, a.fresh,
                    list(QUICK["hwprune"]) if a.quick else [], importances)


# --- data ----------------------------------------------------------------------------------------

def quick_data(folder: Path, n_train: int, n_test: int, seed: int = 0) -> str:
    """A seeded subset of Fashion-MNIST written as its IDX files in ``folder``; the ``--data`` spec."""
    import numpy as np

    from hwprune.data import idx_bytes, load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, prefix, n) in enumerate((("train", "train", n_train), ("test", "t10k", n_test))):
        if (folder / f"{prefix}-labels-idx1-ubyte.gz").is_file():
            continue
        ds = load_dataset("fashion-mnist", split)
        idx = np.sort(np.random.default_rng([seed, i]).permutation(len(ds))[:n])
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(ds.images[idx, 0].numpy())))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(ds.labels[idx].numpy())))
    return f"fashion-mnist:{folder}"


# --- Torch-Pruning -------------------------------------------------------------------------------

def copy_with_grads(model):
    """A deep copy that keeps each parameter's ``.grad`` (``copy.deepcopy`` drops them)."""
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    return twin


def taylor_source(dense, train_ds, seed: int = 0):
    """A copy of ``dense`` holding the gradients Taylor importance reads: cross-entropy summed over
    ``TAYLOR_BATCHES`` fixed training batches, BatchNorm in eval mode (the dense statistics)."""
    import numpy as np
    import torch.nn.functional as F

    model = copy.deepcopy(dense).eval()
    n = min(TAYLOR_BATCHES * TAYLOR_BATCH_SIZE, len(train_ds))
    xb, yb = train_ds.batch(np.random.default_rng(seed).permutation(len(train_ds))[:n])
    for x, y in zip(xb.split(TAYLOR_BATCH_SIZE), yb.split(TAYLOR_BATCH_SIZE)):
        F.cross_entropy(model(x), y).backward()
    return model


def tp_prune(source, x, config: str, ratio: float):
    """``source`` (its copy) pruned by one plain Torch-Pruning step of ``config`` at ``pruning_ratio``."""
    import torch_pruning as tp

    from hwprune.groups import classifier_layer

    imp_name, global_pruning, round_to = TP_CONFIGS[config]
    model = (copy_with_grads(source) if imp_name == "taylor" else copy.deepcopy(source)).eval()
    if ratio > 0:
        imp = tp.importance.GroupTaylorImportance() if imp_name == "taylor" else \
            tp.importance.GroupMagnitudeImportance(p=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(model, x, importance=imp, pruning_ratio=ratio,
                                          global_pruning=global_pruning, round_to=round_to,
                                          ignored_layers=[classifier_layer(model)])
            pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def conv_widths(model) -> tuple[int, ...]:
    """Every conv's output channels, in module order: the architecture's key."""
    from torch import nn

    return tuple(m.out_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))


def strongest_ratio(macs_at) -> tuple[float, int]:
    """The least ratio of :data:`SCAN` that reaches the fewest MACs (``macs_at(ratio)``: None if invalid)."""
    best: tuple[float, int] | None = None
    for r in SCAN:
        macs = macs_at(r)
        if macs is not None and (best is None or macs < best[1]):
            best = (r, macs)
    if best is None:
        raise BenchError("Torch-Pruning produced no valid model at any pruning ratio")
    return best


def bisect_ratio(x_dense_at, frac: float, strongest: float, steps: int) -> dict:
    """The least pruning ratio in ``(0, strongest]`` whose measured ``x_dense_at(ratio)`` is within ``frac``.

    ``strongest`` is measured first; if it misses, the result is not met, with its ratio. Otherwise
    ``steps`` halvings of ``[0, strongest]`` (0 is the dense model, which misses any budget < 1).
    """
    x_hi = x_dense_at(strongest)
    trail = [[strongest, x_hi]]
    if x_hi > frac:
        return {"met": False, "ratio": strongest, "x_dense": x_hi, "trail": trail}
    lo, hi = 0.0, strongest
    for _ in range(steps):
        mid = round((lo + hi) / 2, 6)
        x = x_dense_at(mid)
        trail.append([mid, x])
        if x <= frac:
            hi, x_hi = mid, x
        else:
            lo = mid
    return {"met": True, "ratio": hi, "x_dense": x_hi, "trail": trail}


# --- recovery and measurement ----------------------------------------------------------------------

def finetune_standard(model, data, x, *, epochs: int, lr: float, batch_size: int, seed: int):
    """``hwprune prune --finetune standard``'s recovery of a model pruned elsewhere; returns (model, info).

    hwprune trains the search's winner as the accuracy proxy scored it: cut, then BatchNorm
    re-estimated on the proxy's fixed training batches (``AccuracyProxy.pruned_model``, one thread,
    as ``Task.objective`` builds it), then ``hwprune.train.train`` with the run's epochs, lr,
    batch size and seed on the same train/val split (``hwprune.task._builtin_recovery``). Here the
    cut is Torch-Pruning's: ``pruned_model({})`` cuts nothing more and re-estimates BN the same way.
    """
    from hwprune.proxy import AccuracyProxy
    from hwprune.train import train

    started = time.perf_counter()
    ready = AccuracyProxy(model, x, data.train, data.val, threads=1).pruned_model({})
    result = train(ready, data.train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, val_ds=data.val,
                   log=None, progress=False) if epochs > 0 else None
    return ready.eval(), {"seconds": time.perf_counter() - started, "history": result.history if result else []}


def measure_ratios(items, cfg, processes: int = 1) -> dict[str, dict]:
    """``items`` (key, onnx bytes; ``dense`` first) timed interleaved in each of ``processes`` fresh
    processes, one after another: per key but ``dense``, the median over processes of
    :func:`ratios_to_dense`'s figures (with every process's ratio when there are several)."""
    import statistics

    from hwprune.processes import measure_in_processes

    runs = [ratios_to_dense(t, cfg.statistic) for t in measure_in_processes(items, cfg, processes)]
    out = {}
    for key in runs[0]:
        out[key] = {f: statistics.median(r[key][f] for r in runs) for f in runs[0][key]}
        if processes > 1:
            out[key]["x_dense_runs"] = [r[key]["x_dense"] for r in runs]
    return out


def ratios_to_dense(timings: dict[str, dict], statistic: str) -> dict[str, dict]:
    """Per key but ``dense``: the statistic over dense's, and the 95% upper bound over dense's."""
    from hwprune.certify import upper_bound_ms
    from hwprune.measure import statistic_ms

    dense = statistic_ms(timings["dense"], statistic)
    return {k: {"x_dense": statistic_ms(t, statistic) / dense, "x_dense_ub": upper_bound_ms(t, statistic) / dense,
                "ms": statistic_ms(t, statistic), "dense_ms": dense} for k, t in timings.items() if k != "dense"}


def pct(frac: float) -> str:
    return f"{frac * 100:g}pct"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> dict:
    """The CPU (lscpu's model name), cores, load and the checkout's commit, for the table's header."""
    from timing_repro import cpu_model  # bench/ is on sys.path when a script runs

    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg": list(os.getloadavg()),
            "commit": git.stdout.strip() or None}


# --- one model's benchmark -----------------------------------------------------------------------

class Peer:
    """One model's benchmark: its device, data, dense model, results file and cells."""

    def __init__(self, model: str, s: Settings) -> None:
        import torch

        from hwprune.export import export_onnx
        from hwprune.models.spec import ModelSpec
        from hwprune.pruning import default_weights
        from hwprune.task import Datasets
        from profilers.config import load_device_config

        self.model, self.s = model, s
        self.cfg = load_device_config(s.device)
        tag = f"{model}_quick" if s.quick else model
        self.path = s.results / f"peer_{tag}.json"
        self.work = s.results / "runs" / f"peer-{tag}"
        self.state = self._load()
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_spec = quick_data(self.work / "data", QUICK["train"], QUICK["test"]) if s.quick else "fashion-mnist"
        self.data = Datasets.load(self.data_spec)
        self.weights = s.weights.get(model) or default_weights(model, "fashion-mnist")
        torch.manual_seed(0)
        self.dense = ModelSpec(model, self.data.input_shape, self.data.num_classes, self.weights).build()
        self.x = torch.zeros(self.cfg.batch_size, *self.data.input_shape)
        self.dense_onnx = export_onnx(self.dense, self.x)
        self.hw_weights = ["--weights", self.weights] if model in s.weights else []
        if self.weights is None:  # both sides must start from the same dense model
            random_init = self.work / "dense-random-init.pt"
            torch.save(self.dense.state_dict(), random_init)
            self.hw_weights = ["--weights", str(random_init)]
            print(f"warning: no Fashion-MNIST checkpoint for {model} (--weights {model}=PATH): both sides "
                  f"prune a randomly initialised model", file=sys.stderr)
        self._taylor = None
        self._lut: Path | None = None

    def _load(self) -> dict:
        recipe = self.s.recipe(self.model)
        if self.path.is_file() and not self.s.fresh:
            try:
                state = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                raise BenchError(f"cannot read {self.path} ({err}); pass --fresh to start over") from None
            old = state.get("recipe", {})
            differs = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
            if differs:
                raise BenchError(f"{self.path} was written with other settings (differs in {', '.join(differs)}); "
                                 f"pass --fresh to start over, or another --results")
            return state
        return {"recipe": recipe, "started": now(), "machine": machine(), "strongest": {}, "tuning": {},
                "rows": {}}

    def save(self) -> None:
        from profilers.fileio import atomic_write_json

        self.state["updated"] = now()
        atomic_write_json(self.path, self.state)

    def dense_info(self) -> dict:
        if "dense" not in self.state:
            from hwprune.groups import count_macs, count_params
            from hwprune.train import evaluate

            self.state["dense"] = {"test_acc": evaluate(self.dense, self.data.test), "weights": self.weights,
                                   "params": count_params(self.dense), "macs": count_macs(self.dense, self.x),
                                   "data": self.data_spec, "train_images": len(self.data.train)}
            self.save()
        return self.state["dense"]

    # --- Torch-Pruning cells ---

    def source(self, config: str):
        """What ``config`` prunes: the dense model, with Taylor's gradients when it needs them."""
        if TP_CONFIGS[config][0] != "taylor":
            return self.dense
        if self._taylor is None:
            self._taylor = taylor_source(self.dense, self.data.train)
        return self._taylor

    def strongest(self, config: str) -> dict:
        """The strongest pruning of ``config`` (once per config, for every budget)."""
        from hwprune.groups import count_macs

        if config not in self.state["strongest"]:
            started, src, invalid = time.perf_counter(), self.source(config), []

            def macs_at(ratio: float) -> int | None:
                try:
                    model = tp_prune(src, self.x, config, ratio)
                    return count_macs(model, self.x) if min(conv_widths(model)) >= 1 else None
                except Exception:  # Torch-Pruning fails in many ways when it empties a group
                    invalid.append(ratio)
                    return None

            ratio, macs = strongest_ratio(macs_at)
            self.state["strongest"][config] = {"ratio": ratio, "macs": macs, "invalid_ratios": invalid,
                                               "seconds": time.perf_counter() - started}
            self.save()
        return self.state["strongest"][config]

    def tune(self, config: str, frac: float) -> dict:
        """``config``'s pruning_ratio bisected to ``frac`` of the dense p50 (once per budget, every seed)."""
        from hwprune.export import export_onnx
        from hwprune.groups import count_params

        key = f"{config}@{pct(frac)}"
        if key not in self.state["tuning"]:
            strongest = self.strongest(config)
            started, src, cache, steps = time.perf_counter(), self.source(config), {}, []

            def x_dense_at(ratio: float) -> float:
                model = tp_prune(src, self.x, config, ratio)
                arch = conv_widths(model)
                if arch not in cache:  # round_to makes many ratios one architecture
                    items = [("dense", self.dense_onnx), ("pruned", export_onnx(model, self.x))]
                    cache[arch] = measure_ratios(items, self.cfg, self.s.processes)["pruned"]
                steps.append({"ratio": ratio, **cache[arch], "params": count_params(model), "widths": list(arch)})
                return cache[arch]["x_dense"]

            out = bisect_ratio(x_dense_at, frac, strongest["ratio"], self.s.steps)
            self.state["tuning"][key] = {"config": config, "budget": frac, **out, "steps": steps,
                                         "measurements": len(cache), "seconds": strongest["seconds"]
                                         + time.perf_counter() - started}
            self.save()
        return self.state["tuning"][key]

    def tp_row(self, config: str, frac: float, seed: int) -> dict:
        """Tuned, then fine-tuned with hwprune's ``standard`` recipe (not when the budget cannot be met)."""
        from hwprune.export import export_onnx
        from hwprune.groups import count_macs, count_params
        from hwprune.train import evaluate

        t = self.tune(config, frac)
        model = tp_prune(self.source(config), self.x, config, t["ratio"])
        info, acc = {"seconds": 0.0, "history": []}, None
        if t["met"]:
            model, info = finetune_standard(model, self.data, self.x, epochs=self.s.epochs, lr=self.s.lr,
                                            batch_size=self.s.batch_size, seed=seed)
            acc = evaluate(model, self.data.test)
        onnx = self.work / f"tp-{config}-{pct(frac)}-s{seed}.onnx"
        onnx.write_bytes(export_onnx(model, self.x))
        return {"method": "torch-pruning", "config": config, "budget": frac, "seed": seed,
                "status": "met" if t["met"] else "cannot meet", "met_budget": t["met"], "ratio": t["ratio"],
                "tuning_x_dense": t["x_dense"], "test_acc": acc, "params": count_params(model),
                "macs": count_macs(model, self.x), "widths": list(conv_widths(model)), "tune_s": t["seconds"],
                "finetune_s": info["seconds"], "wall_s": t["seconds"] + info["seconds"],
                "history": info["history"], "onnx": str(onnx)}

    # --- hwprune cells ---

    def lut(self) -> Path:
        """The model's LUT, profiled (or completed) by ``hwprune profile`` once per invocation."""
        if self._lut is None:
            suffix = "" if self.cfg.name == "x86-cpu-ort" else f"-{self.cfg.name}"
            lut = self.s.results / f"peer-lut-{self.model}{suffix}.parquet"
            shape = ",".join(str(v) for v in self.data.input_shape)
            cmd = [hwprune_script(), "profile", "--device", self.s.device, "--model", self.model,
                   "--input-shape", shape, "--lut", str(lut), "-q"]
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise BenchError(f"hwprune profile failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            self.state.setdefault("lut", []).append({"path": str(lut), "when": now(),
                                                     "profile_s": time.perf_counter() - started})
            self._lut = lut
        return self._lut

    def hwprune_command(self, recovery: str, frac: float, seed: int, out: Path,
                        importance: str = DEFAULT_IMPORTANCE) -> list[str]:
        return [hwprune_script(), "prune", "--device", self.s.device, "--model", self.model, "--data", self.data_spec,
                "--lut", str(self.lut()), "--out", str(out), "--speedup", f"{1 / frac:.6g}", "--seed", str(seed),
                *(["--finetune", "standard"] if recovery == "standard" else []),
                *(["--importance", importance] if importance != DEFAULT_IMPORTANCE else []),
                "--finetune-epochs", str(self.s.epochs), "--lr", repr(self.s.lr), "--overwrite", "-q",
                *self.hw_weights, *self.s.hwprune_extra]

    def hwprune_row(self, recovery: str, frac: float, seed: int, importance: str = DEFAULT_IMPORTANCE) -> dict:
        """``hwprune prune`` in its own process; its report.json (or its one-line refusal)."""
        config = hwprune_config(recovery, importance)
        out = self.work / f"hwprune-{config}-{pct(frac)}-s{seed}"
        cmd = self.hwprune_command(recovery, frac, seed, out, importance)
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        base = {"method": "hwprune", "config": config, "importance": importance, "budget": frac, "seed": seed,
                "wall_s": time.perf_counter() - started, "command": "hwprune " + shlex.join(cmd[1:])}
        if proc.returncode:
            return {**base, "status": "refused" if proc.returncode == 2 else "failed", "certified": False,
                    "returncode": proc.returncode, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        r = json.loads((out / "report.json").read_text())
        p = r["pruned"]
        return {**base, "status": "certified" if r["certified"] else "not certified", "certified": r["certified"],
                "test_acc": p["accuracy"], "params": p["params"], "macs": p["macs"],
                "tuning_x_dense": 1 / r["speedup"]["measured"], "budget_ms": r["budget"]["latency_ms"],
                "upper_bound_ms": r["certificate"].get("upper_bound_ms"),
                "widths": {g: kept for g, (_, kept) in p["channels"].items()},
                "search_s": r["search"]["seconds"], "finetune_s": (r.get("finetune") or {}).get("seconds"),
                "report_s": r["seconds"], "onnx": str(out / "pruned.onnx")}

    # --- the whole run ---

    def cell(self, key: str, make) -> None:
        """Run one cell unless it finished before (a crashed hwprune run, or a lost model file, is rerun)."""
        row = self.state["rows"].get(key)
        if row and row["status"] != "failed" and (not row.get("onnx") or Path(row["onnx"]).is_file()):
            return
        row = self.state["rows"][key] = make()
        self.save()
        acc = f"{row['test_acc'] * 100:.2f}%" if row.get("test_acc") is not None else "-"
        x = f"{row['tuning_x_dense']:.3f}" if row.get("tuning_x_dense") is not None else "-"
        print(f"{self.model} {key}: {row['status']}, test acc {acc}, x dense {x} (own measurement), "
              f"{row['wall_s']:.0f} s" + (f": {row['error']}" if row.get("error") else ""), flush=True)

    def session(self) -> None:
        """Every final model beside the dense one in one interleaved session (again when the set changed)."""
        rows = self.state["rows"]
        keys = sorted(k for k, r in rows.items() if r.get("onnx") and Path(r["onnx"]).is_file())
        if not keys or (self.state.get("session") or {}).get("keys") == keys:
            return
        started = time.perf_counter()
        items = [("dense", self.dense_onnx)] + [(k, Path(rows[k]["onnx"]).read_bytes()) for k in keys]
        ratios = measure_ratios(items, self.cfg, self.s.processes)
        for k, r in ratios.items():
            rows[k].update(session_x_dense=r["x_dense"], session_x_dense_ub=r["x_dense_ub"], session_ms=r["ms"],
                           session_met=r["x_dense"] <= rows[k]["budget"])
            if "x_dense_runs" in r:
                rows[k]["session_x_dense_runs"] = r["x_dense_runs"]
        dense_ms = next(iter(ratios.values()))["dense_ms"]
        self.state["session"] = {"keys": keys, "models": len(items), "dense_ms": dense_ms,
                                 "seconds": time.perf_counter() - started, "when": now(), "machine": machine()}
        self.save()

    def run(self) -> None:
        self.dense_info()
        for frac in self.s.budgets:
            for config in self.s.configs:
                for seed in self.s.seeds:
                    self.cell(f"tp-{config}@{pct(frac)}/s{seed}", lambda: self.tp_row(config, frac, seed))
            for importance in self.s.importances:
                for recovery in self.s.recoveries:
                    for seed in self.s.seeds:
                        self.cell(f"hwprune-{hwprune_config(recovery, importance)}@{pct(frac)}/s{seed}",
                                  lambda: self.hwprune_row(recovery, frac, seed, importance))
        self.session()


# --- the table -----------------------------------------------------------------------------------

def hwprune_config(recovery: str, importance: str) -> str:
    """A hwprune cell's configuration name: the recovery, and the criterion when not the default."""
    return recovery if importance == DEFAULT_IMPORTANCE else f"{recovery}-{importance}"


def label(method: str, config: str) -> str:
    if method == "hwprune":
        recovery, _, importance = config.partition("-")
        return (f"hwprune, `--finetune {recovery}`" + (" (default)" if recovery == "agp" else "")
                + (f", `--importance {importance}`" if importance else ""))
    imp, global_pruning, round_to = TP_CONFIGS[config]
    return (f"Torch-Pruning, {'Taylor' if imp == 'taylor' else 'L1'}, {'global' if global_pruning else 'local'}, "
            f"{f'round_to {round_to}' if round_to else 'no rounding'}")


def summary_line(rows: list[dict]) -> list[str]:
    """One (method, budget)'s cells over its seeds: acc, x dense, params, MACs, wall, verdicts."""
    n = len(rows)
    accs = [r["test_acc"] * 100 for r in rows if r.get("test_acc") is not None]
    statuses = sorted({r["status"] for r in rows if r["status"] not in ("met", "certified", "not certified")})
    acc = mean_std(accs, ".2f") if accs else (", ".join(statuses) or "—")
    xs = [r["session_x_dense"] for r in rows if "session_x_dense" in r]
    x = mean_std(xs, ".3f") if xs else "—"
    if rows[0]["method"] == "hwprune":
        verdict = f"certified {sum(bool(r.get('certified')) for r in rows)}/{n}"
    else:
        verdict = f"met {sum(bool(r.get('met_budget')) for r in rows)}/{n}"
    verdict += f", in session {sum(bool(r.get('session_met')) for r in rows)}/{n}"
    nums = [mean_std([float(r[k]) for r in rows if r.get(k) is not None], fmt)
            for k, fmt in (("params", ",.0f"), ("macs", ",.0f"), ("wall_s", ",.0f"))]
    return [acc, x, *nums, verdict]


def summary_table(state: dict, s: Settings, command: str) -> str:
    """Markdown: mean ± std over seeds per (method, budget), best test accuracy first in each budget."""
    groups: dict[tuple, list[dict]] = {}
    for r in state["rows"].values():
        if r["budget"] in s.budgets and r["seed"] in s.seeds:
            groups.setdefault((r["budget"], r["method"], r["config"]), []).append(r)
    d, sess, m = state["dense"], state.get("session") or {}, state["machine"]
    lines = [f"`{command}` — {m['cpu']}, {m['cores']} cores, {state.get('updated', now())}, commit "
             f"{m.get('commit') or '?'}; device {s.device}; "
             f"dense {state['recipe']['model']}: test acc {d['test_acc'] * 100:.2f}%, {d['params']:,} params, "
             f"{d['macs']:,} MACs" + (f", p50 {sess['dense_ms']:.4f} ms in the final session" if sess else ""),
             "", "| method | budget (of dense p50) | seeds | test acc % | × dense | params | MACs | wall s "
             "| met budget (TP, tuning) / certified (hwprune) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]

    def order(item):
        (budget, _, _), rows = item
        accs = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
        return (-budget, -(sum(accs) / len(accs)) if accs else 1.0)

    for (budget, method, config), rows in sorted(groups.items(), key=order):
        cells = [label(method, config), f"{budget:.0%}", str(len(rows)), *summary_line(rows)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "× dense: p50 over the dense model's in one interleaved session of every final model (fresh "
              "process); for \"cannot meet\" the strongest cut's. TP met: within the budget when tuned (p50); "
              "hwprune certified: 95% upper bound within it, in its own run. Mean ± std over seeds."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hwprune.errors import HwpruneError, first_line
    from profilers.errors import ProfilerError

    command = "bench/peer.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        s = parse_args(argv)
        s.results.mkdir(parents=True, exist_ok=True)
        for model in s.models:
            peer = Peer(model, s)
            peer.run()
            print("\n" + summary_table(peer.state, s, command) + "\n", flush=True)
    except (BenchError, HwpruneError, ProfilerError, OSError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; the same command continues", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
