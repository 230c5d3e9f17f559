"""Put a fitted temperature inside the model: the classifier's weight and bias divided by T.

A timm classifier's logits are the last affine layer's output, so (W / T) x + b / T = (W x + b) / T exactly:
every consumer of the saved weights (timm, the transformers pipeline, load_classifier, ONNX) then gets the
calibrated softmax(logits / T), with no code of its own, and the argmax is unchanged (T > 0). One temperature
per output (multi-label) divides each row of W and b by its own T_i: logit i becomes logit_i / T_i.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from hf_finetune.errors import UserError


@torch.no_grad()
def apply_temperature(model: nn.Module, temperature: Union[float, Sequence[float]]) -> None:
    """Divide the weight and bias of `model.get_classifier()` (each head of a distilled model) by `temperature`:
    one number, or one per output (row i of the weight and entry i of the bias by temperature[i])."""
    temperatures = torch.as_tensor(temperature, dtype=torch.float64)
    if (temperatures <= 0).any():
        raise ValueError(f"a temperature must be positive, got {temperature}")
    heads = model.get_classifier()
    for head in heads if isinstance(heads, (tuple, list)) else (heads,):
        if not isinstance(head, (nn.Linear, nn.Conv2d)):
            raise UserError(f"cannot put a temperature into {type(model).__name__}'s classifier "
                            f"({type(head).__name__}, not a Linear or 1x1 Conv2d layer); use --calibrate none")
        if temperatures.ndim and len(temperatures) != head.weight.shape[0]:
            raise ValueError(f"{len(temperatures)} temperatures for a classifier of {head.weight.shape[0]} outputs")
        rows = temperatures.to(head.weight.device, head.weight.dtype) if temperatures.ndim else float(temperatures)
        head.weight.div_(rows.reshape(-1, *[1] * (head.weight.ndim - 1)) if temperatures.ndim else rows)
        if head.bias is not None:
            head.bias.div_(rows)
