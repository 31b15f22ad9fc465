"""What to build: a zoo or file model by name (``ModelSpec``) or the user's own module (``ModuleSpec``), with its input."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hwprune.errors import HwpruneError


@dataclass
class ModelSpec:
    """What to build: a model name (or ``file.py:factory``), input shape (C, H, W), weights."""

    name: str
    input_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    weights: str | None = None

    def build(self) -> torch.nn.Module:
        from hwprune.models import create_model, load_weights

        c, h, w = self.input_shape
        model = create_model(self.name, in_channels=c, num_classes=self.num_classes, input_size=(h, w))
        if self.weights:
            load_weights(model, self.weights)
        return model.eval()

    def example_input(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``C,H,W`` or ``CxHxW`` (batch comes from the device config)."""
    parts = text.replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise HwpruneError(f"--input-shape must be C,H,W (integers), got '{text}'") from None
    if len(dims) != 3 or min(dims) < 1:
        raise HwpruneError(f"--input-shape must be three positive integers C,H,W, got '{text}'")
    return dims  # type: ignore[return-value]


class ModuleSpec:
    """A user's own ``nn.Module`` and example input, in :class:`ModelSpec`'s shape (what the commands build).

    ``name`` keys the model in a LUT; by default the class name and a hash of the module's
    printed structure (layer types and their settings), so two different networks of the same
    class never share a LUT entry, while retrained weights keep theirs.
    """

    def __init__(self, model: torch.nn.Module, example_input: torch.Tensor, name: str | None = None,
                 num_classes: int | None = None, weights: str | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise HwpruneError(f"model must be a torch.nn.Module (or a zoo name), got {type(model).__name__}")
        check_example_input(example_input)
        _check_float32(model, example_input)
        if name is not None and (not isinstance(name, str) or not name.strip() or "@" in name):
            raise HwpruneError(f"name must be a non-empty string without '@', got {name!r}")
        self.model = model
        self.input = example_input.detach()[:1].clone()
        self.name = name or default_module_name(model)
        self.input_shape = tuple(self.input.shape[1:])
        self.num_classes = num_classes
        self.weights = weights

    def build(self) -> torch.nn.Module:
        """A copy in eval mode, with ``weights`` loaded into it: the user's module is never touched."""
        import copy

        try:
            model = copy.deepcopy(self.model)
        except Exception as err:
            raise HwpruneError(f"cannot copy your model ({type(err).__name__}: {err}); hwprune works on a copy "
                               f"so that yours is left as it is") from None
        if self.weights:
            from hwprune.models import load_weights

            load_weights(model, self.weights)
        return model.eval()

    def example_input(self, batch: int) -> torch.Tensor:
        return batch_of(self.input, batch)


def default_module_name(model: torch.nn.Module) -> str:
    import hashlib

    return f"{type(model).__name__}-{hashlib.sha1(repr(model).encode()).hexdigest()[:8]}"


def batch_of(example_input: torch.Tensor, batch: int) -> torch.Tensor:
    """``example_input`` at ``batch`` samples (its first sample repeated)."""
    check_example_input(example_input)
    first = example_input[:1].detach()
    return first.repeat(batch, *([1] * (first.dim() - 1))) if batch != 1 else first.clone()


def _check_float32(model: torch.nn.Module, example_input: torch.Tensor) -> None:
    """Refuse float64 or float16 weights and inputs up front: the exported model and every LUT row
    are float32 (a device config's ``precision`` converts at build time), and onnxruntime has no
    float64 convolution, which would otherwise surface minutes later as a runtime's error."""
    other = {str(p.dtype).removeprefix("torch.") for p in model.parameters()
             if p.is_floating_point() and p.dtype != torch.float32}
    if other:
        raise HwpruneError(f"the model's weights are {', '.join(sorted(other))}; hwprune exports and times float32 "
                           f"models (the device config's precision converts them): pass model.float()")
    if example_input.is_floating_point() and example_input.dtype != torch.float32:
        raise HwpruneError(f"example_input is {str(example_input.dtype).removeprefix('torch.')}; hwprune exports "
                           f"and times float32 models: pass example_input.float()")


def check_example_input(example_input) -> None:
    """A tensor with a batch dimension, or one sentence saying what is expected."""
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise HwpruneError(f"example_input must be a tensor with a batch dimension such as torch.zeros(1, 3, 32, 32), "
                           f"got {type(example_input).__name__}")
