"""zoo: classic CNNs for minigrad (LeNet-5, AlexNet, VGG, ResNet-18), a registry, a Trainer.

    import zoo
    model = zoo.get_model("resnet18", num_classes=10, stem="cifar")
    zoo.list_models()  # ['lenet5', 'alexnet', 'vgg11', ..., 'resnet18']
"""

from .alexnet import AlexNet, alexnet
from .flops import count_parameters, forward_flops, forward_macs
from .lenet import LeNet5, lenet5
from .registry import get_model, get_spec, list_models
from .resnet import BasicBlock, ResNet, resnet18
from .trainer import Trainer
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

__all__ = ["lenet5", "LeNet5", "alexnet", "AlexNet", "vgg11", "vgg13", "vgg16", "vgg19",
           "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "VGG", "resnet18", "ResNet",
           "BasicBlock", "get_model", "get_spec", "list_models", "count_parameters",
           "forward_flops", "forward_macs", "Trainer"]
