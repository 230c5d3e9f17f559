"""hf_finetune: fine-tune any timm image classifier on an image folder and publish it to the Hub.

The public names load on first use (PEP 562), so `import hf_finetune` and `--help` do not import torch.
"""

from importlib import import_module

_EXPORTS = {"Classifier": "serve.predict", "FinetuneConfig": "config", "UserError": "errors", "finetune": "run",
            "load_classifier": "serve.predict", "parse_config": "config", "predict": "serve.predict",
            "push_to_hub": "publish.hub", "write_model_card": "publish.card"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
