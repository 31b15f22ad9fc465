"""The library API behind every CLI command: ``hwprune.profile``, ``hwprune.prune``, ``hwprune.time_model`` ...

Every function takes either a zoo name / ``file.py:factory`` (as the CLI does) or the user's own
``nn.Module`` with an example input, and raises :class:`hwprune.HwpruneError` with one sentence
on bad input. Results are typed objects.

Example:
    >>> import hwprune
    >>> lut = hwprune.profile(model, torch.zeros(1, 3, 32, 32), device="x86-cpu-ort",
    ...                       lut="lut.parquet")                                   # doctest: +SKIP
    >>> result = hwprune.prune(model, torch.zeros(1, 3, 32, 32), device="x86-cpu-ort", lut=lut,
    ...                        speedup=2.0, score_fn=my_metric, finetune_fn=my_train)  # doctest: +SKIP
    >>> result.certified, result.certificate.upper_bound_ms, result.model          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hwprune.errors import HwpruneError, api_errors
from hwprune.lut import LatencyLUT
from hwprune.models.spec import ModelSpec, ModuleSpec, check_example_input
from hwprune.plan import Plan
from hwprune.pruning import PruneOptions, PruneResult, command_line, default_weights
from hwprune.timing import TimingResult
from hwprune.widthsteps import PROCESSES
from profilers.config import load_device_config
from profilers.fileio import atomic_write_json, check_writable
from profilers.stats import TimingStats

_quiet = lambda _m: None  # noqa: E731  (the library is silent unless given a log)


def model_spec(model: nn.Module | str, example_input: torch.Tensor | None = None, *, name: str | None = None,
               input_shape: Sequence[int] | None = None, num_classes: int | None = None,
               weights: str | None = None) -> ModelSpec | ModuleSpec:
    """What to build: the user's module with its example input, or a zoo name / ``file.py:factory``."""
    if input_shape is not None and not (isinstance(input_shape, (tuple, list)) and input_shape
                                        and all(isinstance(d, int) and d >= 1 for d in input_shape)):
        raise HwpruneError(f"input_shape must be positive integers (C, H, W without the batch), got {input_shape!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise HwpruneError(f"--num-classes must be an integer of at least 1, got {num_classes!r}")
    if example_input is not None:
        check_example_input(example_input)
        if input_shape is not None and tuple(input_shape) != tuple(example_input.shape[1:]):
            raise HwpruneError(f"example_input is shaped {tuple(example_input.shape)} but input_shape= says "
                               f"{tuple(input_shape)} (C, H, W without the batch): give one of them, or the same shape")
    if isinstance(model, nn.Module):
        if example_input is None:
            if input_shape is None:
                raise HwpruneError("pass example_input= (e.g. torch.zeros(1, 3, 32, 32)) with your own model")
            example_input = torch.zeros(1, *input_shape)
        return ModuleSpec(model, example_input, name=name, num_classes=num_classes, weights=weights)
    if not isinstance(model, str) or not model.strip():
        raise HwpruneError(f"model must be a torch.nn.Module or a zoo name / file.py:factory, got {model!r}")
    if name is not None:
        raise HwpruneError("name= is for your own nn.Module; a zoo or file model is keyed by its own name")
    if example_input is not None:
        input_shape = tuple(example_input.shape[1:])
    shape = tuple(input_shape) if input_shape is not None else (1, 28, 28)
    if len(shape) != 3:
        raise HwpruneError(f"input_shape must be three positive integers C,H,W, got {shape}")
    return ModelSpec(model, shape, 10 if num_classes is None else num_classes, weights)


def _fields(cls) -> dict[str, Any]:
    """A dataclass's fields and their defaults: keywords for :func:`api_errors`."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _prune_fields() -> dict[str, Any]:
    return _fields(PruneOptions)


# PruneOptions' names that are not the API's keyword: the CLI's --max-memory is max_memory_bytes=.
_PRUNE_FLAGS = {"max_memory": "max_memory_bytes"}


def _regress_fields() -> dict[str, Any]:
    from hwprune.regress import RegressOptions

    return _fields(RegressOptions)


@api_errors(flags={"format": "fmt"})
def profile(model: nn.Module | str, example_input: torch.Tensor | None = None, *, device: str,
            lut: str | LatencyLUT, name: str | None = None, grid: Sequence[float] | str | None = None,
            calibration_samples: int = 10, seed: int = 0, allow_other_device: bool = False,
            input_shape: Sequence[int] | None = None, num_classes: int | None = None, weights: str | None = None,
            fmt: str | None = None, replace: bool = False, show_progress: bool = False,
            staircase_processes: int = PROCESSES, log: Callable[[str], None] = _quiet) -> LatencyLUT:
    """Measure every prunable layer of ``model`` at its channel grid on ``device`` into the LUT ``lut``.

    ``lut`` is a path (created or extended, resumably) or a LUT loaded from one. Returns the
    LUT as saved, with ``.profile_result`` (a :class:`hwprune.profiling.ProfileResult`).
    With ``channel_multiple: auto`` the width steps are those that every one of
    ``staircase_processes`` processes measured (this one and fresh ones).
    """
    from hwprune.profiling import profile as profile_spec

    path = _lut_path(lut)
    check_writable(path, "--lut")
    if calibration_samples < 0:
        raise HwpruneError(f"--calibration-samples must be >= 0, got {calibration_samples}")
    spec = model_spec(model, example_input, name=name, input_shape=input_shape, num_classes=num_classes,
                      weights=weights)
    from hwprune.profiling import parse_ratios

    ratios = parse_ratios(grid) if isinstance(grid, str) else grid   # profile checks the ratios themselves
    result = profile_spec(spec, device, path, ratios=ratios,
                          calibration_samples=calibration_samples, seed=seed, fmt=fmt,
                          allow_other_device=allow_other_device, replace=replace, show_progress=show_progress,
                          staircase_processes=staircase_processes, log=log)
    table = LatencyLUT.load(result.lut_path)
    table.profile_result = result
    return table


@api_errors(options=_prune_fields, flags={**_PRUNE_FLAGS, "budget": "budgets"})
def prune(model: nn.Module | str, example_input: torch.Tensor | None = None, *, device: str,
          lut: str | LatencyLUT | None = None, latency_ms: float | None = None, speedup: float | None = None,
          max_params: float | str | None = None, max_macs: float | str | None = None,
          max_memory_bytes: float | str | None = None, budgets: Sequence[tuple[Any, float]] = (),
          score_fn: Callable[[nn.Module], float] | None = None,
          finetune_fn: Callable[[nn.Module, nn.Module], nn.Module] | None = None,
          data: str | None = None, bn_data: Iterable[Any] | None = None, agent: str | None = None,
          agent_options: dict[str, Any] | None = None, max_evaluations: int = 100, out: str | None = None,
          name: str | None = None, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
          weights: str | None = None, show_progress: bool = False, log: Callable[[str], None] = _quiet,
          **options: Any) -> PruneResult:
    """Prune ``model`` to a budget measured on ``device``, recover it, and certify the measured latency.

    Args:
        model: your ``nn.Module`` (with ``example_input``), or a zoo name / ``file.py:factory``.
        example_input: one input of the model (its batch size is replaced by the device config's).
        device: a shipped device config name (``hwprune devices``) or a YAML path.
        lut: the LUT from :func:`profile` (object or path); needed for a latency budget.
        latency_ms, speedup: the latency budget, absolute or relative to the dense model measured
            beside the pruned one; ``max_params``/``max_macs``/``max_memory_bytes`` (a count or
            ``"15%"`` of dense) and ``budgets`` (``(widths -> float callable, limit)`` pairs) add
            budgets of their own.
        score_fn: ``model -> float``, higher is better: the search objective and the reported
            score (default: the built-in accuracy proxy on ``data``).
        finetune_fn: ``(model, teacher) -> model``: your training loop recovers the pruned model
            (``teacher`` is a frozen copy of the dense one); default: the built-in recipe on
            ``data``, or no recovery without data.
        data: a dataset spec (``fashion-mnist[:DIR]``, ``cifar10:DIR``, ``imagefolder:DIR``) for the
            built-in proxy, recovery and test accuracy.
        bn_data: inputs (or (input, target) batches) on which each candidate's BatchNorm is
            re-estimated before ``score_fn`` scores it.
        agent, agent_options, max_evaluations: the search (default agent ``rl``).
        out: write the run folder here (all files or none); None writes nothing.
        name: the model's name in the LUT (default: class name and a structure hash).
        **options: any other :class:`hwprune.pruning.PruneOptions` field (``finetune``,
            ``finetune_epochs``, ``lr``, ``seed``, ``certify_rounds``, ``overwrite`` ...).

    Returns:
        A :class:`PruneResult`: ``model``, ``certified``, ``certificate``, ``plan``, ``report``.
    """
    from hwprune.task import Task, input_batches

    started = time.perf_counter()
    if not isinstance(model, (nn.Module, str)):
        raise HwpruneError(f"model must be a torch.nn.Module or a zoo name / file.py:factory, got "
                           f"{type(model).__name__}")
    _check_options(options)
    lut = lut if lut is None or isinstance(lut, LatencyLUT) else _lut_path(lut)
    if agent_options is not None and not isinstance(agent_options, dict):
        raise HwpruneError(f"agent_options must be a dict of the agent's settings, got {type(agent_options).__name__}")
    if score_fn is not None and options.get("importance") == "taylor":
        raise HwpruneError("importance='taylor' needs the built-in proxy's loss gradients; with score_fn use "
                           "'l1', 'l2' or 'bn-scale'")
    for given, options_it_voids in ((score_fn, ("val_samples", "proxy_train_steps")),
                                    (finetune_fn, ("finetune", "finetune_epochs", "lr", "batch_size", "kd",
                                                   "kd_temperature", "kd_weight"))):
        unused = [o for o in options_it_voids if o in options]
        if given is not None and unused:
            role = "score_fn" if given is score_fn else "finetune_fn"
            raise HwpruneError(f"{', '.join(unused)} set the built-in {'proxy' if role == 'score_fn' else 'recovery'}, "
                               f"which your {role} replaces; leave them out")
    user_module = isinstance(model, nn.Module)
    if data is None and not user_module and score_fn is None:
        data = "fashion-mnist"  # the CLI's default for zoo models
    opts = PruneOptions(model=model if isinstance(model, str) else "model", device=device,
                        lut=None if lut is None else str(getattr(lut, "path", None) or lut), out=out, data=data,
                        weights=weights, latency_ms=latency_ms, speedup=speedup, max_params=max_params,
                        max_macs=max_macs, max_memory_bytes=max_memory_bytes, budget=_check_budgets(budgets),
                        agent=agent, agent_options=dict(agent_options or {}), max_evaluations=max_evaluations,
                        show_progress=show_progress, **options)
    opts.validate()  # every option before the data load: a bad one costs nothing
    task = Task(None, score_fn, finetune_fn, input_batches(bn_data), data_spec=data)
    datasets = task.data
    if datasets is not None and example_input is None and input_shape is None:
        input_shape = datasets.input_shape
    if datasets is not None and num_classes is None:
        num_classes = datasets.num_classes
    if not user_module and weights is None and data is not None:
        weights = _default_weights(model, data, log)
    spec = model_spec(model, example_input, name=name, input_shape=input_shape, num_classes=num_classes,
                      weights=weights)
    task.check_input_shape(spec.input_shape, "example_input" if example_input is not None else "input_shape")
    for batch in task.bn_batches or []:
        if tuple(batch.shape[1:]) != tuple(spec.input_shape):
            raise HwpruneError(f"bn_data yields batches shaped {tuple(batch.shape)}; the model takes "
                               f"(N, {', '.join(map(str, spec.input_shape))}), as example_input says")
    opts = dataclasses.replace(opts, model=spec.name, weights=weights, input_shape=tuple(spec.input_shape))
    return _run(opts, spec, task, lut=lut, log=log, reproduce=None, started=started)


@api_errors(options=_prune_fields, flags=_PRUNE_FLAGS)
def prune_options(opts: PruneOptions, log: Callable[[str], None] = print) -> PruneResult:
    """``hwprune prune``: a zoo or file model on a built-in dataset, from the CLI's options."""
    from hwprune.task import Task

    started = time.perf_counter()
    opts.validate()  # before the data load: a bad flag costs nothing
    task = Task(data_spec=opts.data)
    weights = opts.weights or _default_weights(opts.model, opts.data, log)
    spec = ModelSpec(opts.model, tuple(opts.input_shape or task.data.input_shape), task.data.num_classes, weights)
    task.check_input_shape(spec.input_shape, "--input-shape")
    return _run(dataclasses.replace(opts, weights=weights), spec, task, lut=opts.lut, log=log,
                reproduce=command_line(opts), started=started)


def _default_weights(model: str, data: str, log: Callable[[str], None]) -> str | None:
    """The committed checkpoint for a zoo model on a dataset; a warning (rank 0 only) when there is none.
    A ``file.py:factory`` model gets no warning: its factory may load its own weights."""
    weights = default_weights(model, data)
    from_file = model.rpartition(":")[0].endswith(".py")
    if weights is None and not from_file and int(os.environ.get("RANK", "0") or 0) == 0:
        log(f"warning: no weights for {model} on {data}: pruning a randomly initialised model "
            f"(train one with `hwprune pretrain`)")
    return weights


def _check_options(options: dict[str, Any]) -> None:
    """``**options`` of :func:`prune`: ``PruneOptions`` fields that have no keyword of their own."""
    import inspect

    fields = {f.name for f in dataclasses.fields(PruneOptions)}
    keywords = set(inspect.signature(prune).parameters) - {"model", "example_input", "options"}
    own = fields & keywords  # set through prune's own keywords
    if "budget" in options:
        raise HwpruneError("budget= is spelt budgets= here: a list of (function of the widths, limit) pairs")
    unknown = sorted(set(options) - (fields - own))
    if unknown:
        import difflib

        known = sorted((fields - own) | keywords)
        hints = [f"{u} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(u, known, 1)) else u
                 for u in unknown]
        raise HwpruneError(f"unknown option(s) {', '.join(hints)}; prune takes: {', '.join(known)}")


def _check_budgets(budgets: Any) -> list[tuple[Any, float]]:
    """``budgets=[(fn, limit), ...]``: each fn a callable, ``module:function`` or ``BudgetFunction``."""
    from hwprune.budgets import BudgetFunction

    pairs = []
    for b in budgets if isinstance(budgets, (list, tuple)) else [None]:
        if isinstance(b, BudgetFunction):
            b = (b, b.limit)
        if not (isinstance(b, (list, tuple)) and len(b) == 2 and (callable(b[0]) or isinstance(b[0], str))
                and isinstance(b[1], (int, float)) and not isinstance(b[1], bool)):
            raise HwpruneError("budgets= must be a list of (function of the widths dict, limit) pairs, "
                               f"e.g. [(my_cost, 1e6)]; got {budgets!r}"[:200])
        pairs.append((b[0], float(b[1])))
    return pairs


def _run(opts: PruneOptions, spec: ModelSpec | ModuleSpec, task, *, lut, log, reproduce, started) -> PruneResult:
    from hwprune.pruning import run

    return run(opts, spec, task, lut=lut, num_classes=spec.num_classes, reproduce=reproduce, log=log,
               started=started)


@api_errors
def apply_plan(model: nn.Module | str, plan: str | Plan | Mapping[str, Sequence[int]],
               example_input: torch.Tensor | None = None, *,
               weights: str | None = None, input_shape: Sequence[int] | None = None,
               num_classes: int | None = None, dense_weights: str | None = None) -> nn.Module:
    """The pruned model rebuilt from ``plan.json`` (or a run's ``result.plan``, or a plain mapping
    group -> kept channel indices, whose other groups stay dense) on the dense ``model`` (no unpickling).

    ``weights`` is the run's ``pruned.pt``; ``dense_weights`` a dense checkpoint for a zoo model.
    """
    from hwprune.models import load_weights
    from hwprune.plan import apply_plan as apply_to_spec

    if weights and dense_weights:
        raise HwpruneError("give --weights (the run's pruned.pt) or --dense-weights (a dense checkpoint to cut), "
                           "not both")
    if isinstance(model, nn.Module):
        spec = model_spec(model, example_input, input_shape=input_shape)
        loaded, where = Plan.given(plan)
        made_for = tuple(loaded.input_shape[1:]) if loaded.input_shape else None
        if made_for and made_for != tuple(spec.input_shape):   # as the CLI and a named model refuse it
            raise HwpruneError(f"{where} was made for input shape {made_for}, not the example input's "
                               f"{tuple(spec.input_shape)}: give an example input of shape (1, "
                               + ", ".join(map(str, made_for)) + ")")
        pruned = loaded.apply(spec.build(), spec.example_input(1), where)
        if weights:
            load_weights(pruned, weights)
        return pruned.eval()
    if example_input is None and (input_shape is None or num_classes is None):
        # what the plan was made for, unless told otherwise (the checks in apply_to_spec then agree)
        loaded, _ = Plan.given(plan)
        if input_shape is None and len(loaded.input_shape) == 4:
            input_shape = tuple(int(d) for d in loaded.input_shape[1:])
        if num_classes is None and loaded.num_classes is not None:
            num_classes = int(loaded.num_classes)
    spec = model_spec(model, example_input, input_shape=input_shape, num_classes=num_classes, weights=dense_weights)
    return apply_to_spec(spec, plan, weights)


@api_errors(flags={"json": "json_path"})
def time_model(onnx_path: str, device: str, json_path: str | None = None, processes: int = 1) -> TimingResult:
    """Time one ONNX file on a device config: a :class:`~hwprune.timing.TimingResult` (the device,
    the timing and its interval, the environment; also a mapping of the ``--json`` form).

    With ``processes`` > 1 the model is timed in that many fresh processes one after another
    (:mod:`hwprune.processes`): ``timing`` pools every process's samples and
    ``across_processes`` gives each process's statistic and their spread, and, when the machine
    switched speed states (:mod:`profilers.machine_state`), the same per state. In one process,
    ``by_machine_state`` gives the timing in each state the machine switched between (empty: one).

    Example:
        >>> from hwprune import api
        >>> r = api.time_model("model.onnx", "x86-cpu-ort")  # doctest: +SKIP
        >>> r.p50_ms, r.ci_ms, r.timing.n  # doctest: +SKIP
    """
    from hwprune.processes import check_processes
    from hwprune.states import state_timings
    from profilers.environment import collect_manifest
    from profilers.machine_state import probe_us
    from profilers.runners import make_runner

    cfg = load_device_config(device)
    check_processes(processes)
    if json_path:
        check_writable(json_path, "--json", "json")
    if processes > 1 or cfg.remote is not None:
        result = _time_in_processes(onnx_path, cfg, processes) if processes > 1 else _time_remote(onnx_path, cfg)
        if json_path:
            atomic_write_json(json_path, result.to_dict())
        return result
    model = onnx_path
    if cfg.backend == "torch-cuda":  # it loads torch.export programs: convert the ONNX here
        from hwprune.torch_program import for_device

        model = for_device(_read_onnx(onnx_path), cfg.backend)
    with make_runner(model, cfg, name=onnx_path) as runner:
        stats = runner.measure(probe=probe_us)   # each sample's machine state (profilers.machine_state)
        extra = dict(runner.extra_timings())
    inputs = [{"name": i.name, "shape": list(i.shape), "dtype": str(i.dtype)} for i in getattr(runner, "inputs", [])]
    result = TimingResult(cfg.name, onnx_path, stats, runner.timed_scope, state_timings(stats.to_dict(), cfg), extra,
                          inputs, _batch_warnings(inputs, cfg), collect_manifest(cfg))
    if json_path:
        atomic_write_json(json_path, result.to_dict())
    return result


def _batch_warnings(inputs: list[dict[str, Any]], cfg) -> list[str]:
    """An ONNX file exported with a fixed batch is timed at that batch, whatever the device config says."""
    fixed = sorted({i["shape"][0] for i in inputs if i["shape"]} - {cfg.batch_size})
    if not fixed:
        return []
    return [f"the model's input batch is fixed at {', '.join(map(str, fixed))} and {cfg.name} says batch_size "
            f"{cfg.batch_size}: it was timed at the model's batch (export with a dynamic batch axis to time it at "
            "the device's)"]


def _read_onnx(onnx_path: str) -> bytes:
    from profilers.fileio import read_model_file

    return read_model_file(onnx_path, "ONNX file")


def _time_in_processes(onnx_path: str, cfg, processes: int) -> TimingResult:
    """``hwprune time --processes N``: the model in N fresh processes, each process's figures and the spread."""
    from hwprune.processes import measure_in_processes, spread, state_spreads
    from profilers.environment import collect_manifest
    from profilers.remote import check_reachable
    from profilers.runners import runner_class
    from profilers.stats import summarize

    blob = _read_onnx(onnx_path)
    check_reachable(cfg)
    runs = measure_in_processes([("model", blob)], cfg, processes)
    samples = [s for r in runs for s in r["model"]["samples_ms"]]
    pooled = summarize(samples, cfg.statistic, cfg.confidence, cfg.cv_threshold, cfg.rel_ci)
    across = {**spread(runs, "model", cfg.statistic).to_dict(),
              "per_process": [{k: v for k, v in r["model"].items() if k not in ("samples_ms", "sample_states")}
                              for r in runs],
              "by_machine_state": [s.to_dict() for s in state_spreads(runs, "model", cfg)]}
    return TimingResult(cfg.name, onnx_path, pooled, runner_class(cfg).timed_scope,
                        environment=collect_manifest(cfg) if cfg.remote is None else {},
                        processes=processes, across_processes=across)


def _time_remote(onnx_path: str, cfg) -> TimingResult:
    """Time one ONNX file on a remote device through a bundle (as ``profile`` does), with that
    device's own environment manifest."""
    from profilers.scratch import scratch
    from pathlib import Path

    from hwprune.measure import time_items
    from profilers.remote import check_reachable

    blob = _read_onnx(onnx_path)
    check_reachable(cfg)
    key = Path(onnx_path).name
    records: dict[str, dict[str, Any]] = {}

    def on_record(rec: dict[str, Any]) -> None:
        if rec.get("type") == "error":
            raise HwpruneError(f"{onnx_path} failed on {cfg.name}: {rec['error']}")
        records.setdefault(rec.get("type"), rec)

    with scratch("time") as work:
        time_items([(key, blob, {})], cfg, work, on_record)
    row, session = records.get("row"), records.get("session", {})
    if row is None:
        raise HwpruneError(f"{cfg.name} returned no timing for {onnx_path}")
    from hwprune.states import state_timings

    return TimingResult(cfg.name, onnx_path, TimingStats.from_dict(row["timing"]), row.get("timed_scope"),
                        state_timings(row["timing"], cfg),
                        {k: TimingStats.from_dict(v) for k, v in row.get("extra", {}).items()},
                        environment=session.get("environment", {}))


def _lut_path(lut: str | LatencyLUT) -> str:
    if isinstance(lut, LatencyLUT):
        if lut.path is None:
            raise HwpruneError("lut= must be a path or a LUT loaded from one (this LUT has no file)")
        return str(lut.path)
    if not isinstance(lut, (str, bytes)) and not hasattr(lut, "__fspath__"):
        raise HwpruneError(f"lut= must be a path or a LatencyLUT, got {type(lut).__name__}")
    return str(lut)


def devices() -> list:
    """The shipped device configs (``device_configs/*.yaml``), loaded and checked."""
    from profilers.config import shipped_configs

    return [load_device_config(n) for n in shipped_configs()]


@dataclasses.dataclass
class LutSummary:
    """A LUT's device and one model's per-unit latency at its dense widths (``hwprune lut show``)."""

    path: str
    device: str | None
    fingerprint: str | None
    signatures: int
    model_key: str
    statistic: str
    units: list[dict[str, Any]]   # unit, ops, widths, latency_ms
    raw_ms: float                 # the units' sum plus the per-call overhead
    predicted_ms: float           # the calibrated prediction for the dense model
    width_grid: dict[str, Any] = dataclasses.field(default_factory=dict)  # the widths a search may choose, and why


@api_errors(flags={"model": "model_key"})
def lut_show(lut: str | LatencyLUT, model_key: str | None = None) -> LutSummary:
    """What a LUT holds for one model (``model_key`` may be left out when it holds only one)."""
    from hwprune.lut import unit_breakdown

    table = lut if isinstance(lut, LatencyLUT) else LatencyLUT.load(_lut_path(lut))
    models = sorted(table.meta["models"])
    if model_key is None:
        if not models:
            raise HwpruneError(f"the LUT holds no profiled model yet ({len(table.rows)} rows measured): "
                               f"finish its profile with `hwprune profile`")
        if len(models) != 1:
            raise HwpruneError(f"the LUT holds {len(models)} models; pick one with --model ({', '.join(models)})")
        model_key = models[0]
    from hwprune.widthsteps import report_section, staircases_of

    pred = table.predictor(model_key)
    m = table.model(model_key)
    return LutSummary(str(table.path or "LUT"), table.meta.get("device"), table.meta.get("fingerprint"),
                      len(table.rows), model_key, pred.statistic, unit_breakdown(table, model_key),
                      pred.predict_raw({}), pred.predict({}),
                      report_section(staircases_of(m), m.get("channel_multiple", 1),
                                     {g["name"]: g.get("step", 1) for g in m.get("groups", [])}))


@api_errors(flags={"json": "json_path"})
def lut_check(model: nn.Module | str, example_input: torch.Tensor | None = None, *, device: str, lut: str,
              samples: int = 50, seed: int = 0, name: str | None = None, input_shape: Sequence[int] | None = None,
              num_classes: int | None = None, weights: str | None = None, calibration_samples: int = 8,
              allow_other_device: bool = False, json_path: str | None = None,
              show_progress: bool = False) -> dict[str, Any]:
    """Measure ``samples`` random sub-networks end to end and compare them with the LUT's predictions,
    calibrated first on ``calibration_samples`` other sub-networks measured in this process."""
    from hwprune.lutcheck import lut_check as check

    if json_path:
        check_writable(json_path, "--json", "json")
    spec = model_spec(model, example_input, name=name, input_shape=input_shape, num_classes=num_classes,
                      weights=weights)
    return check(spec, device, _lut_path(lut), samples=samples, seed=seed, calibration_samples=calibration_samples,
                 allow_other_device=allow_other_device, json_path=json_path, show_progress=show_progress)


def _pretrain_fields() -> dict[str, Any]:
    import inspect

    from hwprune.pretrain import pretrain as train_dense

    return {p.name: p.default for p in inspect.signature(train_dense).parameters.values()}


@api_errors(options=_pretrain_fields)
def pretrain(model: str, data: str = "fashion-mnist", **kw: Any):
    """Train a dense model from scratch (see :func:`hwprune.pretrain.pretrain`)."""
    from hwprune.errors import check_call
    from hwprune.pretrain import pretrain as train_dense

    check_call(train_dense, (model, data), kw, "hwprune.api.pretrain")
    return train_dense(model, data, **kw)


@api_errors(options=_regress_fields)
def regress(options, log: Callable[[str], None] = _quiet) -> dict[str, Any]:
    """Re-measure a model or LUT rows and test for a latency regression (see :mod:`hwprune.regress`)."""
    from hwprune.regress import regress as check

    return check(options, log=log)
