"""The constrained reinforcement-learning agent ``rl``: PPO-Lagrangian over per-group prune fractions.

After "Neural Network Pruning Through Constrained Reinforcement Learning" (Malik et al.,
ICPR 2022, arXiv:2110.08558), adapted to hwprune's budgets and evaluation counting.

The episode
    One pass over the groups in ``problem.space.group_names`` order. At group ``t`` the
    state holds (all normalised, so one network serves any model):

    - ``t / (n - 1)``, the group's dense width over the largest dense width and, when
      ``problem.layer_info`` has it, its root layer's geometry (``cin``, ``cout``,
      ``kernel``, ``stride``, ``padding``, ``in_h``, ``in_w``, each over its largest value
      across groups, and ``groups / cin``: 1 for a depthwise conv). An empty or partial
      ``layer_info`` is tolerated: without it the state has no geometry, a missing group
      gets zeros;
    - the previous action and the mean of all previous actions;
    - per budget: its *sensitivity* to this group (``(value(dense) - value(dense with only
      this group at its smallest width)) / limit``), the budget *consumed if the rest stays
      dense* (decided groups at their chosen widths, this group and later ones dense, over
      the limit), the *remaining* budget ``1 -`` that, and the budget *consumed if the rest
      is smallest* (this and later groups at one channel multiple): above 1, no later choice
      can meet the budget any more. Budget functions are cheap and free; only objective
      evaluations count against ``max_evaluations``.

    The action is the fraction of the group's channels to remove, ``a = a_max · sigmoid(u)``
    with ``u`` drawn from a Gaussian policy (learned mean, state-independent learned log
    std); squashing keeps ``a`` in ``(0, a_max)`` without clipping, and since PPO's ratio
    compares densities of the same ``u`` the squashing needs no Jacobian term. The group's
    width is ``space.snap((1 - a) · dense)``. ``a_max`` grows linearly from ``a_max_start``
    (0.8) to ``a_max_end`` (0.95) over the first ``a_max_episodes`` episodes (200), as the
    paper relaxes its largest prune ratio during training: early, random policies cannot
    wipe a layer out; later ones may prune deeply where that pays. It is fixed within one
    rollout, so every update sees one action scale.

The environment's repair (``projection``)
    The raw architecture is scaled onto the budget boundary before it is scored: keep
    ratios ``k`` become ``min(1, s · k)`` with the scale ``s`` bisected on budgets alone for
    the largest one that meets every budget (``s = 0`` is the smallest architecture, feasible
    once ``check_reachable`` passed; bisection keeps its lower end feasible, so the result is
    feasible even for noisy, non-monotone budgets). The shape the policy chose is kept, and
    every evaluation lands on a feasible architecture near the boundary, where a higher-is-
    better objective has its optimum. ``"boundary"`` (default) scales infeasible
    architectures down and slack ones up; ``"repair"`` only scales infeasible ones down;
    ``"none"`` scores the raw architecture, as the paper does (an infeasible one then uses an
    evaluation but can never be the result).

Reward and cost
    At the episode's end the reward is the objective of the scored architecture (cached:
    an architecture already evaluated costs no evaluation), standardised by running
    statistics; the cost of budget ``i`` is ``value_i / limit_i - 1`` of the *raw*
    architecture, so the constraint is ``E[cost_i] <= 0``: the repair makes evaluations
    count, the Lagrangian makes the policy's own decisions respect the budgets.

PPO-Lagrangian
    One multiplier per budget, ``nu_i = softplus(theta_i) >= 0``, updated once per rollout by
    one gradient-ascent step on ``nu_i · mean cost_i`` (:func:`update_multiplier`): it rises
    while the budget is violated on average and falls while it is slack. A reward critic
    and a cost critic (one output per budget) give GAE advantages (``gamma``, ``lam``); the
    clipped PPO surrogate uses ``(A_r - Σ nu_i A_ci) / (1 + Σ nu_i)`` with the reward and each
    cost advantage standardised over the batch, for ``ppo_epochs`` epochs of minibatches per
    rollout of ``episodes_per_update`` episodes, plus an optional entropy bonus.

The incumbent and the result
    Before any RL, the largest uniform keep ratio meeting every budget is bisected on budgets
    alone and evaluated once, so the history always holds a feasible architecture, and the
    policy's initial mean action is that uniform architecture (its output bias; the output
    weights start at zero), so exploration starts around a feasible, sensible point. The
    result is the best *feasible* architecture evaluated, never the last sample. The last
    evaluation is kept for the policy's mean (deterministic) action, repaired like the
    others, when it is new.

Stopping
    Training goes on (revisiting architectures is free) until an episode needs a new
    evaluation and only the reserved one is left, ``patience`` episodes pass without the
    best feasible score improving, or ``max_episodes`` is reached; the latter two are checked
    between updates. The trajectory does not depend on ``max_evaluations`` (it only decides
    where the search stops), so a search with more evaluations continues one with fewer.

Checkpoint, log and progress
    ``checkpoint=PATH`` writes, atomically after every update and when the search ends or is
    interrupted, the learner state of the last update (policy, critics, optimiser,
    multipliers, RNG, counters, reward statistics, log rows) and the whole evaluation
    history. A later search with the same problem, seed and learning options resumes from it:
    episodes after the last update are replayed from the restored RNG and find their
    evaluations in the restored history, so an interrupted search resumed gives the result
    of an uninterrupted one and re-evaluates nothing. A checkpoint of another problem (other
    groups, budgets or limits — e.g. a later certification round of ``hwprune prune``) is
    ignored and overwritten; ``extra["resumed"]`` says which happened. A checkpoint holding
    more evaluations than ``max_evaluations`` is refused with an error, not overwritten.
    ``log_csv=PATH`` gets one row per episode (see :data:`LOG_COLUMNS`, then ``cost_<budget>``
    and ``nu_<budget>`` per budget). The progress callback fires once per evaluation, as for
    every agent; its dict also carries ``phase`` (``uniform``, ``rl``, ``rl-mean``),
    ``episode``, ``update``, ``nu`` (per budget) and ``scale`` (the repair's).

The implementation is a compact one in torch (two small MLPs, one Adam): the episode is a
dozen steps with a terminal reward, so a gym environment and a general RL library would add
a dependency and indirection without adding anything this search needs.

Example:
    >>> from hwprune.agents import create_agent
    >>> agent = create_agent("rl", episodes_per_update=8, checkpoint="rl.ckpt")  # doctest: +SKIP
    >>> result = agent.search(problem, seed=0, max_evaluations=100)             # doctest: +SKIP
    >>> result.extra["nu"], result.extra["stop"]                                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hwprune.agents.base import Agent, Problem, SearchResult, Widths, check_option, register_agent
from hwprune.agents.baselines import largest_uniform_ratio
from hwprune.agents.evaluator import Evaluator
from hwprune.errors import HwpruneError
from profilers.fileio import atomic_write_bytes, atomic_write_text

ProgressFn = Callable[[dict[str, Any]], None]

PROJECTIONS = ("boundary", "repair", "none")
# ``evaluation``: the history number of the scored architecture; ``new_evaluation``: 1 when this
# episode is the one that evaluated it. Both read the history, so a resumed search logs exactly
# what an uninterrupted one does.
LOG_COLUMNS = ("episode", "update", "deterministic", "reward", "evaluation", "new_evaluation", "feasible",
               "raw_feasible", "scale", "a_max", "best")
CHECKPOINT_FORMAT = 1
GEOMETRY_KEYS = ("cin", "cout", "kernel", "stride", "padding", "in_h", "in_w")


# -- pure pieces (tested directly) ---------------------------------------------------------------------


def softplus(x: float) -> float:
    """``log(1 + e^x)``, stable for large ``|x|``."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def inverse_softplus(y: float) -> float:
    """The ``x`` with ``softplus(x) = y`` (``y > 0``)."""
    return y + math.log(-math.expm1(-y))


def update_multiplier(theta: float, mean_cost: float, lr: float) -> float:
    """One gradient-ascent step on ``nu · mean_cost`` for ``nu = softplus(theta)``.

    ``mean_cost`` is the rollout's mean of ``value / limit - 1``: positive (violated) raises
    ``nu``, negative (slack) lowers it, and ``nu`` stays positive whatever the step.

    Example:
        >>> theta = inverse_softplus(1.0)
        >>> softplus(update_multiplier(theta, 0.2, lr=1.0)) > 1.0
        True
    """
    sigmoid = 1.0 / (1.0 + math.exp(-theta))  # d softplus / d theta
    return theta + lr * sigmoid * mean_cost


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns of one episode (terminal value 0).

    ``rewards`` and ``values`` have one row per step (and optionally one column per signal).
    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    adv = np.zeros_like(rewards)
    last = np.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, adv + values


# -- networks ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the agent's own torch work on one thread, then restore the caller's setting.

    The networks are tiny: extra intra-op threads only add synchronisation, which on a busy
    2-core machine made 100 episodes take 100 s instead of 2 s. The objective (the accuracy
    proxy) runs outside, with whatever threads the caller chose.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


class _Actor(nn.Module):
    """Gaussian policy over the pre-squash action ``u``: MLP mean, state-independent log std."""

    def __init__(self, n_in: int, hidden: int, init_std: float, init_mean: float):
        super().__init__()
        self.mean = _mlp(n_in, hidden, 1)
        last = self.mean[-1]
        # Zero output weights: at the start every group's mean action is ``init_mean`` (the
        # uniform incumbent), while the hidden layers still pass gradients to them.
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, init_mean)
        self.log_std = nn.Parameter(torch.tensor([math.log(init_std)]))

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log std of ``u`` for a batch of states."""
        mean = self.mean(states).squeeze(-1)
        return mean, self.log_std.clamp(-5.0, 2.0).expand_as(mean)


def _log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    # Written out rather than torch.distributions.Normal: its argument checks cost more than
    # the tiny networks here, once per step of every episode.
    return -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


class _RunningStats:
    """Running mean and variance (Chan et al.'s parallel update) for reward standardisation."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, xs: np.ndarray) -> None:
        xs = np.asarray(xs, dtype=np.float64)
        if xs.size == 0:
            return
        n, mean, m2 = xs.size, float(xs.mean()), float(((xs - xs.mean()) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        std = math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0
        # A floor relative to the mean: identical early rewards must not blow tiny later
        # differences up to huge standardised values.
        return max(std, 1e-4 * (1.0 + abs(self.mean)))

    def state(self) -> list[float]:
        return [float(self.count), self.mean, self.m2]

    def load(self, s: list[float]) -> None:
        self.count, self.mean, self.m2 = int(s[0]), float(s[1]), float(s[2])


# -- the episode mechanics ------------------------------------------------------------------------------


class _Env:
    """States, actions → widths, raw costs and the repair, for one problem (budgets only)."""

    def __init__(self, problem: Problem, projection: str, projection_steps: int):
        self.problem = problem
        self.space = problem.space
        self.names = list(self.space.group_names)
        self.n = len(self.names)
        self.dense = np.asarray(self.space.dense, dtype=np.float64)
        self.smallest = [self.space.choices(g)[0] for g in range(self.n)]
        self.budgets = list(problem.budgets)
        self.projection = projection
        self.projection_steps = projection_steps
        self.static = self._static_features()
        self.state_dim = self.static.shape[1] + 2 + 3 * len(self.budgets)

    def _static_features(self) -> np.ndarray:
        n = self.n
        cols = [np.arange(n) / max(n - 1, 1), self.dense / self.dense.max()]
        info = self.problem.layer_info or {}
        if info:
            rows = [info.get(name) or {} for name in self.names]
            for key in GEOMETRY_KEYS:
                v = np.array([float(r.get(key, 0) or 0) for r in rows])
                cols.append(v / v.max() if v.max() > 0 else v)
            cols.append(np.array([float(r.get("groups", 1) or 1) / float(r["cin"]) if r.get("cin") else 0.0
                                  for r in rows]))
        dense_w = self.space.dense_widths()
        for b in self.budgets:
            full = b.value(dense_w)
            sens = []
            for g, name in enumerate(self.names):
                w = dict(dense_w)
                w[name] = self.smallest[g]
                sens.append((full - b.value(w)) / b.limit)
            cols.append(np.array(sens))
        return np.stack(cols, axis=1).astype(np.float64)

    def state(self, t: int, decided: list[int], actions: list[float]) -> np.ndarray:
        """The state before choosing group ``t``'s action (``decided``: widths of groups < t)."""
        prev = actions[-1] if actions else 0.0
        mean_prev = float(np.mean(actions)) if actions else 0.0
        rest_dense = dict(zip(self.names, decided + [int(d) for d in self.space.dense[t:]]))
        rest_small = dict(zip(self.names, decided + self.smallest[t:]))
        dyn = [prev, mean_prev]
        for b in self.budgets:
            consumed = b.value(rest_dense) / b.limit
            dyn += [consumed, 1.0 - consumed, b.value(rest_small) / b.limit]
        return np.concatenate([self.static[t], dyn])

    def widths(self, keep: np.ndarray) -> Widths:
        return {n: self.space.snap(g, float(k) * self.dense[g]) for g, (n, k) in enumerate(zip(self.names, keep))}

    def costs(self, widths: Widths) -> np.ndarray:
        return np.array([b.value(widths) / b.limit - 1.0 for b in self.budgets], dtype=np.float64)

    def repair(self, keep: np.ndarray) -> tuple[Widths, float]:
        """The scored architecture for raw keep ratios, and the scale applied (see the module doc)."""
        raw = self.widths(keep)
        feasible = self.problem.feasible(raw)
        if self.projection == "none" or (feasible and self.projection == "repair"):
            return raw, 1.0

        def at(s: float) -> Widths:
            return self.widths(np.minimum(1.0, s * keep))

        if feasible:
            top = 1.0 / max(float(np.min(keep)), 1e-9)  # every group dense from here on
            if self.problem.feasible(at(top)):
                return at(top), top
            lo, hi = 1.0, top
        else:
            lo, hi = 0.0, 1.0  # scale 0 snaps to the smallest architecture, feasible when reachable
        for _ in range(self.projection_steps):
            mid = (lo + hi) / 2
            if self.problem.feasible(at(mid)):
                lo = mid
            else:
                hi = mid
        return at(lo), lo


# -- the agent --------------------------------------------------------------------------------------------


@register_agent("rl")
class RLAgent(Agent):
    """Constrained RL (PPO-Lagrangian) over per-group prune fractions; see the module docstring.

    Args (all ``--agent-option KEY=VALUE``):
        episodes_per_update: episodes per rollout (one PPO update and multiplier step each).
        ppo_epochs: passes over a rollout per update.
        minibatch_size: steps per PPO minibatch.
        pi_lr, vf_lr: Adam learning rates of the policy and of the critics.
        hidden: width of the two hidden layers of every MLP.
        gamma, lam: GAE discount and smoothing.
        clip: PPO ratio clip.
        ent_coef: entropy bonus weight (0: none).
        init_std: initial std of the pre-squash action.
        a_max_start, a_max_end, a_max_episodes: the largest prune fraction and its linear ramp.
        nu_lr: multiplier learning rate; nu_init: initial multiplier (> 0).
        projection: ``"boundary"``, ``"repair"`` or ``"none"`` (see the module docstring).
        projection_steps: bisection steps of the repair.
        final_mean: keep the last evaluation for the policy's mean action.
        patience: stop after this many episodes without a better feasible score (0: never).
        max_episodes: cap on episodes.
        checkpoint: path of the resumable checkpoint (``None``: none).
        log_csv: path of the per-episode CSV log (``None``: none).
    """

    def __init__(self, episodes_per_update: int = 8, ppo_epochs: int = 16, minibatch_size: int = 64,
                 pi_lr: float = 1e-2, vf_lr: float = 3e-3, hidden: int = 64, gamma: float = 1.0,
                 lam: float = 0.95, clip: float = 0.2, ent_coef: float = 0.0, init_std: float = 0.7,
                 a_max_start: float = 0.8, a_max_end: float = 0.95, a_max_episodes: int = 200,
                 nu_lr: float = 5.0, nu_init: float = 1.0, projection: str = "boundary",
                 projection_steps: int = 14, final_mean: bool = True, patience: int = 400,
                 max_episodes: int = 2000, checkpoint: str | None = None, log_csv: str | None = None):
        self.episodes_per_update = check_option("rl", "episodes_per_update", episodes_per_update, 1, integer=True)
        self.ppo_epochs = check_option("rl", "ppo_epochs", ppo_epochs, 0, integer=True)
        self.minibatch_size = check_option("rl", "minibatch_size", minibatch_size, 1, integer=True)
        self.pi_lr = check_option("rl", "pi_lr", pi_lr, 0, low_open=True)
        self.vf_lr = check_option("rl", "vf_lr", vf_lr, 0, low_open=True)
        self.hidden = check_option("rl", "hidden", hidden, 1, integer=True)
        self.gamma = check_option("rl", "gamma", gamma, 0, 1)
        self.lam = check_option("rl", "lam", lam, 0, 1)
        self.clip = check_option("rl", "clip", clip, 0, low_open=True)
        self.ent_coef = check_option("rl", "ent_coef", ent_coef, 0)
        self.init_std = check_option("rl", "init_std", init_std, 0, low_open=True)
        self.a_max_start = check_option("rl", "a_max_start", a_max_start, 0, 1, low_open=True)
        self.a_max_end = check_option("rl", "a_max_end", a_max_end, 0, 1, low_open=True)
        self.a_max_episodes = check_option("rl", "a_max_episodes", a_max_episodes, 0, integer=True)
        self.nu_lr = check_option("rl", "nu_lr", nu_lr, 0)
        self.nu_init = check_option("rl", "nu_init", nu_init, 0, low_open=True)
        if projection not in PROJECTIONS:
            raise HwpruneError(f"agent rl: unknown projection '{projection}' (known: {', '.join(PROJECTIONS)})")
        self.projection = projection
        self.projection_steps = check_option("rl", "projection_steps", projection_steps, 1, integer=True)
        if not isinstance(final_mean, bool):
            raise HwpruneError(f"agent rl: final_mean must be true or false, got {final_mean!r}")
        self.final_mean = final_mean
        self.patience = check_option("rl", "patience", patience, 0, integer=True)
        self.max_episodes = check_option("rl", "max_episodes", max_episodes, 1, integer=True)
        for opt, path in (("checkpoint", checkpoint), ("log_csv", log_csv)):
            if path is not None and (not isinstance(path, (str, os.PathLike)) or not str(path)):
                raise HwpruneError(f"agent rl: {opt} must be a file path, got {path!r}")
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.log_csv = str(log_csv) if log_csv is not None else None

    # Options that shape the trajectory: a checkpoint made with other values is not resumed.
    _LEARNING_OPTIONS = ("episodes_per_update", "ppo_epochs", "minibatch_size", "pi_lr", "vf_lr", "hidden", "gamma",
                         "lam", "clip", "ent_coef", "init_std", "a_max_start", "a_max_end", "a_max_episodes",
                         "nu_lr", "nu_init", "projection", "projection_steps")

    def _search(self, problem: Problem, *, seed: int, max_evaluations: int,
                progress: ProgressFn | None) -> SearchResult:
        return _Run(self, problem, seed, max_evaluations, progress).run()


class _Run:
    """One search: the learner, its rollouts and updates, checkpointing and logging."""

    def __init__(self, agent: RLAgent, problem: Problem, seed: int, max_evaluations: int,
                 progress: ProgressFn | None):
        self.o = agent
        self.problem = problem
        self.seed = int(seed)
        self.ev = Evaluator(problem, agent.name, max_evaluations, progress)
        self.env = _Env(problem, agent.projection, agent.projection_steps)
        self.budget_names = [b.name for b in problem.budgets]
        self.reserve = 1 if agent.final_mean else 0
        self.uniform_ratio, self.uniform_widths, _ = largest_uniform_ratio(problem)

        # The policy starts at the uniform incumbent: sigmoid(bias) · a_max = 1 - ratio.
        frac = min(max((1.0 - self.uniform_ratio) / agent.a_max_start, 0.02), 0.98)
        init_mean = math.log(frac / (1.0 - frac))
        nb = len(problem.budgets)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.actor = _Actor(self.env.state_dim, agent.hidden, agent.init_std, init_mean).double()
            self.critic_r = _mlp(self.env.state_dim, agent.hidden, 1).double()
            self.critic_c = _mlp(self.env.state_dim, agent.hidden, max(nb, 1)).double()
        # One optimiser, two learning rates: actor and critics share no parameters, so one
        # backward pass of the summed losses gives each its own gradient at half the cost.
        self.critic_params = list(self.critic_r.parameters()) + list(self.critic_c.parameters())
        self.opt = torch.optim.Adam([{"params": list(self.actor.parameters()), "lr": agent.pi_lr},
                                     {"params": self.critic_params, "lr": agent.vf_lr}], foreach=True)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.theta = [inverse_softplus(agent.nu_init)] * nb
        self.reward_stats = _RunningStats()
        self.episode = 0
        self.update = 0
        self.since_improved = 0
        self.best_seen: float | None = None
        self.rows: list[dict[str, Any]] = []
        self.snapshot: dict[str, Any] | None = None
        self.resumed = False
        self.entries: dict[tuple[int, ...], dict[str, Any]] = {}
        self.checkpoint_note = ""

    # -- bookkeeping ---------------------------------------------------------------------------------------

    @property
    def nu(self) -> list[float]:
        return [softplus(t) for t in self.theta]

    def a_max(self) -> float:
        o = self.o
        frac = min(1.0, self.episode / o.a_max_episodes) if o.a_max_episodes else 1.0
        return o.a_max_start + (o.a_max_end - o.a_max_start) * frac

    def fingerprint(self) -> dict[str, Any]:
        sp = self.problem.space
        return {"format": CHECKPOINT_FORMAT, **sp.fingerprint(), "seed": self.seed,
                "budgets": [[b.name, float(b.limit)] for b in self.problem.budgets],
                "options": {k: getattr(self.o, k) for k in RLAgent._LEARNING_OPTIONS}}

    def capture(self) -> dict[str, Any]:
        """The learner state between updates (deep copies: later steps must not alter it)."""
        clone = copy.deepcopy
        return {"actor": clone(self.actor.state_dict()), "critic_r": clone(self.critic_r.state_dict()),
                "critic_c": clone(self.critic_c.state_dict()), "opt": clone(self.opt.state_dict()),
                "gen": self.gen.get_state().clone(),
                "theta": list(self.theta), "reward_stats": self.reward_stats.state(), "episode": self.episode,
                "update": self.update, "since_improved": self.since_improved, "best_seen": self.best_seen,
                "rows": list(self.rows)}  # rows are never changed once logged

    def restore(self, s: dict[str, Any]) -> None:
        self.actor.load_state_dict(s["actor"])
        self.critic_r.load_state_dict(s["critic_r"])
        self.critic_c.load_state_dict(s["critic_c"])
        self.opt.load_state_dict(s["opt"])
        self.gen.set_state(s["gen"])
        self.theta = [float(t) for t in s["theta"]]
        self.reward_stats.load(s["reward_stats"])
        self.episode, self.update = int(s["episode"]), int(s["update"])
        self.since_improved = int(s["since_improved"])
        self.best_seen = s["best_seen"]
        self.rows = [dict(r) for r in s["rows"]]

    def save(self) -> None:
        if self.o.checkpoint is None or self.snapshot is None:
            return
        buf = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint(), "learner": self.snapshot,
                    "history": self.ev.history}, buf)
        atomic_write_bytes(self.o.checkpoint, buf.getvalue())

    def try_resume(self) -> None:
        path = self.o.checkpoint
        if path is None or not Path(path).is_file():
            return
        try:
            data = torch.load(path, weights_only=True)
        except Exception as err:  # a truncated or foreign file: refuse rather than silently discard work
            with open(path, "rb") as f:
                head = f.read(64).lstrip()
            if head.startswith(b"{"):   # the bo agent's checkpoints are JSON
                raise HwpruneError(f"agent rl: {path} is not an rl checkpoint (it is a JSON file, such as the bo "
                                   "agent's): give each agent its own checkpoint path") from None
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise HwpruneError(f"agent rl: cannot read checkpoint {path}: {why}") from None
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint():
            self.checkpoint_note = "checkpoint was for another problem, seed or options; started afresh"
            return
        if len(data["history"]) > self.ev.max_evaluations:
            raise HwpruneError(f"agent rl: checkpoint {path} already holds {len(data['history'])} evaluations, more "
                               f"than max_evaluations={self.ev.max_evaluations}; raise it or remove the checkpoint")
        self.restore(data["learner"])
        self.ev.restore(data["history"])
        self.resumed = True

    # -- logging -----------------------------------------------------------------------------------------

    def columns(self) -> list[str]:
        return list(LOG_COLUMNS) + [f"cost_{n}" for n in self.budget_names] + [f"nu_{n}" for n in self.budget_names]

    def log_start(self) -> None:
        if self.o.log_csv is None:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns(), lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.o.log_csv, buf.getvalue())

    def log_append(self, rows: list[dict[str, Any]]) -> None:
        if self.o.log_csv is None or not rows:
            return
        with open(self.o.log_csv, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns(), lineterminator="\n").writerows(rows)

    # -- episodes ----------------------------------------------------------------------------------------

    def run_episode(self, a_max: float, deterministic: bool = False) -> dict[str, Any] | None:
        """Sample (or take the mean of) one episode and score it; ``None`` when that needs an evaluation
        the search may not spend."""
        env = self.env
        states, us, logps, actions, decided = [], [], [], [], []
        with torch.no_grad(), _one_thread():
            for t in range(env.n):
                s = env.state(t, decided, actions)
                mean, log_std = self.actor(torch.from_numpy(s).unsqueeze(0))
                u = mean if deterministic else \
                    mean + log_std.exp() * torch.randn(mean.shape, generator=self.gen, dtype=mean.dtype)
                logps.append(float(_log_prob(u, mean, log_std)[0]))
                u_f = float(u[0])
                a = a_max / (1.0 + math.exp(-u_f))
                states.append(s)
                us.append(u_f)
                actions.append(a)
                decided.append(env.space.snap(t, (1.0 - a) * env.dense[t]))
        keep = 1.0 - np.asarray(actions)
        raw = dict(zip(env.names, decided))
        scored, scale = env.repair(keep)
        new = not self.ev.seen(scored)
        limit = self.reserve if not deterministic else 0
        if new and self.ev.remaining <= limit:
            return None
        nu = dict(zip(self.budget_names, self.nu))
        phase = "rl-mean" if deterministic else "rl"
        score = self.ev.score(scored, phase=phase, episode=self.episode + 1, update=self.update, nu=nu, scale=scale)
        entry = self.entry(scored)
        costs = env.costs(raw)
        return {"states": np.stack(states), "u": np.asarray(us), "logp": np.asarray(logps), "score": score,
                "costs": costs, "evaluation": entry["evaluation"],
                "new": entry.get("phase") == phase and entry.get("episode") == self.episode + 1,
                "raw_feasible": self.problem.feasible(raw),
                "feasible": self.problem.feasible(scored), "scale": scale, "a_max": a_max}

    def entry(self, widths: Widths) -> dict[str, Any]:
        """The history entry of evaluated ``widths`` (one entry per architecture and the history only
        grows, so only its new tail needs indexing)."""
        for e in self.ev.history[len(self.entries):]:
            self.entries[self.problem.space.key(e["widths"])] = e
        return self.entries[self.problem.space.key(widths)]

    def improves(self, ep: dict[str, Any]) -> bool:
        """Track the best feasible score of the episodes so far (and the incumbent's).

        Kept apart from the evaluator's best: after a resume, the history already holds
        evaluations that later episodes will replay, and patience and the log must not see
        them early.
        """
        if ep["feasible"] and ep["score"] > self.best_seen:
            self.best_seen = ep["score"]
            return True
        return False

    def log_row(self, ep: dict[str, Any], deterministic: bool) -> dict[str, Any]:
        best = self.best_seen
        row = {"episode": self.episode, "update": self.update, "deterministic": int(deterministic),
               "reward": ep["score"], "evaluation": ep["evaluation"], "new_evaluation": int(ep["new"]),
               "feasible": int(ep["feasible"]), "raw_feasible": int(ep["raw_feasible"]), "scale": ep["scale"],
               "a_max": ep["a_max"], "best": best}
        for n, c, nu in zip(self.budget_names, ep["costs"], self.nu):
            row[f"cost_{n}"] = float(c)
            row[f"nu_{n}"] = nu
        return row

    # -- learning ----------------------------------------------------------------------------------------

    def learn(self, rollout: list[dict[str, Any]]) -> None:
        with _one_thread():
            self._learn(rollout)

    def _learn(self, rollout: list[dict[str, Any]]) -> None:
        o = self.o
        nb = len(self.budget_names)
        scores = np.array([ep["score"] for ep in rollout])
        self.reward_stats.update(scores)
        mean, std = self.reward_stats.mean, self.reward_stats.std
        states = torch.from_numpy(np.concatenate([ep["states"] for ep in rollout]))
        with torch.no_grad():
            v_r = self.critic_r(states).squeeze(-1).numpy()
            v_c = self.critic_c(states).numpy()
        adv_r, ret_r, adv_c, ret_c = [], [], [], []
        i = 0
        for ep in rollout:
            T = len(ep["u"])
            r = np.zeros(T)
            r[-1] = (ep["score"] - mean) / std
            a, ret = gae(r, v_r[i:i + T], o.gamma, o.lam)
            adv_r.append(a)
            ret_r.append(ret)
            c = np.zeros((T, max(nb, 1)))
            c[-1, :nb] = ep["costs"]
            a, ret = gae(c, v_c[i:i + T], o.gamma, o.lam)
            adv_c.append(a)
            ret_c.append(ret)
            i += T
        adv_r_t = torch.from_numpy(np.concatenate(adv_r))
        ret_r_t = torch.from_numpy(np.concatenate(ret_r))
        adv_c_t = torch.from_numpy(np.concatenate(adv_c))
        ret_c_t = torch.from_numpy(np.concatenate(ret_c))
        u = torch.from_numpy(np.concatenate([ep["u"] for ep in rollout]))
        logp_old = torch.from_numpy(np.concatenate([ep["logp"] for ep in rollout]))

        nu = torch.tensor(self.nu + [0.0] * (max(nb, 1) - nb), dtype=torch.float64)
        a_r = (adv_r_t - adv_r_t.mean()) / (adv_r_t.std(unbiased=False) + 1e-8)
        # Costs are fractions of their limit; a floor of 0.1 % keeps constant costs from
        # turning critic noise into a signal.
        a_c = (adv_c_t - adv_c_t.mean(0)) / adv_c_t.std(0, unbiased=False).clamp_min(1e-3)
        adv = (a_r - a_c @ nu) / (1.0 + float(nu.sum()))

        n = len(u)
        for _ in range(o.ppo_epochs):
            perm = torch.randperm(n, generator=self.gen)
            for start in range(0, n, o.minibatch_size):
                mb = perm[start:start + o.minibatch_size]
                mean, log_std = self.actor(states[mb])
                ratio = torch.exp(_log_prob(u[mb], mean, log_std) - logp_old[mb])
                surr = torch.min(ratio * adv[mb], ratio.clamp(1.0 - o.clip, 1.0 + o.clip) * adv[mb])
                entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).mean()
                loss_pi = -surr.mean() - o.ent_coef * entropy
                loss_v = ((self.critic_r(states[mb]).squeeze(-1) - ret_r_t[mb]) ** 2).mean() \
                    + ((self.critic_c(states[mb]) - ret_c_t[mb]) ** 2).mean()
                self.opt.zero_grad()
                (loss_pi + loss_v).backward()
                nn.utils.clip_grad_norm_(self.actor.parameters(), 0.5)
                nn.utils.clip_grad_norm_(self.critic_params, 0.5)
                self.opt.step()

        mean_costs = np.mean([ep["costs"] for ep in rollout], axis=0) if nb else []
        self.theta = [update_multiplier(t, float(c), o.nu_lr) for t, c in zip(self.theta, mean_costs)]
        self.update += 1

    # -- the search ---------------------------------------------------------------------------------------

    def run(self) -> SearchResult:
        o = self.o
        self.try_resume()
        # The feasible incumbent (cached, so free when resumed).
        uniform_score = self.ev.score(self.uniform_widths, phase="uniform", keep_ratio=self.uniform_ratio)
        if self.best_seen is None:
            self.best_seen = uniform_score
        if self.snapshot is None and o.checkpoint is not None:
            self.snapshot = self.capture()
        self.log_start()
        stop = None
        try:
            while stop is None:
                if self.episode >= o.max_episodes:
                    stop = "max_episodes"
                    break
                if o.patience and self.since_improved >= o.patience:
                    stop = "patience"
                    break
                a_max = self.a_max()
                rollout, rows = [], []
                for _ in range(o.episodes_per_update):
                    ep = self.run_episode(a_max)
                    if ep is None:
                        stop = "max_evaluations"
                        break
                    self.episode += 1
                    if self.improves(ep):
                        self.since_improved = 0
                    else:
                        self.since_improved += 1
                    rollout.append(ep)
                    rows.append(self.log_row(ep, False))
                if stop is not None:
                    self.log_append(rows)
                    break
                self.learn(rollout)
                self.rows.extend(rows)
                self.log_append(rows)
                if o.checkpoint is not None:
                    self.snapshot = self.capture()
                    self.save()
            if o.final_mean:
                ep = self.run_episode(self.a_max(), deterministic=True)
                if ep is not None:
                    self.episode += 1
                    self.improves(ep)
                    self.log_append([self.log_row(ep, True)])
        finally:
            self.save()
        return self.ev.result({"episodes": self.episode, "updates": self.update, "stop": stop,
                               "nu": dict(zip(self.budget_names, self.nu)), "a_max": self.a_max(),
                               "policy_std": float(self.actor.log_std.detach().exp()),
                               "uniform_keep_ratio": self.uniform_ratio, "projection": o.projection,
                               "resumed": self.resumed, "checkpoint_note": self.checkpoint_note})
