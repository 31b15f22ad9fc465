"""Reports of a result: the text the CLI prints, Markdown, JUnit XML and JSON, written atomically."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hwprune.regress.compare import NORMALISED
from hwprune.regress.options import RegressOptions
from profilers.fileio import atomic_write_json, atomic_write_text

# The format of a result dict, as --json writes it (model and LUT checks alike).
RESULT_FORMAT = 1


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%" if math.isfinite(ratio) else "n/a"


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def format_text(result: dict[str, Any]) -> str:
    """The plain-text summary the CLI prints."""
    if result["kind"] == "write-baseline":
        t = result["timing"]
        ref = result.get("reference")
        beside = (f"; drift reference {ref['model']} timed beside it: n={ref['timing']['n']} "
                  f"p50={ref['timing']['p50_ms']:.4f} ms") if ref else ""
        return (f"wrote baseline {result['path']}: {result['model']} on {result['device']}, n={t['n']} "
                f"p50={t['p50_ms']:.4f} ms p90={t['p90_ms']:.4f} ms p99={t['p99_ms']:.4f} ms{beside}")
    lines = []
    if result["kind"] == "lut":
        lines.append(f"{'signature':18s} {'op':28s} {'LUT ms':>9s} {'now ms':>9s} {'drift':>8s} {'adjusted':>9s}")
        for r in result["rows"]:
            adj = f"{r['adjusted_drift'] * 100:+8.1f}%" if r["adjusted_drift"] is not None else "n/a"
            lines.append(f"{r['signature']:18s} {str(r['op'])[:28]:28s} {r['lut_ms']:9.4f} {r['now_ms']:9.4f} "
                         f"{r['drift'] * 100:+7.1f}% {adj:>9s}")
        lines.append(f"LUT {result['lut']} ({result['model']}, {result['statistic']}) on {result['device']}: median "
                     f"{result['drift_measure']} drift {result['median_drift'] * 100:+.1f}% "
                     f"({int(round(result['confidence'] * 100))}% CI {result['ci_low'] * 100:+.1f}% .. "
                     f"{result['ci_high'] * 100:+.1f}%), tolerance ±{result['tolerance'] * 100:g}%: "
                     f"{result['verdict'].upper()}")
    else:
        normalised = result.get("ratio_measure") == NORMALISED
        lines.append(f"{'stat':5s} {'baseline ms':>12s} {'now ms':>10s} {'raw':>8s} "
                     + (f"{'ref now/then':>12s} {'normalised':>10s} " if normalised else "")
                     + f"{'CI':>19s} {'MW p':>8s} {'n base/now':>12s}  verdict")
        for c in result["comparisons"]:
            ci = f"[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"
            norm = f"{_fmt(c.get('reference_ratio'), '.4f'):>12s} {_pct(c['ratio']):>10s} " if normalised else ""
            lines.append(f"{c['statistic']:5s} {c['baseline_ms']:12.4f} {c['candidate_ms']:10.4f} "
                         f"{_pct(c.get('raw_ratio', c['ratio'])):>8s} {norm}{ci:>19s} "
                         f"{_fmt(c['mannwhitney_p_slower'], '.2g'):>8s} "
                         f"{c['n_baseline']:>5d}/{c['n_candidate']:<6d}  {c['verdict']}")
        if normalised:
            lines.append("the verdict tests the ratio normalised by the drift reference timed beside the model "
                         "(ref now/then: the machine's speed change; >1 is slower now)")
        lines += [f"{c['statistic']}: {states_line(c)}" for c in result["comparisons"] if c.get("machine_states")]
        # an inconclusive verdict says why on the terminal too, not only in --json
        lines += [f"{c['statistic']}: inconclusive: {c['reason']}"
                  + ("; --against the earlier ONNX measures both sides now" if result["mode"] != "against"
                     and c.get("samples_to_decide") is None else "")
                  for c in result["comparisons"] if c["verdict"] == "inconclusive"]
        for w in result.get("warnings", []):
            lines.append(f"warning: {w}")
        for d in result["environment"]["differences"]:
            lines.append(f"environment: {d}")
        # against a stored baseline a changed model is news; --against compares two models by design
        if result.get("model_changed") and result["mode"] != "against":
            lines.append(f"model differs from the baseline's (sha256 {result['model_sha256'][:12]})")
        elif result["mode"] == "against" and not result.get("model_changed"):
            lines.append("note: --model and --against are byte for byte the same model (an A/A check)")
        if result.get("processes"):
            lines.append(f"{len(result['processes'])} fresh processes (the table is the first's): "
                         + ", ".join(f"{p['verdict']} ({_pct(p['comparisons'][0]['ratio'])})"
                                     for p in result["processes"]))
        ref = result["baseline"]["path"]
        how = f"interleaved against {ref}" if result["mode"] == "against" else f"vs stored baseline {ref}"
        lines.append(f"{result['model']} on {result['device']} ({how}), tolerance ±{result['tolerance'] * 100:g}%: "
                     f"{result['verdict'].upper()}")
    lines.append(f"reproduce: {result['command']}")
    return "\n".join(lines)


_BADGE = {"pass": "PASS", "improved": "IMPROVED", "regressed": "REGRESSED", "inconclusive": "INCONCLUSIVE",
          "fresh": "FRESH", "stale": "STALE"}


def states_line(c: dict[str, Any]) -> str:
    """What a comparison taken per machine state compared (``hwprune.regress.states``), in one line."""
    st = c["machine_states"]
    then = "/".join(f"{p:.0f}" for p in st["baseline_probe_us"])
    now = "/".join(f"{p:.0f}" for p in st["candidate_probe_us"])
    head = (f"machine states by probe time: baseline {then or 'none with enough samples'}"
            + (" µs" if then else "") + f", now {now or 'none with enough samples'}" + (" µs" if now else ""))
    if not st["compared"]:
        return head + {"no state in common": "; none in common, so nothing is decided",
                       "too few samples in any state": "; too few samples now in any one state to decide",
                       "steady at other probe levels": "; each side steady at its own level, so nothing is "
                                                       "decided"}.get(st.get("how"), "; compared pooled")
    each = ", ".join(f"{s['probe_us']:.0f} µs {s['verdict']} ({_pct(s['ratio'])}, n {s['n_baseline']}/{s['n_candidate']})"
                     for s in st["compared"])
    return f"{head}; compared in {each}; the figures are the {c['state_probe_us']:.0f} µs state's"


def to_markdown(result: dict[str, Any]) -> str:
    """A Markdown summary for a CI job page (``$GITHUB_STEP_SUMMARY``)."""
    # the comparisons' own level: a verdict taken in two machine states tests each at 97.5%
    levels = {c.get("confidence", result["confidence"]) for c in result.get("comparisons") or []}
    conf = f"{(levels.pop() if len(levels) == 1 else result['confidence']) * 100:.4g}%"
    out = []
    if result["kind"] == "lut":
        out.append(f"### LUT drift: `{result['model']}` on `{result['device']}` — **{_BADGE[result['verdict']]}**\n")
        out.append(f"Median {result['drift_measure']} drift of {len(result['rows'])} re-measured rows "
                   f"({result['statistic']}): **{result['median_drift'] * 100:+.1f}%** ({conf} CI "
                   f"{result['ci_low'] * 100:+.1f}% .. {result['ci_high'] * 100:+.1f}%), tolerance "
                   f"±{result['tolerance'] * 100:g}%; {result['rows_beyond_tolerance']} rows beyond it.\n")
        out.append("| signature | op | LUT ms | now ms | drift | adjusted drift |")
        out.append("|---|---|---:|---:|---:|---:|")
        for r in result["rows"]:
            adj = f"{r['adjusted_drift'] * 100:+.1f}%" if r["adjusted_drift"] is not None else "n/a"
            out.append(f"| `{r['signature']}` | {r['op']} | {r['lut_ms']:.4f} | {r['now_ms']:.4f} | "
                       f"{r['drift'] * 100:+.1f}% | {adj} |")
    else:
        mode = (f"interleaved A/B against `{result['baseline']['path']}` in one process" if result["mode"] == "against"
                else f"against the stored baseline `{result['baseline']['path']}`")
        out.append(f"### Latency regression: `{Path(result['model']).name}` on `{result['device']}` — "
                   f"**{_BADGE[result['verdict']]}**\n")
        normalised = result.get("ratio_measure") == NORMALISED
        if normalised:
            out.append(f"Measured {mode}, with the drift reference timed beside the model then and now; the "
                       f"verdict tests the **reference-normalised** ratio (now / baseline, divided by the "
                       f"reference's now / then: the machine's speed change between the two processes); "
                       f"tolerance ±{result['tolerance'] * 100:g}%, {conf} bootstrap CI ({result['resamples']} "
                       f"resamples, seed {result['seed']}).\n")
            out.append(f"| statistic | baseline ms | now ms | raw change | reference now / then | normalised change "
                       f"| {conf} CI (normalised) | Mann-Whitney p (slower) | n baseline / now | verdict |")
            out.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
        else:
            out.append(f"Measured {mode}; tolerance ±{result['tolerance'] * 100:g}%, {conf} bootstrap CI of the "
                       f"ratio now / baseline ({result['resamples']} resamples, seed {result['seed']}).\n")
            out.append(f"| statistic | baseline ms | now ms | change | {conf} CI | Mann-Whitney p (slower) | "
                       "n baseline / now | verdict |")
            out.append("|---|---:|---:|---:|---|---:|---:|---|")
        for c in result["comparisons"]:
            norm = (f"{_pct(c.get('raw_ratio', c['ratio']))} | {_fmt(c.get('reference_ratio'))} | {_pct(c['ratio'])}"
                    if normalised else _pct(c["ratio"]))
            out.append(f"| {c['statistic']} | {c['baseline_ms']:.4f} | {c['candidate_ms']:.4f} | {norm} | "
                       f"{_pct(c['ci_low'])} .. {_pct(c['ci_high'])} | {_fmt(c['mannwhitney_p_slower'], '.2g')} | "
                       f"{c['n_baseline']} / {c['n_candidate']} | **{c['verdict']}** |")
        out.append("")
        for w in result.get("warnings", []):
            out.append(f"- :warning: {w}")
        for c in result["comparisons"]:
            if c["verdict"] != "pass":
                out.append(f"- {c['statistic']}: {c['reason']}")
            if c.get("machine_states"):
                out.append(f"- {c['statistic']}: {states_line(c)}")
        if result.get("model_changed") and result.get("mode") != "against":
            out.append(f"- the model differs from the baseline's (sha256 `{result['model_sha256'][:12]}` vs "
                       f"`{str(result['baseline'].get('onnx_sha256'))[:12]}`)")
    env = result.get("environment") or {}
    if env.get("differences"):
        out.append("\n<details><summary>Environment differences since the baseline"
                   f"{' (fingerprint changed, allowed)' if env.get('fingerprint_changed') else ''}</summary>\n")
        out += [f"- `{d}`" for d in env["differences"]]
        out.append("\n</details>")
    out.append(f"\nReproduce: `{result['command']}`\n")
    return "\n".join(out)


def to_junit(result: dict[str, Any]) -> str:
    """JUnit XML: one testcase per model x statistic (or one for a LUT check).

    A regression (stale LUT) is a ``<failure>``; an inconclusive result is ``<skipped>``
    (the job's exit code 3 says it; a red test would claim a regression that was not shown).
    """
    import socket
    import xml.etree.ElementTree as ET

    seconds = float(result.get("measurement", {}).get("seconds", 0.0))
    suites = ET.Element("testsuites", name="hwprune regress")
    suite = ET.SubElement(suites, "testsuite", name=f"hwprune regress {result['device']}",
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(result["created_unix_s"])),
                          hostname=socket.gethostname())
    sprops = ET.SubElement(suite, "properties")
    for name, value in (("device", result["device"]), ("mode", result["mode"]), ("tolerance", result["tolerance"]),
                        ("confidence", result["confidence"]), ("verdict", result["verdict"]),
                        ("ratio_measure", result.get("ratio_measure") or result.get("drift_measure")),
                        ("warnings", " | ".join(result.get("warnings", []))),
                        ("fingerprint", (result.get("environment") or {}).get("fingerprint_now")),
                        ("command", result.get("command"))):
        ET.SubElement(sprops, "property", name=name, value=str(value))
    classname = f"hwprune.regress.{result['device']}"
    cases: list[tuple[str, str, dict[str, Any], str]] = []
    if result["kind"] == "lut":
        props = {"median_drift": result["median_drift"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
                 "rows": len(result["rows"]), "rows_beyond_tolerance": result["rows_beyond_tolerance"],
                 "statistic": result["statistic"], "drift_measure": result["drift_measure"]}
        msg = (f"median drift {result['median_drift'] * 100:+.1f}% (CI {result['ci_low'] * 100:+.1f}% .. "
               f"{result['ci_high'] * 100:+.1f}%) vs tolerance ±{result['tolerance'] * 100:g}%")
        cases.append((f"lut {result['model']} {result['statistic']}", result["verdict"], props, msg))
    else:
        for c in result["comparisons"]:
            props = {k: c.get(k) for k in ("ratio", "ci_low", "ci_high", "ratio_measure", "raw_ratio", "raw_ci_low",
                                           "raw_ci_high", "reference_ratio", "baseline_ms", "candidate_ms",
                                           "baseline_reference_ms", "candidate_reference_ms", "mannwhitney_p_slower",
                                           "prob_slower", "n_baseline", "n_candidate", "n_baseline_reference",
                                           "n_candidate_reference", "samples_to_decide")}
            cases.append((f"{Path(result['model']).name} {c['statistic']}", c["verdict"], props, c["reason"]))
    failures = skipped = 0
    for name, verdict, props, msg in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")
        cp = ET.SubElement(case, "properties")
        ET.SubElement(cp, "property", name="verdict", value=verdict)
        for k, v in props.items():
            ET.SubElement(cp, "property", name=k, value="" if v is None else str(v))
        if verdict in ("regressed", "stale"):
            failures += 1
            el = ET.SubElement(case, "failure", message=f"{verdict}: {msg}", type=verdict)
            el.text = f"{msg}\nreproduce: {result.get('command')}"
        elif verdict == "inconclusive":
            skipped += 1
            ET.SubElement(case, "skipped", message=f"inconclusive: {msg}")
        out = ET.SubElement(case, "system-out")
        out.text = f"{verdict}: {msg}"
    for el in (suites, suite):
        el.set("tests", str(len(cases)))
        el.set("failures", str(failures))
        el.set("errors", "0")
        el.set("skipped", str(skipped))
        el.set("time", f"{seconds:.3f}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _json_safe(obj: Any) -> Any:
    """NaN/inf as null: strict JSON readers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_outputs(result: dict[str, Any], opts: RegressOptions) -> None:
    """Write the JUnit, Markdown and JSON files asked for, each atomically."""
    if opts.junit:
        atomic_write_text(opts.junit, to_junit(result))
    if opts.markdown:
        atomic_write_text(opts.markdown, to_markdown(result))
    if opts.json:
        atomic_write_json(opts.json, _json_safe(result))
