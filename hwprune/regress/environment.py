"""The device's environment then and now: a changed fingerprint refuses a comparison unless allowed."""

from __future__ import annotations

from typing import Any

from hwprune.errors import HwpruneError
from profilers.config import DeviceConfig


def _local_environment(cfg: DeviceConfig) -> dict[str, Any] | None:
    from profilers.environment import collect_manifest

    return collect_manifest(cfg) if cfg.remote is None else None


def _environment_check(reference_env: dict[str, Any] | None, reference_fp: str | None, now_env: dict[str, Any] | None,
                       what: str, allow_env_change: bool) -> dict[str, Any]:
    """Diff ``reference_env`` against now; a changed fingerprint is an error unless allowed."""
    from profilers.environment import diff_manifests, fingerprint

    out: dict[str, Any] = {"fingerprint_now": fingerprint(now_env) if now_env else None,
                           "fingerprint_baseline": None, "fingerprint_changed": False, "differences": []}
    if not now_env:
        return out
    if reference_env:
        out["fingerprint_baseline"] = fingerprint(reference_env)
        out["differences"] = diff_manifests(reference_env, now_env)
    else:
        out["fingerprint_baseline"] = reference_fp
        out["differences"] = [f"{what} has no environment manifest to compare with"]
    changed = out["fingerprint_baseline"] is not None and out["fingerprint_baseline"] != out["fingerprint_now"]
    out["fingerprint_changed"] = changed
    if changed and not allow_env_change:
        why = "; ".join(d for d in out["differences"] if d.startswith("[fingerprint]")) or "fields differ"
        raise HwpruneError(f"the device fingerprint changed since {what} ({out['fingerprint_baseline']} -> "
                           f"{out['fingerprint_now']}: {why}); pass --allow-env-change to compare anyway")
    return out

