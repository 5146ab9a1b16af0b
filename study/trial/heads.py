"""The new classifier a trial trains, and where the old one sits in the model.

A new head always trains, and it is never counted among the backbone's layers
(study/trial/layers.py leaves out the modules `head_modules` names).

Heads (study/core/registry.py HEADS names them). `linear`: timm's `reset_classifier`,
a new Linear layer for the dataset's classes in place of the old classifier.
`single_linear` (document 000, VGG only): timm's VGG keeps the first two of VGG's
three fully connected layers in `pre_logits` (as 7x7 and 1x1 convs); they are
removed (timm's `prune_intermediate_layers`) and ONE linear layer classifies the
globally average-pooled 512 features. At CIFAR's 32 px the last feature map is
1x1, so this is exactly the document's Flatten + Dense(10); at any size the head
is 512 x classes + classes parameters.
"""

from __future__ import annotations

from timm.models.vgg import VGG
from torch import nn

from study.core.config import StudyError
from study.core.registry import HEADS

__all__ = ["attach_head", "head_modules", "in_head", "linear_head", "single_linear_head"]


def attach_head(model: nn.Module, head: str, num_classes: int, backbone: str) -> None:
    """Replace the classifier by a new one for `num_classes` (module docstring; study/core/registry.py HEADS)."""
    HEADS.get(head)(model, num_classes, backbone)


def linear_head(model: nn.Module, num_classes: int, backbone: str) -> None:
    model.reset_classifier(num_classes)


def single_linear_head(model: nn.Module, num_classes: int, backbone: str) -> None:
    if not isinstance(model, VGG):
        raise StudyError(
            f"head=single_linear replaces VGG's three fully connected layers by one linear layer (document 000), "
            f"but {backbone} is not a timm VGG model and its classifier ({', '.join(head_modules(model))}) is one "
            "layer already: use head=linear"
        )
    model.prune_intermediate_layers(prune_head=True)  # timm: drops the pre-logits ConvMlp (VGG's fc6, fc7)
    model.reset_classifier(num_classes, global_pool="avg")


def head_modules(model: nn.Module) -> list[str]:
    """The classifier's module names: one, or two for distilled models (DeiT, LeViT: head and head_dist)."""
    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, tuple) else (classifier,)
    return [name for name, module in model.named_modules() if any(module is head for head in heads)]


def in_head(name: str, heads: list[str]) -> bool:
    return any(name == head or name.startswith(head + ".") for head in heads)
