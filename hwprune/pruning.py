"""``hwprune prune``: search widths under budgets, prune physically, recover, export, certify.

The pipeline (:func:`run`): measure the dense model on the device; let an agent pick per-group
widths under the budget functions (LUT latency first) with the task's objective; measure the
search's answer and a latency ladder under it beside the dense model (:mod:`hwprune.certify`); recover the one
that fits (:mod:`hwprune.task`); measure it again and certify that the 95% upper confidence bound
of the measured statistic is within the budget — if a measurement misses, tighten the LUT limit
by measured/predicted and search again; then write the run folder (:mod:`hwprune.rundir`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.agents.base import SearchResult
from hwprune.certify import (CONFIDENCE, Certificate, Certifier, is_finite_number, FinalMeasurement, LatencyBudget, Measure, Proposal, Round, default_measure,
                             measured_points, next_lut_limit, short_of_room, top_candidates)
from hwprune.errors import HwpruneError, check_integer, describe_callable, first_line
from hwprune.export import check_input_shape, export_onnx
from hwprune.groups import IMPORTANCE_CRITERIA, UnprunableGroup, find_groups
from hwprune.lut import LatencyLUT
from hwprune.plan import Plan
from hwprune.ranks import Ranks
from hwprune.search import COUNT_BUDGETS, SearchSetup, load_predictor, parse_count_limit, user_budget
from hwprune.task import Recovered, RecoverySettings, Task
from hwprune.widthsteps import report_section, search_space, staircases_of
from profilers.errors import ProfilerError
from profilers.remote import check_reachable

FINETUNE_STRATEGIES = ("standard", "swd", "agp")
# A certified round whose upper bound uses less of the budget than this searches again, looser:
# budget left unused is accuracy thrown away (issue 19).
USE_BUDGET = 0.95
# Inside the package, so a wheel carries them (the checkout's top-level checkpoints/ links here).
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
__all__ = ["PruneOptions", "PruneResult", "run", "parse_count_limit", "default_agent", "default_weights"]


@dataclass
class PruneOptions:
    """Every setting of a prune run (``hwprune prune``'s options); saved as ``config.json`` beside the outputs."""

    model: str
    device: str
    lut: str | None = None  # optional without a latency budget
    out: str | None = None  # None: write no run folder (library use)
    data: str | None = "fashion-mnist"
    weights: str | None = None
    input_shape: tuple[int, int, int] | None = None
    latency_ms: float | None = None
    speedup: float | None = None
    max_params: float | str | None = None  # a count, or "15%" of the dense model
    max_macs: float | str | None = None
    max_memory_bytes: float | str | None = None
    budget: list[tuple[Any, float]] = field(default_factory=list)  # (module:function or callable, limit)
    agent: str | None = None
    agent_options: dict[str, Any] = field(default_factory=dict)
    max_evaluations: int = 100
    importance: str = "l1"
    # AGP, 2 epochs, lr 0.05: the best recovery at equal epochs in docs/BENCHMARKS.md (issue 7)
    finetune_epochs: int = 2
    lr: float = 0.05
    batch_size: int = 128
    finetune: str = "agp"
    kd: bool = False
    kd_temperature: float = 4.0
    kd_weight: float = 0.9
    seed: int = 0
    certify_rounds: int = 5
    val_samples: int = 1000
    measure_top: int = 3
    # Whole sub-networks measured beside the dense model at the start to refit the LUT's ms scale
    # in this process (hwprune.calibrate); 0 keeps the LUT's stored calibration.
    calibration_samples: int = 8
    # Fresh processes the final dense/pruned pair is measured in again; certified only if every one
    # certifies (hwprune.processes). 1 on a dedicated device; raise it on a shared machine.
    processes: int = 1
    proxy_train_steps: int = 0
    allow_other_device: bool = False
    overwrite: bool = False
    show_progress: bool = True

    def validate(self) -> dict[str, float | str]:
        """Check what needs nothing loaded (``--out`` included); returns the count limits given, parsed (``{"max_params": "15%"}``)."""
        LatencyBudget("p50", self.latency_ms, self.speedup)  # in range, or one line naming the flag
        limits = {attr: parse_count_limit(getattr(self, attr), flag) for attr, (_, flag) in COUNT_BUDGETS.items()
                  if getattr(self, attr) is not None}
        if not self.latency_budget and not limits and not self.budget:
            raise HwpruneError("no budget given: pass --latency-ms, --speedup, --max-params, --max-macs, --max-memory "
                               "or --budget")
        if self.latency_budget and not self.lut:
            raise HwpruneError("a latency budget (--latency-ms, --speedup) needs --lut, the table from "
                               "`hwprune profile`")
        if self.finetune not in FINETUNE_STRATEGIES:
            raise HwpruneError(f"unknown --finetune '{self.finetune}' (known: {', '.join(FINETUNE_STRATEGIES)})")
        if self.importance not in IMPORTANCE_CRITERIA:
            raise HwpruneError(f"unknown --importance '{self.importance}' (known: {', '.join(IMPORTANCE_CRITERIA)})")
        if self.finetune in ("swd", "agp") and self.importance == "taylor":
            raise HwpruneError(f"--finetune '{self.finetune}' ranks channels as it trains; use --importance 'l1', "
                               f"'l2' or 'bn-scale'")
        for flag, value, low in (("--max-evaluations", self.max_evaluations, 1), ("--finetune-epochs",
                                 self.finetune_epochs, 0), ("--batch-size", self.batch_size, 1),
                                 ("--certify-rounds", self.certify_rounds, 1), ("--measure-top", self.measure_top, 1),
                                 ("--val-samples", self.val_samples, 1), ("--proxy-train-steps",
                                                                          self.proxy_train_steps, 0),
                                 ("--calibration-samples", self.calibration_samples, 0),
                                 ("--processes", self.processes, 1), ("--seed", self.seed, 0)):
            check_integer(value, flag, low)
        for flag, value, ok in (("--lr", self.lr, lambda v: v > 0), ("--kd-weight", self.kd_weight,
                                                                    lambda v: 0 <= v <= 1),
                                ("--kd-temperature", self.kd_temperature, lambda v: v > 0)):
            if not (is_finite_number(value) and ok(value)):
                raise HwpruneError(f"{flag} is out of range: {value!r}")
        if self.out:
            from hwprune.rundir import check_out_dir

            check_out_dir(Path(self.out), self.overwrite)
        return limits

    @property
    def latency_budget(self) -> bool:
        return self.latency_ms is not None or self.speedup is not None

    def recovery(self, channel_multiple: int) -> RecoverySettings:
        return RecoverySettings(self.finetune, self.finetune_epochs, self.lr, self.batch_size, self.seed,
                                self.importance, self.kd, self.kd_temperature, self.kd_weight, channel_multiple,
                                self.show_progress)

    def to_json(self) -> dict[str, Any]:
        """``config.json``: the options, with a callable budget named rather than pickled."""
        d = asdict(self)
        d["budget"] = [[f if isinstance(f, str) else describe_callable(f), v] for f, v in self.budget]
        return d


@dataclass
class PruneResult:
    """What a prune run produced.

    ``model`` is the pruned, recovered ``nn.Module`` (eval mode); ``certificate`` the measured
    verdict; ``plan`` the kept channels per group; ``report`` what ``report.json`` holds;
    ``onnx`` the exported pruned model; ``baseline`` what ``baseline.json`` holds; ``out`` the
    run folder, when one was written.
    """

    model: nn.Module
    certificate: Certificate
    plan: Plan
    report: dict[str, Any]
    onnx: bytes
    baseline: dict[str, Any]
    out: Path | None = None
    is_main: bool = True  # False on the other ranks of a torchrun job: no report, files or ONNX there

    @property
    def certified(self) -> bool:
        return self.certificate.certified


@dataclass
class _Outcome:
    """The certification loop's result: the last search, its recovered model and every round."""

    result: Any  # SearchResult of the kept architecture
    recovered: Recovered
    final: FinalMeasurement
    onnx: bytes
    rounds: list[Round]


def default_agent() -> str:
    from hwprune.agents import list_agents

    agents = list_agents()
    return "rl" if "rl" in agents else "knapsack"


def default_weights(model: str, data: str) -> str | None:
    """The committed dense checkpoint for a zoo model on a dataset, if there is one."""
    ds = data.split(":", 1)[0]
    path = CHECKPOINT_DIR / f"{model}-{ds}.pt"
    return str(path) if path.is_file() else None


@dataclass
class _Job:
    """What every stage of one run shares: the options, the device, the dense model and the task."""

    opts: PruneOptions
    cfg: Any  # DeviceConfig
    dense: nn.Module
    x: torch.Tensor
    groups: list
    task: Task
    ranks: Ranks
    log: Callable[[str], None]
    unprunable: list = field(default_factory=list)  # UnprunableGroup: left at full width, and why
    space: Any = None  # SearchSpace: the widths a search may choose (rank 0, once the LUT is loaded)

    def objective(self):
        return self.task.objective(self.dense, self.x, criterion=self.opts.importance,
                                   val_samples=self.opts.val_samples, train_steps=self.opts.proxy_train_steps)

    def recover(self, pruned: nn.Module, kept: dict[str, list[int]], widths: dict[str, int]) -> Recovered:
        """Rank 0: recover ``pruned``, every other rank recovering the same architecture beside it."""
        with self.ranks.together({"recover": True, "kept": kept}):
            return self.task.recover(self.dense, pruned, kept, widths, self.x,
                                     self.opts.recovery(self.cfg.width_multiple), self.log)


def run(opts: PruneOptions, spec, task: Task, *, lut: LatencyLUT | str | None = None, num_classes: int | None = None,
        reproduce: str | None = None, log: Callable[[str], None] = print, measure: Measure = default_measure,
        wait: Callable[[float], None] = time.sleep, started: float | None = None,
        measure_processes=None) -> PruneResult:
    """Prune ``spec``'s model (a ``ModelSpec`` or ``ModuleSpec``, named ``opts.model`` in the LUT) to
    ``opts``' budgets on ``opts.device``.

    The model is built at the device config's batch size after seeding with ``opts.seed`` (the
    caller's random state is restored after). With ``opts.out`` the run folder is written (all
    files or none). ``measure``, ``wait`` and ``measure_processes`` are the device's measurement, the
    pause before a retake and the measurement in fresh processes (seams for tests); ``started`` is when the caller's work began (``report.seconds``).
    Under ``torchrun`` rank 0 searches, measures and writes; every rank recovers (:mod:`hwprune.ranks`).
    """
    from hwprune.agents import create_agent
    from profilers.config import load_device_config

    t0 = time.perf_counter() if started is None else started
    limits = opts.validate()
    # before anything slow, so that a typo fails at once
    user_budgets = [user_budget(f, limit) for f, limit in opts.budget]
    agent = create_agent(opts.agent or default_agent(), **opts.agent_options)
    cfg = load_device_config(opts.device)
    check_reachable(cfg)  # a remote device: before the model is built and exported
    with torch.random.fork_rng(devices=[]):  # seeded here, the caller's random state restored after
        torch.manual_seed(opts.seed)
        dense = spec.build()
        x = spec.example_input(cfg.batch_size)
        task.check_output(check_input_shape(dense, x))
        ranks = Ranks.start()
        unprunable: list[UnprunableGroup] = []
        groups = find_groups(dense, x, unprunable=unprunable)
        job = _Job(opts, cfg, dense, x, groups, task, ranks, log if ranks.is_main else (lambda _m: None),
                   unprunable)
        for u in unprunable:
            job.log(f"warning: group {u.name} ({u.channels} channels) is left at full width: {u.reason}")
        if ranks.is_main:
            task.check_trained(dense, job.log)
        try:
            if not ranks.is_main:
                return _follow(job, num_classes)
            try:
                return _lead(job, lut, limits, user_budgets, agent, num_classes, reproduce,
                             dict(measure=measure, wait=wait, measure_processes=measure_processes), t0)
            except BaseException as err:
                ranks.abort(first_line(err) if isinstance(err, ProfilerError)
                            else f"{type(err).__name__}: {first_line(err)}")
                raise
        finally:
            ranks.close()


def _lead(job: _Job, lut, limits, user_budgets, agent, num_classes, reproduce, device: dict[str, Any],
          t0) -> PruneResult:
    """Rank 0's run: measure, search, certify, report and write."""
    from hwprune.baseline import make_baseline
    from hwprune.report import build_report
    from hwprune.rundir import write_run

    opts, cfg, dense, x, log = job.opts, job.cfg, job.dense, job.x, job.log
    table, predictor = load_predictor(lut if lut is not None else opts.lut, cfg, opts.model, dense, x, job.groups,
                                      opts.allow_other_device)
    job.space = search_space(job.groups, cfg, predictor)
    cert = Certifier(cfg, LatencyBudget(cfg.statistic, opts.latency_ms, opts.speedup), export_onnx(dense, x),
                     log=log, **device)
    calibration = _calibrate(job, cert, predictor)
    if calibration is not None:
        predictor = calibration.predictor
    agent_name = agent.name
    setup = SearchSetup.build(dense, x, job.groups, job.space, job.objective(), predictor, limits, user_budgets,
                              agent, opts.agent_options, opts.importance)
    outcome = _search_and_certify(job, setup, cert)
    f = outcome.final
    if cert.budget.given and not f.certified:
        log(f"warning: not certified after {len(outcome.rounds)} round(s): the measured upper bound exceeds "
            f"the budget")
    pruned = outcome.recovered.model
    plan = _plan(job, num_classes, outcome.recovered.kept)
    env = _environment(cfg, table)
    baseline = make_baseline(outcome.onnx, "pruned.onnx", cfg.name, cfg.statistic, f.pruned_first, env,
                             reference=f.reference)
    certificate = Certificate(f.certified, cfg.statistic, f.upper_bound_ms, f.budget_ms, CONFIDENCE, outcome.rounds,
                              f.across, f.states)
    report = build_report(opts, agent_name, cert, setup, outcome.result, certificate, f, dense, pruned, x,
                          job.task.evaluate(dense), job.task.evaluate(pruned), outcome.recovered.report, env, limits,
                          seconds=time.perf_counter() - t0, reproduce=reproduce)
    report["calibration"] = calibration.to_dict() if calibration is not None else None
    report["ranks"] = job.ranks.world_size
    report["unprunable_groups"] = [asdict(u) for u in job.unprunable]
    report["width_grid"] = report_section(staircases_of(predictor.structure) if predictor is not None else None,
                                          cfg.channel_multiple, {g.name: g.step for g in job.groups})
    out = Path(opts.out) if opts.out else None
    if out is not None:
        write_run(out, plan=plan, onnx=outcome.onnx, model=pruned, baseline=baseline, report=report,
                  config=opts.to_json())
    job.ranks.send({"done": True, "certified": f.certified, "upper_bound_ms": f.upper_bound_ms,
                    "budget_ms": f.budget_ms, "kept": outcome.recovered.kept})  # last: nothing can fail after it
    return PruneResult(pruned, certificate, plan, report, outcome.onnx, baseline, out)


def _calibrate(job: _Job, cert: Certifier, predictor):
    """Measure the dense model, with the calibration sub-networks beside it when there is a LUT;
    returns the in-process calibration (None without a LUT). A latency budget below the smallest
    architecture as measured here is refused now, with that measurement."""
    from hwprune.calibrate import FLOOR_KEY, calibration_points, fit_here

    opts, cfg, log = job.opts, job.cfg, job.log
    points = []
    if predictor is not None and opts.calibration_samples:
        points = calibration_points(predictor, job.dense, job.x, job.groups, space=job.space,
                                    samples=opts.calibration_samples, seed=opts.seed)
    log(f"measuring the dense model on {cfg.name}"
        + (f" beside {len(points)} calibration sub-networks" if points else "") + " ...")
    timings = cert.measure_dense([(p.key, p.onnx) for p in points])
    if cert.budget_ms is not None and cert.stat(cert.dense) <= cert.budget_ms:
        log(f"note: the dense model already measures {cert.stat(cert.dense):.4g} ms ({cfg.statistic}), within the "
            f"latency budget {cert.budget_ms:.4g} ms; the search may keep it whole")
    if predictor is None:
        return None
    cal = fit_here(predictor, points, timings, cfg.statistic)
    if cal.source == "in-process":
        log(f"LUT calibrated in this process on {len(points) + 1} models: measured = {cal.a:.4f} ms + {cal.b:.4f} x "
            f"raw (fit median |error| {cal.fit_median_abs_error_pct:.1f}%); the smallest architecture measured "
            f"{cal.floor_ms:.4f} ms")
    budget_ms = cert.budget_ms
    if budget_ms is None or cal.floor_ms is None or cal.floor_ms <= budget_ms:
        return cal

    def unreachable(budget: float, floor_ms: float, measured: str) -> HwpruneError:
        # The dense model's share is what a speed-up budget is: it holds whatever the machine's
        # speed was at each measurement, where the two ms budgets may differ.
        dense_ms = cert.stat(cert.dense)
        return HwpruneError(f"the latency budget {budget:.4g} ms ({cfg.statistic}) is unreachable on {cfg.name}: "
                            f"the smallest architecture (every group at its narrowest allowed width) measured "
                            f"{measured}, beside the dense model at {dense_ms:.4g} ms: {floor_ms / dense_ms:.2f}x "
                            f"the dense model where the budget needs {budget / dense_ms:.2f}x")

    if cal.floor_ms > HOPELESS_FLOOR_RATIO * budget_ms:
        raise unreachable(budget_ms, cal.floor_ms,
                          f"{cal.floor_ms:.4g} ms in this process, {cal.floor_ms / budget_ms:.1f}x the budget")
    # Refused only if it misses twice: searching costs little, a wrong refusal a whole rerun.
    floor = next(p for p in points if p.key == FLOOR_KEY)
    log(f"the smallest architecture measured {cal.floor_ms:.4f} ms, over the budget {budget_ms:.4f} ms: "
        f"measuring it again beside the dense model after a pause")
    first_budget_ms = budget_ms
    again_ms, budget_ms = cert.retake_floor(floor.key, floor.onnx)
    if again_ms > budget_ms:
        then = f" (against {first_budget_ms:.4g} ms then)" if abs(first_budget_ms - budget_ms) > 1e-4 * budget_ms else ""
        raise unreachable(budget_ms, again_ms, f"{cal.floor_ms:.4g} ms in this process{then} and {again_ms:.4g} ms again")
    log(f"the smallest architecture measured {again_ms:.4f} ms again, within the budget {budget_ms:.4f} ms "
        f"(the dense model {cert.stat(cert.dense):.4f} ms beside it): searching")
    cal.floor_ms = again_ms
    return cal


# A smallest architecture measured over this many times the budget is refused without a second
# measurement: a busy moment slows it by at most ~1.4x (0.38 of dense quiet, 0.54 busy; see
# Certifier.retake_floor), so no retake could bring it under.
HOPELESS_FLOOR_RATIO = 2.0


def _follow(job: _Job, num_classes: int | None) -> PruneResult:
    """A rank other than 0: recover what rank 0 says, until it says done. Returns the recovered
    model with rank 0's verdict; the report, ONNX and files are rank 0's alone.

    The architecture is cut to rank 0's kept channels (no objective here: building one would
    load the CPU while rank 0 measures); DDP then starts every rank from rank 0's weights."""
    from hwprune.groups import prune_to_widths

    recovered = None
    while "done" not in (message := job.ranks.receive()):
        kept = message["kept"]
        widths = {name: len(k) for name, k in kept.items()}
        pruned = prune_to_widths(job.dense, job.x, widths, keep=kept).eval()
        recovered = job.task.recover(job.dense, pruned, kept, widths, job.x,
                                     job.opts.recovery(job.cfg.width_multiple), job.log)
    model = recovered.model if recovered is not None else job.dense
    certificate = Certificate(message["certified"], job.cfg.statistic, message["upper_bound_ms"],
                              message["budget_ms"], CONFIDENCE, [])
    return PruneResult(model, certificate, _plan(job, num_classes, message["kept"]), {}, b"", {}, None, is_main=False)


def _plan(job: _Job, num_classes: int | None, kept: dict[str, list[int]]) -> Plan:
    return Plan(job.opts.model, list(job.x.shape), num_classes, job.opts.importance,
                {g.name: g.channels for g in job.groups}, kept)


def _search_and_certify(job: _Job, s: SearchSetup, cert: Certifier) -> _Outcome:
    """Search, measure, recover and measure again until a recovered model is certified with the
    budget used (upper bound at least ``USE_BUDGET`` of it), or rounds run out.

    A round over budget tightens the LUT limit; a certified round that leaves more than
    1 - ``USE_BUDGET`` of the budget unused loosens it and searches again, and the run keeps the
    certified architecture with the best proxy score (the search's own validation objective,
    never the test set). A loosened round that does not fit, or whose candidates score no higher
    than the certified architecture (it could not be kept: nothing is measured or recovered), ends
    the run on the certified one.
    """
    opts, log = job.opts, job.log
    rounds: list[Round] = []
    tried: set[tuple[int, ...]] = set()  # architectures measured in earlier rounds
    best: _Outcome | None = None
    # The LUT's first limit: a speed-up applies to the LUT's own dense prediction (same frame);
    # an absolute budget is taken as given. Rounds then correct by measured/predicted. Never
    # below the smallest architecture: a budget it fits (measured, hwprune.calibrate) is searched.
    floor_ms = s.floor_ms
    lut_limit_ms = s.predict({}) / opts.speedup if opts.speedup is not None else opts.latency_ms
    if lut_limit_ms is not None and floor_ms is not None:
        lut_limit_ms = max(lut_limit_ms, floor_ms)
    for rnd in range(opts.certify_rounds):
        searched = _measured_round(job, s, cert, rnd, lut_limit_ms, tried, beat=best.result if best is not None else None)
        if searched is None:
            log(f"round {rnd + 1}: the looser limit finds nothing that scores above the certified architecture "
                f"({best.result.score:.4f}); keeping it")
            return best
        r, rm, result, models = searched
        rounds.append(r)
        if best is not None and not rm.accepted:  # a loosened round that does not fit: the certified one stands
            log(f"round {r.round}: the looser limit's best candidates have no room under the budget as measured "
                f"(upper bound {_ms(r.upper_bound_ms)} against {_ms(r.budget_ms)}); keeping the certified architecture")
            return best
        last = rnd == opts.certify_rounds - 1 or (lut_limit_ms is not None and lut_limit_ms <= floor_ms * (1 + 1e-9))
        if rm.accepted or last:
            outcome = _recover_and_measure(job, s, cert, r, result, models[rm.index], rounds)
            if not cert.budget.given:
                return outcome
            if r.final.certified:
                best = outcome if best is None or outcome.result.score > best.result.score else best
                use = r.final.upper_bound_ms / r.final.budget_ms
                if use >= USE_BUDGET or rnd == opts.certify_rounds - 1:
                    return best
                log(f"round {r.round}: certified after recovery, using {use:.1%} of the budget; searching again with a looser "
                    f"LUT limit")
            elif best is not None:
                log(f"round {r.round}: after recovery its upper bound {_ms(r.final.upper_bound_ms)} exceeds the budget "
                    f"{_ms(r.final.budget_ms)}; keeping the certified architecture of an earlier round")
                return best
            elif last:
                return outcome
            else:
                # Measured again, the same widths came out over budget: the first measurement was
                # lucky. That measurement stands; search again below the budget.
                log(f"round {r.round}: the final measurement's upper bound {r.final.upper_bound_ms:.4f} ms "
                    f"exceeds the budget {r.final.budget_ms:.4f} ms; searching again")
        # The measurement is the truth: move the LUT limit by the rounds measured so far
        # (tighter after a miss, looser after a round with budget to spare).
        lut_limit_ms = next_lut_limit(measured_points(rounds), lut_limit_ms, (1 - cert.cfg.rel_ci) * 0.995, floor_ms)
    raise AssertionError("unreachable: the last round always returns")


def _ms(value: float | None) -> str:
    return f"{value:.4f} ms" if value is not None else "n/a"


def _measured_round(job: _Job, s: SearchSetup, cert: Certifier, rnd: int, lut_limit_ms: float | None,
                    tried: set, beat: SearchResult | None = None) -> tuple[Round, Any, Any, list[nn.Module]] | None:
    """One round: search under ``lut_limit_ms``, measure its candidates beside the dense model, keep one.

    ``beat`` is the certified search result a looser round must improve on. The run keeps the
    certified architecture with the best proxy score: when no candidate of the round scores above
    ``beat``, nothing the round could measure would be kept, and it returns None with nothing
    measured or recovered (the search finding ``beat`` again is one such case)."""
    opts, cfg, x = job.opts, cert.cfg, job.x
    result = s.search(rnd, lut_limit_ms, seed=opts.seed, max_evaluations=opts.max_evaluations,
                      show_progress=opts.show_progress, log=job.log)
    # With a measured budget the candidates are a ladder from the limit down to USE_BUDGET of it:
    # one of them then usually lands in the band a certificate is kept in when the LUT is off.
    ladder_to = USE_BUDGET if cert.budget.given and lut_limit_ms is not None else 1.0
    cands = top_candidates(result, opts.measure_top, s.space, tried, s.predict, ladder_to,
                           beat.score if beat is not None else None)
    if beat is not None and (s.space.key(result.widths) == s.space.key(beat.widths)
                             or max(score for _, score in cands) <= beat.score):
        return None
    models = [s.objective.pruned_model(w) for w, _ in cands]  # the channels the objective scored
    rm = cert.measure_round([Proposal(w, score, s.predict(w), export_onnx(m, x))
                             for (w, score), m in zip(cands, models)])
    tried.update(s.space.key(w) for w, _ in cands)
    kept = rm.kept
    if rm.index:  # not the search's own best: the report's architecture is the one measured to fit
        result = replace(result, widths=kept.widths, score=kept.proxy_accuracy, values=s.values(kept.widths))
    r = Round(rnd + 1, lut_limit_ms, result.widths, result.score, kept.predicted_ms, cert.stat(kept.timing),
              kept.upper_bound_ms, rm.budget_ms, result.evaluations, result.seconds, rm.remeasured, rm.retakes,
              rm.index + 1, [m.summary() for m in rm.measured], result.extra, rm.state_probe_us,
              cert.room_ms(rm.budget_ms) if rm.budget_ms is not None else None)
    job.log(f"round {r.round}: " + (f"predicted {r.predicted_ms:.4f} ms, " if r.predicted_ms is not None else "")
            + f"measured {cfg.statistic} {r.measured_ms:.4f} ms"
            + (f" (95% upper bound {r.upper_bound_ms:.4f} ms vs budget {r.budget_ms:.4f} ms)"
               if r.upper_bound_ms is not None else "")
            + (f", judged in its worst machine state (probe {r.state_probe_us:.0f} µs)" if r.state_probe_us else "")
            + (f"; under the budget but without room for the final re-measurement (at most {r.room_ms:.4f} ms)"
               if short_of_room(r.upper_bound_ms, r.budget_ms, r.room_ms) else ""))
    return r, rm, result, models


def _recover_and_measure(job: _Job, s: SearchSetup, cert: Certifier, r: Round, result, model: nn.Module,
                         rounds: list[Round]) -> _Outcome:
    """Recover the round's architecture and take the final measurement (``r.final``)."""
    from hwprune.baseline import BASELINE_REFERENCE_KEY, BASELINE_SAMPLES, reference_graph

    recovered = job.recover(model, s.objective.keep_indices(result.widths), result.widths)
    onnx = export_onnx(recovered.model, job.x)
    # The drift reference rides along so that baseline.json can be compared later from another
    # process (hwprune regress normalises by it); the stored side never gains samples later, so
    # it gets plenty now.
    r.final = cert.measure_final(onnx, (BASELINE_REFERENCE_KEY, reference_graph()[1]), BASELINE_SAMPLES)
    f = r.final
    job.log(f"round {r.round}: after recovery measured {cert.statistic} {f.measured_ms:.4f} ms"
            + (f" (95% upper bound {f.upper_bound_ms:.4f} ms vs budget {f.budget_ms:.4f} ms)"
               if f.upper_bound_ms is not None and f.budget_ms is not None else ""))
    if job.opts.processes > 1 and cert.budget.given and r.final.certified:
        # Certified here; a certificate is about the device, so ask again in fresh processes.
        across = cert.across_processes(onnx, job.opts.processes)
        ratios = [p.upper_bound_ms / p.budget_ms for p in across.processes]
        job.log(f"round {r.round}: in {len(ratios)} fresh processes the upper bound used "
                + " / ".join(f"{u:.0%}" for u in ratios) + " of the budget"
                + ("" if across.certified else "; not certified in every process"))
        r.final = replace(r.final, across=across, certified=across.certified)
    return _Outcome(result, recovered, r.final, onnx, rounds)


def _environment(cfg, table: LatencyLUT | None) -> dict[str, Any]:
    """This machine's manifest; for a remote device, the one its LUT recorded."""
    if cfg.remote is None:
        from profilers.environment import collect_manifest

        return collect_manifest(cfg)
    return table.meta.get("environment", {}) if table is not None else {}


def command_line(opts: PruneOptions) -> str:
    """The ``hwprune prune`` command that reproduces a CLI run."""
    import shlex

    q = shlex.quote
    defaults = PruneOptions(model="", device="")
    parts = ["hwprune prune", f"--device {q(opts.device)}", f"--model {q(opts.model)}", f"--data {q(str(opts.data))}",
             *([f"--lut {q(opts.lut)}"] if opts.lut else []), *([f"--out {q(opts.out)}"] if opts.out else [])]
    if opts.input_shape is not None:
        parts.append("--input-shape " + ",".join(str(d) for d in opts.input_shape))
    # repr, not :g, so that a limit such as --max-params 1234567 is reproduced exactly
    for flag, v in (("--latency-ms", opts.latency_ms), ("--speedup", opts.speedup), ("--max-params", opts.max_params),
                    ("--max-macs", opts.max_macs), ("--max-memory", opts.max_memory_bytes),
                    ("--weights", opts.weights), ("--agent", opts.agent)):
        if v is not None:
            parts.append(f"{flag} {v!r}" if isinstance(v, float) else f"{flag} {q(str(v))}")
    for k, v in opts.agent_options.items():
        parts.append(f"--agent-option {q(f'{k}={json.dumps(v)}')}")
    for fn, limit in opts.budget:
        parts.append(f"--budget {q(f'{fn}={float(limit)!r}')}")
    for flag, attr in (("--max-evaluations", "max_evaluations"), ("--importance", "importance"), ("--lr", "lr"),
                       ("--batch-size", "batch_size"), ("--kd-temperature", "kd_temperature"),
                       ("--kd-weight", "kd_weight"), ("--finetune", "finetune"),
                       ("--certify-rounds", "certify_rounds"), ("--proxy-train-steps", "proxy_train_steps"),
                       ("--measure-top", "measure_top"), ("--calibration-samples", "calibration_samples"),
                       ("--processes", "processes")):
        if getattr(opts, attr) != getattr(defaults, attr):
            parts.append(f"{flag} {getattr(opts, attr)!r}" if isinstance(getattr(opts, attr), float)
                         else f"{flag} {getattr(opts, attr)}")
    parts.append(f"--finetune-epochs {opts.finetune_epochs} --seed {opts.seed}")
    if opts.kd:
        parts.append("--kd")
    if opts.allow_other_device:
        parts.append("--allow-other-device")
    return " ".join(parts)
