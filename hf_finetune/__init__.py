"""hf_finetune: fine-tune any timm image classifier on an image folder and publish it to the Hub."""

from .card import write_model_card
from .config import FinetuneConfig, parse_config
from .errors import UserError
from .finetune import finetune
from .hub import push_to_hub
from .predict import Classifier, load_classifier, predict

__all__ = ["Classifier", "FinetuneConfig", "UserError", "finetune", "load_classifier", "parse_config", "predict",
           "push_to_hub", "write_model_card"]
