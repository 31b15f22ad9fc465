"""The ranks of a data-parallel prune run under ``torchrun``: rank 0 searches and measures, every rank recovers.

Searching and measuring on several processes would only make them contend for the device, so
rank 0 does both alone while the other ranks wait; when an architecture is to be recovered,
rank 0 sends its kept channels and every rank trains it together (``hwprune.train`` shards the
data and averages gradients over the process group, or the user's ``finetune_fn`` does whatever
its engine does). Messages are small JSON objects broadcast from rank 0 over a gloo group of
their own (CPU tensors work there whatever backend trains, NCCL included), whose timeout is
long enough for rank 0's search; training keeps the process group's own timeout.

If rank 0 fails while the others wait for a message, it sends ``abort`` and they stop with one
line; if it fails while they train beside it, it exits and torchrun ends the others. Without
torchrun (WORLD_SIZE unset or 1) there is one rank and nothing is sent.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator
from typing import Any

from hwprune.errors import HwpruneError

# Rank 0's search and measurements happen between two messages: the other ranks wait that long.
WAIT_TIMEOUT_S = 24 * 3600.0


class Ranks:
    """This process's place in the run, and the message channel from rank 0."""

    def __init__(self, ctx, group=None) -> None:
        self._ctx = ctx
        self._group = group
        self._others_waiting = True  # False while the other ranks train beside rank 0
        self._done = False

    @classmethod
    def start(cls) -> Ranks:
        from hwprune.train import DistContext

        ctx = DistContext.from_env()
        group = None
        if ctx.active:
            import torch.distributed as dist

            group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=WAIT_TIMEOUT_S))
        return cls(ctx, group)

    @property
    def is_main(self) -> bool:
        return self._ctx.is_main

    @property
    def world_size(self) -> int:
        return self._ctx.world_size

    def send(self, message: dict[str, Any]) -> None:
        """Rank 0: tell every other rank ``message`` (nothing without other ranks)."""
        if self._ctx.active and not self._done:
            self._ctx.broadcast_bytes(json.dumps(message).encode(), group=self._group)
            self._done = "done" in message or "abort" in message

    def receive(self) -> dict[str, Any]:
        """The other ranks: rank 0's next message; an ``abort`` from it becomes one line here too."""
        message = json.loads(self._ctx.broadcast_bytes(None, group=self._group).decode())
        if "abort" in message:
            raise HwpruneError(f"rank 0 stopped: {message['abort']}")
        return message

    @contextlib.contextmanager
    def together(self, message: dict[str, Any]) -> Iterator[None]:
        """Rank 0: send ``message`` (what to train), then train beside the other ranks."""
        self.send(message)
        self._others_waiting = False
        try:
            yield
        finally:
            self._others_waiting = True

    def abort(self, reason: str) -> None:
        """Rank 0 failed: tell ranks that wait for a message; ranks in a collective are ended by torchrun."""
        if self._others_waiting:
            with contextlib.suppress(Exception):
                self.send({"abort": reason})

    def close(self) -> None:
        if self._group is not None:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group(self._group)
            self._group = None
        self._ctx.close()
