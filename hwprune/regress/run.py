"""The entry point: ``regress`` runs the check the options describe (or writes a baseline) and its outputs."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hwprune.baseline import (BASELINE_REFERENCE_KEY, BASELINE_SAMPLES, _sha256, input_difference, load_baseline,
                              make_baseline, onnx_inputs, reference_graph)
from hwprune.errors import HwpruneError, check_integer
from hwprune.processes import check_processes
from hwprune.regress.compare import MIN_RESAMPLES, NORMALISED, RAW, STATISTICS, VERDICT_EXIT, overall_verdict
from hwprune.regress.environment import _environment_check, _local_environment
from hwprune.regress.lut_drift import regress_lut
from hwprune.regress.options import RegressOptions, _check_outputs, _check_statistics, command_line, parse_tolerance
from hwprune.regress.report import RESULT_FORMAT, write_outputs
from hwprune.regress.sampler import BASELINE, CANDIDATE, _measure_until_decided, open_sampler, sampled_timing
from profilers.config import DeviceConfig, load_device_config
from profilers.fileio import atomic_write_json
from profilers.remote import check_reachable

NO_REFERENCE_WARNING = ("the baseline holds no drift reference (written by an older hwprune): the comparison "
                        "is raw, exposed to process-level drift (docs/BENCHMARKS.md); re-write it with "
                        "--write-baseline, or prefer --against")

# Two sessions of one model in one process differ by this much at the 90th percentile
# (issue 19's state_costs benchmark: median 0.74%, p90 2.04%): the interval of the ratio covers
# the sampling noise of each session, not this, so a tighter tolerance can flag an unchanged model.
SESSION_SPREAD = 0.02


def _read_model(path: str, what: str = "model") -> bytes:
    p = Path(path)
    if not p.is_file():
        raise HwpruneError(f"{what} not found: {p}")
    try:
        return p.read_bytes()
    except OSError as err:
        raise HwpruneError(f"{p}: cannot read {what}: {err.strerror}") from None


def regress(opts: RegressOptions, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the check ``opts`` describe, write the requested outputs, return the result dict.

    Raises ``HwpruneError`` for bad input or an environment change (nothing written then).
    The result's ``verdict`` and ``exit_code`` follow the rules in ``hwprune.regress``'s docstring.
    """
    mode = opts.mode
    _check_outputs(opts)
    if opts.resamples < MIN_RESAMPLES:
        raise HwpruneError(f"--resamples must be at least {MIN_RESAMPLES}, got {opts.resamples}")
    if not 0.5 <= opts.confidence < 1:
        raise HwpruneError(f"--confidence must lie in [0.5, 1), got {opts.confidence}")
    if not 0 < opts.max_seconds < math.inf:  # the sampler plans its rounds within it
        raise HwpruneError(f"--max-seconds must be a positive, finite number of seconds, got {opts.max_seconds}")
    check_integer(opts.seed, "--seed", 0)
    statistics = _check_statistics(opts.statistics)
    check_processes(opts.processes)
    if opts.processes > 1 and mode not in ("baseline", "against"):
        raise HwpruneError("--processes applies to a model check (--baseline or --against)")
    if mode == "write-baseline":
        return write_baseline(opts, statistics, log)
    tolerance = parse_tolerance(opts.tolerance)
    cfg = load_device_config(opts.device)
    check_reachable(cfg)  # a remote device: before any local work
    if mode == "lut":
        result = regress_lut(opts, cfg, tolerance, statistics, log)
    elif opts.processes > 1:
        from hwprune.regress.processes import regress_in_processes

        result = regress_in_processes(opts, log)
    else:
        result = _regress_model(opts, cfg, tolerance, statistics, mode, log)
    result["command"] = command_line(opts)
    write_outputs(result, opts)
    return result


def write_baseline(opts: RegressOptions, statistics: Sequence[str] = (),
                   log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Time ``opts.model`` on the device and write a baseline in ``hwprune prune``'s format."""
    from profilers.stats import summarize

    if not opts.model:
        raise HwpruneError("--write-baseline needs --model (the ONNX file to time)")
    if opts.junit or opts.markdown:  # before the minute of timing: they would not be written
        raise HwpruneError(f"{'--junit' if opts.junit else '--markdown'} reports a comparison and --write-baseline "
                           "compares nothing; --json takes its result")
    cfg = load_device_config(opts.device)
    check_reachable(cfg)
    blob = _read_model(opts.model)
    ref_name, ref_blob = reference_graph()
    env = _local_environment(cfg)
    # The drift reference is timed interleaved with the model, so that a later check can
    # tell this process's speed level from a change of the model (hwprune.regress's docstring).
    sampler = open_sampler([(CANDIDATE, blob), (BASELINE_REFERENCE_KEY, ref_blob)], cfg)
    try:
        start = time.perf_counter()
        # One take, so that every sample is from this one process (a remote sampler starts a
        # process per take); the time limit applies once BASELINE_SAMPLES are in.
        sampler.take(max(cfg.min_repeats, BASELINE_SAMPLES), cfg.max_seconds * 2, first=True)
        env = env or sampler.environment
    finally:
        sampler.close()
    seconds = time.perf_counter() - start
    # each sample's machine state goes with it, so that a later check compares state by state
    timing, ref_timing = ({**summarize(sampler.samples[k], cfg.statistic, cfg.confidence, cfg.cv_threshold,
                                       cfg.rel_ci, total_s=seconds).to_dict(), **sampled_timing(sampler, k)}
                          for k in (CANDIDATE, BASELINE_REFERENCE_KEY))
    out = Path(opts.write_baseline)
    rel = os.path.relpath(Path(opts.model).resolve(), out.resolve().parent)
    baseline = make_baseline(blob, rel, cfg.name, statistics[0] if statistics else cfg.statistic, timing, env,
                             reference=ref_timing)
    _say_replaced(out, log)
    atomic_write_json(out, baseline)
    result = {"kind": "write-baseline", "verdict": "written", "exit_code": 0, "path": str(out), "device": cfg.name,
              "model": opts.model, "timing": {k: v for k, v in timing.items() if k != "samples_ms"},
              "reference": {"model": ref_name,
                            "timing": {k: v for k, v in ref_timing.items() if k != "samples_ms"}},
              "command": command_line(opts)}
    if opts.json:
        atomic_write_json(opts.json, result)
    return result


def _say_replaced(out: Path, log: Callable[[str], None]) -> None:
    """A baseline written over another is said: in CI, --write-baseline where --baseline was
    meant would otherwise replace the reference without a word."""
    if not out.is_file():
        return
    try:
        import json

        old = json.loads(out.read_text())
        what = f" (of {old['model']}, {old['statistic']} on {old['device']})"
    except (OSError, ValueError, KeyError, TypeError):
        what = ""
    log(f"replacing the baseline in {out}{what}")


def _drift_reference(baseline: dict[str, Any], warnings: list[str]) -> tuple[bytes | None, dict[str, Any] | None]:
    """The drift reference graph to time beside the model and the baseline's timing of it; (None,
    None), with a warning, when the baseline holds none or another hwprune's."""
    drift_name, drift_blob = reference_graph()
    stored = baseline.get("reference")
    if stored is None:
        warnings.append(NO_REFERENCE_WARNING)
        return None, None
    if stored["onnx_sha256"] != _sha256(drift_blob):
        warnings.append(f"the baseline's drift reference ({stored.get('model')}, sha256 "
                        f"{stored['onnx_sha256'][:12]}) is not this hwprune's {drift_name}: the comparison is "
                        "raw, exposed to process-level drift; re-write the baseline with --write-baseline")
        return None, None
    return drift_blob, stored["timing"]


def _stored_baseline(opts: RegressOptions, cfg: DeviceConfig, statistics: list[str],
                     warnings: list[str]) -> tuple[dict[str, Any], str, list[str]]:
    """``--baseline``'s record, the model file it names (unless ``--model``) and the statistics to check."""
    baseline = load_baseline(opts.baseline)
    if baseline["device"] != cfg.name:
        # the name of a config, not the machine: a renamed config of the same device is allowed as
        # a changed fingerprint is, and the fingerprint check still says what differs
        if not opts.allow_env_change:
            raise HwpruneError(f"{opts.baseline}: baseline was measured on device '{baseline['device']}', not "
                               f"'{cfg.name}'; compare against a baseline from the same device, or pass "
                               "--allow-env-change if it is")
        warnings.append(f"the baseline was measured on device '{baseline['device']}' and this is '{cfg.name}' "
                        "(--allow-env-change)")
    model_path = opts.model or str(Path(opts.baseline).parent / str(baseline.get("model") or ""))
    if not opts.model and not baseline.get("model"):
        raise HwpruneError(f"{opts.baseline}: names no model file; give --model")
    statistics = statistics or [baseline.get("statistic") if baseline.get("statistic") in STATISTICS
                                else cfg.statistic]
    return baseline, model_path, statistics


def _regress_model(opts: RegressOptions, cfg: DeviceConfig, tolerance: float, statistics: list[str], mode: str,
                   log: Callable[[str], None]) -> dict[str, Any]:
    baseline = None
    warnings: list[str] = []
    if mode == "baseline":
        baseline, model_path, statistics = _stored_baseline(opts, cfg, statistics, warnings)
    else:
        if not opts.model:
            raise HwpruneError("--against needs --model (the ONNX file to check)")
        model_path = opts.model
        statistics = statistics or [cfg.statistic]
    blob = _read_model(model_path)
    ref_blob = _read_model(opts.against, "--against model") if mode == "against" else None
    if tolerance < SESSION_SPREAD:
        warnings.append(f"--tolerance {tolerance:.1%} is within the {SESSION_SPREAD:.0%} by which two runtime "
                        f"sessions of one unchanged model can differ (docs/BENCHMARKS.md: median 0.7%, p90 2.0%), "
                        f"which no number of samples removes: an unchanged model may read as regressed")
    drift_blob, base_ref = _drift_reference(baseline, warnings) if baseline is not None else (None, None)
    changed_inputs = input_difference(baseline.get("inputs") if baseline is not None else onnx_inputs(ref_blob),
                                      onnx_inputs(blob))
    if changed_inputs:   # a change of resolution is a fair question; a mistyped --model is not
        warnings.append(f"the model's inputs differ from the {'baseline' if baseline is not None else '--against model'}"
                        f"'s ({changed_inputs}): this compares two different workloads")

    now_env = _local_environment(cfg)
    env_info = None
    if baseline is not None and now_env is not None:
        env_info = _environment_check(baseline.get("environment"), baseline.get("fingerprint"), now_env,
                                      f"the baseline {opts.baseline}", opts.allow_env_change)

    for w in warnings:  # after the checks that may refuse: an error stays one line
        log(f"warning: {w}")
    # A/B order: the reference first in every round. The drift reference follows the model,
    # as when the baseline was written.
    if ref_blob is not None:
        items = [(BASELINE, ref_blob), (CANDIDATE, blob)]
    else:
        items = [(CANDIDATE, blob)] + ([(BASELINE_REFERENCE_KEY, drift_blob)] if drift_blob is not None else [])
    log(f"measuring {model_path} on {cfg.name}" + (f" interleaved with {opts.against}" if ref_blob else "")
        + (" interleaved with the drift reference" if drift_blob is not None else ""))
    sampler = open_sampler(items, cfg)
    try:
        base_timing = baseline["timing"] if baseline is not None else None
        comps, info = _measure_until_decided(sampler, cfg, statistics, tolerance, opts, base_timing, log, base_ref)
        if now_env is None:  # remote: the device's manifest arrives with the first measurement
            now_env = sampler.environment
            if baseline is not None:
                env_info = _environment_check(baseline.get("environment"), baseline.get("fingerprint"), now_env,
                                              f"the baseline {opts.baseline}", opts.allow_env_change)
    finally:
        sampler.close()
    if env_info is None:  # --against: nothing stored to compare the environment with
        from profilers.environment import fingerprint

        env_info = {"fingerprint_now": fingerprint(now_env) if now_env else None, "fingerprint_baseline": None,
                    "fingerprint_changed": False, "differences": []}
    verdict = overall_verdict([c.verdict for c in comps])
    sha = _sha256(blob)
    result: dict[str, Any] = {
        "format": RESULT_FORMAT, "kind": "model", "mode": mode, "device": cfg.name, "model": model_path,
        "model_sha256": sha, "verdict": verdict, "exit_code": VERDICT_EXIT[verdict], "tolerance": tolerance,
        "confidence": opts.confidence, "resamples": opts.resamples, "seed": opts.seed,
        "ratio_measure": NORMALISED if base_ref is not None else RAW,
        "comparisons": [c.to_dict() for c in comps], "measurement": info, "environment": env_info,
        "warnings": warnings, "created_unix_s": time.time(),
    }
    if baseline is not None:
        result["baseline"] = {"path": opts.baseline, "model": baseline.get("model"),
                              "onnx_sha256": baseline.get("onnx_sha256"), "created_unix_s": baseline.get("created_unix_s"),
                              "statistic": baseline.get("statistic"),
                              "reference": ({k: v for k, v in baseline["reference"].items() if k != "timing"}
                                            if baseline.get("reference") else None)}
        # A different model is the point of a regression check; it is recorded, not refused.
        result["model_changed"] = baseline.get("onnx_sha256") != sha
    else:
        result["baseline"] = {"path": opts.against, "onnx_sha256": _sha256(ref_blob)}
        result["model_changed"] = _sha256(ref_blob) != sha
    from profilers.stats import summarize

    result["timings"] = {k: summarize(v, statistics[0], cfg.confidence, cfg.cv_threshold, cfg.rel_ci)
                         .to_dict(with_samples=False) for k, v in sampler.samples.items()}
    result["samples_ms"] = {k: list(v) for k, v in sampler.samples.items()}
    return result

