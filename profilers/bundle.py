"""Profiling bundles: a folder of ONNX candidates plus a manifest, and the resumable loop that times them.

A bundle is what the host ships to a device. It is a folder::

    manifest.json   {"format": 1, "config": DeviceConfig.to_dict(),
                     "items": [{"key": str, "file": "onnx/<name>.onnx", "meta": {...}}, ...]}
    onnx/*.onnx     (for the torch-cuda backend: onnx/*.pt2, torch.export programs)

``run_bundle`` times every item in one process and streams one record per result. Records
are appended to a JSON-lines results file (flushed and fsynced per record), so a run that
is killed loses no finished row and a second run measures only what is missing. Records:

- ``{"type": "session", "session": id, "overhead": TimingStats dict (no samples),
  "environment": {...}, "fingerprint": str, "config": {...}, "started_unix_s": float}``
  once per run that measures anything: the runtime's per-call overhead and where it ran;
- ``{"type": "row", "key", "meta", "timing": TimingStats dict (with samples),
  "extra": {name: TimingStats dict}, "timed_scope": str, "session": id}`` per item;
- ``{"type": "error", "key", "error": one line, "session": id}`` for an item that cannot be
  timed (missing or corrupt ONNX). Errors are reported but not stored, so a later run
  tries the item again; the host decides what to do with it.

Example:
    >>> from profilers.bundle import write_bundle, run_bundle     # doctest: +SKIP
    >>> write_bundle("b", cfg, [("conv-64", onnx_bytes, {"op": "conv"})])
    >>> rows = run_bundle("b", results_path="b/results.jsonl")
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from profilers import runners
from profilers.config import DeviceConfig, from_dict
from profilers.errors import OutputError, ProfilerError
from profilers.fileio import atomic_write_bytes, atomic_write_json
from profilers.torch_cuda import blob_suffix

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
ONNX_DIR = "onnx"
RESULTS_NAME = "results.jsonl"

# A killed run may leave the results file locked for as long as its current measurement
# takes (the process notices a dropped SSH stream only on its next write); wait that out.
DEFAULT_LOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BundleItem:
    """One model to time: a unique key, its ONNX file relative to the bundle, free metadata."""

    key: str
    file: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A bundle as read from disk."""

    path: Path
    config: DeviceConfig
    items: list[BundleItem]

    def file_path(self, item: BundleItem) -> Path:
        return self.path / item.file


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(err).__name__


def _file_name(index: int, key: str, suffix: str = ".onnx") -> str:
    # Keys are free text (signatures); file names only need to be unique and readable.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:60] or "model"
    return f"{ONNX_DIR}/{index:05d}-{slug}{suffix}"


def write_bundle(bundle_dir: str | os.PathLike[str], config: DeviceConfig,
                 items: Iterable[tuple[str, bytes, dict[str, Any]]]) -> Path:
    """Write a bundle folder; the manifest is written last and atomically.

    Args:
        bundle_dir: folder to create or overwrite (ONNX files from an earlier bundle there
            are left alone but no longer listed).
        config: the device config the bundle is meant for; ``run_bundle`` uses it unless
            given another.
        items: ``(key, onnx_bytes, meta)`` triples; keys must be unique and ``meta`` JSON-safe.
            For torch-cuda the bytes are a torch.export program (``hwprune.measure.device_items``),
            stored as ``.pt2``.

    Returns:
        The path of ``manifest.json``.

    Example:
        >>> write_bundle("bundle", cfg, [("relu-8", model.SerializeToString(), {})])  # doctest: +SKIP
    """
    root = Path(bundle_dir)
    entries = []
    seen: set[str] = set()
    for index, (key, onnx_bytes, meta) in enumerate(items):
        if not isinstance(key, str) or not key:
            raise ValueError(f"bundle item {index}: key must be a non-empty string, got {key!r}")
        if key in seen:
            raise ValueError(f"bundle item {index}: duplicate key {key!r}")
        seen.add(key)
        meta = dict(meta or {})
        json.dumps(meta)  # fail here, not on the device, when meta is not JSON-safe
        rel = _file_name(index, key, blob_suffix(onnx_bytes))
        # Candidates can be regenerated from the model: skip the per-file fsync (hundreds of them).
        atomic_write_bytes(root / rel, bytes(onnx_bytes), durable=False)
        entries.append({"key": key, "file": rel, "meta": meta})
    manifest = {"format": BUNDLE_FORMAT, "config": config.to_dict(), "items": entries}
    path = root / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def read_bundle(bundle_dir: str | os.PathLike[str]) -> Bundle:
    """Read and validate a bundle's manifest; any problem is one ``ProfilerError`` line."""
    root = Path(bundle_dir)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ProfilerError(f"bundle folder not found: {root}")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfilerError(f"not a profiling bundle (no {MANIFEST_NAME}): {root}") from None
    except OSError as err:
        raise ProfilerError(f"{path}: cannot read: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProfilerError(f"{path}: corrupt bundle manifest: {_one_line(err)}") from None
    if not isinstance(data, dict):
        raise ProfilerError(f"{path}: corrupt bundle manifest: expected an object")
    if data.get("format") != BUNDLE_FORMAT:
        raise ProfilerError(f"{path}: unsupported bundle format {data.get('format')!r} "
                            f"(this profiler reads format {BUNDLE_FORMAT})")
    config = from_dict(data.get("config"), source=f"{path}:config")
    raw_items = data.get("items")
    if not isinstance(raw_items, list):
        raise ProfilerError(f"{path}: corrupt bundle manifest: 'items' must be a list")
    items: list[BundleItem] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_items):
        if not (isinstance(raw, dict) and isinstance(raw.get("key"), str) and isinstance(raw.get("file"), str)
                and isinstance(raw.get("meta", {}), dict)):
            raise ProfilerError(f"{path}: corrupt bundle manifest: item {index} needs a string 'key', "
                                "a string 'file' and an object 'meta'")
        rel = PurePosixPath(raw["file"])
        # The manifest comes from the host, but a path leaving the bundle is never right.
        if rel.is_absolute() or ".." in rel.parts:
            raise ProfilerError(f"{path}: item {raw['key']!r}: file must be inside the bundle, got {raw['file']!r}")
        if raw["key"] in seen:
            raise ProfilerError(f"{path}: duplicate item key {raw['key']!r}")
        seen.add(raw["key"])
        items.append(BundleItem(raw["key"], raw["file"], dict(raw.get("meta", {}))))
    return Bundle(root, config, items)


class ResultsFile:
    """An append-only JSON-lines file of records; every append is flushed and fsynced.

    Opening it takes an exclusive lock (POSIX ``flock``), so two runs never measure the same
    key into one file; a run whose SSH stream was cut keeps the lock until its current
    measurement ends, and the next run waits for it (``lock_timeout_s``). A trailing
    half-written line from a killed writer is cut off; any other unreadable line is an error.

    Example:
        >>> with ResultsFile("results.jsonl") as results:   # doctest: +SKIP
        ...     done = results.keys()
        ...     results.append({"type": "row", "key": "k", ...})
    """

    def __init__(self, path: str | os.PathLike[str], lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.records: list[dict[str, Any]] = []
        self._f = None

    def __enter__(self) -> "ResultsFile":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a+b")
        except OSError as err:
            raise ProfilerError(f"{self.path}: cannot open results file: {err.strerror}") from None
        try:
            self._lock()
            self.records = self._load()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()  # closing releases the flock
            self._f = None

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, one run at a time by convention
            return
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProfilerError(f"{self.path}: results file is in use by another profiler run "
                                        f"(waited {self.lock_timeout_s:g} s)") from None
                time.sleep(0.1)

    def _load(self) -> list[dict[str, Any]]:
        f = self._f
        f.seek(0)
        data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            try:
                json.loads(tail)
                f.write(b"\n")  # a complete record that only lacks its newline: keep it
                data += b"\n"
            except ValueError:
                # A writer killed mid-line: that record was never finished, drop it.
                f.truncate(cut)
                data = data[:cut]
            f.flush()
            os.fsync(f.fileno())
        records = []
        for lineno, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ProfilerError(f"{self.path}:{lineno}: not a JSON record; remove the line to resume") from None
            if not isinstance(record, dict):
                raise ProfilerError(f"{self.path}:{lineno}: not a JSON object; remove the line to resume")
            records.append(record)
        return records

    def keys(self) -> set[str]:
        """Keys of the measured rows already in the file."""
        return {r["key"] for r in self.records if r.get("type") == "row" and "key" in r}

    def sessions(self) -> set[str]:
        return {r["session"] for r in self.records if r.get("type") == "session" and "session" in r}

    def append(self, record: dict[str, Any]) -> None:
        if self._f is None:
            raise RuntimeError("results file is not open: use it as a context manager")
        try:
            self._f.write((json.dumps(record) + "\n").encode())
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as err:  # disk full: the journal so far stays valid, a rerun resumes from it
            raise OutputError(f"cannot write the journal {self._f.name}: {err.strerror or err}") from None
        self.records.append(record)


def session_record(config: DeviceConfig) -> dict[str, Any]:
    """Measure this runtime's per-call overhead and describe the environment, as a session record."""
    from profilers.environment import collect_manifest, fingerprint  # written alongside; lazy on purpose

    started = time.time()
    overhead = runners.measure_overhead(config)
    environment = collect_manifest(config)
    return {
        "type": "session",
        "session": uuid.uuid4().hex[:16],
        "started_unix_s": started,
        "overhead": overhead.to_dict(with_samples=False),
        "environment": environment,
        "fingerprint": fingerprint(environment),
        "config": config.to_dict(),
    }


def time_item(path: str | os.PathLike[str], config: DeviceConfig, key: str) -> dict[str, Any]:
    """Time one ONNX file in a fresh runner; returns the ``timing``/``extra``/``timed_scope`` fields."""
    with runners.make_runner(str(path), config, name=key) as runner:
        stats = runner.measure()
        extra = {name: s.to_dict() for name, s in runner.extra_timings().items()}
        return {"timing": stats.to_dict(), "extra": extra, "timed_scope": runner.timed_scope}


def _time_batch(bundle: Bundle, chunk: list[BundleItem], cfg: DeviceConfig, session_id: str) -> list[dict[str, Any]]:
    """Time a batch of items interleaved with the identity graph and the drift reference.

    A shared or virtual machine changes speed for seconds at a time (a neighbour's load on
    the sibling hyperthread, a frequency step): two runs of the same candidate a minute apart
    can differ by tens of percent while each has a tight confidence interval. Timing a batch
    in alternating bursts together with two fixed models exposes them all to the same state:
    each row records the identity graph's time (the per-call overhead right then) and the
    reference conv's time (the machine's speed right then), so the host can put every row on
    one common footing.
    """
    from contextlib import ExitStack

    from profilers.interleave import measure_interleaved

    records: list[dict[str, Any]] = []
    with ExitStack() as stack:
        live: list[tuple[BundleItem, Any]] = []
        for item in chunk:
            try:
                runner = runners.make_runner(str(bundle.file_path(item)), cfg, name=item.key)
                stack.enter_context(runner)
            except Exception as err:  # one bad model must not end the run: report it, go on
                records.append({"type": "error", "key": item.key, "error": _one_line(err), "session": session_id})
                continue
            live.append((item, runner))
        if not live:
            return records
        identity = stack.enter_context(runners.make_runner(str(runners.IDENTITY_ONNX), cfg, name="identity"))
        reference = stack.enter_context(runners.make_runner(str(runners.REFERENCE_ONNX), cfg, name="reference"))
        stats = measure_interleaved([identity, reference] + [r for _, r in live],
                                    min_seconds=cfg.min_seconds * (len(live) + 2),
                                    max_seconds=cfg.max_seconds * (len(live) + 2))
        overhead, ref = stats[0].to_dict(with_samples=False), stats[1].to_dict(with_samples=False)
        for (item, runner), st in zip(live, stats[2:]):
            extra = {name: s.to_dict() for name, s in runner.extra_timings().items()}
            records.append({"type": "row", "key": item.key, "meta": item.meta, "timing": st.to_dict(),
                            "extra": extra, "timed_scope": runner.timed_scope, "session": session_id,
                            "batch_overhead": overhead, "batch_reference": ref})
    return records


def run_bundle(bundle_dir: str | os.PathLike[str], config: DeviceConfig | None = None,
               results_path: str | os.PathLike[str] | None = None,
               on_row: Callable[[dict[str, Any]], None] | None = None,
               emit_existing: bool = True,
               progress: Callable[[int, int, str], None] | None = None,
               batch_size: int | None = None) -> list[dict[str, Any]]:
    """Time every item of a bundle not yet in ``results_path``, in this one process.

    Args:
        bundle_dir: a folder written by ``write_bundle``.
        config: device config to time with; default: the one in the manifest.
        results_path: JSON-lines file of finished records (session and row records; error
            records are not stored). Keys already there are not measured again. ``None``:
            nothing is stored and everything is measured.
        on_row: called with every record as soon as it exists (after it is stored).
        emit_existing: first pass the records already in ``results_path`` to ``on_row``
            (and return them), so a reader of the stream sees the whole result each run.
        progress: ``progress(done, total, key)`` after each item.
        batch_size: items timed together, interleaved with the identity graph (per-call
            overhead) and the drift reference (see ``_time_batch``); default: the config's
            ``interleave_batch``.

    Returns:
        The records emitted, in order. A session record is emitted only when something is
        measured: a run with nothing left to do measures nothing, not even the overhead.

    Raises:
        ProfilerError: the manifest is missing or corrupt, the backend is unavailable, or
            the results file is unreadable. A bad ONNX item is an error record instead.
    """
    bundle = read_bundle(bundle_dir)
    cfg = config or bundle.config
    emitted: list[dict[str, Any]] = []

    def emit(record: dict[str, Any]) -> None:
        emitted.append(record)
        if on_row is not None:
            on_row(record)

    results = ResultsFile(results_path) if results_path is not None else None
    if results is not None:
        results.__enter__()
    try:
        done = results.keys() if results is not None else set()
        if results is not None and emit_existing:
            for record in list(results.records):
                emit(record)
        pending = [item for item in bundle.items if item.key not in done]
        total = len(bundle.items)
        finished = total - len(pending)
        if not pending:
            return emitted

        session = session_record(cfg)
        if results is not None:
            results.append(session)
        emit(session)
        step = batch_size or cfg.interleave_batch
        for start in range(0, len(pending), step):
            chunk = pending[start:start + step]
            for record in _time_batch(bundle, chunk, cfg, session["session"]):
                if record["type"] == "row" and results is not None:
                    results.append(record)  # stored before it is shown: a reader that sees it can rely on it
                emit(record)
                finished += 1
                if progress is not None:
                    progress(finished, total, record["key"])
        return emitted
    finally:
        if results is not None:
            results.close()
