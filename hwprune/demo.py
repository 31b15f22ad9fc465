"""``make demo``: the main job on the embedded default (resnet20, Fashion-MNIST, this CPU).

Profiles every prunable layer of resnet20 on this machine's CPU (device ``x86-cpu-ort``) into
a LUT and prints the per-layer latency table; checks the LUT against 10 random sub-networks
measured end to end; then prunes the committed Fashion-MNIST checkpoint to 60% of its dense
latency as measured here, recovers its accuracy (AGP) for one epoch, exports it and certifies it. Run
again, it reuses the LUT (nothing re-measured) and replaces the run folder.
"""

from __future__ import annotations

import argparse
import sys

import click

DEFAULT_OUT = "demo-out"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: demo-out)")
    parser.add_argument("--device", default="x86-cpu-ort")
    parser.add_argument("--model", default="resnet20")
    args = parser.parse_args(argv)

    from hwprune.cli import cli

    lut = f"{args.out}/lut.parquet"
    steps = [
        ["profile", "--device", args.device, "--model", args.model, "--lut", lut],
        ["lut", "show", "--lut", lut],
        ["lut", "check", "--device", args.device, "--model", args.model, "--lut", lut, "--samples", "10",
         "--json", f"{args.out}/lut-check.json"],
    ]
    from hwprune.pruning import default_weights

    if default_weights(args.model, "fashion-mnist"):
        steps.append(["prune", "--device", args.device, "--model", args.model, "--data", "fashion-mnist",
                      "--lut", lut, "--out", f"{args.out}/run", "--speedup", f"{1 / 0.6:.6g}",
                      "--finetune-epochs", "1", "--overwrite"])
    else:
        click.echo(f"no committed checkpoint for {args.model} on Fashion-MNIST: skipping the prune step "
                   "(make pretrain makes one)")
    for step in steps:
        click.secho(f"\n$ hwprune {' '.join(step)}", bold=True)
        try:
            cli.main(step, prog_name="hwprune", standalone_mode=False)
        except SystemExit as exc:  # click's ctx.exit inside a non-standalone call
            if exc.code:
                return int(exc.code)
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
