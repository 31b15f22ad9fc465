"""The ranks of a data-parallel prune run under ``torchrun``: rank 0 searches and measures, every rank recovers.

Searching and measuring on several processes would only make them contend for the device, so
rank 0 does both alone while the other ranks wait; when an architecture is to be recovered,
rank 0 sends its widths and every rank trains it together (``hwprune.train`` shards the data
and averages gradients over the process group, or the user's ``finetune_fn`` does whatever
its engine does). Messages are small JSON objects broadcast from rank 0. Without torchrun
(WORLD_SIZE unset or 1) there is one rank and nothing is sent.
"""

from __future__ import annotations

import json
from typing import Any

from hwprune.errors import HwpruneError

# Rank 0's search and measurements happen between two messages: the other ranks wait that long.
WAIT_TIMEOUT_S = 24 * 3600.0


class Ranks:
    """This process's place in the run, and the message channel from rank 0."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx

    @classmethod
    def start(cls) -> Ranks:
        from hwprune.train import _DistContext

        return cls(_DistContext.from_env(timeout_s=WAIT_TIMEOUT_S))

    @property
    def is_main(self) -> bool:
        return self._ctx.is_main

    @property
    def world_size(self) -> int:
        return self._ctx.world_size

    def send(self, message: dict[str, Any]) -> None:
        """Rank 0: tell every other rank ``message`` (nothing without other ranks)."""
        if self._ctx.active:
            self._ctx.broadcast_bytes(json.dumps(message).encode())

    def receive(self) -> dict[str, Any]:
        """The other ranks: rank 0's next message; an ``abort`` from it becomes one line here too."""
        message = json.loads(self._ctx.broadcast_bytes(None).decode())
        if "abort" in message:
            raise HwpruneError(f"rank 0 stopped: {message['abort']}")
        return message

    def close(self) -> None:
        self._ctx.close()
