"""Host-side user errors; they share the profilers' base so the CLI catches both at one edge."""

from profilers.errors import ProfilerError


class HwpruneError(ProfilerError):
    """A problem the user can fix; the CLI prints it on one line and exits with code 2."""
