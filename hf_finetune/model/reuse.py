"""Start target classes that the source already knows from the source classifier's rows (d2l Fine-Tuning).

A folder named `hotdog` matches ImageNet class 934 "hotdog, hot dog, red hot": its new output row copies
the source weight row and bias, so before any training step it scores images exactly as the source did.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from hf_finetune.errors import UserError
from hf_finetune.model.labels import describe_matches, match_labels, parse_label_map
from hf_finetune.model.create import SourceModel, classifier_names

logger = logging.getLogger(__name__)

def copy_classifier_rows(model: nn.Module, source: SourceModel, matches: dict[int, int]) -> None:
    """Overwrite each matched target row of every classifier parameter with the source's row."""
    if not matches:
        return
    for module_name in classifier_names(model):
        for param_name, param in model.get_submodule(module_name).named_parameters():
            key = f"{module_name}.{param_name}"
            source_param = source.classifier_state.get(key)
            if source_param is None or source_param.shape[1:] != param.shape[1:]:
                logger.warning("not reusing classifier rows for %s: the source has %s, the new head %s", key,
                               None if source_param is None else tuple(source_param.shape), tuple(param.shape))
                continue
            out_of_range = [index for index in matches.values() if index >= source_param.shape[0]]
            if out_of_range:
                raise UserError(f"source class(es) {out_of_range} out of range: the source classifier has "
                                f"{source_param.shape[0]} classes")
            targets, sources = list(matches), list(matches.values())
            with torch.no_grad():
                param[targets] = source_param[sources].to(param.device, param.dtype)


def reuse_classifier_rows(model: nn.Module, source: SourceModel, target_labels: list[str],
                          label_map: Optional[str] = None) -> list[dict]:
    """Copy the source rows of every target label that names a source class; return what matched."""
    explicit = parse_label_map(label_map, target_labels, source.label_names)
    matches = match_labels(target_labels, source.label_names, explicit)
    copy_classifier_rows(model, source, matches)
    return describe_matches(matches, target_labels, source.label_names)
