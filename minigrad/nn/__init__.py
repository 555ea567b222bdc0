"""Neural-network building blocks (PyTorch's ``torch.nn``): Module, Parameter, layers, losses, init."""

from . import functional, init, utils
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                     CrossEntropyLoss, Dropout, Embedding, Flatten, GELU, Identity, LayerNorm,
                     LeakyReLU, Linear, LocalResponseNorm, LogSoftmax, MaxPool2d, ModuleList,
                     MSELoss, NLLLoss, ReLU, Sequential, Sigmoid, Softmax, Tanh)
from .module import IncompatibleKeys, Module, Parameter, StateDictError

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d",
           "CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "GELU", "Identity", "LayerNorm",
           "LeakyReLU", "Linear", "LocalResponseNorm", "LogSoftmax", "MaxPool2d", "ModuleList",
           "MSELoss", "NLLLoss", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
           "IncompatibleKeys", "Module", "Parameter", "StateDictError", "functional", "init",
           "utils"]
