"""Recipes: unset options take the recipe's values, given ones (flag or --config file) never do."""

from __future__ import annotations

import json

import pytest
from conftest import make_image_folder, resolved, run_script

from hf_finetune.config import FinetuneConfig, parse_config
from hf_finetune.errors import UserError
from hf_finetune.model.optim import create_param_groups
from hf_finetune.recipes import describe_recipe, small_data_batch_size


def test_d2l_recipe_is_the_chapter():
    config = resolved(parse_config(["--recipe", "d2l"]), train_size=2000)
    assert (config.optimizer, config.momentum, config.lr_scheduler, config.warmup_steps) == ("sgd", 0, "constant", 0)
    assert (config.lr, config.head_lr_mult, config.weight_decay) == (5e-5 * 128, 10, 1e-3 / 128)
    assert (config.batch_size, config.epochs, config.freeze_epochs, config.label_smoothing) == (128, 5, 0, 0)
    assert config.freeze_bn is False and config.layer_decay is None


def test_default_recipe_warms_up_the_head_then_fine_tunes_with_momentum_cosine_and_smoothing():
    config = resolved(parse_config([]), train_size=200)
    assert config.recipe == "lp-ft"
    assert (config.freeze_epochs, config.momentum, config.lr_scheduler, config.label_smoothing) == (2, 0.9, "cosine",
                                                                                                   0.1)
    assert config.freeze_bn and config.lr == 2e-4 and config.layer_decay == 0.75
    assert resolved(parse_config(["--epochs", "3"])).freeze_epochs == 1  # at most half the epochs head-only
    assert resolved(parse_config(["--epochs", "1"])).freeze_epochs == 0
    assert config.batch_size == 16 and config.warmup_steps == 7  # ceil(10% of 13 x 5 updates)
    assert config.recipe_values["batch_size"] == 16 and config.recipe_values["warmup_steps"] == 7


def test_the_head_warm_up_lasts_the_fewest_epochs_that_give_the_head_50_updates():
    # 200 photos at batch 16: 13 updates an epoch, 2 epochs; 1,000 at 64: 16, 2 epochs; 9,000 at 128: 71, 1 epoch.
    assert [resolved(parse_config([]), train_size=size).freeze_epochs for size in (200, 1000, 9000)] == [2, 2, 1]
    mid_size = resolved(parse_config(["--epochs", "10"]), train_size=9000)
    assert mid_size.freeze_epochs == 1 and mid_size.recipe_values["freeze_epochs"] == 1
    assert resolved(parse_config(["--freeze-epochs", "2"]), train_size=9000).freeze_epochs == 2  # given: kept
    scratch = resolved(parse_config([]), train_size=9000, pretrained=False)
    assert scratch.freeze_epochs == 0
    assert scratch.recipe_adjusted["freeze_epochs"] == "0, not the recipe's 1: the backbone is random (--no-pretrained)"


def test_the_layer_decay_relaxes_and_the_lr_rises_as_the_training_photos_double():
    # Beyond 1,000 photos each doubling, up to 3 (8,000 photos), adds 0.05 to the layer decay and multiplies the LR
    # by 2^(1/3): food101-30's 9,000 photos get 0.9 and twice the batch rule's LR (ACCURACY.md).
    sizes = (200, 1000, 2000, 3000, 9000, None)  # None: a stream of unknown size, a large one
    configs = [resolved(parse_config([]), train_size=size) for size in sizes]
    assert [config.layer_decay for config in configs] == [0.75, 0.75, 0.8, 0.83, 0.9, 0.9]
    at_batch_128 = 2e-4 * (128 / 16) ** 0.5
    assert [config.lr for config in configs] == pytest.approx([2e-4, 4e-4, at_batch_128 * 2 ** (1 / 3),
                                                               at_batch_128 * 3 ** (1 / 3), 2 * at_batch_128,
                                                               2 * at_batch_128])
    assert configs[4].recipe_adjusted["lr"] == (
        "0.00113137, not the recipe's 0.0002: scaled by the square root with the batch (128 vs the 16 it was "
        "measured at) and x2.00 with the data size (3.0 doublings beyond 1,000 training photos)")
    assert resolved(parse_config(["--lr", "1e-3"]), train_size=9000).lr == 1e-3  # given: never scaled
    # Neither the chapter's recipe nor AdamW (whose LR was not measured against the data size) grows with it.
    assert resolved(parse_config(["--recipe", "d2l"]), train_size=9000).lr == pytest.approx(6.4e-3)
    assert resolved(parse_config(["--optimizer", "adamw"]), train_size=9000).lr == pytest.approx(1e-4 * 8 ** 0.5)
    assert resolved(parse_config([]), train_size=9000).recipe_values["layer_decay"] == 0.9
    assert resolved(parse_config(["--layer-decay", "0.75"]), train_size=9000).layer_decay == 0.75  # given: kept
    scratch = resolved(parse_config([]), train_size=9000, pretrained=False)
    assert scratch.layer_decay == 1.0
    assert scratch.recipe_adjusted["layer_decay"] == "1, not the recipe's 0.9: the backbone is random (--no-pretrained)"
    assert resolved(parse_config([]), train_size=9000, layer_groups=False).layer_decay is None


@pytest.mark.parametrize("train_size, batch", [(10, 16), (200, 16), (250, 16), (300, 32), (1000, 64),
                                               (1024, 128), (100_000, 128)])
def test_small_data_batch_is_at_most_an_eighth_of_the_folder_between_16_and_128(train_size, batch):
    assert small_data_batch_size(train_size) == batch


def test_the_recipes_layer_decay_is_off_for_a_model_without_timm_layer_groups():
    import timm

    plain = timm.create_model("poolformerv2_s12", num_classes=2)  # timm's MetaFormer has no group_matcher
    layer_groups = hasattr(timm.create_model("test_resnet", num_classes=2), "group_matcher")
    config = resolved(parse_config([]), layer_groups=layer_groups)
    assert config.layer_decay == 0.75 and config.recipe_values["layer_decay"] == 0.75
    config = resolved(parse_config([]), layer_groups=hasattr(plain, "group_matcher"))
    assert config.layer_decay is None and "layer_decay" not in config.recipe_values
    assert len(create_param_groups(plain, config)) == 2  # backbone and head, as without the recipe's decay
    given = resolved(parse_config(["--layer-decay", "0.8"]), layer_groups=hasattr(plain, "group_matcher"))
    assert given.layer_decay == 0.8  # a flag given by hand is never dropped: layer_depths refuses the model


def test_an_unset_lr_scales_with_the_batch_by_the_recipes_rule():
    # lp-ft's 2e-4 was measured at batch 16; 1,000 photos give batch 64: x sqrt(4) (ACCURACY.md: linear lost there).
    config = resolved(parse_config([]), train_size=1000)
    assert config.batch_size == 64 and config.lr == pytest.approx(4e-4) and config.recipe_values["lr"] == config.lr
    assert "lr 0.0004, not the recipe's 0.0002: scaled by the square root with the batch (64 vs the 16" in \
        describe_recipe("lp-ft", config.recipe_values, config.recipe_adjusted)
    assert resolved(parse_config(["--batch-size", "144"]), train_size=200).lr == pytest.approx(6e-4)
    assert resolved(parse_config(["--optimizer", "adamw", "--batch-size", "64"])).lr == pytest.approx(2e-4)
    # The chapter's lr is per sample (its loss is summed): at batch 256 it is 2 x 6.4e-3 with a mean loss.
    assert resolved(parse_config(["--recipe", "d2l", "--batch-size", "256"])).lr == pytest.approx(1.28e-2)
    accumulated = resolved(parse_config(["--gradient-accumulation-steps", "3"]), train_size=1000, num_processes=2)
    assert accumulated.lr == pytest.approx(2e-4 * (66 / 16) ** 0.5)  # the global batch counts
    assert resolved(parse_config(["--lr", "1e-3"]), train_size=1000).lr == 1e-3  # a given LR is never scaled


def test_recipe_batch_size_is_a_multiple_of_processes_times_accumulation():
    config = resolved(parse_config(["--gradient-accumulation-steps", "3"]), train_size=1000, num_processes=2)
    assert config.batch_size == 66  # 64 rounded up to a multiple of 6


def test_flags_and_config_files_win_over_the_recipe(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("momentum: 0.5\nbatch_size: 48\n")
    config = resolved(parse_config(["--config", str(path), "--lr", "0.01", "--freeze-epochs", "0",
                                    "--label-smoothing", "0"]), train_size=200)
    assert (config.lr, config.freeze_epochs, config.label_smoothing, config.momentum, config.batch_size) == (
        0.01, 0, 0, 0.5, 48)
    assert not {"lr", "freeze_epochs", "label_smoothing", "momentum", "batch_size"} & set(config.recipe_values)
    assert config.recipe_values["lr_scheduler"] == "cosine"


def test_adamw_under_a_recipe_gets_adamw_values_not_the_sgd_ones():
    config = resolved(parse_config(["--optimizer", "adamw"]))
    assert (config.lr, config.weight_decay, config.momentum) == (1e-4, 0.05, 0.0)


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(UserError, match="choose from lp-ft, d2l"):
        FinetuneConfig(recipe="fast").validate()


def test_run_records_and_prints_the_recipe_and_what_it_set(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=(20, 4))
    out = tmp_path / "out"
    result = run_script("finetune.py", "--data-dir", folder, "--model", "test_resnet", "--no-pretrained",
                        "--img-size", "64", "--num-workers", "0", "--epochs", "2", "--lr", "0.01",
                        "--output-dir", out)
    run = json.loads((out / "run_config.json").read_text())
    assert run["recipe"]["name"] == "lp-ft" and "lr" not in run["recipe"]["values"]
    assert run["recipe"]["values"]["batch_size"] == 16 and run["config"]["batch_size"] == 16
    assert "recipe lp-ft: " in result.stdout and "batch_size 16" in result.stdout
    card = (out / "README.md").read_text()
    assert "| recipe | lp-ft (set " in card and "| label smoothing | 0.1 |" in card


def test_compare_has_the_d2l_and_default_recipes_as_a_row_pair(tmp_path):
    from hf_finetune.compare import VARIANTS, variant_args

    assert list(VARIANTS)[-2:] == ["d2l", "default"]
    d2l, default = (parse_config(variant_args(name, ["--epochs", "3"], tmp_path)[:-2]) for name in ("d2l", "default"))
    assert (d2l.recipe, default.recipe, d2l.epochs, default.epochs) == ("d2l", "lp-ft", 3, 3)
    scratch = variant_args("scratch", ["--recipe", "d2l"], tmp_path)
    assert scratch[scratch.index("--lr") + 1] == repr(10 * 6.4e-3)  # 10x the recipe's LR, as the chapter



def test_a_random_backbone_gets_no_head_warm_up_and_trains_batchnorm_statistics(tmp_path):
    """Head-only epochs and fixed BatchNorm statistics protect pretrained features; a random backbone has none.
    Given values still win, and compare.py's scratch variant resolves the same way."""
    from hf_finetune.compare import variant_args

    config = resolved(parse_config(["--no-pretrained"]), pretrained=False)
    assert (config.freeze_epochs, config.freeze_bn, config.layer_decay) == (0, False, 1.0)
    assert set(config.recipe_adjusted) == {"freeze_epochs", "freeze_bn", "layer_decay"}
    assert config.recipe_adjusted["freeze_epochs"] == ("0, not the recipe's 2: the backbone is random "
                                                       "(--no-pretrained)")
    given = resolved(parse_config(["--no-pretrained", "--freeze-epochs", "1", "--freeze-bn"]), pretrained=False)
    assert (given.freeze_epochs, given.freeze_bn) == (1, True) and "freeze_epochs" not in given.recipe_adjusted
    scratch = resolved(parse_config(variant_args("scratch", ["--epochs", "4"], tmp_path)), pretrained=False)
    assert (scratch.freeze_epochs, scratch.freeze_bn) == (0, False)
    assert not resolved(parse_config(["--recipe", "d2l", "--no-pretrained"]), pretrained=False).recipe_adjusted


def test_a_scratch_run_says_what_the_recipe_changed_and_trains_every_layer_and_statistic(tmp_path):
    from safetensors.torch import load_file

    folder = make_image_folder(tmp_path / "photos", per_class=(16, 4))
    out = tmp_path / "out"
    result = run_script("finetune.py", "--data-dir", folder, "--model", "test_resnet", "--no-pretrained",
                        "--img-size", "64", "--num-workers", "0", "--epochs", "2", "--output-dir", out)
    assert "head only" not in result.stdout
    assert "freeze_epochs 0, not the recipe's 1: the backbone is random (--no-pretrained)" in result.stdout
    run = json.loads((out / "run_config.json").read_text())
    assert (run["config"]["freeze_epochs"], run["config"]["freeze_bn"]) == (0, False)
    assert set(run["recipe"]["adjusted"]) == {"freeze_epochs", "freeze_bn", "layer_decay"}
    weights = load_file(out / "model.safetensors")
    assert weights["bn1.running_mean"].abs().sum() > 0, "BatchNorm statistics left at their initial zeros"
