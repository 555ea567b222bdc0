"""``Optimizer``: parameter groups, per-parameter state, ``zero_grad`` and state dicts (PyTorch layout)."""

import copy

import numpy as np

from ..tensor import Tensor


class Optimizer:
    """Base class: holds ``param_groups`` (a list of dicts with a ``"params"`` list) and ``state``.

    ``params`` is an iterable of Parameters or of dicts (each a group whose missing
    hyper-parameters come from ``defaults``).  Subclasses implement ``step()``.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}  # id(param) -> dict
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or dicts, not a single Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        """Add a group (a dict with ``"params"`` and optional hyper-parameters)."""
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._validate_group(group)
        self.param_groups.append(group)

    def _validate_group(self, group):
        """Check hyper-parameters (subclasses extend)."""
        if group.get("lr", 0.0) < 0.0:
            raise ValueError(f"invalid learning rate: {group['lr']}")

    def zero_grad(self, set_to_none=True):
        """Clear the gradients of all optimized parameters (to None, or to zeros)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        raise NotImplementedError

    # --- state dicts ----------------------------------------------------------
    def state_dict(self):
        """``{"state": {index: {name: NumPy array or number}}, "param_groups": [...]}`` (PyTorch layout).

        Parameters are referred to by their index in the order of ``param_groups``.
        """
        index, groups = {}, []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(id(p))
                if not st:
                    continue
                state[index[id(p)]] = {
                    k: (np.array(v.numpy(), copy=True) if isinstance(v, Tensor) else copy.deepcopy(v))
                    for k, v in st.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and per-parameter state saved by ``state_dict``.

        Group count and sizes must match; arrays are copied to each parameter's device and dtype.
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups, "
                             f"optimizer has {len(self.param_groups)}")
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"parameter group {i}: loaded state dict has {len(saved['params'])} "
                                 f"parameters, optimizer has {len(own['params'])}")
        saved_state = state_dict.get("state", {})
        new_state = {}
        for saved, own in zip(groups, self.param_groups):
            for key, p in zip(saved["params"], own["params"]):
                st = saved_state.get(key, saved_state.get(str(key)))
                if st is None:
                    continue
                restored = {}
                for k, v in st.items():
                    if isinstance(v, (np.ndarray, Tensor)):
                        arr = v.numpy() if isinstance(v, Tensor) else v
                        if tuple(arr.shape) != tuple(p.shape):
                            raise ValueError(f"optimizer state {k!r} of shape {tuple(arr.shape)} does not "
                                             f"match parameter of shape {tuple(p.shape)}")
                        be = p.be
                        restored[k] = Tensor._make(
                            be.from_numpy(np.array(arr, dtype=p.dtype, copy=True)), p.device)
                    elif isinstance(v, np.generic):
                        restored[k] = v.item()
                    else:
                        restored[k] = copy.deepcopy(v)
                new_state[id(p)] = restored
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = tuple(v) if isinstance(own.get(k), tuple) else copy.deepcopy(v)
        self.state = new_state

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        return "\n".join(lines) + "\n)"
