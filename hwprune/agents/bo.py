"""The ``bo`` agent: Gaussian-process Bayesian optimisation of keep ratios with layer clustering and roll-back.

After "Bayesian Optimization with Clustering and Rollback for CNN Auto Pruning" (Fan, Mu,
Zhang; ECCV 2022, arXiv:2109.10591). The search variables are keep ratios: one per
*cluster* of dependency groups at first, then (roll-back) one per group.

- **Clustering.** Each group's per-channel importance (``problem.importance``, L1 by
  default) is normalised, turned into a Gaussian kernel density on a grid shared by all
  groups, and the curves are clustered by Ward linkage cut to ``k`` clusters: groups whose
  channels are alike in how unequal they are share one keep ratio. The normalisation
  (``importance_scale``) is ``"median"`` by default, ``v / median(v) - 1``: the paper
  shifts by the median only, but L1 norms scale with a layer's fan-in, so without the
  division a deep layer and a shallow one differ by magnitude rather than by shape.
  ``"none"`` is the paper's shift alone; ``"std"`` divides the shifted values by their
  standard deviation. The default ``k`` is ``clamp(round(groups / 4), 3, 8)`` (3 for
  resnet20's 12 groups, 6 for MobileNetV2's 25); ``clusters`` overrides it and
  ``clusters=0`` or ``clustering=false`` searches one ratio per group from the start.
  Without importance for every group, the groups are clustered by their dense width.
- **Feasibility by projection.** Every candidate is scaled by one common factor ``s``
  (keep ratios ``min(1, s·r)``; ``s → 0`` is the smallest architecture, feasible by
  ``Problem.check_reachable``) found by bisection on the budget functions alone, so every
  evaluated architecture meets every budget. With ``fill`` (default) a candidate under
  budget is scaled *up* to the budget too: accuracy grows with width, so an architecture
  that leaves budget unspent is not worth an evaluation. The GP is trained on the projected
  ratios, and the expected improvement is judged at the projected point of each candidate
  (judging it at the raw point, beyond the budget boundary where the GP has no data, would
  ask for the same corner of the box again and again).
- **Surrogate and acquisition.** BoTorch ``SingleTaskGP`` with an ARD Matérn-5/2 kernel
  (Gamma priors on lengthscale and output scale), inputs the keep ratios themselves (the
  unit cube), outputs standardised; fitted with ``fit_gpytorch_mll`` at most
  ``fit_iterations`` L-BFGS steps. ``LogExpectedImprovement`` ranks a pool of candidates:
  ``raw_samples`` scrambled-Sobol points in the phase's box, as many Gaussian perturbations
  of the ``top_k`` best points, and (``restarts > 0``, off by default) the maximisers of
  the acquisition over the box from ``optimize_acqf``, each projected; the best
  unevaluated one is evaluated. Hyperparameters are refitted every ``refit_every``
  evaluations (warm-started); in between the GP is only conditioned on the new data. The first
  evaluations are the uniform architecture (all ratios 1, projected: the ``uniform``
  agent's answer) and ``init_points - 1`` Sobol points.
- **Roll-back.** ``rollback="direct"`` (default) switches to one ratio per group after
  ``rollback_at`` evaluations (a fraction of ``max_evaluations`` when below 1, default 0.6)
  or after ``patience`` evaluations without improvement, whichever is first; the box of
  each group is the range of its ratios among the ``top_k`` best architectures, widened
  by ``widen`` on each side, and the GP is refitted on the whole history lifted to one
  ratio per group (a clustered point gives each group its cluster's ratio, exactly).
  ``"gradual"`` first re-cuts the same Ward tree into ``2k`` clusters (a refinement, so
  lifting stays exact), then goes to one ratio per group; its two switches are at
  ``rollback_at`` and half way from there to the end (or on patience). ``"none"`` stays
  clustered. Any phase also rolls back at once when its candidate pool (and a random
  fallback) reaches no unevaluated architecture: a few cluster ratios on a coarse channel
  grid reach only a few dozen architectures. With nothing finer left, the search stops
  early rather than spend evaluations it cannot place.
- **Resume and logs.** ``checkpoint`` (a JSON path) holds every evaluation of the search,
  rewritten atomically after each one; a search started with an existing checkpoint for the
  same space, budgets and seed replays its scores instead of calling the objective, and,
  being deterministic, reproduces the uninterrupted run. ``log_csv`` gets one row per
  evaluation (``{seed}`` in the path is replaced by the seed, so certification rounds,
  which search again with the next seed, each keep their own file).

Every draw is seeded from ``seed`` (scrambled Sobol seeds, NumPy generators and torch's
RNG, forked so the caller's torch RNG is left alone), so the same seed gives the same
search. The GP work runs on one torch thread (restored afterwards): its matrices are tiny,
and more threads only contend for the cores the objective needs.

Example:
    >>> from hwprune.agents import create_agent
    >>> agent = create_agent("bo", rollback="gradual", init_points=8)   # doctest: +SKIP
    >>> agent.search(problem, seed=0, max_evaluations=100).widths       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hwprune.agents.base import Agent, Problem, SearchResult, SearchSpace, Widths, check_option, register_agent
from hwprune.agents.evaluator import Evaluator
from hwprune.errors import HwpruneError

ProgressFn = Callable[[dict[str, Any]], None]

ROLLBACKS = ("none", "direct", "gradual")
IMPORTANCE_SCALES = ("median", "none", "std")
CHECKPOINT_FORMAT = "hwprune-bo-checkpoint"
_KDE_POINTS = 128


# -- clustering ---------------------------------------------------------------------------------


def default_clusters(n_groups: int) -> int:
    """The default number of clusters: ``clamp(round(groups / 4), 3, 8)``."""
    return min(8, max(3, int(round(n_groups / 4))))


def _as_vector(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    a = np.asarray(values, dtype=float).reshape(-1)
    if a.size == 0:
        raise HwpruneError(f"importance of group '{name}' is empty")
    if not np.all(np.isfinite(a)):
        raise HwpruneError(f"importance of group '{name}' has non-finite entries")
    return a


def normalise_importance(values: np.ndarray, scale: str = "median") -> np.ndarray:
    """One group's importances shifted by their median and, per ``scale``, brought to a common scale."""
    v = np.asarray(values, dtype=float)
    med = float(np.median(v))
    shifted = v - med
    if scale == "none":
        return shifted
    if scale == "median":
        # A zero median (mostly dead channels) falls back to the mean magnitude as the unit.
        unit = abs(med) if med != 0 else float(np.mean(np.abs(v)))
    elif scale == "std":
        unit = float(np.std(v))
    else:
        raise HwpruneError(f"agent bo: unknown importance_scale '{scale}' (known: {', '.join(IMPORTANCE_SCALES)})")
    return shifted / unit if unit > 0 else shifted


def importance_curves(vectors: Sequence[np.ndarray], points: int = _KDE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian kernel densities of each vector on one shared grid: ``(grid, curves[group, point])``.

    The bandwidth is Scott's rule (``std · n^(-1/5)``), floored at two grid steps so a group
    whose channels are all equal gives a narrow bump rather than a division by zero. The
    grid spans the 1st to 99th percentile of all values pooled (plus a margin), so a few
    outlying channels do not squeeze every curve into a handful of grid points.
    """
    pooled = np.concatenate([np.asarray(v, float) for v in vectors])
    lo, hi = (float(q) for q in np.percentile(pooled, [1, 99]))
    if hi - lo <= 0:
        lo, hi = lo - 1.0, hi + 1.0
    margin = 0.1 * (hi - lo)
    grid = np.linspace(lo - margin, hi + margin, points)
    step = grid[1] - grid[0]
    curves = np.empty((len(vectors), points))
    for i, v in enumerate(vectors):
        v = np.asarray(v, float)
        h = max(float(np.std(v)) * v.size ** -0.2, 2 * step)
        dens = np.exp(-0.5 * ((grid[:, None] - v[None, :]) / h) ** 2).sum(axis=1)
        total = dens.sum() * step
        curves[i] = dens / total if total > 0 else dens
    return grid, curves


def _renumber(labels: Sequence[int]) -> list[int]:
    """Cluster ids in order of first appearance, so cluster 0 holds group 0 (stable across runs)."""
    seen: dict[int, int] = {}
    return [seen.setdefault(int(lab), len(seen)) for lab in labels]


def ward_tree(curves: np.ndarray) -> np.ndarray:
    """Ward linkage of the density curves (Euclidean distance between curves)."""
    from scipy.cluster.hierarchy import linkage

    return linkage(curves, method="ward")


def cut_tree(tree: np.ndarray, k: int) -> list[int]:
    """Group → cluster id for the Ward tree cut into (at most) ``k`` clusters."""
    from scipy.cluster.hierarchy import fcluster

    return _renumber(fcluster(tree, t=k, criterion="maxclust"))


def cluster_groups(problem: Problem, k: int, scale: str = "median") -> tuple[list[int], np.ndarray, list[str]]:
    """Cluster the groups by the shape of their importance distributions.

    Returns ``(labels, ward_tree, defaulted)``: a cluster id per group (in ``space`` order),
    the tree (to re-cut for gradual roll-back) and the groups that had no importance, in
    which case every group is described by its dense width instead (one curve per width).
    """
    names = problem.space.group_names
    unknown = set(problem.importance) - set(names)
    if unknown:
        raise HwpruneError(f"importance given for unknown group(s): {', '.join(sorted(unknown))}")
    defaulted = [n for n in names if n not in problem.importance]
    if defaulted:
        vectors = [np.array([math.log2(d)]) for d in problem.space.dense]
    else:
        vectors = []
        for n, d in zip(names, problem.space.dense):
            a = _as_vector(n, problem.importance[n])
            if a.size != d:
                raise HwpruneError(f"importance of group '{n}' has {a.size} entries, the group has {d} channels")
            vectors.append(normalise_importance(a, scale))
    if len(names) == 1:
        return [0], np.zeros((0, 4)), defaulted
    _, curves = importance_curves(vectors)
    tree = ward_tree(curves)
    return cut_tree(tree, k), tree, defaulted


# -- phases: which groups share a variable ---------------------------------------------------------


@dataclasses.dataclass
class Phase:
    """One stage of the search: ``assign[g]`` is the variable (dimension) of group ``g``."""

    name: str
    assign: list[int]

    @property
    def dims(self) -> int:
        return max(self.assign) + 1

    def lift(self, x: Sequence[float]) -> np.ndarray:
        """Per-group keep ratios of a point of this phase (each group takes its variable's value)."""
        x = np.asarray(x, float)
        return x[np.asarray(self.assign)]

    def compress(self, ratios: Sequence[float]) -> np.ndarray:
        """This phase's point of per-group ratios: each variable takes its first group's ratio.

        Exact for every point of this phase or of a coarser one, since the phases refine one
        another: all groups of a variable then hold the same ratio.
        """
        r = np.asarray(ratios, float)
        return r[self._first]

    @property
    def _first(self) -> np.ndarray:
        first: dict[int, int] = {}
        for g, j in enumerate(self.assign):
            first.setdefault(j, g)
        return np.array([first[j] for j in range(self.dims)])


def build_phases(labels: list[int], tree: np.ndarray, n_groups: int, rollback: str) -> list[Phase]:
    """The stages a search goes through, coarsest first (all refining each other)."""
    full = Phase("full", list(range(n_groups)))
    k = max(labels) + 1
    if k >= n_groups:
        return [full]
    phases = [Phase("clustered", list(labels))]
    if rollback == "gradual":
        finer = cut_tree(tree, min(2 * k, n_groups))
        if max(finer) + 1 > k and max(finer) + 1 < n_groups:
            phases.append(Phase("split", finer))
    if rollback in ("direct", "gradual"):
        phases.append(full)
    return phases


# -- projection onto the budgets ---------------------------------------------------------------------


class Projector:
    """Scales keep ratios by a common factor until every budget is met (budget functions only).

    ``project(r)`` returns ratios ``min(1, s·r)`` and their snapped widths for the largest
    ``s`` found by ``steps`` bisection halvings that meets every budget, searched in
    ``[0, 1]`` when ``r`` itself breaks a budget and, with ``fill``, in ``[1, 1/min(r)]``
    (up to dense) when it meets them all. The low end of the bracket is feasible at every
    step, so the result is feasible even where snapping or a noisy budget makes
    feasibility only roughly monotone in ``s``. The bisection stops early once the widths at
    the two ends differ by one channel step of one group: no other architecture lies on the
    ray between them.
    """

    def __init__(self, problem: Problem, steps: int = 14, fill: bool = True, min_ratio: float = 0.01):
        self.problem = problem
        self.space: SearchSpace = problem.space
        self.names = list(self.space.group_names)
        self.dense = np.asarray(self.space.dense, dtype=float)
        self.multiple = np.asarray([self.space.multiple_of(g) for g in range(len(self.names))], dtype=float)
        self.steps = steps
        self.fill = fill
        self.min_ratio = min_ratio
        self.checks = 0

    def widths(self, ratios: np.ndarray) -> Widths:
        """Snapped widths of keep ratios: ``SearchSpace.snap`` (round half to even), vectorised,
        since a projection snaps a dozen times and a step projects a hundred candidates."""
        if self.space.allowed is not None:  # a measured staircase: nearest allowed width per group
            r = np.clip(ratios, 0.0, 1.0) * self.dense
            return {n: self.space.snap(g, float(c)) for g, (n, c) in enumerate(zip(self.names, r))}
        m = self.multiple
        snapped = np.round(np.clip(ratios, 0.0, 1.0) * self.dense / m) * m
        w = np.where(self.dense <= m, self.dense, np.minimum(self.dense, np.maximum(m, snapped)))
        return {n: int(v) for n, v in zip(self.names, w)}

    def _ok(self, widths: Widths) -> bool:
        self.checks += 1
        return self.problem.feasible(widths)

    def _adjacent(self, a: Widths, b: Widths) -> bool:
        """True when ``b`` is ``a`` with one group one channel step wider (nothing lies between)."""
        diff = [n for n in a if a[n] != b[n]]
        if len(diff) != 1:
            return False
        g = self.names.index(diff[0])
        return b[diff[0]] == self.space.next_wider(g, a[diff[0]])

    def project(self, ratios: Sequence[float]) -> tuple[np.ndarray, Widths]:
        r = np.clip(np.asarray(ratios, float), self.min_ratio, 1.0)
        w_r = self.widths(r)
        if self._ok(w_r):
            if not self.fill:
                return r, w_r
            lo, hi = 1.0, 1.0 / float(r.min())
            if hi <= 1.0:
                return r, w_r
            w_lo, w_hi = w_r, self.widths(np.minimum(1.0, hi * r))
            if self._ok(w_hi):
                return np.minimum(1.0, hi * r), w_hi
        else:
            lo, hi = 0.0, 1.0
            w_lo, w_hi = self.widths(np.zeros_like(r)), w_r
        for _ in range(self.steps):
            if self._adjacent(w_lo, w_hi):
                break  # one snapping breakpoint left between them: w_lo is the answer already
            mid = (lo + hi) / 2
            w_mid = self.widths(np.minimum(1.0, mid * r))
            if self._ok(w_mid):
                lo, w_lo = mid, w_mid
            else:
                hi, w_hi = mid, w_mid
        return np.minimum(1.0, lo * r), w_lo


# -- backends -----------------------------------------------------------------------------------------


def _botorch_available() -> bool:
    return importlib.util.find_spec("botorch") is not None


# -- the agent ----------------------------------------------------------------------------------------


@register_agent("bo")
class BOAgent(Agent):
    """GP Bayesian optimisation over keep ratios, clustered first, then rolled back to one per group.

    Options (``--agent-option KEY=VALUE``), defaults in brackets:

    - ``clusters`` [None: ``clamp(round(groups/4), 3, 8)``]: number of clusters; 0 = none.
    - ``clustering`` [true]: false searches one ratio per group from the start.
    - ``importance_scale`` ["median"]: how importances are normalised before clustering
      (``median``, ``none`` — the paper's median shift only, ``std``).
    - ``init_points`` [10]: the uniform architecture plus ``init_points - 1`` Sobol points.
    - ``rollback`` ["direct"]: ``none``, ``direct`` or ``gradual``.
    - ``rollback_at`` [0.6]: evaluations before rolling back; below 1, a fraction of
      ``max_evaluations``.
    - ``patience`` [20]: roll back earlier after this many evaluations without improvement
      (0 disables).
    - ``top_k`` [10]: best architectures that bound the rolled-back box and seed local candidates.
    - ``widen`` [0.1]: keep-ratio margin added on each side of the rolled-back box.
    - ``low`` [0.1]: the smallest keep ratio of the initial box (projection may go lower).
    - ``fill`` [true]: scale candidates under budget up to it.
    - ``raw_samples`` [64]: Sobol candidates per step (and raw samples of ``optimize_acqf``).
    - ``restarts`` [0]: ``optimize_acqf`` restarts whose maximisers join the pool (0: skip it;
      its maximisers lie beyond the budget boundary and, projected, did not beat the pool
      on the synthetic problems while doubling the time per step).
    - ``fit_iterations`` [60]: L-BFGS iterations of each GP hyperparameter fit.
    - ``refit_every`` [5]: evaluations between hyperparameter fits (1: fit at every step);
      in between, the GP keeps its hyperparameters and is conditioned on the new data.
    - ``projection_steps`` [14]: bisection halvings of the projection factor.
    - ``checkpoint`` [None]: JSON path to save and resume the search.
    - ``log_csv`` [None]: CSV path, one row per evaluation (``{seed}`` is replaced).
    """

    def __init__(self, clusters: int | None = None, clustering: bool = True, importance_scale: str = "median",
                 init_points: int = 10, rollback: str = "direct", rollback_at: float | int = 0.6,
                 patience: int = 20, top_k: int = 10, widen: float = 0.1, low: float = 0.1, fill: bool = True,
                 raw_samples: int = 64, restarts: int = 0, fit_iterations: int = 60, refit_every: int = 5,
                 projection_steps: int = 14,
                 checkpoint: str | None = None, log_csv: str | None = None):
        if clusters is not None:
            check_option("bo", "clusters", clusters, 0, integer=True)
        self.clusters = clusters
        if not isinstance(clustering, bool):
            raise HwpruneError(f"agent bo: clustering must be true or false, got {clustering!r}")
        self.clustering = clustering
        if importance_scale not in IMPORTANCE_SCALES:
            raise HwpruneError(f"agent bo: unknown importance_scale '{importance_scale}' "
                               f"(known: {', '.join(IMPORTANCE_SCALES)})")
        self.importance_scale = importance_scale
        self.init_points = check_option("bo", "init_points", init_points, 1, integer=True)
        if rollback not in ROLLBACKS:
            raise HwpruneError(f"agent bo: unknown rollback '{rollback}' (known: {', '.join(ROLLBACKS)})")
        self.rollback = rollback
        if isinstance(rollback_at, int) and not isinstance(rollback_at, bool) and rollback_at >= 1:
            self.rollback_at: float | int = rollback_at
        else:
            self.rollback_at = check_option("bo", "rollback_at", rollback_at, 0.0, 1.0, low_open=True)
        self.patience = check_option("bo", "patience", patience, 0, integer=True)
        self.top_k = check_option("bo", "top_k", top_k, 1, integer=True)
        self.widen = check_option("bo", "widen", widen, 0.0, 1.0)
        self.low = check_option("bo", "low", low, 0.0, 1.0, low_open=True)
        if not isinstance(fill, bool):
            raise HwpruneError(f"agent bo: fill must be true or false, got {fill!r}")
        self.fill = fill
        self.raw_samples = check_option("bo", "raw_samples", raw_samples, 1, integer=True)
        self.restarts = check_option("bo", "restarts", restarts, 0, integer=True)
        self.fit_iterations = check_option("bo", "fit_iterations", fit_iterations, 1, integer=True)
        self.refit_every = check_option("bo", "refit_every", refit_every, 1, integer=True)
        self.projection_steps = check_option("bo", "projection_steps", projection_steps, 1, integer=True)
        for opt, v in (("checkpoint", checkpoint), ("log_csv", log_csv)):
            if v is not None and (not isinstance(v, str) or not v):
                raise HwpruneError(f"agent bo: {opt} must be a file path, got {v!r}")
        self.checkpoint = checkpoint
        self.log_csv = log_csv
        if not _botorch_available():
            raise HwpruneError("agent bo needs BoTorch: pip install botorch")

    # -- the search ------------------------------------------------------------------------------

    def _search(self, problem: Problem, *, seed: int, max_evaluations: int,
                progress: ProgressFn | None) -> SearchResult:
        run = _Run(self, problem, seed, max_evaluations, progress)
        return run.go()

    def switch_points(self, max_evaluations: int, n_switches: int) -> list[int]:
        """Evaluation counts at which each roll-back switch happens (without patience)."""
        first = (self.rollback_at if isinstance(self.rollback_at, int)
                 else int(math.ceil(self.rollback_at * max_evaluations)))
        if n_switches <= 1:
            return [first][:n_switches]
        rest = max(0, max_evaluations - first)
        return [first + int(math.ceil(i * rest / n_switches)) for i in range(n_switches)]


class _Run:
    """The state of one search (kept off the agent so an agent object can search many times)."""

    def __init__(self, agent: BOAgent, problem: Problem, seed: int, max_evaluations: int,
                 progress: ProgressFn | None):
        self.agent = agent
        self.problem = problem
        self.space = problem.space
        self.seed = int(seed)
        # Non-negative for NumPy's seed sequences and bounded for torch's; a negative seed is allowed.
        self._seed_u = self.seed % 2**31
        self.max_evaluations = max_evaluations
        names = self.space.group_names
        n = len(names)
        k = agent.clusters if agent.clusters is not None else default_clusters(n)
        self.defaulted: list[str] = []
        if agent.clustering and k > 0 and k < n:
            labels, tree, self.defaulted = cluster_groups(problem, k, agent.importance_scale)
            self.phases = build_phases(labels, tree, n, agent.rollback)
        else:
            labels = list(range(n))
            self.phases = [Phase("full", labels)]
        self.labels = labels
        self.switch_at = agent.switch_points(max_evaluations, len(self.phases) - 1)
        self.projector = Projector(problem, agent.projection_steps, agent.fill)
        self.ckpt = _Checkpoint(agent.checkpoint, problem, self.seed) if agent.checkpoint else None
        self.replay = self.ckpt.scores() if self.ckpt else {}
        self.replayed = 0
        self.log_path = Path(agent.log_csv.replace("{seed}", str(self.seed))) if agent.log_csv else None
        objective = problem.objective

        def cached_objective(widths: Widths) -> float:
            key = self.space.key(widths)
            if key in self.replay:
                self.replayed += 1
                return self.replay[key]
            return objective(widths)

        self.ev = Evaluator(dataclasses.replace(problem, objective=cached_objective), agent.name,
                            max_evaluations, progress)
        self.phase_i = 0
        self.phase_log: list[dict[str, Any]] = []
        self.box = np.array([[agent.low] * self.phases[0].dims, [1.0] * self.phases[0].dims])
        self.since_improvement = 0
        self.gp_seconds = 0.0
        self.fit_seconds = 0.0
        self.fits = 0
        self.fits_failed = 0
        self._hyper: tuple[int, dict[str, Any]] | None = None
        self._fitted_at = 0
        self.fallbacks = 0
        self.exhausted: list[int] = []
        self.pool_new: list[int] = []

    @property
    def phase(self) -> Phase:
        return self.phases[self.phase_i]

    def go(self) -> SearchResult:
        self.phase_log.append({"phase": "init", "start": 1, "dims": self.phase.dims, "assign": self.phase.assign})
        self._initial_design()
        while self.ev.remaining > 0:
            self._maybe_roll_back()
            if self.phase_log[-1]["phase"] != self.phase.name:
                self.phase_log.append({"phase": self.phase.name, "start": self.ev.count + 1,
                                       "dims": self.phase.dims, "assign": self.phase.assign})
            cand = self._propose()
            if cand is None:
                # Every architecture this phase's pool reaches was evaluated (few variables on a
                # coarse channel grid reach few architectures): roll back now, or stop when
                # there is nothing finer to search.
                if self.phase_i < len(self.phases) - 1:
                    self.exhausted.append(self.ev.count)
                    self._roll_back()
                    continue
                break
            self._evaluate(*cand, phase=self.phase.name)
        extra = {
            "clusters": dict(zip(self.space.group_names, self.labels)),
            "k": max(self.labels) + 1, "rollback": self.agent.rollback,
            "phases": self.phase_log, "importance_defaulted": self.defaulted,
            "gp_seconds": self.gp_seconds, "gp_fit_seconds": self.fit_seconds, "gp_fits": self.fits,
            "gp_fits_failed": self.fits_failed,
            "budget_checks": self.projector.checks, "replayed_evaluations": self.replayed,
            "fallback_steps": self.fallbacks, "exhausted_at": self.exhausted,
            "new_candidates_mean": float(np.mean(self.pool_new)) if self.pool_new else None,
        }
        return self.ev.result(extra)

    # -- evaluation, checkpoint and log ---------------------------------------------------------------

    def _evaluate(self, ratios: np.ndarray, widths: Widths, phase: str) -> None:
        best_before = None if self.ev.best is None else self.ev.best["score"]
        x = self.phase.compress(ratios)
        self.ev.score(widths, phase=phase, dims=self.phase.dims, x=[float(v) for v in x],
                      ratios=[float(v) for v in ratios])
        improved = best_before is None or self.ev.best["score"] > best_before
        self.since_improvement = 0 if improved else self.since_improvement + 1
        if self.ckpt is not None:
            self.ckpt.save(self.ev.history)
        if self.log_path is not None:
            _write_log(self.log_path, self.ev.history)

    def _initial_design(self) -> None:
        from torch.quasirandom import SobolEngine

        d = self.phase.dims
        # The uniform architecture first: a strong start, and the BO can only improve on it.
        raws = [np.ones(d)]
        sobol = SobolEngine(d, scramble=True, seed=self._seed_u)
        tries = 0
        while self.ev.remaining > 0 and self.ev.count < self.agent.init_points and tries < 20 * self.agent.init_points:
            if not raws:
                u = sobol.draw(1).double().numpy()[0]
                raws.append(self.box[0] + u * (self.box[1] - self.box[0]))
            ratios, widths = self.projector.project(self.phase.lift(raws.pop(0)))
            tries += 1
            if not self.ev.seen(widths):
                self._evaluate(ratios, widths, phase="init")

    def _maybe_roll_back(self) -> None:
        if self.phase_i >= len(self.phases) - 1:
            return
        due = self.ev.count >= self.switch_at[self.phase_i]
        stuck = self.agent.patience > 0 and self.since_improvement >= self.agent.patience
        if due or stuck:
            self._roll_back()

    def _roll_back(self) -> None:
        """Go to the next, finer phase, its box spanned by the best architectures so far."""
        self.phase_i += 1
        self.since_improvement = 0
        top = self._top()
        xs = np.array([self.phase.compress(e["ratios"]) for e in top])
        lo = np.clip(xs.min(axis=0) - self.agent.widen, 0.0, 1.0)
        hi = np.clip(xs.max(axis=0) + self.agent.widen, 0.0, 1.0)
        self.box = np.stack([lo, np.maximum(hi, lo + 1e-6)])

    def _top(self) -> list[dict[str, Any]]:
        """The ``top_k`` best feasible evaluations (earlier first among equal scores)."""
        feasible = [e for e in self.ev.history if e["feasible"]]
        return sorted(feasible, key=lambda e: (-e["score"], e["evaluation"]))[: self.agent.top_k]

    # -- one BO step ----------------------------------------------------------------------------------

    def training_data(self) -> tuple[np.ndarray, np.ndarray]:
        """GP inputs (the history in this phase's coordinates) and outputs (scores)."""
        x = np.array([self.phase.compress(e["ratios"]) for e in self.ev.history])
        y = np.array([e["score"] for e in self.ev.history])
        return x, y

    def _propose(self) -> tuple[np.ndarray, Widths] | None:
        import torch

        step = self.ev.count
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            # One thread: the GP's matrices are tiny (a few hundred rows), where more threads only
            # contend (4× slower on a busy 2-core machine), and the result must not depend on the
            # caller's thread count. The caller's RNG is forked, so its draws are unchanged.
            torch.set_num_threads(1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed_u * 1_000_003 + step)
                acq = self._acquisition()
                raws = self._pool(acq, step)
        finally:
            torch.set_num_threads(threads)
        # Project every raw candidate, keep the unevaluated distinct architectures.
        cands: list[tuple[np.ndarray, Widths]] = []
        keys = set()
        for raw in raws:
            ratios, widths = self.projector.project(self.phase.lift(raw))
            key = self.space.key(widths)
            if key in keys or self.ev.seen(widths):
                continue
            keys.add(key)
            cands.append((ratios, widths))
        self.pool_new.append(len(cands))
        if not cands:
            self.fallbacks += 1
            found = self._fallback(step)
            self.gp_seconds += time.perf_counter() - t0
            return found
        xs = torch.tensor(np.array([self.phase.compress(r) for r, _ in cands]), dtype=torch.double)
        try:
            torch.set_num_threads(1)
            with torch.no_grad():
                values = acq(xs.unsqueeze(1)).numpy()
        finally:
            torch.set_num_threads(threads)
        self.gp_seconds += time.perf_counter() - t0
        # Ties (e.g. -inf log-EI everywhere) go to the earliest candidate: deterministic.
        return cands[int(np.argmax(values))]

    def _fallback(self, step: int) -> tuple[np.ndarray, Widths] | None:
        """Random points of this phase's whole ratio cube until one is new (or give up)."""
        rng = np.random.default_rng([self._seed_u, step, 1])
        for _ in range(4 * self.agent.raw_samples):
            raw = rng.uniform(0.0, 1.0, size=self.phase.dims)
            ratios, widths = self.projector.project(self.phase.lift(raw))
            if not self.ev.seen(widths):
                return ratios, widths
        return None

    def _acquisition(self):
        """Fit the GP on the history and return log-EI (maximising the score)."""
        import torch
        from botorch.acquisition import LogExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.models.utils.gpytorch_modules import get_matern_kernel_with_gamma_prior
        from gpytorch.mlls import ExactMarginalLogLikelihood

        x, y = self.training_data()
        tx = torch.tensor(x, dtype=torch.double)
        ty = torch.tensor(y, dtype=torch.double).unsqueeze(-1)
        d = tx.shape[-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BoTorch's advisory warnings (input scaling, optimiser exits)
            gp = SingleTaskGP(tx, ty, covar_module=get_matern_kernel_with_gamma_prior(ard_num_dims=d),
                              outcome_transform=Standardize(m=1))
            warm = self._hyper is not None and self._hyper[0] == d
            if warm:
                gp.load_state_dict(self._hyper[1], strict=False)
            # Hyperparameters are refitted (warm-started) every ``refit_every`` evaluations and on
            # a change of dimension; in between the GP is only conditioned on the new data, which
            # costs milliseconds where a fit costs a few hundred.
            if not warm or len(y) - self._fitted_at >= self.agent.refit_every:
                mll = ExactMarginalLogLikelihood(gp.likelihood, gp)
                t0 = time.perf_counter()
                try:
                    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.agent.fit_iterations}})
                except Exception:  # a failed fit keeps the previous (or prior) hyperparameters
                    self.fits_failed += 1
                self.fit_seconds += time.perf_counter() - t0
                self.fits += 1
                self._fitted_at = len(y)
                self._hyper = (d, {k: v.clone() for k, v in gp.state_dict().items()
                                   if not k.startswith("outcome_transform")})
            gp.eval()
        return LogExpectedImprovement(gp, best_f=float(y.max()))

    def _pool(self, acq, step: int) -> list[np.ndarray]:
        """Raw candidates of this phase: Sobol points, perturbed best points, acquisition maximisers."""
        import torch
        from torch.quasirandom import SobolEngine

        lo, hi = self.box
        d = self.phase.dims
        n = self.agent.raw_samples
        u = SobolEngine(d, scramble=True, seed=self._seed_u * 7919 + step).draw(n).double().numpy()
        raws = list(lo + u * (hi - lo))
        rng = np.random.default_rng([self._seed_u, step])
        top = self._top()
        for i in range(n):
            base = self.phase.compress(top[i % len(top)]["ratios"])
            raws.append(np.clip(base + rng.normal(0.0, 0.1, size=d) * (hi - lo), lo, hi))
        if self.agent.restarts > 0:
            from botorch.optim import optimize_acqf

            bounds = torch.tensor(np.stack([lo, hi]), dtype=torch.double)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    x, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=self.agent.restarts,
                                         raw_samples=n, return_best_only=False,
                                         retry_on_optimization_warning=False, options={"maxiter": 30})
                    raws.extend(x.reshape(-1, d).detach().numpy())
                except Exception:  # the Sobol and local candidates are enough to go on with
                    pass
        return raws


# -- files ---------------------------------------------------------------------------------------------


def _search_key(problem: Problem, seed: int) -> str:
    budgets = ";".join(f"{b.name}<={b.limit!r}" for b in problem.budgets)
    return f"seed={seed};{budgets}"


class _Checkpoint:
    """Every evaluation of a search, by search (space fingerprint, budgets and seed), in one JSON file."""

    def __init__(self, path: str, problem: Problem, seed: int):
        self.path = Path(path)
        self.space = problem.space.fingerprint()
        self.key = _search_key(problem, seed)
        self.names = list(problem.space.group_names)
        self.data: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "version": 1, "space": self.space, "searches": {}}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                with open(self.path, "rb") as f:
                    head = f.read(4)
                if head.startswith(b"PK"):   # a torch.save zip: the rl agent's checkpoint
                    raise HwpruneError(f"{self.path} is not a bo checkpoint (it is a PyTorch file, such as the rl "
                                       "agent's): give each agent its own checkpoint path") from None
                raise HwpruneError(f"bo checkpoint {self.path} is unreadable: {err}") from None
            if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
                raise HwpruneError(f"{self.path} is not a bo checkpoint; remove it or choose another path")
            if data.get("space") != self.space:
                raise HwpruneError(f"bo checkpoint {self.path} was written for another model or channel multiple "
                                   f"(or width steps); remove it or choose another path")
            self.data = data
        self.stored: list[dict[str, Any]] = list(self.data["searches"].get(self.key, {}).get("history", []))

    def scores(self) -> dict[tuple[int, ...], float]:
        out = {}
        for e in self.stored:
            try:
                out[tuple(int(e["widths"][n]) for n in self.names)] = float(e["score"])
            except (KeyError, TypeError, ValueError):
                raise HwpruneError(f"bo checkpoint {self.path} has a malformed entry: {e!r}") from None
        return out

    def save(self, history: list[dict[str, Any]]) -> None:
        from profilers.fileio import atomic_write_json

        fields = ("evaluation", "phase", "dims", "x", "ratios", "widths", "score")
        entries = [{f: e.get(f) for f in fields} for e in history]
        # Stored evaluations this run has not reached again stay in the file, so a second
        # interruption during a resume loses nothing.
        done = {tuple(e["widths"][n] for n in self.names) for e in entries}
        entries += [e for e in self.stored if tuple(int(e["widths"][n]) for n in self.names) not in done]
        self.data["searches"][self.key] = {"history": entries}
        atomic_write_json(self.path, self.data)


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    from profilers.fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["evaluation", "phase", "dims", "ratios", "widths", "score", "feasible", "best"])
    best = -math.inf
    for e in history:
        if e["feasible"]:
            best = max(best, e["score"])
        w.writerow([e["evaluation"], e.get("phase"), e.get("dims"), json.dumps(e.get("ratios")),
                    json.dumps(e["widths"]), e["score"], e["feasible"], best if best > -math.inf else ""])
    atomic_write_text(path, buf.getvalue())
