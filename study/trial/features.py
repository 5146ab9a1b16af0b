"""The frozen-prefix feature cache: compute the frozen start of a network once, train only the rest on it.

Most transfer-learning trials freeze most of the network. Where the frozen start of a
trial's network (its *prefix*) always sees the same input and never changes, its output
for each image is fixed: it is computed once, kept in the node's cache, and every epoch
trains only the *suffix* on it; evaluation reads it too. Results are those of the
uncached trial up to float rounding (same batches, same head, same steps).

When. The prefix must be deterministic while training: no random augmentation in front
of it (`augment: none`), and nothing in it trains or updates BatchNorm statistics
(`FreezePlan.fixed`: `frozen_bn: train` and `train_bn_affine: true` shrink it to what
comes before the first BatchNorm, usually nothing). `feature_cache: false` turns it off.
A trial that runs uncached says why in `cache_note`.

Where to cut. The backbone is traced with torch.fx (normalisation, conv, linear and
torch.nn modules kept whole, so their train/eval behaviour is decided when they run). A
node of the graph is a *cut point* when no value computed before it is used after it:
one tensor carries all the state there, e.g. between two residual blocks but never
inside one (a shortcut is still pending), between VGG's layers, after a ViT block. The
trial's cut is the last cut point before the first node that trains or updates
statistics: at depth 0 the input of the classifier, i.e. the pooled pre-logits features
(what timm's `forward_features` + `forward_head(pre_logits=True)` return); deeper, the
last block boundary before the first trained layer. The split is checked once per trial
against the untouched model (suffix(prefix(x)) == model(x) in eval mode). No cache, with
the reason recorded, when torch.fx cannot trace the model, no cut point lies after a
frozen weight layer, the prefix holds less than MIN_PREFIX_SHARE of the weight layers'
multiply-accumulates (caching it would save little and store much), or the features of
the trial's splits exceed the cache's size bound.

Shared per node. Features are files under DATA_ROOT/features-v1/, one per (backbone,
weights, head, input size and preprocessing, device type and precision, library
versions, cut point, split content): trials of any study on the node with the same
backbone, weights, data (split and train_fraction: the images' bytes are hashed) and cut
reuse them. Written atomically under a file lock (parallel trials wait for the one
building them, then read), memory-mapped when read (trials share one copy in the page
cache), on CUDA moved to the GPU where they fit. A split whose features at an earlier cut
point of the same network are cached is computed from those instead of from the images
(a grid over depths that runs deepest first computes each stretch of the network once).
The directory is bounded (MEMORY_SHARE of the node's memory): the least recently used
files go first.

Honest time. Building the training split's features is training time: it is part of the
first epoch of the trial that builds them and also recorded alone (`cache_build_s`). A
trial that reuses them spends no time on them: its `train_time_s` is what it spent, so
the study's total is the sum over its trials, and `standalone_train_time_s` adds the
cost of the features it reused (their `cost_s`, building from images included): what
the same trial would take alone on a fresh node. Validation and test features are built
during evaluation and count as evaluation time.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.fx
from torch import nn
from torch.utils.data import DataLoader, Dataset

from study.core.files import atomic_write, data_lock
from study.trial.data import ImageSet, Splits, batches, drops_last_batch, resolve_data_root
from study.trial.models import NORM_TYPES, WEIGHT_LAYER_TYPES, FreezePlan

CACHE_DIR = "features-v1"  # under the data root; bump the version when what a cache file holds changes
MEMORY_SHARE = 0.25  # of the node's memory that the cached features may take together
MIN_PREFIX_SHARE = 0.1  # of the weight layers' multiply-accumulates that a prefix must hold to be worth caching
GPU_SHARE = 0.25  # of the GPU's free memory that one split's features may take to be kept on the GPU
HASH_CHUNK = 1024  # images hashed at a time


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


@dataclass
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


def find_cut(
    backbone: nn.Module, plan: FreezePlan, example: torch.Tensor, autocast: Callable[[], AbstractContextManager]
) -> Cut | str:
    """The trial's cut (module docstring), or why there is none. `backbone` must be in eval mode; `example` is an
    input batch on its device (a few images: the split is checked on it)."""
    if plan.frozen_prefix_layers == 0:
        return f"the first layer trains or updates BatchNorm statistics: nothing frozen to cache ({plan.prefix_end()})"
    try:
        graph_module = trace(backbone)
    except (
        Exception
    ) as error:  # torch.fx raises many kinds (TraceError, TypeError, RuntimeError...) for untraceable code
        message = (str(error).strip().splitlines() or [""])[0][:120]
        return f"torch.fx cannot trace {type(backbone).__name__} ({type(error).__name__}: {message})"
    probe = _Probe(graph_module, {layer.name for layer in plan.layers})
    with torch.inference_mode(), autocast():
        probe.run(example)
        expected = backbone(example)
    nodes = list(graph_module.graph.nodes)
    moving = next((index for index, node in enumerate(nodes) if not _fixed(node, plan, graph_module)), len(nodes))
    points = [
        node for node in cut_points(graph_module.graph) if nodes.index(node) < moving and node.name in probe.tensors
    ]
    prefix = nodes[: nodes.index(points[-1]) + 1] if points else []
    prefix_layers = len({layer for node in prefix for layer in probe.layers.get(node.name, [])})
    if not prefix_layers:
        return (
            "no point after a frozen layer where one tensor carries all the state (e.g. a residual block's end) "
            "before the first trained layer"
        )
    node = points[-1]
    share = sum(probe.macs.get(n.name, 0) for n in prefix) / (sum(probe.macs.values()) or 1)
    if share < MIN_PREFIX_SHARE:
        return (
            f"the frozen prefix up to the last cut point ({node.name}, {prefix_layers} layers) holds {share:.1%} of "
            "the "
            f"forward multiply-accumulates, under {MIN_PREFIX_SHARE:.0%}: too little to be worth caching"
        )
    shape, dtype = probe.tensors[node.name]
    cut = Cut(
        graph_module,
        node,
        points[-2::-1],
        prefix_layers,
        len(plan.layers),
        share,
        shape,
        dtype,
        segment(graph_module, node, None),
        plan.prefix_end(),
    )
    with torch.inference_mode(), autocast():
        split = cut.suffix(cut.prefix_from(None)(example))
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    difference = (split.float() - expected.float()).abs().max().item()
    if not difference <= tolerance * max(expected.float().abs().max().item(), 1.0):
        return (
            f"the model cut after {node.name} does not compute what the model computes (max difference "
            f"{difference:.3g})"
        )
    return cut


def _fixed(node: torch.fx.Node, plan: FreezePlan, graph_module: torch.fx.GraphModule) -> bool:
    """Whether the node computes the same function all through training (FreezePlan decides for modules and
    parameters)."""
    if node.op == "call_module":
        return plan.fixed(node.target, graph_module.get_submodule(node.target))
    if node.op == "get_attr":
        return node.target not in plan.trainable
    return True


# --- the node's store ---------------------------------------------------------------------------


def node_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class FeatureStore:
    """Feature files in DATA_ROOT/features-v1/, at most `budget` bytes together; least recently used out."""

    def __init__(self, data_root: str | None, budget: int | None = None):
        self.directory = resolve_data_root(data_root) / CACHE_DIR
        self.budget = budget if budget is not None else int(MEMORY_SHARE * node_memory())

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict | None:
        """The record `key`, memory-mapped; None when absent (never built, evicted, or unreadable)."""
        path = self.path(key)
        try:
            record = torch.load(path, mmap=True, weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as error:  # a damaged file: torch raises RuntimeError, pickle and zip errors
            print(f"feature cache {path} is unreadable ({type(error).__name__}): computing it again", flush=True)
            return None
        with contextlib.suppress(OSError):  # a read-only data root still serves its features
            os.utime(path)  # recently used: evicted last
        return record

    def lock(self, key: str):
        return data_lock(self.directory, key)

    def save(self, key: str, record: dict) -> None:
        """Write atomically, first evicting least recently used files until the new one fits the budget."""
        atomic_write(
            self.path(key),
            lambda temporary: torch.save(record, temporary),
            before_publish=lambda temporary: self.evict(keep=os.path.getsize(temporary)),
        )

    def evict(self, keep: int) -> list[Path]:
        """Remove least recently used files until `keep` more bytes fit. A trial reading a removed file keeps its
        memory map (POSIX): eviction never breaks a running trial, a later one computes the features again."""
        files = []
        for path in self.directory.glob("*.pt"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        used, removed = sum(size for _, size, _ in files), []
        for _, size, path in sorted(files):
            if used + keep <= self.budget:
                break
            path.unlink(missing_ok=True)
            used -= size
            removed.append(path)
        return removed


# --- one trial's cached features --------------------------------------------------------------


@dataclass
class CachedSplit:
    features: torch.Tensor  # N x feature shape, on the trial's device where it fits, else in (mapped) host memory
    labels: torch.Tensor  # on the trial's device
    status: str  # "built" by this trial, or "reused"
    build_s: float  # seconds this trial spent computing them
    cost_s: float  # seconds they took from the images, earlier cut points' features included
    origin: str  # what they were computed from

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, positions: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of these rows on `device` (positions pinned on CUDA: no copy waits for the GPU)."""
        on_device = positions.to(device, non_blocking=True)
        if self.features.device.type == device.type:
            return self.features[on_device], self.labels[on_device]
        rows = self.features[positions]
        return (rows.pin_memory() if device.type == "cuda" else rows).to(device, non_blocking=True), self.labels[
            on_device
        ]


class _Rows(Dataset):
    """Batches of row positions (DataLoader's __getitems__), drawn by the same sampler as the image batches."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitems__(self, positions: list[int]) -> torch.Tensor:
        return torch.as_tensor(positions)


def _as_is(batch):
    return batch


def rows_loader(count: int, batch_size: int, generator: torch.Generator, pin_memory: bool) -> DataLoader:
    """Shuffled batches of positions in the same order as data.train_loader's image batches with an equally
    seeded generator (the same sampler draws them), so cached and uncached trials see the same batches."""
    return DataLoader(
        _Rows(count),
        batch_size=batch_size,
        shuffle=True,
        drop_last=drops_last_batch(count, batch_size),  # as data.train_loader: no training batch of one
        generator=generator,
        collate_fn=_as_is,
        pin_memory=pin_memory,
    )


def content_digest(images: ImageSet) -> str:
    """A digest of the split's images, in order: equal splits share features, a changed image never does."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(str((tuple(images.store.shape[1:]), len(images))).encode())
    for start in range(0, len(images), HASH_CHUNK):
        digest.update(images.batch(torch.arange(start, min(start + HASH_CHUNK, len(images))))[0].numpy().tobytes())
    return digest.hexdigest()


@dataclass
class FeatureCache:
    """The features of one trial's splits at its cut: computed or read on first use, then kept."""

    cut: Cut
    store: FeatureStore
    family: str  # everything the prefix depends on but the cut point and the images
    data: Splits
    prepare: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> the model's input on the device
    memory_format: Callable[[torch.Tensor], torch.Tensor]  # the model's memory format for a batch on the device
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    batch_size: int  # of the forward passes that compute features (evaluation's: the same batches, the same numbers)
    splits: dict[str, CachedSplit] = field(default_factory=dict)

    @property
    def suffix(self) -> torch.fx.GraphModule:
        return self.cut.suffix

    def split(self, name: str) -> CachedSplit:
        if name not in self.splits:
            self.splits[name] = self._obtain(name)
        return self.splits[name]

    def key(self, node: torch.fx.Node, digest: str) -> str:
        return f"{self.family}-{node.name}-{digest}"

    def _obtain(self, name: str) -> CachedSplit:
        images: ImageSet = getattr(self.data, name)
        digest = content_digest(images)
        key = self.key(self.cut.node, digest)
        record, status = self.store.load(key), "reused"
        if record is None:
            with self.store.lock(key):
                record = self.store.load(key)
                if record is None:
                    record, status = self._build(images, digest), "built"
                    self.store.save(key, record)
                    record = self.store.load(key) or record  # read back mapped: one copy in the page cache
        features = self._placed(record["features"])
        build_s = record["build_s"] if status == "built" else 0.0
        return CachedSplit(features, images.labels.to(self.device), status, build_s, record["cost_s"], record["origin"])

    def _build(self, images: ImageSet, digest: str) -> dict:
        """Compute the features, from an earlier cut point's cached features where there are some."""
        start = _clock(self.device)
        source, source_record = None, None
        for node in self.cut.earlier:
            source_record = self.store.load(self.key(node, digest))
            if source_record is not None:
                source = node
                break
        segment_module = self.cut.prefix_from(source)
        if source is None:
            inputs = (self.prepare(batch) for batch, _ in batches(images, self.batch_size))
        else:
            stored = source_record["features"]
            step = self.batch_size
            inputs = (self.memory_format(stored[i : i + step].to(self.device)) for i in range(0, len(stored), step))
        features = torch.empty((len(images), *self.cut.feature_shape), dtype=self.cut.dtype)
        position = 0
        with torch.inference_mode(), self.autocast():
            for batch in inputs:
                output = segment_module(batch)
                features[position : position + len(output)] = output.to("cpu")
                position += len(output)
        build_s = _clock(self.device) - start
        earlier_cost = source_record["cost_s"] if source_record is not None else 0.0
        origin = (
            f"images through {self.cut.name}" if source is None else f"{source.name} features through {self.cut.name}"
        )
        return {"features": features, "build_s": build_s, "cost_s": build_s + earlier_cost, "origin": origin}

    def _placed(self, features: torch.Tensor) -> torch.Tensor:
        if (
            self.device.type == "cuda"
            and features.numel() * features.element_size() <= GPU_SHARE * torch.cuda.mem_get_info(self.device)[0]
        ):
            return features.to(self.device)
        return features

    def batches(self, name: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) of split `name` in order, on the device: evaluation."""
        cached = self.split(name)
        for start in range(0, len(cached), batch_size):
            end = min(start + batch_size, len(cached))
            yield cached.features[start:end].to(self.device, non_blocking=True), cached.labels[start:end]

    def report(self) -> dict:
        """What the cache did for this trial so far: the training split's status, and every split's origin."""
        train = self.splits.get("train")
        origins = "; ".join(
            f"{name}: {'built' if s.status == 'built' else 'reused'} from {s.origin}" for name, s in self.splits.items()
        )
        return {
            "cache": train.status if train else "pending",
            "cache_cut": self.cut.name,
            "cache_note": f"{self.cut.describe()}; {origins}" if origins else self.cut.describe(),
            "cache_build_s": train.build_s if train else 0.0,
            "cache_cost_s": train.cost_s if train else 0.0,
            "cache_device": train.features.device.type if train else "",  # where the training features are kept
        }


def family_key(**identity) -> str:
    """A short digest of everything the prefix's output depends on besides the cut and the images."""
    identity.update(torch=torch.__version__, timm=timm.__version__)
    return hashlib.blake2b(json.dumps(identity, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def off_report(reason: str) -> dict:
    return {
        "cache": "off",
        "cache_cut": "",
        "cache_note": reason,
        "cache_build_s": 0.0,
        "cache_cost_s": 0.0,
        "cache_device": "",
    }


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
