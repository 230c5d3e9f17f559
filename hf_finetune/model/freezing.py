"""Which parameters sit how deep in a timm model, and freezing the bottom of it.

Depth comes from the model's own `group_matcher` (as timm's layer-decay optimizer uses it), so
"the bottom half" or "decay per layer" mean the same blocks for a ResNet, an EfficientNet or a ViT.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from torch import nn

from hf_finetune.errors import UserError
from hf_finetune.model.create import head_parameter_names

logger = logging.getLogger(__name__)


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Parameter name -> depth from the top (0 = the group holding the classifier), via timm's group_matcher."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise UserError(f"{type(model).__name__} has no timm group_matcher: layer groups are unknown for it")
    layer_ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(layer_ids.values())
    return {name: top - layer_id for name, layer_id in layer_ids.items()}


def _matches_group(name: str, spec) -> bool:
    # timm matcher specs are a regex, or a list of (regex, ordinal suffix) pairs.
    patterns = [spec] if isinstance(spec, str) else [pattern for pattern, _ in spec]
    return any(re.match(pattern, name) for pattern in patterns)


def parameters_in_groups(model: nn.Module, groups: str) -> set[str]:
    """Parameters of comma-separated timm group names ('stem', 'blocks') or module prefixes ('stages.0')."""
    matcher = model.group_matcher(coarse=True) if hasattr(model, "group_matcher") else {}
    names = [name for name, _ in model.named_parameters()]
    selected: set[str] = set()
    for group in filter(None, (item.strip() for item in groups.split(","))):
        if group in matcher and matcher[group] is not None:
            found = {name for name in names if _matches_group(name, matcher[group])}
        else:
            found = {name for name in names if name == group or name.startswith(group + ".")}
        if not found:
            modules = sorted({name.split(".")[0] for name in names})
            raise UserError(f"--freeze {group}: matches no parameter of {type(model).__name__}; use a timm group "
                            f"({', '.join(matcher)}) or a module prefix (e.g. {', '.join(modules[:6])})")
        selected |= found
    return selected


def bottom_parameters(model: nn.Module, fraction: float) -> set[str]:
    """The parameters of the lowest `fraction` of the backbone's layer groups (the most general features)."""
    depths = layer_depths(model)
    head = head_parameter_names(model)
    head_depths = {depths[name] for name in head if name in depths}
    backbone_depths = sorted({depth for depth in depths.values() if depth not in head_depths}, reverse=True)
    frozen_depths = set(backbone_depths[:round(fraction * len(backbone_depths))])
    return {name for name, depth in depths.items() if depth in frozen_depths}


def parameters_to_freeze(model: nn.Module, groups: Optional[str], fraction: float) -> set[str]:
    names = (parameters_in_groups(model, groups) if groups else set()) | (
        bottom_parameters(model, fraction) if fraction else set())
    head = head_parameter_names(model)
    if names & head:
        logger.warning("not freezing the new classifier head: it must train")
    return names - head


def backbone_parameters(model: nn.Module) -> set[str]:
    head = head_parameter_names(model)
    return {name for name, _ in model.named_parameters() if name not in head}


def set_requires_grad(model: nn.Module, names: set[str], requires_grad: bool) -> None:
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(requires_grad)


# Every BatchNorm torch has (timm's BatchNormAct2d subclasses BatchNorm2d); GroupNorm/LayerNorm keep no statistics.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def frozen_batchnorms(model: nn.Module, all_of_them: bool = False) -> list[nn.Module]:
    """BatchNorm layers to keep in eval mode: those whose parameters are all frozen, or every one."""
    norms = [module for module in model.modules() if isinstance(module, BATCH_NORMS)]
    if all_of_them:
        return norms
    return [norm for norm in norms if not any(param.requires_grad for param in norm.parameters())]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
