"""The one exception type that carries a user-facing, one-line error message."""


class ProfilerError(Exception):
    """A problem the user can fix (bad config, missing file, absent backend).

    The CLI prints ``str(err)`` on one line and exits with code 2; it is never shown as a
    traceback.
    """


class ConfigError(ProfilerError):
    """A device config that is missing, unreadable or fails validation."""


class ModelFileError(ProfilerError):
    """An ONNX file that is missing, corrupt or cannot be run."""


class BackendUnavailable(ProfilerError):
    """A backend (TensorRT, pycuda, an execution provider) asked for but not installed."""


class RemoteError(ProfilerError):
    """An SSH host that cannot be reached, or a remote command that failed."""


class OutputError(ProfilerError, OSError):
    """A file that cannot be written (read-only folder, disk full). Also an ``OSError``, so code that
    treats a failed write as recoverable (a cache) still catches it."""
