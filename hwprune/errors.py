"""Host-side user errors; they share the profilers' base so the CLI catches both at one edge."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from profilers.errors import ProfilerError


class HwpruneError(ProfilerError):
    """A problem the user can fix; the CLI prints it on one line and exits with code 2."""


# One class per profilers error type that is both it and a HwpruneError (made on first use).
_BOTH: dict[type, type] = {}


def as_hwprune_error(err: ProfilerError) -> HwpruneError:
    """``err`` as a :class:`HwpruneError` that is still an instance of its own class.

    The profilers package (device configs, ONNX files, backends, SSH) raises its own
    :class:`ProfilerError` types and cannot know hwprune's. The library API promises
    ``HwpruneError`` for every user error, so a user's ``except hwprune.HwpruneError`` catches an
    unknown device name too, while ``except ConfigError`` (or ``OSError`` for an unwritable
    output) keeps working.
    """
    if isinstance(err, HwpruneError):
        return err
    kind = type(err)
    both = _BOTH.get(kind)
    if both is None:
        both = _BOTH[kind] = type(kind.__name__, (HwpruneError, kind), {"__module__": kind.__module__})
    return both(*err.args)


F = TypeVar("F", bound=Callable[..., Any])


def api_errors(fn: F) -> F:
    """A public API function whose user errors all arrive as :class:`HwpruneError`."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HwpruneError:
            raise
        except ProfilerError as err:
            raise as_hwprune_error(err) from None
    return wrapper  # type: ignore[return-value]


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
