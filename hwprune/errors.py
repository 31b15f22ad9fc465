"""Host-side user errors; they share the profilers' base so the CLI catches both at one edge."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from profilers.errors import ProfilerError


class HwpruneError(ProfilerError):
    """A problem the user can fix; the CLI prints it on one line and exits with code 2."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def describe_callable(fn: Callable[..., Any]) -> str:
    """``my_metric in train.py`` (or just the name where the source file is unknown)."""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    try:
        where = inspect.getsourcefile(fn)
    except TypeError:
        where = None
    return f"{name} in {where}" if where else name


@contextlib.contextmanager
def user_code(role: str, fn: Callable[..., Any]) -> Iterator[None]:
    """Run the user's code (a ``score_fn``, ``finetune_fn``, factory): what it raises becomes one line.

    Our own errors pass through unchanged; a KeyboardInterrupt stays an interrupt.
    """
    try:
        yield
    except ProfilerError:
        raise
    except Exception as err:
        raise HwpruneError(f"your {role} `{describe_callable(fn)}` raised {type(err).__name__}: "
                           f"{first_line(err)}") from err
