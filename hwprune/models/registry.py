"""The model registry: names (``resnet20``, ``file.py:factory``, ``timm:NAME``) to nn.Modules.

Built-in builders register themselves with :func:`register_model`; :func:`create_model`
is the single place a ``--model`` string becomes a module, as in timm's ``_registry`` /
``_factory`` pair.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwprune.errors import HwpruneError, user_code

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

# Which pip package provides each third-party model namespace.
_EXTERNAL_ZOOS = {"torchvision": "torchvision", "timm": "timm", "pytorchcv": "pytorchcv"}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model builder under its function name (a decorator; returns ``fn``).

    The builder must accept ``in_channels``, ``num_classes`` and ``input_size`` keyword
    arguments (it may ignore ``input_size``).

    Example:
        >>> from torch import nn
        >>> @register_model
        ... def tiny_linear(in_channels=1, num_classes=10, input_size=(28, 28)):
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size[0] * input_size[1], num_classes))
        >>> "tiny_linear" in list_models()
        True
    """
    name = fn.__name__
    previous = _MODEL_BUILDERS.get(name)
    # Re-registering the same definition (a module reload) replaces it; a different
    # builder under a taken name is a programming error.
    if previous is not None and (previous.__module__, previous.__qualname__) != (
        fn.__module__, fn.__qualname__
    ):
        raise ValueError(f"model {name!r} is already registered by {previous.__module__}")
    _MODEL_BUILDERS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered built-in models, sorted."""
    _import_builtin_zoo()
    return sorted(_MODEL_BUILDERS)


def create_model(
    name: str,
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: tuple[int, int] = (28, 28),
    **kwargs: Any,
) -> nn.Module:
    """Build a model from a registered name, a user file, or an installed third-party zoo.

    Args:
        name: a registered name (see :func:`list_models`); ``path/to/file.py:factory`` for a
            factory function in a user file; or ``torchvision:NAME`` / ``timm:NAME`` /
            ``pytorchcv:NAME`` when that package is installed.
        in_channels: input image channels (1 for Fashion-MNIST, 3 for CIFAR/ImageNet).
        num_classes: size of the classifier output.
        input_size: (height, width) of the input; some builders use it to pick strides.
        **kwargs: passed through to the builder (e.g. ``width_mult`` for mobilenetv2).

    Returns:
        An ``nn.Module`` in training mode, freshly initialised (no weights loaded).

    Raises:
        HwpruneError: unknown name, missing file/factory, or a zoo that is not installed.

    Example:
        >>> import torch
        >>> from hwprune.models import create_model
        >>> model = create_model("resnet20", in_channels=1, num_classes=10, input_size=(28, 28))
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    input_size = _as_hw(input_size)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _EXTERNAL_ZOOS:
        return _create_external(prefix, rest, in_channels, num_classes, input_size=_as_hw(input_size), **kwargs)
    if sep:
        # Registered names never contain ':', so anything else with one is FILE:FACTORY;
        # split at the last ':' so Windows drive letters survive.
        file_path, _, factory_name = name.rpartition(":")
        return _create_from_file(
            file_path, factory_name, in_channels, num_classes, input_size, **kwargs
        )
    _import_builtin_zoo()
    if name.endswith(".py") and name not in _MODEL_BUILDERS:
        raise HwpruneError(f"model {name}: name the factory as {name}:FUNCTION")
    if name not in _MODEL_BUILDERS:
        known = ", ".join(sorted(_MODEL_BUILDERS))
        raise HwpruneError(
            f"unknown model {name!r}; known models: {known} "
            "(or use path/to/file.py:factory, pytorchcv:NAME, torchvision:NAME, timm:NAME)"
        )
    builder = _MODEL_BUILDERS[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            raise HwpruneError(f"model {name!r} has no option {unknown[0]!r}")
    return builder(in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs)


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load a state_dict (or ``{"state_dict": ...}``) from ``path`` into ``model`` strictly.

    Uses ``torch.load(weights_only=True)`` so no pickled code is run.

    Raises:
        HwpruneError: missing/unreadable file, or a key or shape that does not match; the
            message names the first mismatching key.

    Example:
        >>> import torch, tempfile, os
        >>> m = create_model("resnet20")
        >>> f = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"state_dict": m.state_dict()}, f)
        >>> load_weights(create_model("resnet20"), f) is not None
        True
    """
    if not os.path.isfile(path):
        raise HwpruneError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt/unsafe pickles
        if _is_not_a_checkpoint(path):
            raise HwpruneError(f"{path} is not a PyTorch checkpoint (expected a state_dict saved with "
                               f"torch.save)") from None
        raise HwpruneError(f"cannot read weights {path}: {_one_line(err)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HwpruneError(f"weights file {path} holds no state_dict (a dict of tensors)")

    expected = model.state_dict()
    for key in expected:
        if key not in obj:
            raise HwpruneError(f"weights {path} do not match the model: missing key {key!r}")
        if tuple(obj[key].shape) != tuple(expected[key].shape):
            raise HwpruneError(
                f"weights {path} do not match the model: key {key!r} has shape "
                f"{tuple(obj[key].shape)}, model expects {tuple(expected[key].shape)}"
            )
    for key in obj:
        if key not in expected:
            raise HwpruneError(f"weights {path} do not match the model: unexpected key {key!r}")
    model.load_state_dict(obj, strict=True)
    return model


@functools.lru_cache(maxsize=None)
def _pytorchcv_builder(name: str) -> Callable[..., nn.Module]:
    """The builder ``name`` of pytorchcv, imported from the one module that defines it.

    pytorchcv's own ``get_model`` imports every model module, some of which need torchvision
    (which cannot be installed beside a CPU-only torch here); finding the defining module by
    its source text imports only what the model needs.
    """
    import re

    spec = importlib.util.find_spec("pytorchcv")
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "models"
    pattern = re.compile(rf"^def {re.escape(name)}\(", re.M)
    for f in sorted(models_dir.glob("*.py")):
        if pattern.search(f.read_text(encoding="utf-8", errors="ignore")):
            try:
                module = importlib.import_module(f"pytorchcv.models.{f.stem}")
            except ImportError as err:
                raise HwpruneError(f"pytorchcv:{name} needs {err.name or 'a package that is missing'}: "
                                   f"{_one_line(err)}") from None
            return getattr(module, name)
    raise HwpruneError(f"pytorchcv has no model '{name}' (names as in pytorchcv's model list, e.g. resnet18, "
                       f"mobilenetv2_w1)")


def _is_not_a_checkpoint(path: str) -> bool:
    """Neither torch.save's zip archive nor its legacy pickle (which starts with a PROTO opcode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False  # unreadable: torch's own message says why
    return not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80")


def _import_builtin_zoo() -> None:
    # Importing the zoo modules runs their @register_model decorators; done lazily so that
    # importing the registry alone never has a circular import with the builders.
    from hwprune.models import mobilenetv2, resnet_cifar, vgg  # noqa: F401


def _as_hw(input_size: Any) -> tuple[int, int]:
    if isinstance(input_size, int):
        return (input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:  # tolerate (C, H, W) as timm's data configs write it
        size = size[1:]
    if len(size) != 2 or min(size) < 1:
        raise HwpruneError(f"input_size must be (height, width), got {input_size!r}")
    return size


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _call_with_supported(factory: Callable[..., nn.Module], offered: dict[str, Any]) -> nn.Module:
    """Call ``factory`` with the subset of ``offered`` keyword arguments it accepts."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins / C callables without a signature
        return factory()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**offered)
    return factory(**{k: v for k, v in offered.items() if k in params})


def put_folder_on_path(file_path: str) -> None:
    """The folder of a user's ``file.py`` first on ``sys.path``, as ``python file.py`` puts it, so
    the file can import the modules beside it (kept there: a factory may import them later)."""
    folder = os.path.dirname(os.path.abspath(file_path))
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _create_from_file(
    file_path: str,
    factory_name: str,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    **kwargs: Any,
) -> nn.Module:
    if not factory_name:
        raise HwpruneError(f"model {file_path}: name the factory as {file_path}:FUNCTION")
    if not os.path.isfile(file_path):
        raise HwpruneError(f"model file not found: {file_path} (factory {factory_name!r})")
    module_name = "hwprune_user_model_" + os.path.splitext(os.path.basename(file_path))[0]
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None or spec.loader is None:
        raise HwpruneError(f"cannot load model file {file_path} (factory {factory_name!r})")
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as importlib's recipe does, so dataclasses and pickling
    # inside the user's file can find their module.
    sys.modules[module_name] = module
    put_folder_on_path(file_path)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # the user's file may raise anything at import time, or exit
        sys.modules.pop(module_name, None)
        what = f"called sys.exit({err.code!r})" if isinstance(err, SystemExit) else \
            f"{type(err).__name__}: {_one_line(err)}"
        raise HwpruneError(f"model file {file_path} failed to import: {what}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise HwpruneError(f"model file {file_path} has no callable factory {factory_name!r}")
    offered = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
    offered.update(kwargs)
    try:
        with user_code("factory", factory):
            model = _call_with_supported(factory, offered)
    except SystemExit as err:
        raise HwpruneError(f"your factory `{factory_name}` in {file_path} called sys.exit({err.code!r})") from None
    if not isinstance(model, nn.Module):
        raise HwpruneError(
            f"factory {factory_name!r} in {file_path} returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model


def _create_external(
    zoo: str, model_name: str, in_channels: int, num_classes: int, input_size: tuple[int, int] = (224, 224),
    **kwargs: Any
) -> nn.Module:
    package = _EXTERNAL_ZOOS[zoo]
    if importlib.util.find_spec(package) is None:
        raise HwpruneError(f"model {zoo}:{model_name} needs {package}: pip install {package}")
    if not model_name:
        raise HwpruneError(f"name the model as {zoo}:NAME (e.g. {zoo}:resnet18)")
    try:
        if zoo == "timm":
            timm = importlib.import_module("timm")
            return timm.create_model(
                model_name, in_chans=in_channels, num_classes=num_classes, **kwargs
            )
        if zoo == "pytorchcv":
            return _pytorchcv_builder(model_name)(pretrained=False, in_channels=in_channels,
                                                  num_classes=num_classes, in_size=tuple(input_size), **kwargs)
        if in_channels != 3:
            # torchvision builders have no in_channels argument and assume RGB.
            raise HwpruneError(
                f"torchvision:{model_name} expects 3 input channels, got in_channels={in_channels}"
            )
        models = importlib.import_module("torchvision.models")
        return models.get_model(model_name, num_classes=num_classes, **kwargs)
    except HwpruneError:
        raise
    except Exception as err:  # unknown names and bad kwargs surface as various types
        raise HwpruneError(f"cannot create {zoo}:{model_name}: {_one_line(err)}") from err
