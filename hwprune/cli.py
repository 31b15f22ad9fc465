"""The ``hwprune`` command line: thin click commands over ``hwprune.api`` (the package API).

Every command parses options, calls one library function and prints its result. Heavy
modules (torch, onnxruntime) are imported inside the commands so ``hwprune --help`` is
instant. User errors (``ProfilerError``) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys

import click

from profilers.errors import ProfilerError


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job's timeout, ``kill``, a closing terminal) taken the way Ctrl-C is."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise _Terminated(signum)


def _take_termination_as_interrupt() -> None:
    """Python's default SIGTERM ends the process without unwinding, so no ``finally`` runs: a
    fresh measuring process (the staircase's, ``--processes``') is left running on the device
    and a journal's last write is not flushed. Raised as an interrupt, it gets Ctrl-C's clean-up
    and message instead."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a host that set its own handler keeps it
        signal.signal(signal.SIGTERM, _raise_terminated)


class _Group(click.Group):
    """A click group that turns library errors, and click's own usage errors, into one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        _take_termination_as_interrupt()
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as err:  # click prints usage, a hint and the error on three lines
            where = err.ctx.command_path if err.ctx is not None else "hwprune"
            click.echo(f"error: {err.format_message()} (see {where} --help)", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        from hwprune.errors import cli_spelling

        try:
            with cli_spelling():   # the library's messages name --flags here, keywords from Python
                return super().invoke(ctx)
        except ProfilerError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as err:
            resumes = {"profile": "; run the same command again to resume (no row measured so far is lost)",
                       "pretrain": "; run the same command again to resume from the last epoch",
                       "prune": "; no run folder was written, and a rerun starts over (the LUT it read is kept)"}
            what = "terminated" if isinstance(err, _Terminated) else "interrupted"
            click.echo(what + resumes.get(ctx.invoked_subcommand or "", ""), err=True)
            ctx.exit(128 + err.signum if isinstance(err, _Terminated) else 130)  # the shell's 128 + signal


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hwprune")
def cli() -> None:
    """Prune a PyTorch model to a latency budget measured on a named device."""


@cli.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print the configs as JSON.")
def devices_cmd(as_json: bool) -> None:
    """List the shipped device configs (device_configs/*.yaml)."""
    from hwprune.api import devices

    cfgs = devices()
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in cfgs], indent=2))
        return
    for c in cfgs:
        click.echo(f"{c.name:24s} {c.backend:12s} {c.precision:5s} threads={c.threads:<3d} {c.description}")


def _clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` where it was cut (a table column)."""
    return text if len(text) <= width else text[:width - 3] + "..."


@cli.command("time")
@click.argument("onnx_path", type=click.Path(dir_okay=False))
@click.option("--device", "-d", required=True, help="Shipped device name or path to a device YAML.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures (with samples) here.")
@click.option("--processes", type=int, default=1, show_default=True,
              help="Time in this many fresh processes, one after another, and report the spread (raise it on a "
                   "shared machine, where each process runs at its own speed).")
def time_cmd(onnx_path: str, device: str, json_path: str | None, processes: int) -> None:
    """Time one ONNX model on a device and print p50/p90/p99 with a confidence interval."""
    from hwprune import api

    result = api.time_model(onnx_path, device, json_path=json_path, processes=processes)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    s = result.timing
    # pooled over processes, the samples' interval says nothing of how far the processes differ
    within = f" (within-process noise only: {processes} processes pooled)" if processes > 1 else ""
    click.echo(f"{onnx_path} on {result.device}: n={s.n} p50={s.p50_ms:.4f} ms "
               f"p90={s.p90_ms:.4f} ms p99={s.p99_ms:.4f} ms mean={s.mean_ms:.4f} ms "
               f"{s.statistic} {int(s.confidence * 100)}% CI [{s.ci_low_ms:.4f}, {s.ci_high_ms:.4f}]"
               f"{within} cv={s.cv:.3f}{'' if s.stable else ' UNSTABLE'}")
    for st in result.by_machine_state:
        t = st["timing"]
        click.echo(f"  machine state probe {st['probe_us']:.0f} us, {st['share']:.0%} of the samples: n={t['n']} "
                   f"p50={t['p50_ms']:.4f} ms p90={t['p90_ms']:.4f} ms")
    rest = 1 - sum(st["share"] for st in result.by_machine_state)
    if result.by_machine_state and rest >= 0.005:
        click.echo(f"  the other {rest:.0%} of the samples are in no state: their bursts straddled a change of "
                   f"state, or a state too short to judge")
    if processes > 1:
        a = result.across_processes
        click.echo(f"{processes} processes: {a['statistic']} " + " / ".join(f"{v:.4f}" for v in a["values_ms"])
                   + f" ms; median {a['median_ms']:.4f} ms ({a['median_ci_confidence'] * 100:.4g}% CI of the median process "
                   f"[{a['median_ci_low_ms']:.4f}, {a['median_ci_high_ms']:.4f}]), spread (max - min) / median "
                   f"{a['spread_pct']:.1f}%")
        for st in a.get("by_machine_state") or []:
            click.echo(f"  machine state probe {st['probe_us']:.0f} us, in {st['processes']} of {processes} processes: "
                       f"median {st['median_ms']:.4f} ms, spread {st['spread_pct']:.1f}%")


def _model_options(f):
    f = click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint (state_dict) to load into the model.")(f)
    f = click.option("--num-classes", type=int, default=10, show_default=True, help="Classifier outputs.")(f)
    f = click.option("--input-shape", default="1,28,28", show_default=True,
                     help="Input C,H,W (batch comes from the device config).")(f)
    f = click.option("--model", "-m", required=True,
                     help="Zoo name (resnet20, resnet56, vgg11_bn, vgg16_bn, mobilenetv2), path/to/file.py:factory, "
                          "pytorchcv:NAME, or torchvision:NAME / timm:NAME when installed.")(f)
    f = click.option("--device", "-d", required=True, help="Shipped device name (see `hwprune devices`) or a YAML path.")(f)
    return f


@cli.command("profile")
@_model_options
@click.option("--lut", "lut_path", required=True, type=click.Path(dir_okay=False),
              help="LUT file to create or extend (.parquet, or .csv with --format csv).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default=None, help="LUT file format.")
@click.option("--grid", default=None, help="Keep ratios to profile, comma-separated (default: with channel_multiple "
              "auto, every width the measured staircase allows; with a fixed multiple, every allowed width of "
              "groups with at most 16, else 0.1,0.2,...,1.0).")
@click.option("--calibration-samples", type=int, default=10, show_default=True,
              help="Random whole sub-networks measured to calibrate the LUT's predictions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights and calibration samples.")
@click.option("--staircase-processes", type=int, default=2, show_default=True,  # widthsteps.PROCESSES; imports no torch
              help="With channel_multiple auto: processes the width staircase is measured in (this one and "
              "fresh ones); a width step is kept only where every one of them sees it.")
@click.option("--allow-other-device", is_flag=True, help="Extend a LUT that was measured on another device.")
@click.option("--replace", is_flag=True, help="Replace the LUT's profile of a model of the same name and input "
              "shape made of other layers (refused without it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def profile_cmd(device, model, input_shape, num_classes, weights, lut_path, fmt, grid, calibration_samples,
                seed, staircase_processes, allow_other_device, replace, quiet):
    """Measure every prunable layer at its channel grid on DEVICE and build the latency LUT."""
    import hwprune
    from hwprune.models.spec import parse_input_shape
    from hwprune.profiling import parse_ratios

    r = hwprune.profile(model, device=device, lut=lut_path, grid=parse_ratios(grid) if grid else None,
                        input_shape=parse_input_shape(input_shape), num_classes=num_classes, weights=weights,
                        calibration_samples=calibration_samples, seed=seed, fmt=fmt,
                        staircase_processes=staircase_processes,
                        allow_other_device=allow_other_device, replace=replace, show_progress=not quiet,
                        log=lambda m: click.echo(m, err=True)).profile_result
    cal = r.calibration
    # every signature is one of three: measured now, resumed from the journal of an interrupted run
    # (rows it had not saved into the LUT yet), or in the LUT already
    before = r.signatures_total - r.signatures_measured - r.resumed_rows
    click.echo(f"LUT {r.lut_path}: model {r.model_key}, {r.groups} groups, {r.units} units, "
               f"{r.signatures_total} signatures ({r.signatures_measured} measured now"
               + (f", {r.resumed_rows} resumed from an interrupted run's journal" if r.resumed_rows else "")
               + (f", {before} in the LUT already" if before > 0 else "")
               + (f"; {r.other_process_timings} staircase points timed again in fresh processes"
                  if r.other_process_timings else "") + ")")
    if r.timed_s > 0:
        click.echo(f"profiling cost: wall {r.wall_s:.1f} s, inside timed runs {r.timed_s:.1f} s, "
                   f"overhead ratio {r.overhead_ratio:.2f}")
    else:
        click.echo(f"profiling cost: wall {r.wall_s:.1f} s; nothing to measure (every signature is in the LUT)")
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
@click.option("--calibration-samples", type=int, default=8, show_default=True,
              help="Sub-networks (the smallest architecture among them, none of the checked ones) measured in this "
                   "process to refit the LUT's ms scale before checking; 0 checks the stored calibration alone.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures and per-sample rows here.")
@click.option("--allow-other-device", is_flag=True, help="Use a LUT measured on another device.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def lut_check_cmd(device, model, input_shape, num_classes, weights, lut_path, samples, seed, calibration_samples,
                  json_path, allow_other_device, quiet):
    """Measure random sub-networks end to end on DEVICE and compare with the LUT's predictions."""
    from hwprune.api import lut_check
    from hwprune.lutcheck import format_check_table
    from hwprune.models.spec import parse_input_shape

    r = lut_check(model, device=device, lut=lut_path, input_shape=parse_input_shape(input_shape),
                  num_classes=num_classes, weights=weights, samples=samples, seed=seed,
                  calibration_samples=calibration_samples, allow_other_device=allow_other_device,
                  json_path=json_path, show_progress=not quiet)
    click.echo(format_check_table(r))


@lut_group.command("show")
@click.option("--lut", "lut_path", required=True, type=click.Path(dir_okay=False), help="The LUT to show.")
@click.option("--model", "-m", "key", default=None, help="Model key (name@shape); default: the only model in the LUT.")
def lut_show_cmd(lut_path, key):
    """Print a LUT's models and the per-layer latency of the dense model."""
    from hwprune.api import lut_show

    r = lut_show(lut_path, key)
    click.echo(f"{lut_path}: device {r.device} (fingerprint {r.fingerprint}), "
               f"{r.signatures} measured signatures; model {r.model_key}, statistic {r.statistic}")
    click.echo(f"{'layer (unit)':48s} {'ops':34s} {'channels':>10s} {'ms':>9s}")
    for u in r.units:
        click.echo(f"{_clip(u['unit'], 48):48s} {_clip(u['ops'], 34):34s} {'x'.join(map(str, u['widths'])) or '-':>10s} "
                   f"{u['latency_ms']:9.4f}")
    click.echo(f"{'sum + per-call overhead':48s} {'':34s} {'':>10s} {r.raw_ms:9.4f}")
    click.echo(f"{'calibrated prediction (dense model)':48s} {'':34s} {'':>10s} {r.predicted_ms:9.4f}")
    grid = r.width_grid
    click.echo(f"\nwidths a search may choose (channel_multiple {grid['channel_multiple']}): {grid['rule']}")
    if grid.get("groups"):
        n = min(max(1, len(s.get("process_ms") or [])) for s in grid["groups"])
        click.echo(f"  (staircases measured in {n} process{'es' if n > 1 else ''})")
    for s in grid.get("groups", []):
        lo, hi = s["ms"][0], s["ms"][-1]
        click.echo(f"  {s['group'][:40]:40s} {s['dense']:5d} ch: {', '.join(map(str, s['allowed']))} "
                   f"(staircase {lo:.4f}..{hi:.4f} ms over {len(s['widths'])} widths, min step {s['min_step_ms']:.4f} ms)")


def _budget_pair(ctx, param, values):
    pairs = []
    for v in values:
        fn, sep, limit = v.rpartition("=")
        try:
            pairs.append((fn, float(limit)))
        except ValueError:
            raise click.BadParameter(f"expected module:function=LIMIT, got '{v}'") from None
        if not sep or not fn:
            raise click.BadParameter(f"expected module:function=LIMIT, got '{v}'")
    return pairs


def _count_limit(ctx, param, value):
    """``--max-params 40000`` (an absolute count) or ``--max-params 15%`` (of the dense model)."""
    from hwprune.pruning import parse_count_limit

    return None if value is None else parse_count_limit(value, param.opts[0])


def _agent_options(ctx, param, values):
    """``KEY=VALUE`` pairs for the agent's constructor; values parsed as JSON when they can be."""
    import json

    opts = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"expected KEY=VALUE, got '{v}'")
        try:
            opts[key] = json.loads(raw)
        except json.JSONDecodeError:
            opts[key] = raw
    return opts


@cli.command("prune")
@click.option("--device", "-d", required=True, help="Shipped device name (see `hwprune devices`) or a YAML path.")
@click.option("--model", "-m", required=True,
              help="Zoo name, path/to/file.py:factory, or pytorchcv:NAME / timm:NAME / torchvision:NAME.")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="fashion-mnist[:PATH], cifar10:PATH or imagefolder:PATH.")
@click.option("--lut", "lut_path", type=click.Path(dir_okay=False),
              help="LUT from `hwprune profile`; needed for a latency budget, optional otherwise.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Dense checkpoint (default: the committed one, if any).")
@click.option("--latency-ms", type=float, help="Latency budget in ms (the device config's statistic).")
@click.option("--speedup", type=float, help="Budget relative to the dense model measured on the device (2.0 = half).")
@click.option("--max-params", callback=_count_limit,
              help="Parameter budget: a count, or a percentage of the dense model (15%).")
@click.option("--max-macs", callback=_count_limit, help="MACs budget: a count, or a percentage of the dense model.")
@click.option("--max-memory", "max_memory_bytes", callback=_count_limit,
              help="Peak activation memory budget: bytes, or a percentage of the dense model.")
@click.option("--budget", multiple=True, callback=_budget_pair,
              help="User budget function module:function=LIMIT (called with the widths dict); repeatable.")
@click.option("--agent", default=None, help="Search agent (default: rl).")
@click.option("--agent-option", "agent_options", multiple=True, callback=_agent_options,
              help="Agent setting KEY=VALUE (e.g. patience=30); repeatable.")
@click.option("--max-evaluations", type=int, default=100, show_default=True, help="Accuracy-proxy evaluations per search.")
@click.option("--importance", type=click.Choice(["l1", "l2", "bn-scale", "taylor"]), default="l1", show_default=True,
              help="Channel importance criterion.")
@click.option("--proxy-train-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Short-term fine-tuning (SGD steps) of every candidate before the accuracy proxy scores it; "
                   "helps at aggressive budgets, where the zero-shot score sinks towards chance.")
@click.option("--finetune-epochs", type=int, default=2, show_default=True, help="Fine-tuning epochs (0 allowed).")
@click.option("--lr", type=float, default=0.05, show_default=True, help="Fine-tuning peak learning rate (cosine).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--finetune", type=click.Choice(["standard", "swd", "agp"]), default="agp", show_default=True,
              help="Accuracy recovery: gradual pruning along a cubic schedule (agp, best measured), hard prune "
                   "then train (standard), or selective weight decay on the dense model then prune (swd); same "
                   "epochs for all.")
@click.option("--kd", is_flag=True, help="Distil from the dense model while fine-tuning (any --finetune).")
@click.option("--kd-temperature", type=float, default=4.0, show_default=True)
@click.option("--kd-weight", type=float, default=0.9, show_default=True,
              help="Weight of the soft-target term (the label loss gets 1 - weight).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--certify-rounds", type=int, default=5, show_default=True,
              help="Searches allowed to meet the budget as measured on the device.")
@click.option("--measure-top", type=int, default=3, show_default=True,
              help="Per round, measure this many of the search's feasible architectures on the device (its "
                   "answer, then the best ones on a latency ladder down to 95% of it) and keep the best-scoring "
                   "one that fits.")
@click.option("--calibration-samples", type=int, default=8, show_default=True,
              help="Sub-networks measured beside the dense model at the start to refit the LUT's ms scale in "
                   "this process (the smallest architecture among them); 0 keeps the LUT's stored calibration.")
@click.option("--processes", type=int, default=1, show_default=True,
              help="Measure the final dense/pruned pair again in this many fresh processes and certify only if "
                   "every one does (raise it on a shared machine, where each process runs at its own speed).")
@click.option("--input-shape", default=None, help="Input C,H,W (default: from the data).")
@click.option("--allow-other-device", is_flag=True, help="Use a LUT measured on another device.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--require-certified", is_flag=True,
              help="Exit 1 when a latency budget is given and the run is not certified (for CI; the run "
                   "folder is written either way).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def prune_cmd(lut_path, input_shape, quiet, require_certified, **kw):
    """Prune a model to a budget on DEVICE, fine-tune, export, and certify the measured latency.

    Data-parallel recovery under torchrun (rank 0 searches and measures, every rank fine-tunes):
    torchrun --standalone --nproc_per_node=2 -m hwprune.cli prune ...
    """
    from hwprune.api import prune_options
    from hwprune.models.spec import parse_input_shape
    from hwprune.pruning import PruneOptions

    opts = PruneOptions(lut=lut_path, input_shape=parse_input_shape(input_shape) if input_shape else None,
                        show_progress=not quiet, **kw)
    res = prune_options(opts, log=lambda m: click.echo(m, err=True))
    if not res.is_main:
        return  # another rank of a torchrun job: rank 0 reports
    r = res.report
    d, p = r["dense"], r["pruned"]
    click.echo(f"{'':8s} {'accuracy':>9s} {'p50 ms':>9s} {'p90 ms':>9s} {'params':>10s} {'MACs':>12s}")
    for name, m in (("dense", d), ("pruned", p)):
        click.echo(f"{name:8s} {m['accuracy'] * 100:8.2f}% {m['latency_ms']['p50']:9.4f} {m['latency_ms']['p90']:9.4f} "
                   f"{m['params']:10,d} {m['macs']:12,d}")
    from hwprune.report import certificate_text

    click.echo("certified: {} ({})".format(*certificate_text(r)))
    click.echo(f"run folder: {opts.out} (report.md, report.json, plan.json, pruned.onnx, pruned.pt, baseline.json)")
    if r["budget"].get("latency_ms") is not None:
        if not r["certified"]:
            click.echo("warning: not certified: the pruned model's measured upper bound is over the latency budget"
                       + ("" if require_certified else " (pass --require-certified to exit 1 on this)"), err=True)
            if require_certified:
                raise SystemExit(1)


@cli.command("apply-plan")
@click.option("--model", "-m", required=True, help="The dense model the plan was made for.")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="plan.json of a run.")
@click.option("--weights", type=click.Path(dir_okay=False), help="pruned.pt of the run (pruned weights).")
@click.option("--dense-weights", type=click.Path(dir_okay=False), help="Dense checkpoint to prune (instead of --weights).")
@click.option("--input-shape", help="Input C,H,W.  [default: the plan's]")
@click.option("--num-classes", type=int, help="Classes of the model.  [default: the plan's]")
@click.option("--onnx", "onnx_out", type=click.Path(dir_okay=False), help="Export the pruned model here.")
def apply_plan_cmd(model, plan_path, weights, dense_weights, input_shape, num_classes, onnx_out):
    """Rebuild a pruned model from plan.json (no unpickling) and optionally export it."""
    import hwprune
    from hwprune.groups import count_params
    from hwprune.models.spec import parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape else None
    if onnx_out:
        from profilers.fileio import check_writable

        check_writable(onnx_out, "--onnx", "onnx")
    pruned = hwprune.apply_plan(model, plan_path, weights=weights, input_shape=shape, num_classes=num_classes,
                                dense_weights=dense_weights)
    if shape is None:  # the plan's, as apply_plan took it (a plan of an older format: the zoo's default)
        from hwprune.plan import Plan

        stored = Plan.given(plan_path)[0].input_shape
        shape = tuple(stored[1:]) if len(stored) == 4 else (1, 28, 28)
    click.echo(f"{model} pruned by {plan_path}: {count_params(pruned):,} parameters")
    if not weights and not dense_weights:
        click.echo("warning: no --weights: the pruned model is randomly initialised, not the run's "
                   "(pass the run's pruned.pt as --weights, or --dense-weights to cut a dense checkpoint)", err=True)
    if onnx_out:
        import torch

        from hwprune.export import export_onnx
        from profilers.fileio import atomic_write_bytes

        atomic_write_bytes(onnx_out, export_onnx(pruned, torch.zeros(1, *shape)))
        click.echo(f"wrote {onnx_out}")


@cli.command("pretrain")
@click.option("--model", "-m", required=True, help="Zoo name (resnet20, resnet56, vgg11_bn, ...) or path/to/file.py:factory.")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="Dataset: fashion-mnist[:DIR], cifar10:DIR or imagefolder:DIR.")
@click.option("--epochs", type=int, default=30, show_default=True, help="Training epochs.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (state_dict) to write; the recipe and accuracies go to OUT.json.")
@click.option("--lr", type=float, default=0.1, show_default=True,
              help="Peak learning rate at batch 128 (scaled linearly with --batch-size), cosine to 0.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, data order and augmentation.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def pretrain_cmd(model, data, epochs, out, lr, batch_size, seed, threads, quiet):
    """Train a dense model from scratch and save the checkpoint that pruning starts from.

    Trains on the train split minus the held-out validation split (10%, seed 0) and reports
    top-1 accuracy on the test split. Interrupted? Run the same command again: it continues
    from OUT.resume after the last finished epoch. Data-parallel under torchrun:
    torchrun --standalone --nproc_per_node=2 -m hwprune.cli pretrain ...
    """
    from hwprune.api import pretrain

    r = pretrain(model, data, epochs=epochs, out=out, lr=lr, batch_size=batch_size, seed=seed, threads=threads,
                 progress=not quiet, log=lambda m: click.echo(m, err=True))
    if r.is_main:
        click.echo(f"{r.checkpoint_path}: test accuracy {r.test_accuracy:.4f}"
                   + (f", val accuracy {r.val_accuracy:.4f}" if r.val_accuracy is not None else "")
                   + f" ({r.train.epochs} epochs, {r.seconds:.0f} s); recipe in {r.sidecar_path}")


@cli.command("regress")
@click.option("--device", "-d", required=True, help="Shipped device name (see `hwprune devices`) or a YAML path.")
@click.option("--model", "-m", default=None, help="ONNX file to check (default: the baseline's model); "
              "with --lut, the LUT's model to check (a name it holds, or file.py:factory building the same layers).")
@click.option("--baseline", type=click.Path(dir_okay=False), help="baseline.json to compare with (from prune or "
              "--write-baseline).")
@click.option("--against", type=click.Path(dir_okay=False), help="Reference ONNX timed interleaved with --model now.")
@click.option("--lut", type=click.Path(dir_okay=False), help="Re-measure random rows of this LUT instead.")
@click.option("--sample", type=int, default=20, show_default=True, help="LUT rows to re-measure (with --lut).")
@click.option("--num-classes", type=int, default=10, show_default=True, help="Classifier outputs (with --lut).")
@click.option("--write-baseline", type=click.Path(dir_okay=False), help="Time --model and write a baseline here.")
@click.option("--tolerance", default="5%", show_default=True, help="Allowed slowdown: 5% or 0.05.")
@click.option("--statistic", "statistics", multiple=True, help="p50, p90, p99 or mean; repeatable "
              "(default: the baseline's).")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Confidence of the bootstrap CI.")
@click.option("--max-seconds", type=float, default=60.0, show_default=True, help="Measuring budget, extra samples "
              "for an inconclusive result included.")
@click.option("--resamples", type=int, default=2000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap (and LUT row) seed.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Write a Markdown summary here.")
@click.option("--json", type=click.Path(dir_okay=False), help="Write every figure (and the samples) as JSON here.")
@click.option("--allow-env-change", is_flag=True, help="Compare even if the device fingerprint changed.")
@click.option("--processes", type=int, default=1, show_default=True,
              help="Run the model check in this many fresh processes; the verdict is theirs when they agree, "
                   "else inconclusive (raise it on a shared machine).")
@click.pass_context
def regress_cmd(ctx, **kw):
    """Re-measure a model (or LUT rows) on DEVICE and test for a latency regression.

    Exit codes: 0 pass or improved, 1 regressed (or stale LUT), 2 bad input or changed
    environment, 3 inconclusive.
    """
    from hwprune.api import regress
    from hwprune.regress import RegressOptions, format_text

    r = regress(RegressOptions(**kw), log=lambda m: click.echo(m, err=True))
    click.echo(format_text(r))
    ctx.exit(r["exit_code"])


def main() -> None:
    cli(prog_name="hwprune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
