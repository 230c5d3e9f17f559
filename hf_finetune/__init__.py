"""hf_finetune: fine-tune any timm image classifier on an image folder and publish it to the Hub."""

from .config import FinetuneConfig, parse_config
from .errors import UserError
from .finetune import finetune

__all__ = ["FinetuneConfig", "UserError", "finetune", "parse_config"]
