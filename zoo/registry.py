"""Model registry: names -> constructors, default inputs and small-input (32x32) options."""

from .alexnet import alexnet
from .lenet import lenet5
from .resnet import resnet18
from .vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn


class ModelSpec:
    """What the registry knows about one model name.

    ``builder(num_classes=..., in_channels=..., **kw)`` constructs it; ``input_shape`` is its
    default ``(C, H, W)`` input; ``small_input_kwargs(size)`` gives the extra keyword
    arguments for an image of ``size`` x ``size`` pixels (e.g. ``{"variant": "cifar"}`` for 32);
    ``defaults`` are the training defaults the CLI uses for it.
    """

    def __init__(self, name, builder, input_shape, small, defaults, aliases=()):
        self.name = name
        self.builder = builder
        self.input_shape = input_shape
        self._small = small
        self.defaults = defaults
        self.aliases = tuple(aliases)

    def kwargs_for_input(self, image_size):
        """Keyword arguments selecting the variant for square ``image_size`` inputs."""
        return dict(self._small(int(image_size)))


def _lenet_small(size):
    if size not in (28, 32):
        raise ValueError(f"lenet5 takes 28x28 or 32x32 images, not {size}x{size}")
    return {"input_size": size}


def _variant_small(size):
    return {} if size >= 224 else {"variant": "cifar"}


def _stem_small(size):
    return {} if size >= 128 else {"stem": "cifar"}


# Training defaults per model (the CLI's when an option is not given).
_LENET_DEFAULTS = dict(dataset="mnist", epochs=4, batch_size=128, optimizer="adam", lr=3e-3,
                       momentum=0.9, weight_decay=0.0, schedule="onecycle", warmup_epochs=0.0)
_CNN_DEFAULTS = dict(dataset="cifar10", epochs=30, batch_size=128, optimizer="sgd", lr=0.05,
                     momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1.0)
_ALEXNET_DEFAULTS = dict(_CNN_DEFAULTS, lr=0.01)
_RESNET_DEFAULTS = dict(_CNN_DEFAULTS, lr=0.1)

_SPECS = {}


def _register(spec):
    _SPECS[spec.name] = spec


_register(ModelSpec("lenet5", lenet5, (1, 28, 28), _lenet_small, _LENET_DEFAULTS,
                    aliases=("lenet",)))
_register(ModelSpec("alexnet", alexnet, (3, 227, 227), _variant_small, _ALEXNET_DEFAULTS))
for _name, _fn in (("vgg11", vgg11), ("vgg13", vgg13), ("vgg16", vgg16), ("vgg19", vgg19),
                   ("vgg11_bn", vgg11_bn), ("vgg13_bn", vgg13_bn), ("vgg16_bn", vgg16_bn),
                   ("vgg19_bn", vgg19_bn)):
    _register(ModelSpec(_name, _fn, (3, 224, 224), _variant_small, _CNN_DEFAULTS))
_register(ModelSpec("resnet18", resnet18, (3, 224, 224), _stem_small, _RESNET_DEFAULTS))

_ALIASES = {alias: spec.name for spec in _SPECS.values() for alias in spec.aliases}


def list_models():
    """Names accepted by :func:`get_model` (canonical names, registry order)."""
    return list(_SPECS)


def _canonical(name):
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _SPECS:
        known = ", ".join(list_models() + sorted(_ALIASES))
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return key


def get_spec(name):
    """The :class:`ModelSpec` of ``name`` (aliases such as ``lenet`` accepted)."""
    return _SPECS[_canonical(name)]


def get_model(name, **kwargs):
    """Build a model by name, e.g. ``get_model("resnet18", num_classes=10, stem="cifar")``.

    Names: see :func:`list_models` (``lenet`` is an alias of ``lenet5``). Every model takes
    ``num_classes`` and ``in_channels``; other keyword arguments go to the constructor.
    Raises ValueError naming the known models for an unknown name.
    """
    return get_spec(name).builder(**kwargs)
