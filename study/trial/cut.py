"""Where a trial's network can be cut in two: a frozen prefix whose output the feature cache keeps, and the rest.

The backbone is traced with torch.fx (normalisation, conv, linear and torch.nn
modules kept whole, so their train/eval behaviour is decided when they run). A
node of the graph is a *cut point* when no value computed before it is used after
it: one tensor carries all the state there, e.g. between two residual blocks but
never inside one (a shortcut is still pending), between VGG's layers, after a ViT
block. The trial's cut is the last cut point before the first node that trains or
updates statistics (`FreezePlan.fixed`): at depth 0 the input of the classifier,
i.e. the pooled pre-logits features (what timm's `forward_features` +
`forward_head(pre_logits=True)` return); deeper, the last block boundary before the
first trained layer. The split is checked once per trial against the untouched
model (suffix(prefix(x)) == model(x) in eval mode).

`find_cut` answers with a `CutSearch`: the cut, or none and the reason, which the
trial records (`cache_note`): torch.fx cannot trace the model, no cut point lies
after a frozen weight layer, the prefix holds less than MIN_PREFIX_SHARE of the
weight layers' multiply-accumulates (caching it would save little and store much),
or the cut model does not compute what the model computes. What is cached at the
cut, and for how long, is study/trial/feature_cache.py's.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import timm
import torch
import torch.fx
from torch import nn

from study.trial.freeze import FreezePlan
from study.trial.layers import NORM_TYPES, WEIGHT_LAYER_TYPES

__all__ = ["MIN_PREFIX_SHARE", "Cut", "CutSearch", "cut_points", "find_cut", "segment", "trace"]

MIN_PREFIX_SHARE = 0.1  # of the weight layers' multiply-accumulates that a prefix must hold to be worth caching


class _Tracer(torch.fx.Tracer):
    """Keeps weight layers, normalisation layers, timm's no-trace modules and torch.nn modules whole: their
    train/eval behaviour is decided when they run, not fixed when traced."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(timm.layers.get_notrace_functions()))

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            isinstance(module, (*WEIGHT_LAYER_TYPES, *NORM_TYPES))
            or timm.layers.is_notrace_module(type(module))
            or super().is_leaf_module(module, qualified_name)
        )


def trace(backbone: nn.Module) -> torch.fx.GraphModule:
    """The backbone as a torch.fx graph; extra forward arguments (a ViT's attn_mask) keep their defaults."""
    extra = list(inspect.signature(backbone.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in extra if p.default is not inspect.Parameter.empty}
    return torch.fx.GraphModule(backbone, _Tracer().trace(backbone, concrete_args=concrete))


class _Probe(torch.fx.Interpreter):
    """Runs the graph once, noting each node's tensor shape and dtype, the weight layers it calls (also inside
    modules kept whole) and their multiply-accumulates."""

    def __init__(self, module: torch.fx.GraphModule, layer_names: set[str]):
        super().__init__(module)
        self.tensors: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.macs: dict[str, int] = {}
        self.layers: dict[str, list[str]] = {}
        self.layer_names = layer_names
        self.node: torch.fx.Node | None = None

    def count(self, name: str):
        def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
            if isinstance(module, nn.modules.conv._ConvNd):
                macs = output[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
            else:
                macs = output[0].numel() * module.in_features
            self.macs[self.node.name] = self.macs.get(self.node.name, 0) + macs
            if name in self.layer_names:
                self.layers.setdefault(self.node.name, []).append(name)

        return hook

    def run(self, *args):
        modules = [(name, m) for name, m in self.module.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]
        handles = [module.register_forward_hook(self.count(name)) for name, module in modules]
        try:
            return super().run(*args)
        finally:
            for handle in handles:
                handle.remove()

    def run_node(self, node: torch.fx.Node):
        self.node = node
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            self.tensors[node.name] = (tuple(result.shape[1:]), result.dtype)
        return result


def cut_points(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """Nodes after which no earlier value is needed: the node's tensor carries all the state (module docstring)."""
    nodes = list(graph.nodes)
    position = {node: index for index, node in enumerate(nodes)}
    points, live_until = [], -1  # the last position that needs a value computed so far
    for index, node in enumerate(nodes):
        if node.op in ("get_attr", "output"):  # parameters and buffers can be read anywhere
            continue
        if node.op != "placeholder" and live_until <= index and node.users:
            points.append(node)
        live_until = max(live_until, *(position[user] for user in node.users), index)
    return points


def segment(
    graph_module: torch.fx.GraphModule, start: torch.fx.Node | None, end: torch.fx.Node | None
) -> torch.fx.GraphModule:
    """The part of the graph after `start` up to `end` as a module: it takes start's tensor (None: the model's
    input) and returns end's (None: the model's output). It shares every module and parameter with the model."""
    graph, env = torch.fx.Graph(), {}
    if start is not None:
        env[start] = graph.placeholder("features")
    copy = lambda node: env[node] if node in env else env.setdefault(node, graph.node_copy(node, copy))
    begun = start is None
    for node in graph_module.graph.nodes:
        if not begun:
            begun = node is start
            continue
        if node.op == "output":
            graph.output(copy(node.args[0]))
            break
        if node.op != "get_attr" and node not in env:  # get_attr nodes are copied where they are used
            copy(node)
        if node is end:
            graph.output(env[node])
            break
    return torch.fx.GraphModule(graph_module, graph)


@dataclass(kw_only=True)
class Cut:
    """Where a trial's network is cut: `prefix` (input -> features, frozen) and `suffix` (features -> logits)."""

    graph: torch.fx.GraphModule
    node: torch.fx.Node
    earlier: list[torch.fx.Node]  # cut points inside the prefix, latest first: cached features to start from
    prefix_layers: int  # weight layers in the prefix
    num_layers: int
    prefix_share: float  # of the weight layers' multiply-accumulates
    feature_shape: tuple[int, ...]  # per image
    dtype: torch.dtype
    suffix: torch.fx.GraphModule
    limit: str = ""  # what ends the frozen prefix (FreezePlan.prefix_end): the first thing that trains or moves

    @property
    def name(self) -> str:
        return self.node.name

    def prefix_from(self, start: torch.fx.Node | None) -> torch.fx.GraphModule:
        return segment(self.graph, start, self.node)

    def bytes_per_image(self) -> int:
        return math.prod(self.feature_shape) * torch.empty((), dtype=self.dtype).element_size()

    def describe(self) -> str:
        return (
            f"cut after {self.name}: {self.prefix_layers}/{self.num_layers} layers frozen before it, "
            f"{self.prefix_share:.0%} of the forward multiply-accumulates; features {list(self.feature_shape)} "
            f"{str(self.dtype).removeprefix('torch.')}"
            + (f" (the frozen prefix ends at {self.limit})" if self.limit else "")
        )


@dataclass(frozen=True, kw_only=True)
class CutSearch:
    """What find_cut found: the trial's cut, or None and the reason there is none (the trial's `cache_note`)."""

    cut: Cut | None
    reason: str  # "" when there is a cut

    @classmethod
    def none(cls, reason: str) -> CutSearch:
        return cls(cut=None, reason=reason)


def find_cut(
    backbone: nn.Module, plan: FreezePlan, example: torch.Tensor, autocast: Callable[[], AbstractContextManager]
) -> CutSearch:
    """The trial's cut (module docstring), or why there is none. `backbone` must be in eval mode; `example` is an
    input batch on its device (a few images: the split is checked on it)."""
    if plan.frozen_prefix_layers == 0:
        return CutSearch.none(
            f"the first layer trains or updates BatchNorm statistics: nothing frozen to cache ({plan.prefix_end()})"
        )
    try:
        graph_module = trace(backbone)
    except Exception as error:
        # torch.fx raises many kinds (TraceError, TypeError, RuntimeError...) for untraceable code
        message = (str(error).strip().splitlines() or [""])[0][:120]
        return CutSearch.none(f"torch.fx cannot trace {type(backbone).__name__} ({type(error).__name__}: {message})")
    probe = _Probe(graph_module, {layer.name for layer in plan.layers})
    with torch.inference_mode(), autocast():
        probe.run(example)
        expected = backbone(example)
    points = _fixed_cut_points(graph_module, plan, probe)
    nodes = list(graph_module.graph.nodes)
    prefix = nodes[: nodes.index(points[-1]) + 1] if points else []
    prefix_layers = len({layer for node in prefix for layer in probe.layers.get(node.name, [])})
    if not prefix_layers:
        return CutSearch.none(
            "no point after a frozen layer where one tensor carries all the state (e.g. a residual block's end) "
            "before the first trained layer"
        )
    node = points[-1]
    share = sum(probe.macs.get(n.name, 0) for n in prefix) / (sum(probe.macs.values()) or 1)
    if share < MIN_PREFIX_SHARE:
        return CutSearch.none(
            f"the frozen prefix up to the last cut point ({node.name}, {prefix_layers} layers) holds {share:.1%} of "
            f"the forward multiply-accumulates, under {MIN_PREFIX_SHARE:.0%}: too little to be worth caching"
        )
    shape, dtype = probe.tensors[node.name]
    cut = Cut(
        graph=graph_module,
        node=node,
        earlier=points[-2::-1],
        prefix_layers=prefix_layers,
        num_layers=len(plan.layers),
        prefix_share=share,
        feature_shape=shape,
        dtype=dtype,
        suffix=segment(graph_module, node, None),
        limit=plan.prefix_end(),
    )
    unfaithful = _split_differs(cut, example, expected, autocast)
    return CutSearch.none(unfaithful) if unfaithful else CutSearch(cut=cut, reason="")


def _fixed_cut_points(graph_module: torch.fx.GraphModule, plan: FreezePlan, probe: _Probe) -> list[torch.fx.Node]:
    """The cut points before the first node that trains or updates statistics, where the probe saw a tensor."""
    nodes = list(graph_module.graph.nodes)
    moving = next((index for index, node in enumerate(nodes) if not _fixed(node, plan, graph_module)), len(nodes))
    return [
        node for node in cut_points(graph_module.graph) if nodes.index(node) < moving and node.name in probe.tensors
    ]


def _split_differs(
    cut: Cut, example: torch.Tensor, expected: torch.Tensor, autocast: Callable[[], AbstractContextManager]
) -> str:
    """Why the model cut in two does not compute what the model computes on `example`, or "" when it does."""
    with torch.inference_mode(), autocast():
        split = cut.suffix(cut.prefix_from(None)(example))
    tolerance = 1e-4 if cut.dtype == torch.float32 else 3e-2
    difference = (split.float() - expected.float()).abs().max().item()
    if not difference <= tolerance * max(expected.float().abs().max().item(), 1.0):
        return (
            f"the model cut after {cut.name} does not compute what the model computes (max difference {difference:.3g})"
        )
    return ""


def _fixed(node: torch.fx.Node, plan: FreezePlan, graph_module: torch.fx.GraphModule) -> bool:
    """Whether the node computes the same function all through training (FreezePlan decides for modules and
    parameters)."""
    if node.op == "call_module":
        return plan.fixed(node.target, graph_module.get_submodule(node.target))
    if node.op == "get_attr":
        return node.target not in plan.trainable
    return True


# --- the node's store ---------------------------------------------------------------------------
