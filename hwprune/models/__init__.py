"""The model zoo: built-in builders by name plus loaders for user files and weights."""

from hwprune.models.registry import create_model, list_models, load_weights, register_model

# Importing the builders registers them (resnet20, resnet56, vgg11_bn, vgg16_bn, mobilenetv2).
from hwprune.models import mobilenetv2, resnet_cifar, vgg  # noqa: E402,F401  isort:skip

__all__ = ["create_model", "list_models", "load_weights", "register_model"]
