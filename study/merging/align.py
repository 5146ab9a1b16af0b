"""Permutation alignment of two networks of one architecture (Git Re-Basin weight matching).

Hidden channels of a network can be permuted without changing its function, as
long as every tensor that reads or writes those channels is permuted the same
way. Two independently trained networks therefore may hold the same features in
different channel orders, and averaging them channel by channel mixes unrelated
features. Weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR
2023) permutes B's channels to best match A's before merging.

Which channels must share one permutation is read from the model's graph
(torch.fx) rather than assumed from a chain of layers:

- a conv's output channels form a new channel space (its weight dim 0, bias);
  its weight dim 1 reads the input's space; a depthwise conv passes its input's
  space through (weight dim 0 and bias follow it); a linear layer on (N, C)
  features works like a 1x1 conv;
- BatchNorm, activations, dropout, pooling, flatten and reshapes that keep the
  (N, C) leading dims pass a space through (BN's weight, bias and running
  statistics follow it);
- elementwise add/mul/sub/div of two tensors ties their spaces: a residual
  connection forces the block's input and output to share one permutation.

Everything else (grouped convs other than depthwise, concatenation, slicing,
attention, LayerNorm, transposed convs, parameters used directly, the input and
the logits) fixes the channel spaces it touches: they keep the identity
permutation, which is always correct, only less complete. `PermutationSpec.fixed`
says which operations fixed how many spaces, so a partial alignment is visible.
A model torch.fx cannot trace is a one-line StudyError.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import timm.layers
import torch
import torch.fx
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn import functional as F

from study.core.config import StudyError

# Modules and functions that act on every channel alike: their output has the input's channel space
# (checked by shape: the leading (N, C) dims must be kept).
CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Upsample,
    timm.layers.DropPath,
    timm.layers.activations.Swish,
    timm.layers.activations.Mish,
    timm.layers.activations.Sigmoid,
    timm.layers.activations.Tanh,
    timm.layers.activations.HardSwish,
    timm.layers.activations.HardSigmoid,
    timm.layers.activations.HardMish,
    timm.layers.activations.GELU,
    timm.layers.activations.GELUTanh,
    timm.layers.activations.QuickGELU,
)
CHANNELWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.sigmoid,
    F.tanh,
    F.softplus,
    F.dropout,
    F.dropout2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    F.interpolate,
    F.pad,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.flatten,
    operator.neg,
    operator.pos,
}
CHANNELWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "squeeze",
    "float",
    "neg",
}
REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
ELEMENTWISE_BINARY = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
}
HARMLESS = {getattr, "size", "dim"}  # read a tensor's shape, never its values


@dataclass(kw_only=True)
class PermutationGroup:
    size: int
    axes: list[tuple[str, int]]  # (state-dict key, dimension) pairs that carry these channels


@dataclass(kw_only=True)
class PermutationSpec:
    groups: list[PermutationGroup]
    fixed: Counter = field(default_factory=Counter)  # operation -> how many of its calls kept channels in place

    def axes_by_key(self) -> dict[str, dict[int, int]]:
        """key -> {dimension: group index}."""
        table: dict[str, dict[int, int]] = {}
        for index, group in enumerate(self.groups):
            for key, dim in group.axes:
                table.setdefault(key, {})[dim] = index
        return table

    def permuted_share(self, state: dict[str, torch.Tensor], keys) -> float:
        """Share of the elements of `keys` in tensors with at least one permuted dimension."""
        permuted = self.axes_by_key()
        total = sum(state[k].numel() for k in keys)
        return sum(state[k].numel() for k in keys if k in permuted) / total if total else 0.0

    def describe(self) -> str:
        sizes = sorted((g.size for g in self.groups), reverse=True)
        kept = ", ".join(f"{name} x{count}" for name, count in self.fixed.most_common())
        return f"{len(self.groups)} permutation groups (largest {sizes[:3]}); kept in place by: {kept or 'nothing'}"


class _Tracer(torch.fx.Tracer):
    """Stops at the modules whose channel behaviour is known; timm's own
    no-trace modules and functions are kept whole."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(timm.layers.get_notrace_functions()))

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        known = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, *CHANNELWISE_MODULES)
        return (
            isinstance(module, known)
            or timm.layers.is_notrace_module(type(module))
            or super().is_leaf_module(module, qualified_name)
        )


class _Spaces:
    """Union-find over channel spaces; space 0 is the fixed one (identity permutation)."""

    def __init__(self):
        self.parent = [0]
        self.size = [0]

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] != self.size[b] and 0 not in (a, b):  # cannot happen for a sound rule; stay correct anyway
            self.parent[a] = self.parent[b] = 0
            return
        low, high = sorted((a, b))  # the fixed space 0 always stays the root
        self.parent[high] = low

    def fix(self, space: int) -> bool:
        """Fix `space`; True if it was not fixed before."""
        root = self.find(space)
        if root == 0:
            return False
        self.parent[root] = 0
        return True


def permutation_spec(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    """The groups of tensor dimensions that must share one permutation, read from `model`'s traced graph."""
    try:
        graph = _Tracer().trace(model)
        module = torch.fx.GraphModule(model, graph)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            ShapeProp(module).propagate(example)
        model.train(was_training)
    except (
        Exception
    ) as error:  # torch.fx raises many kinds (TraceError, TypeError, RuntimeError...) for untraceable code
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise StudyError(
            f"cannot align {type(model).__name__}: torch.fx cannot trace it ({type(error).__name__}: {message}): "
            "merge without --align"
        ) from None
    return _SpecBuilder(module).build()


class _SpecBuilder:
    def __init__(self, module: torch.fx.GraphModule):
        self.module = module
        self.spaces = _Spaces()
        self.space_of: dict[torch.fx.Node, int] = {}
        self.refs: dict[tuple[str, int], int] = {}
        self.fixed: Counter = Counter()

    def build(self) -> PermutationSpec:
        for node in self.module.graph.nodes:
            self.visit(node)
        groups: dict[int, list[tuple[str, int]]] = {}
        for (key, dim), space in self.refs.items():
            root = self.spaces.find(space)
            if root != 0 and self.spaces.size[root] > 1:
                groups.setdefault(root, []).append((key, dim))
        return PermutationSpec(
            groups=[PermutationGroup(size=self.spaces.size[root], axes=axes) for root, axes in groups.items()],
            fixed=self.fixed,
        )

    # --- helpers

    @staticmethod
    def shape(node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
        return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None

    def channels_space(self, node: torch.fx.Node, fixed: bool = False) -> int | None:
        """A new space for `node`'s output if it is a tensor with a channel dimension (dim 1)."""
        shape = self.shape(node)
        if shape is None or len(shape) < 2:
            return None
        space = self.spaces.new(shape[1])
        if fixed:
            self.spaces.fix(space)
        self.space_of[node] = space
        return space

    def ref(self, key: str, dim: int, space: int) -> None:
        if (key, dim) in self.refs:  # a module called twice: both calls share its weights, so one permutation
            self.spaces.union(self.refs[(key, dim)], space)
        else:
            self.refs[(key, dim)] = space

    def keep_in_place(self, node: torch.fx.Node, reason: str) -> None:
        """An operation whose channel behaviour is unknown: every space it touches keeps the identity permutation."""
        touched = [self.space_of[n] for n in node.all_input_nodes if n in self.space_of]
        out = self.channels_space(node)
        if out is not None:
            touched.append(out)
        if sum(self.spaces.fix(space) for space in touched):
            self.fixed[reason] += 1

    def pass_through(self, node: torch.fx.Node, source: torch.fx.Node, reason: str) -> None:
        shape, source_shape = self.shape(node), self.shape(source)
        if source not in self.space_of:
            self.keep_in_place(node, reason)
        elif shape is not None and len(shape) >= 2 and shape[:2] == source_shape[:2]:
            self.space_of[node] = self.space_of[source]
        else:
            self.keep_in_place(node, reason)

    # --- the rules

    def visit(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            self.channels_space(node, fixed=True)  # the image's channels
        elif node.op == "output":
            for source in node.all_input_nodes:  # the logits
                if source in self.space_of:
                    self.spaces.fix(self.space_of[source])
        elif node.op == "get_attr":
            self.channels_space(node, fixed=True)  # a parameter used directly: its layout is unknown
        elif node.op == "call_module":
            self.visit_module(node, self.module.get_submodule(node.target))
        else:
            target = node.target if node.op == "call_function" else str(node.target)
            name = getattr(target, "__name__", str(target))
            if target in HARMLESS:
                return
            if target in ELEMENTWISE_BINARY:
                self.visit_elementwise(node, name)
            elif target in REDUCTIONS:
                self.visit_reduction(node, name)
            elif target in CHANNELWISE_FUNCTIONS or target in CHANNELWISE_METHODS:
                self.pass_through(node, node.all_input_nodes[0], name)
            else:
                self.keep_in_place(node, name if node.op == "call_function" else f".{name}()")

    def visit_module(self, node: torch.fx.Node, module: nn.Module) -> None:
        source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        in_space = self.space_of.get(source)
        name = type(module).__name__
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and in_space is not None:
            if module.groups == 1:
                self.weight_layer(node, module, in_space)
            elif module.groups == module.in_channels == module.out_channels:  # depthwise: channel i stays channel i
                self.space_of[node] = in_space
                self.ref(f"{node.target}.weight", 0, in_space)
                if module.bias is not None:
                    self.ref(f"{node.target}.bias", 0, in_space)
            else:
                self.keep_in_place(node, f"{name}(groups={module.groups})")
        elif isinstance(module, nn.Linear) and in_space is not None and len(self.shape(source)) == 2:
            self.weight_layer(node, module, in_space)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and in_space is not None:
            self.space_of[node] = in_space
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, key, None) is not None:
                    self.ref(f"{node.target}.{key}", 0, in_space)
        elif isinstance(module, CHANNELWISE_MODULES) and source is not None:
            self.pass_through(node, source, name)
        else:
            self.keep_in_place(node, name)

    def weight_layer(self, node: torch.fx.Node, module: nn.Module, in_space: int) -> None:
        out_space = self.channels_space(node)
        self.ref(f"{node.target}.weight", 0, out_space)
        self.ref(f"{node.target}.weight", 1, in_space)
        if module.bias is not None:
            self.ref(f"{node.target}.bias", 0, out_space)

    def visit_elementwise(self, node: torch.fx.Node, name: str) -> None:
        out_shape = self.shape(node)
        tied = []
        for operand in node.args:
            shape = self.shape(operand)
            if shape is None or len(shape) == 0:
                continue  # a number or a scalar tensor scales every channel alike
            if out_shape is None or len(out_shape) < 2 or len(shape) != len(out_shape):
                self.keep_in_place(node, name)
                return
            if shape[1] == out_shape[1] and operand in self.space_of:
                tied.append(self.space_of[operand])
            elif shape[1] != 1:  # (N, 1, H, W) broadcasts over the channels: fine; anything else is unknown
                self.keep_in_place(node, name)
                return
        out = self.channels_space(node)
        for space in tied:
            self.spaces.union(space, out)

    def visit_reduction(self, node: torch.fx.Node, name: str) -> None:
        source = node.args[0]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        ndim = len(self.shape(source) or ())
        dims = (dims,) if isinstance(dims, int) else dims
        if isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims) and ndim >= 2:
            if all(d % ndim >= 2 for d in dims):  # spatial dimensions only
                self.pass_through(node, source, name)
                return
        self.keep_in_place(node, name)


def permute(
    state: dict[str, torch.Tensor], spec: PermutationSpec, perms: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`state` with every group's dimensions reordered: channel i of the result is channel perms[g][i] of `state`."""
    result = dict(state)
    for group, perm in zip(spec.groups, perms):
        for key, dim in group.axes:
            result[key] = result[key].index_select(dim, perm)
    return result


def weight_matching(
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    spec: PermutationSpec,
    keys,
    seed: int = 0,
    max_rounds: int = 100,
) -> list[torch.Tensor]:
    """Permutations of B's channel groups that maximise sum <W_a, P W_b> over the tensors named in `keys`.

    Coordinate descent as in Git Re-Basin (Algorithm 2): solve each group's linear
    assignment with the other groups' current permutations applied, in a random
    order, until a round improves nothing.
    """
    keys = set(keys)
    axes = spec.axes_by_key()
    perms = [torch.arange(group.size) for group in spec.groups]
    order = np.random.default_rng(seed)
    for _ in range(max_rounds):
        improved = False
        for index in order.permutation(len(spec.groups)):
            group = spec.groups[index]
            cost = torch.zeros(group.size, group.size, dtype=torch.float64)
            for key, dim in group.axes:
                if key not in keys:
                    continue
                weight_b = state_b[key]
                for other_dim, other in axes[key].items():
                    if other_dim != dim:
                        weight_b = weight_b.index_select(other_dim, perms[other])
                flat_a = state_a[key].movedim(dim, 0).reshape(group.size, -1).float()
                flat_b = weight_b.movedim(dim, 0).reshape(group.size, -1).float()
                cost += (flat_a @ flat_b.T).double()
            _, columns = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.from_numpy(columns).long()
            rows = torch.arange(group.size)
            gain = cost[rows, new].sum() - cost[rows, perms[index]].sum()
            improved |= bool(gain > 1e-9 * cost.abs().max().clamp(min=1e-30))
            perms[index] = new
        if not improved:
            break
    return perms
