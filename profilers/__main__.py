"""The device-side command line: ``python -m profilers run BUNDLE``, ``time FILE`` and ``interleave NAME=FILE ...``.

It needs only numpy and onnxruntime (argparse, no click), because it is what runs on a
target device after ``profilers.remote`` has copied this package there. ``run`` prints
every record as one line ``HWPRUNE-ROW <json>`` on stdout, flushed at once, so a host
reading the SSH stream sees each result as soon as it exists. Errors are one line on
stderr and exit code 2.

Example:
    python -m profilers run bundle --results bundle/results.jsonl
    python -m profilers time model.onnx --device x86-cpu-ort
    python -m profilers interleave dense=dense.onnx pruned=pruned.onnx --device x86-cpu-ort
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from profilers.errors import ProfilerError

ROW_PREFIX = "HWPRUNE-ROW "
EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other error here
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m profilers", description="Time ONNX models on this device (hwprune's device side).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="time every model of a profiling bundle, resumably",
                         description="Time every item of a bundle not yet in the results file and print one "
                                     f"'{ROW_PREFIX.strip()} <json>' line per record.")
    run.add_argument("bundle", help="bundle folder (manifest.json + onnx/)")
    run.add_argument("--device", metavar="CONFIG",
                     help="device config: shipped name or JSON/YAML path (default: the config in the manifest)")
    run.add_argument("--results", metavar="FILE",
                     help="JSON-lines results file; keys in it are not measured again (default: BUNDLE/results.jsonl)")

    time_ = sub.add_parser("time", help="time one ONNX file and print its statistics as JSON",
                           description="Time one ONNX model with a device config's methodology.")
    time_.add_argument("model", metavar="FILE.onnx", help="ONNX model to time (for torch-cuda: a .pt2 torch.export program)")
    time_.add_argument("--device", metavar="CONFIG", required=True,
                       help="device config: shipped name or JSON/YAML path")
    time_.add_argument("--samples", action="store_true", help="include the raw samples in the output")

    inter = sub.add_parser("interleave", help="time several ONNX files interleaved and print their statistics as JSON",
                           description="Time NAME=FILE.onnx models in alternating bursts (one process, one "
                                       "machine state) and print {NAME: statistics with samples} as JSON.")
    inter.add_argument("models", metavar="NAME=FILE.onnx", nargs="+",
                       help="models to time, each with its name (for torch-cuda: .pt2 torch.export programs)")
    inter.add_argument("--device", metavar="CONFIG", required=True,
                       help="device config: shipped name or JSON/YAML path")
    return p


def _print_row(record: dict[str, Any]) -> None:
    sys.stdout.write(ROW_PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()


def _cmd_run(args: argparse.Namespace) -> None:
    from profilers.bundle import RESULTS_NAME, run_bundle
    from profilers.config import load_device_config

    config = load_device_config(args.device) if args.device else None
    results = args.results or os.path.join(args.bundle, RESULTS_NAME)
    run_bundle(args.bundle, config=config, results_path=results, on_row=_print_row, emit_existing=True)


def _cmd_time(args: argparse.Namespace) -> None:
    from profilers.config import load_device_config
    from profilers.runners import make_runner

    config = load_device_config(args.device)
    with make_runner(args.model, config) as runner:
        stats = runner.measure()
    print(json.dumps(stats.to_dict(with_samples=args.samples), indent=2))


def _cmd_interleave(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from profilers.config import load_device_config
    from profilers.errors import ConfigError
    from profilers.interleave import measure_interleaved
    from profilers.runners import make_runner

    config = load_device_config(args.device)
    named = []
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"expected NAME=FILE.onnx, got '{spec}'")
        named.append((name, path))
    with ExitStack() as stack:
        runners = [stack.enter_context(make_runner(path, config, name=name)) for name, path in named]
        stats = measure_interleaved(runners)
    print(json.dumps({name: s.to_dict(with_samples=True) for (name, _), s in zip(named, stats)}))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"run": _cmd_run, "time": _cmd_time, "interleave": _cmd_interleave}[args.command](args)
    except ProfilerError as err:
        print(f"error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (an SSH stream was cut): every finished row is already in the
        # results file. Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        try:
            print("error: output stream closed; finished rows are in the results file", file=sys.stderr)
        except OSError:  # stderr went with the same connection
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
