"""hwprune: make a PyTorch model meet a latency budget measured on a named device.

The library API (the CLI is a thin client of it)::

    import hwprune
    lut = hwprune.profile(model, example_input, device="x86-cpu-ort", lut="lut.parquet")
    result = hwprune.prune(model, example_input, device="x86-cpu-ort", lut=lut, speedup=2.0,
                           score_fn=my_metric, finetune_fn=my_train, out="runs/x")
    result.model, result.certified, result.certificate, result.plan, result.report

Names are imported on first use, so ``import hwprune`` (and ``hwprune --help``) stays quick.
"""

from hwprune.errors import HwpruneError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "profile": "hwprune.api", "prune": "hwprune.api", "apply_plan": "hwprune.api", "time_model": "hwprune.api",
    "PruneResult": "hwprune.pruning", "PruneOptions": "hwprune.pruning", "Certificate": "hwprune.certify",
    "Plan": "hwprune.plan", "TimingResult": "hwprune.timing", "LatencyLUT": "hwprune.lut", "ModelSpec": "hwprune.models.spec",
}
__all__ = ["HwpruneError", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwprune' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
