"""hwprune: make a PyTorch model meet a latency budget measured on a named device."""

__version__ = "0.1.0"
