"""A configuration's spec (the JSON dict one measuring subprocess gets) turned into hf_finetune's objects."""

from __future__ import annotations


def settings_model(spec: dict):
    """The classifier whose data config (mean/std, crop, resize) the loaders and the cache follow."""
    from hf_finetune.model.create import create_classifier

    return create_classifier(spec["model"], ["a", "b"], pretrained=False, img_size=spec["img_size"])[0]


def finetune_config(spec: dict, **overrides):
    from hf_finetune.config import FinetuneConfig

    return FinetuneConfig(data_dir=str(spec["root"]), cache_dir=spec["cache_dir"], model=spec["model"],
                          img_size=spec["img_size"], **{"recipe": "d2l", **overrides})  # the chapter's loop
