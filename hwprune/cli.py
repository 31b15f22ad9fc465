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


def main() -> None:
    cli(prog_name="hwprune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
