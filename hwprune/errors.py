"""Host-side user errors; they share the profilers' base so the CLI catches both at one edge."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import re
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

# Set while the command line runs: its users type flags, so its messages keep naming them.
_CLI = contextvars.ContextVar("hwprune_cli", default=False)
# A flag, then (2) a space before a quoted value, or (3) a value that is no word of the sentence:
# a number, a path, or NAME:VALUE ("--out runs/x", "--num-classes 10", "--data cifar10:PATH").
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)"
                   r"(?:( (?=['\"]))| (\d[\w.]*|[/.~][^\s,;)]*|[\w.-]+[:/][^\s,;)]*))?")


@contextlib.contextmanager
def cli_spelling() -> Iterator[None]:
    """Messages raised inside name options as the command line spells them (``--latency-ms``)."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def keyword_spelling(message: str, keywords: dict[str, Any]) -> str:
    """``message`` with each ``--flag`` that is one of ``keywords`` spelt as the keyword
    (``--latency-ms`` -> ``latency_ms=``; a switch, default False, ``--overwrite`` -> ``overwrite=True``).

    ``keywords`` maps a flag's snake-case name to ``(keyword, default)``; flags it does not hold
    are left as they are (they may name a command-line-only option)."""
    def spell(m: re.Match) -> str:
        found = keywords.get(m.group(1).replace("-", "_"))
        if found is None:
            return m.group(0)
        name, default = found
        if m.group(3):                      # "--out runs/x" reads as out=runs/x
            return f"{name}={m.group(3)}"
        # "--finetune 'nope'" reads as finetune='nope'
        return f"{name}=True" if default is False and not m.group(2) else f"{name}="
    return _FLAG.sub(spell, message)


def api_errors(fn: F | None = None, *, options: Callable[[], dict[str, Any]] | None = None,
               flags: dict[str, str] | None = None) -> Any:
    """A public API function whose user errors all arrive as :class:`HwpruneError`, naming its keywords.

    The library's messages name options as the command line spells them (``--speedup``); called
    from Python they name the function's keyword instead (``speedup=``). ``options`` gives more
    keywords with their defaults (those a function takes through ``**options``); ``flags`` maps a
    flag to a keyword of another name (``{"json": "json_path"}``).
    """
    def decorate(f: F) -> F:
        keywords: dict[str, Any] | None = None

        def spelling() -> dict[str, Any]:
            nonlocal keywords
            if keywords is None:
                params = inspect.signature(f).parameters.values()
                found = {p.name: (p.name, p.default) for p in params
                         if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
                found.update({k: (k, d) for k, d in (options() if options else {}).items()})
                found.update({flag: found.get(kw, (kw, None)) for flag, kw in (flags or {}).items()})
                keywords = found
            return keywords

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_call(f, args, kwargs)
            if "log" in kwargs and kwargs["log"] is None:
                kwargs["log"] = _silent      # log=None asks for silence
            elif "log" in kwargs and not callable(kwargs["log"]):
                raise HwpruneError(f"log= must be a function taking one message (a str), or None; got "
                                   f"{type(kwargs['log']).__name__}")
            try:
                return f(*args, **kwargs)
            except ProfilerError as err:
                user = as_hwprune_error(err)
                if not _CLI.get() and user.args and isinstance(user.args[0], str):
                    user.args = (keyword_spelling(user.args[0], spelling()), *user.args[1:])
                if user is err:
                    raise
                raise user from None
        return wrapper  # type: ignore[return-value]
    return decorate(fn) if fn is not None else decorate


def _silent(_message: str) -> None:
    return None


def _public_name(f: Callable[..., Any], name: str | None) -> str:
    """``hwprune.profile`` for what the package exports, else where it lives (``hwprune.api.lut_check``);
    ``name`` as given when it is dotted (a wrapper's own name for the function it passes on to)."""
    import hwprune

    if name and "." in name:
        return name
    name = name or f.__name__
    return f"hwprune.{name}" if name in getattr(hwprune, "_EXPORTS", {}) else f"{f.__module__}.{name}"


def check_call(f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str | None = None) -> None:
    """A call of the public function ``f`` that Python would refuse (an unknown keyword, a missing
    argument) as one sentence naming ``hwprune.<name>`` and, for a misspelt keyword, the near one."""
    import difflib

    sig = inspect.signature(f)
    try:
        sig.bind(*args, **kwargs)
    except TypeError as err:
        where = f"{_public_name(f, name)}()"
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unknown is None:
            raise HwpruneError(f"{where}: {err}") from None
        names = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        near = difflib.get_close_matches(unknown.group(1), names, 1)
        raise HwpruneError(f"{where} has no option '{unknown.group(1)}'"
                           + (f"; did you mean {near[0]}?" if near else f" (its options: {', '.join(names)})")) from None


def check_integer(value: Any, flag: str, low: int) -> int:
    """``value`` when it is an integer (not a bool) of at least ``low``, else one sentence naming ``flag``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise HwpruneError(f"{flag} must be an integer of at least {low}, got {value!r}")
    return value


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
