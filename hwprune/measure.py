"""Timing ONNX models on the configured device, locally or over SSH, through one bundle path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from profilers.config import DeviceConfig


def device_items(items: Sequence[tuple], cfg: DeviceConfig) -> list[tuple]:
    """``(key, blob, ...)`` items with each blob in the form ``cfg``'s backend loads.

    Candidates are ONNX everywhere in hwprune; the torch-cuda backend loads torch.export
    programs instead, converted here, at the one place items leave for a device.
    """
    if cfg.backend != "torch-cuda":
        return list(items)
    from hwprune.torch_program import for_device

    return [(item[0], for_device(item[1], cfg.backend), *item[2:]) for item in items]


def time_items(items: Sequence[tuple[str, bytes, dict[str, Any]]], cfg: DeviceConfig, work_dir: str | Path,
               on_record: Callable[[dict[str, Any]], None], fresh_process: bool = False) -> None:
    """Write ``items`` as a bundle in ``work_dir`` and time it where ``cfg`` says.

    ``work_dir/results.jsonl`` is the journal: records already there are re-emitted and not
    measured again, so an interrupted call resumes. Records are passed to ``on_record`` as
    they arrive (see ``profilers.bundle`` for their shape). ``fresh_process``: a local device
    times the bundle in a new interpreter instead of this one (a remote device always does).
    """
    from profilers.bundle import write_bundle

    work = Path(work_dir)
    write_bundle(work, cfg, device_items(items, cfg))
    results = work / "results.jsonl"
    if cfg.remote is None and fresh_process:
        _run_bundle_process(work, results, on_record)
    elif cfg.remote is None:
        from profilers.bundle import run_bundle

        run_bundle(work, cfg, results_path=results, on_row=on_record)
    else:
        from profilers.remote import profile_remote

        profile_remote(work, cfg, results, on_row=on_record)


def _run_bundle_process(work: Path, results: Path, on_record: Callable[[dict[str, Any]], None]) -> None:
    """``python -m profilers run`` on the bundle in ``work``, its records streamed to ``on_record``."""
    import json
    import subprocess
    import sys

    from hwprune.errors import HwpruneError
    from hwprune.processes import child_env
    from profilers.remote import ROW_PREFIX

    command = [sys.executable, "-m", "profilers", "run", str(work), "--results", str(results)]
    with open(work / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env())
        try:
            for line in proc.stdout:
                if line.startswith(ROW_PREFIX):
                    try:
                        record = json.loads(line[len(ROW_PREFIX):])
                    except json.JSONDecodeError:
                        continue  # a line cut off as the process died: its exit status says what happened
                    on_record(record)
        finally:
            if proc.poll() is None:  # on_record raised, or we were interrupted: the journal resumes
                proc.kill()
            proc.wait()
        if proc.returncode != 0:
            err.seek(0)
            last = (err.read().strip().splitlines() or ["no message"])[-1]
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exit code {proc.returncode}")
            raise HwpruneError(f"the measuring process failed ({how}): {last}")


def statistic_ms(timing: dict[str, Any], statistic: str) -> float:
    """The configured statistic of a TimingStats dict."""
    return float(timing["mean_ms"] if statistic == "mean" else timing[f"{statistic}_ms"])


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, unit="model", desc=desc, disable=not enabled, dynamic_ncols=True)


REFERENCE_KEY = "__reference__"


def measure_many(items: Sequence[tuple[str, bytes]], cfg: DeviceConfig, desc: str = "measuring",
                 show_progress: bool = True, with_reference: bool = False) -> dict[str, dict[str, Any]]:
    """Time whole models; returns ``{key: TimingStats dict}`` (with samples).

    On a local device the models are timed interleaved, in short bursts round-robin, so a
    change of machine state (a neighbour's load, a frequency step) hits all of them alike
    instead of biasing whichever model was being timed at that moment. A remote device
    times them one after the other through a bundle.
    """
    from profilers.scratch import scratch

    from hwprune.errors import HwpruneError

    if not items:
        return {}
    items = device_items(items, cfg)
    if cfg.remote is None:
        from contextlib import ExitStack

        from profilers.interleave import measure_interleaved
        from profilers.runners import make_runner

        from profilers.runners import REFERENCE_ONNX

        keyed = list(items) + ([(REFERENCE_KEY, str(REFERENCE_ONNX))] if with_reference else [])
        with ExitStack() as stack:
            runners = [stack.enter_context(make_runner(blob, cfg, name=key)) for key, blob in keyed]
            bar = progress_bar(len(keyed), desc, show_progress)
            # models converged so far; a model's interval can widen again, and the bar never goes back
            stats = measure_interleaved(runners, on_round=lambda done: bar.update(max(0, done - bar.n)))
            bar.update(len(keyed) - bar.n)  # done: every model converged or the time limit was reached
            bar.close()
        return {key: s.to_dict() for (key, _), s in zip(keyed, stats)}
    out: dict[str, dict[str, Any]] = {}
    bar = progress_bar(len(items), desc, show_progress)

    def on_record(rec: dict[str, Any]) -> None:
        if rec.get("type") == "row":
            out[rec["key"]] = rec["timing"]
            bar.update(1)
        elif rec.get("type") == "error":
            raise HwpruneError(f"model {rec['key']} failed on {cfg.name}: {rec['error']}")

    try:
        with scratch("measure") as work:
            if with_reference:
                from profilers.runners import REFERENCE_ONNX

                items = list(items) + device_items([(REFERENCE_KEY, REFERENCE_ONNX.read_bytes())], cfg)
            time_items([(k, b, {}) for k, b in items], cfg, work, on_record)
    finally:
        bar.close()
    return out


def drift_factor(lut, timings: dict[str, dict[str, Any]], statistic: str) -> float:
    """How much faster than now the machine typically was while the LUT was measured.

    Multiply a time measured now by this to compare it with LUT predictions; 1.0 when either
    side lacks the drift reference.
    """
    typical = lut.reference_ms(lut.meta.get("fingerprint"), statistic) if lut.meta.get("fingerprint") else None
    now = timings.get(REFERENCE_KEY)
    if not typical or not now:
        return 1.0
    return typical / statistic_ms(now, statistic)
