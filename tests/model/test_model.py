"""Model creation from every kind of source, the head reset, and the saved Hub layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from conftest import LITE0_WEIGHTS

from hf_finetune.errors import UserError
from hf_finetune.model.create import classifier_names, create_classifier, head_parameter_names, save_classifier

LABELS = ["cat", "dog", "emu"]


@pytest.mark.parametrize("name, head", [("test_resnet", "fc"), ("test_vit", "head"),
                                        ("convnext_atto", "head.fc"), ("tf_efficientnet_lite0", "classifier")])
def test_head_is_found_generically_and_reset(name, head):
    model, source = create_classifier(name, LABELS, pretrained=False)
    assert classifier_names(model) == [head]
    weight = model.get_submodule(head).weight
    assert weight.shape[0] == 3 and model.num_classes == 3
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    bound = math.sqrt(6 / (fan_in + fan_out))  # Xavier-uniform, as the chapter initializes the new layer
    assert weight.abs().max() <= bound and weight.abs().max() > 0.5 * bound
    assert head_parameter_names(model) == {f"{head}.{p}" for p, _ in model.get_submodule(head).named_parameters()}
    assert source.classifier_state[f"{head}.weight"].shape[0] == 1000


def test_stale_source_cfg_is_overwritten():
    model, source = create_classifier(f"local-dir:{LITE0_WEIGHTS}", LABELS, pretrained=True)
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == 3 and cfg["label_names"] == LABELS
    assert not {"tag", "hf_hub_id", "file", "source", "label_descriptions"} & set(cfg)
    assert cfg["license"] == "apache-2.0" and cfg["mean"] == [0.5, 0.5, 0.5]
    assert source.label_names[934] == "hotdog, hot dog, red hot" and source.tag == "in1k"


def test_unknown_model_suggests_close_names():
    with pytest.raises(UserError, match="resnet18"):
        create_classifier("resnet19x", LABELS, pretrained=False)


def test_unknown_pretrained_tag_is_a_clear_error():
    with pytest.raises(UserError, match="could not create 'resnet18.nonexistent_tag'"):
        create_classifier("resnet18.nonexistent_tag", LABELS, pretrained=True)


def _logits(model, seed=0, size=64):
    torch.manual_seed(seed)
    return model.eval()(torch.randn(2, 3, size, size))


def test_saved_folder_reloads_with_identical_logits_in_timm_and_transformers(tmp_path):
    model, _ = create_classifier("test_resnet", LABELS, pretrained=False)
    model = model.to(memory_format=torch.channels_last)  # as trained: must still save contiguous tensors
    save_classifier(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["label_names"] == LABELS and "num_classes" not in config.get("model_args", {})
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    # Bitwise equal logits hold in the same memory format (the same kernels); across formats the kernels sum in
    # another order and round differently in the last bits on some CPUs (seen on AVX2-only EPYC).
    assert torch.equal(_logits(model), _logits(reloaded.to(memory_format=torch.channels_last)))
    assert reloaded.pretrained_cfg["label_names"] == LABELS

    from transformers import AutoModelForImageClassification

    wrapped = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert wrapped.config.id2label == dict(enumerate(LABELS))
    torch.manual_seed(0)
    # transformers runs it in the default memory format: equal up to float32 rounding of another summation order.
    assert torch.allclose(wrapped(torch.randn(2, 3, 64, 64)).logits, _logits(model), rtol=1e-5, atol=1e-5)


def test_pretrained_path_loads_safetensors_and_state_dict_files(tmp_path):
    from safetensors.torch import save_file

    trained, _ = create_classifier("test_resnet", ["a", "b"], pretrained=False)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        model, source = create_classifier("test_resnet", LABELS, pretrained_path=str(tmp_path / file))
        assert source.pretrained and source.hub_id is None
        backbone = {k: v for k, v in trained.state_dict().items() if not k.startswith("fc.")}
        assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
        assert torch.equal(source.classifier_state["fc.weight"], trained.fc.weight)


def test_pretrained_path_with_img_size_on_a_cnn(tmp_path):
    from safetensors.torch import save_file
    from timm.data import resolve_model_data_config

    trained, _ = create_classifier("test_resnet", ["a", "b"], pretrained=False)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors")
    model, _ = create_classifier("test_resnet", LABELS, pretrained_path=str(tmp_path / "w.safetensors"), img_size=96)
    assert resolve_model_data_config(model)["input_size"] == (3, 96, 96)
    assert torch.equal(model.state_dict()["conv1.0.weight"], trained.state_dict()["conv1.0.weight"])


def test_pretrained_path_of_another_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    other, _ = create_classifier("test_vit", ["a", "b"], pretrained=False)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "vit.safetensors")
    with pytest.raises(UserError, match="does not fit test_resnet"):
        create_classifier("test_resnet", LABELS, pretrained_path=str(tmp_path / "vit.safetensors"))


def test_a_corrupt_pretrained_path_is_one_error(tmp_path):
    from safetensors.torch import save_file

    trained, _ = create_classifier("test_resnet", ["a", "b"], pretrained=False)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "whole.safetensors")
    torch.save(trained.state_dict(), tmp_path / "whole.pth")
    for name in ("whole.safetensors", "whole.pth"):  # cut short, as by an interrupted copy
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut{Path(name).suffix}").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.bin").write_text("not weights")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    for name in ("cut.safetensors", "cut.pth", "notes.bin", "list.pth"):
        with pytest.raises(UserError, match=f"--pretrained-path .*{name}: not a readable weights file .*"
                                            "safetensors or a state dict"):
            create_classifier("test_resnet", LABELS, pretrained_path=str(tmp_path / name))


def test_img_size_reaches_the_data_config_and_fixed_size_models():
    from timm.data import resolve_model_data_config

    cnn, _ = create_classifier("test_resnet", LABELS, pretrained=False, img_size=96)
    assert resolve_model_data_config(cnn)["input_size"] == (3, 96, 96)
    vit, _ = create_classifier("test_vit", LABELS, pretrained=False, img_size=64)
    assert vit(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_pretrained_download_through_the_local_hub_by_plain_timm_name(hub):
    model, source = create_classifier("tf_efficientnet_lite0", LABELS, pretrained=True)
    # The license is what timm's own pretrained_cfg says (older timm versions have none): recorded as given.
    timm_license = timm.models.get_pretrained_cfg("tf_efficientnet_lite0.in1k").license
    assert source.hub_id == "timm/tf_efficientnet_lite0.in1k" and source.license == timm_license
    local = timm.create_model(f"local-dir:{LITE0_WEIGHTS}", pretrained=True)
    assert torch.equal(model.conv_stem.weight, local.conv_stem.weight)
    assert torch.equal(source.classifier_state["classifier.weight"], local.classifier.weight)


def test_every_kind_of_batchnorm_is_found_and_nothing_else():
    from timm.layers import BatchNormAct2d

    from hf_finetune.model.freezing import frozen_batchnorms

    norms = [torch.nn.BatchNorm1d(3), torch.nn.BatchNorm2d(3), torch.nn.BatchNorm3d(3), torch.nn.SyncBatchNorm(3),
             BatchNormAct2d(3)]
    model = torch.nn.Sequential(*norms, torch.nn.GroupNorm(1, 3), torch.nn.LayerNorm(3), torch.nn.Conv2d(3, 3, 1))
    assert frozen_batchnorms(model, all_of_them=True) == norms
    norms[1].requires_grad_(False)
    assert frozen_batchnorms(model) == [norms[1]]
