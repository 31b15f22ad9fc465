"""Run reports: ``report.md`` and the PNG plots (channels per group, speed-up audit)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hwprune.certify import short_of_room


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """Channels per group (dense vs pruned) and the speed-up audit (MACs vs predicted vs measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ch = report["pruned"]["channels"]
    names = list(ch)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4))
    xs = range(len(names))
    ax.bar(xs, [ch[n][0] for n in names], color="#cccccc", label="dense")
    ax.bar(xs, [ch[n][1] for n in names], color="#1f77b4", label="pruned")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title(f"{report['model']} on {report['device']}: channels per group ({report['agent']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "channels.png", dpi=110)
    plt.close(fig)
    written.append("channels.png")

    sp = report["speedup"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars_spec = [("MACs", sp["macs"], "#999999"), ("LUT predicted\nlatency", sp["predicted"], "#ff7f0e"),
                 ("measured\nlatency", sp["measured"], "#2ca02c")]
    bars_spec = [b for b in bars_spec if b[1] is not None]  # no LUT prediction without a LUT
    labels, vals = [b[0] for b in bars_spec], [b[1] for b in bars_spec]
    bars = ax.bar(labels, vals, color=[b[2] for b in bars_spec])
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}x", ha="center", va="bottom")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylabel("speed-up over dense")
    ax.set_title("speed-up audit: fewer MACs is not always faster")
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=110)
    plt.close(fig)
    written.append("speedup.png")
    return written


def _count_budget_text(b: dict[str, Any], key: str, label: str, unit: str = "") -> str:
    """``, params <= 40827 (15% of dense)``: the resolved limit (a count: whole, rounded down, as
    15% of a count need not be), and the percentage it came from."""
    if not b.get(key):
        return ""
    given = (b.get("as_given") or {}).get(key)
    return f", {label} <= {math.floor(b[key]):,}{unit}" + (f" ({given} of dense)" if isinstance(given, str) else "")


def _limits_checked(report: dict[str, Any]) -> list[str]:
    """``params 21,699 <= 26,227``: each count and user budget against its limit, for the
    certificate line (a latency certificate said nothing of a --max-params it also met)."""
    b, p = report["budget"], report["pruned"]
    values = p.get("budget_values") or {}

    def check(label: str, value: float, limit: float, unit: str = "") -> str:
        return f"{label} {value:,.0f}{unit} {'<=' if value <= limit else '> (over)'} {math.floor(limit):,}{unit}"

    out = [check(label, p[field], b[key]) for key, field, label in
           (("max_params", "params", "params"), ("max_macs", "macs", "MACs")) if b.get(key) and field in p]
    if b.get("max_memory_bytes") and "peak_activation_bytes" in values:
        out.append(check("peak activation memory", values["peak_activation_bytes"], b["max_memory_bytes"], " bytes"))
    user_values = [v for k, v in values.items() if k.startswith("user:")]   # in the order they were given
    for u, v in zip(b.get("user") or [], user_values):
        out.append(f"{u['function']} {v:g} {'<=' if v <= u['limit'] else '> (over)'} {u['limit']:g}")
    return out


def certificate_text(report: dict[str, Any]) -> tuple[str, str]:
    """(verdict, detail) for the certificate line of the CLI and report.md.

    Without a latency budget there is nothing to certify against, and a bare "NO" reads as a
    failure; the params and MACs budgets are exact counts, so their check is a fact of
    the architecture, shown beside the measured latency instead.
    """
    cert = report["certificate"]
    bound = f"95% upper bound of the measured {cert['statistic']}: {cert['upper_bound_ms']:.4f} ms"
    if cert.get("budget_ms"):
        detail = f"{bound} vs budget {cert['budget_ms']:.4f} ms ({cert['upper_bound_ms'] / cert['budget_ms']:.0%} of it)"
        states = cert.get("machine_states")
        if states and states.get("governing_probe_us"):
            uses = " / ".join(f"{s['utilisation']:.0%}" for s in states["states"] if s.get("utilisation") is not None)
            detail += (f"; the machine ran in {len(states['states'])} speed states (budget used {uses}), "
                       f"judged in the worst (probe {states['governing_probe_us']:.0f} µs)")
        across = cert.get("across_processes")
        if across and across.get("utilisation"):
            u = across["utilisation"]
            detail += (f"; in {across['n']} fresh processes {u['min']:.0%}–{u['max']:.0%} of the budget"
                       + ("" if across["certified"] else ", over it in at least one"))
        return ("yes" if report["certified"] else "NO"), detail + "".join(f"; {c}" for c in _limits_checked(report))
    return "n/a (no latency budget)", bound + "".join(f"; {c}" for c in _limits_checked(report))


def write_markdown(report: dict[str, Any]) -> str:
    d, p = report["dense"], report["pruned"]
    b = report["budget"]
    cert = report["certificate"]
    lines = [
        f"# hwprune run: {report['model']} on {report['device']}",
        "",
        f"Agent `{report['agent']}`, budget: "
        + (f"{b['latency_ms']:.4f} ms ({b['statistic']})" if b.get("latency_ms") else "no latency budget")
        + _count_budget_text(b, "max_params", "params")
        + _count_budget_text(b, "max_macs", "MACs")
        + _count_budget_text(b, "max_memory_bytes", "peak activation memory", " bytes")
        + "".join(f", `{u['function']}` <= {u['limit']:g}" for u in b.get("user") or []),
        "",
        f"| | {quality_label(report)} | p50 ms | p90 ms | predicted ms | params | MACs |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| dense | {quality_text(d)} | {d['latency_ms']['p50']:.4f} | {d['latency_ms']['p90']:.4f} | | "
        f"{d['params']:,} | {d['macs']:,} |",
        f"| pruned | {quality_text(p)} | {p['latency_ms']['p50']:.4f} | {p['latency_ms']['p90']:.4f} | "
        f"{_ms(p['predicted_latency_ms'])} | {p['params']:,} | {p['macs']:,} |",
        "",
        "**Certified: {}** — {}".format(*certificate_text(report)),
        "",
        f"Speed-up over dense: MACs {report['speedup']['macs']:.2f}x, "
        + (f"LUT-predicted {report['speedup']['predicted']:.2f}x, " if report['speedup'].get('predicted') else "")
        + f"measured {report['speedup']['measured']:.2f}x.",
        "",
        f"Search: {report['search']['evaluations']} evaluations in {report['search']['seconds']:.1f} s; "
        f"recovery ({report['finetune'].get('strategy', 'standard')}" + (", KD" if report['finetune'].get('kd') else "")
        + "): " + (f"{report['finetune']['epochs']} epoch(s) " if "epochs" in report["finetune"] else "")
        + f"in {report['finetune']['seconds']:.1f} s.",
        "",
        "![channels per group](channels.png) ![speed-up audit](speedup.png)",
        "",
    ]
    if report.get("reproduce"):
        lines += ["Reproduce:", "", f"    {report['reproduce']}", ""]
    if report.get("unprunable_groups"):
        at = lines.index("![channels per group](channels.png) ![speed-up audit](speedup.png)")
        lines[at:at] = ["Left at full width: " + "; ".join(f"`{u['name']}` ({u['reason']})"
                                                        for u in report["unprunable_groups"]), ""]
    grid = report.get("width_grid")
    if grid:
        at = lines.index("![channels per group](channels.png) ![speed-up audit](speedup.png)")
        lines[at:at] = _width_grid_lines(grid, p.get("channels") or {})
    if len(cert.get("rounds", [])) > 1:
        at = lines.index("![channels per group](channels.png) ![speed-up audit](speedup.png)")
        lines[at:at] = ["Certification rounds (the LUT limit is tightened by measured/predicted after a miss, "
                        "loosened after a certified round that used under 95% of the budget): "
                        + "; ".join(_round_text(r) for r in cert["rounds"]), ""]
    return "\n".join(lines)


def _width_grid_lines(grid: dict[str, Any], channels: dict[str, Any]) -> list[str]:
    """The widths the search could choose and why: the rule and, with ``auto``, each group's measured steps."""
    lines = [f"Widths a search may choose (`channel_multiple: {grid['channel_multiple']}`): {grid['rule']}.", ""]
    if grid.get("groups"):
        lines += ["| group | dense | allowed widths (measured steps) | staircase ms (narrowest..dense) | chosen |",
                  "|---|---:|---|---:|---:|"]
        for s in grid["groups"]:
            chosen = (channels.get(s["group"]) or [None, None])[1]
            lines.append(f"| {s['group']} | {s['dense']} | {', '.join(map(str, s['allowed']))} | "
                         f"{s['ms'][0]:.4f}..{s['ms'][-1]:.4f} | {chosen if chosen is not None else ''} |")
        lines.append("")
    return lines


def quality_label(report: dict[str, Any]) -> str:
    """The quality column's name: test accuracy with data, else the user's score."""
    return "test accuracy" if report["dense"].get("accuracy") is not None else "score (score_fn)"


def quality_text(m: dict[str, Any]) -> str:
    """``91.23%`` (test accuracy) or the user's score, ``-0.0312``."""
    if m.get("accuracy") is not None:
        return f"{m['accuracy'] * 100:.2f}%"
    return f"{m['score']:.4g}" if m.get("score") is not None else "n/a"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _round_text(r: dict) -> str:
    """One certification round in words: what the LUT allowed, what the device said, and why
    it took more than one measurement (retakes on a shifted machine, close calls pooled)."""
    text = (f"round {r['round']}: " + (f"LUT limit {r['lut_limit_ms']:.4f} ms, " if r.get("lut_limit_ms") else "")
            + f"measured {r['measured_ms']:.4f} ms")
    if r.get("upper_bound_ms") is not None and r.get("budget_ms") is not None:
        notes = [f"upper bound {r['upper_bound_ms']:.4f} vs budget {r['budget_ms']:.4f} ms, "
                 f"{r['upper_bound_ms'] / r['budget_ms']:.0%} of it"]
        if r.get("retakes"):
            notes.append(f"{r['retakes']} retake(s) on a shifted machine")
        if r.get("remeasured"):
            notes.append("close call, measured again and pooled")
        if short_of_room(r["upper_bound_ms"], r["budget_ms"], r.get("room_ms")):
            notes.append(f"not kept: under the budget but without room for the final re-measurement, "
                         f"which needs at most {r['room_ms']:.4f} ms")
        text += f" ({'; '.join(notes)})"
    if r.get("final_upper_bound_ms") is not None and r.get("final_budget_ms") is not None:
        extra = []
        if r.get("final_retakes"):
            extra.append(f"{r['final_retakes']} retake(s)")
        if r.get("final_remeasured"):
            extra.append(f"measured again {r['final_remeasured']}x, pooled")
        text += (f", after recovery: upper bound {r['final_upper_bound_ms']:.4f} vs budget "
                 f"{r['final_budget_ms']:.4f} ms, {r['final_upper_bound_ms'] / r['final_budget_ms']:.0%} of it"
                 + (f" ({', '.join(extra)})" if extra else ""))
    return text


def build_report(opts, agent: str, cert, setup, result, certificate, final, dense, pruned, x, dense_eval, pruned_eval,
                 finetune: dict[str, Any], environment: dict[str, Any], limits: dict[str, Any], *, seconds: float,
                 reproduce: str | None) -> dict[str, Any]:
    """``report.json``'s content (DESIGN.md's fields) from a finished run's typed pieces.

    ``opts`` is the run's ``PruneOptions``, ``cert`` its ``Certifier``, ``setup`` its
    ``SearchSetup``, ``result`` the kept architecture's ``SearchResult``, ``certificate`` the
    ``Certificate`` and ``final`` the ``FinalMeasurement`` behind it.
    """
    from hwprune.certify import latency_summary
    from hwprune.errors import describe_callable
    from hwprune.groups import count_macs, count_params

    stat = cert.statistic
    macs_dense, macs_pruned = count_macs(dense, x), count_macs(pruned, x)
    predicted = setup.predict(result.widths)
    channels = {n: [d, result.widths[n]] for n, d in zip(setup.space.group_names, setup.space.dense)}
    return {
        "model": opts.model, "device": cert.cfg.name, "agent": agent, "data": opts.data, "weights": opts.weights,
        "budget": {"latency_ms": final.budget_ms, "statistic": stat, "speedup": opts.speedup,
                   "dense_measured_alone_ms": cert.dense_alone_ms,
                   **{k: setup.count_limits.get(k) for k in ("max_params", "max_macs", "max_memory_bytes")},
                   "as_given": dict(limits),
                   "user": [{"function": f if isinstance(f, str) else describe_callable(f), "limit": v}
                            for f, v in opts.budget]},
        "dense": {"accuracy": dense_eval.accuracy, "score": dense_eval.score,
                  "latency_ms": latency_summary(final.dense), "params": count_params(dense), "macs": macs_dense},
        "pruned": {"accuracy": pruned_eval.accuracy, "score": pruned_eval.score,
                   "latency_ms": latency_summary(final.pruned), "predicted_latency_ms": predicted,
                   "params": count_params(pruned), "macs": macs_pruned, "channels": channels,
                   "budget_values": setup.values(result.widths)},
        "certified": bool(certificate.certified),
        "certificate": certificate.to_dict(),
        "speedup": {"macs": macs_dense / macs_pruned,
                    "predicted": setup.predict({}) / predicted if predicted is not None else None,
                    "measured": cert.stat(final.dense) / final.measured_ms},
        "search": {"evaluations": setup.evaluations, "seconds": setup.seconds,
                   "proxy_evaluations": setup.objective.evaluations, "proxy_cache_hits": setup.objective.cache_hits},
        "finetune": finetune,
        "environment": environment,
        "seconds": seconds,
        "reproduce": reproduce,
    }
