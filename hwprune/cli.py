"""The ``hwprune`` command line: thin click commands over ``hwprune.api``.

Every command parses options, calls one library function and prints its result. Heavy
modules (torch, onnxruntime) are imported inside the commands so ``hwprune --help`` is
instant. User errors (``ProfilerError``) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys

import click

from profilers.errors import ProfilerError


class _Group(click.Group):
    """A click group that turns library errors into one line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ProfilerError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hwprune")
def cli() -> None:
    """Prune a PyTorch model to a latency budget measured on a named device."""


@cli.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print the configs as JSON.")
def devices_cmd(as_json: bool) -> None:
    """List the shipped device configs (device_configs/*.yaml)."""
    from profilers.config import load_device_config, shipped_configs

    cfgs = [load_device_config(n) for n in shipped_configs()]
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in cfgs], indent=2))
        return
    for c in cfgs:
        click.echo(f"{c.name:24s} {c.backend:12s} {c.precision:5s} threads={c.threads:<3d} {c.description}")


@cli.command("time")
@click.argument("onnx_path", type=click.Path(dir_okay=False))
@click.option("--device", "-d", required=True, help="Shipped device name or path to a device YAML.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures (with samples) here.")
def time_cmd(onnx_path: str, device: str, json_path: str | None) -> None:
    """Time one ONNX model on a device and print p50/p90/p99 with a confidence interval."""
    from hwprune import api

    result = api.time_model(onnx_path, device, json_path=json_path)
    s = result["timing"]
    click.echo(f"{onnx_path} on {result['device']}: n={s['n']} p50={s['p50_ms']:.4f} ms "
               f"p90={s['p90_ms']:.4f} ms p99={s['p99_ms']:.4f} ms mean={s['mean_ms']:.4f} ms "
               f"{s['statistic']} {int(s['confidence'] * 100)}% CI [{s['ci_low_ms']:.4f}, {s['ci_high_ms']:.4f}] "
               f"cv={s['cv']:.3f}{'' if s['stable'] else ' UNSTABLE'}")


def _model_options(f):
    f = click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint (state_dict) to load into the model.")(f)
    f = click.option("--num-classes", type=int, default=10, show_default=True, help="Classifier outputs.")(f)
    f = click.option("--input-shape", default="1,28,28", show_default=True,
                     help="Input C,H,W (batch comes from the device config).")(f)
    f = click.option("--model", "-m", required=True,
                     help="Zoo name (resnet20, resnet56, vgg11_bn, vgg16_bn, mobilenetv2), path/to/file.py:factory, "
                          "or torchvision:NAME / timm:NAME when installed.")(f)
    f = click.option("--device", "-d", required=True, help="Shipped device name (see `hwprune devices`) or a YAML path.")(f)
    return f


def _spec(model: str, input_shape: str, num_classes: int, weights: str | None):
    from hwprune.profile import ModelSpec, parse_input_shape

    return ModelSpec(model, parse_input_shape(input_shape), num_classes, weights)


@cli.command("profile")
@_model_options
@click.option("--lut", "lut_path", required=True, type=click.Path(dir_okay=False),
              help="LUT file to create or extend (.parquet, or .csv with --format csv).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default=None, help="LUT file format.")
@click.option("--grid", default=None, help="Keep ratios to profile, comma-separated (default: 0.1,0.2,...,1.0).")
@click.option("--calibration-samples", type=int, default=10, show_default=True,
              help="Random whole sub-networks measured to calibrate the LUT's predictions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights and calibration samples.")
@click.option("--allow-other-device", is_flag=True, help="Extend a LUT that was measured on another device.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def profile_cmd(device, model, input_shape, num_classes, weights, lut_path, fmt, grid, calibration_samples,
                seed, allow_other_device, quiet):
    """Measure every prunable layer at its channel grid on DEVICE and build the latency LUT."""
    from hwprune.profile import DEFAULT_RATIOS, parse_ratios, profile

    ratios = parse_ratios(grid) if grid else DEFAULT_RATIOS
    r = profile(_spec(model, input_shape, num_classes, weights), device, lut_path, ratios=ratios,
                calibration_samples=calibration_samples, seed=seed, fmt=fmt,
                allow_other_device=allow_other_device, show_progress=not quiet,
                log=lambda m: click.echo(m, err=True))
    cal = r.calibration
    click.echo(f"LUT {r.lut_path}: model {r.model_key}, {r.groups} groups, {r.units} units, "
               f"{r.signatures_total} signatures ({r.signatures_measured} measured now, {r.resumed_rows} resumed)")
    click.echo(f"profiling cost: wall {r.wall_s:.1f} s, inside timed runs {r.timed_s:.1f} s, "
               f"overhead ratio {r.overhead_ratio:.2f}")
    if cal:
        click.echo(f"calibration on {cal['n']} sub-networks: measured = {cal['a']:.4f} ms + {cal['b']:.4f} x raw; "
                   f"median error {cal['raw_median_abs_error_pct']:.1f}% raw -> {cal['median_abs_error_pct']:.1f}% calibrated")


@cli.group("lut")
def lut_group() -> None:
    """Inspect and check latency lookup tables."""


@lut_group.command("check")
@_model_options
@click.option("--lut", "lut_path", required=True, type=click.Path(dir_okay=False), help="The LUT to check.")
@click.option("--samples", type=int, default=50, show_default=True, help="Random sub-networks to measure.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (offset from calibration's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures and per-sample rows here.")
@click.option("--allow-other-device", is_flag=True, help="Use a LUT measured on another device.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def lut_check_cmd(device, model, input_shape, num_classes, weights, lut_path, samples, seed, json_path,
                  allow_other_device, quiet):
    """Measure random sub-networks end to end on DEVICE and compare with the LUT's predictions."""
    from hwprune.lutcheck import format_check_table, lut_check

    r = lut_check(_spec(model, input_shape, num_classes, weights), device, lut_path, samples=samples, seed=seed,
                  allow_other_device=allow_other_device, json_path=json_path, show_progress=not quiet)
    click.echo(format_check_table(r))


def main() -> None:
    cli(prog_name="hwprune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
