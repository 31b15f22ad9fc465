"""Device-side timing for hwprune: runners, statistics, device configs, environment manifest.

This package must stay importable on a device that has only numpy and onnxruntime (or
TensorRT): it never imports torch, and heavy or optional modules are imported lazily.
"""

from profilers.errors import ProfilerError

__all__ = ["ProfilerError"]
__version__ = "0.1.0"
