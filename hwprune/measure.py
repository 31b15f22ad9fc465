"""Timing ONNX models on the configured device, locally or over SSH, through one bundle path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from profilers.config import DeviceConfig


def time_items(items: Sequence[tuple[str, bytes, dict[str, Any]]], cfg: DeviceConfig, work_dir: str | Path,
               on_record: Callable[[dict[str, Any]], None]) -> None:
    """Write ``items`` as a bundle in ``work_dir`` and time it where ``cfg`` says.

    ``work_dir/results.jsonl`` is the journal: records already there are re-emitted and not
    measured again, so an interrupted call resumes. Records are passed to ``on_record`` as
    they arrive (see ``profilers.bundle`` for their shape).
    """
    from profilers.bundle import write_bundle

    work = Path(work_dir)
    write_bundle(work, cfg, items)
    results = work / "results.jsonl"
    if cfg.remote is None:
        from profilers.bundle import run_bundle

        run_bundle(work, cfg, results_path=results, on_row=on_record)
    else:
        from profilers.remote import profile_remote

        profile_remote(work, cfg, results, on_row=on_record)


def statistic_ms(timing: dict[str, Any], statistic: str) -> float:
    """The configured statistic of a TimingStats dict."""
    return float(timing["mean_ms"] if statistic == "mean" else timing[f"{statistic}_ms"])


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, unit="model", desc=desc, disable=not enabled, dynamic_ncols=True)
