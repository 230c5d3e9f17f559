"""Put a fitted temperature inside the model: the classifier's weight and bias divided by T.

A timm classifier's logits are the last affine layer's output, so (W / T) x + b / T = (W x + b) / T exactly:
every consumer of the saved weights (timm, the transformers pipeline, load_classifier, ONNX) then gets the
calibrated softmax(logits / T), with no code of its own, and the argmax is unchanged (T > 0).
"""

from __future__ import annotations

import torch
from torch import nn

from hf_finetune.errors import UserError


@torch.no_grad()
def apply_temperature(model: nn.Module, temperature: float) -> None:
    """Divide the weight and bias of `model.get_classifier()` (each head of a distilled model) by `temperature`."""
    if temperature <= 0:
        raise ValueError(f"a temperature must be positive, got {temperature}")
    heads = model.get_classifier()
    for head in heads if isinstance(heads, (tuple, list)) else (heads,):
        if not isinstance(head, (nn.Linear, nn.Conv2d)):
            raise UserError(f"cannot put a temperature into {type(model).__name__}'s classifier "
                            f"({type(head).__name__}, not a Linear or 1x1 Conv2d layer); use --calibrate none")
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
