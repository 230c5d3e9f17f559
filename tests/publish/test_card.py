"""The generated model card: front matter the Hub accepts, numbers from metrics.json, no local paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import make_image_folder
from finished_run import LABELS, make_finished_run, train_run
from paths import LITE0_WEIGHTS

from hf_finetune.publish import card as card_module
from hf_finetune.publish.card import find_template, sanitize_command, write_model_card

REPO_ROOT = Path(__file__).resolve().parents[2]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_finished_run(tmp_path_factory.mktemp("card") / "hotdog-run")


def test_front_matter_is_valid_and_model_index_equals_metrics(run_dir):
    from huggingface_hub import ModelCard

    text = write_model_card(run_dir).read_text()
    meta = front_matter(text)
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert set(meta["tags"]) >= {"image-classification", "timm", "transformers", "hf_finetune"}
    assert meta["metrics"] == ["accuracy", "f1"]
    # From scratch on a local folder: no base model, no license to inherit, no Hub dataset to name.
    assert not {"base_model", "license", "datasets"} & set(meta)
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "tiny", "type": "imagefolder", "split": "val"}
    assert result["metrics"][0]["type"] == "accuracy" and result["metrics"][0]["value"] == final["eval_acc"]
    # huggingface_hub parses it back into the same EvalResult.
    loaded = ModelCard.load(run_dir / "README.md")
    assert loaded.data.eval_results[0].metric_value == final["eval_acc"]
    assert meta["model-index"][0]["name"] == "hotdog-run"


def _validate_uses_hf_endpoint() -> bool:
    from importlib.metadata import version

    from packaging.version import Version

    # huggingface_hub before 2.2 posts ModelCard.validate() to huggingface.co whatever HF_ENDPOINT says: offline
    # it cannot reach the local Hub. hf_finetune itself never calls it (the Hub validates on push, tested there).
    return Version(version("huggingface_hub")) >= Version("2.2.0")


@pytest.mark.skipif(not _validate_uses_hf_endpoint(), reason="this huggingface_hub's validate() ignores HF_ENDPOINT")
def test_card_validates_against_the_hub(run_dir, hub):
    from huggingface_hub import ModelCard

    before = len(hub.requests)
    ModelCard.load(write_model_card(run_dir, "tester/hotdog-run")).validate()
    assert ("POST", "/api/validate-yaml", 200) in hub.requests[before:]


def _records(run: Path) -> tuple[dict, dict]:
    return tuple(json.loads((run / name).read_text()) for name in ("run_config.json", "metrics.json"))


def test_body_documents_the_run_without_local_paths(run_dir):
    text = write_model_card(run_dir, "me/hotdog-run").read_text()
    body = text.split("---\n", 2)[2]
    run, metrics = _records(run_dir)
    for index, label in enumerate(LABELS):
        assert f"| {index} | {label.replace('|', chr(92) + '|')} |" in body
    for epoch in metrics["history"]:
        assert (f"| {epoch['epoch']} | {epoch['train_loss']:.4f} | {epoch['train_acc']:.4f} | {epoch['eval_loss']:.4f}"
                f" | {epoch['eval_acc']:.4f} | {epoch['examples_per_sec']:.1f} |") in body
    assert f"| eval accuracy | {metrics['final']['eval_acc']:.4f} |" in body
    assert "![Training loss and accuracy per epoch](training_curves.png)" in body
    backbone, head = run["param_groups"]
    lr = 6.4e-3 * 8 / 128  # d2l's lr at its batch 128, scaled to this run's batch 8 (the chapter's summed loss)
    for fact in (f"| backbone learning rate | {lr:g}, for the mean loss", "x10 the backbone LR",
                 f"| backbone | {lr:g} | {1e-3 / 128:g} | {backbone['num_params']:,} |", f"| head | {10 * lr:g} |",
                 "| epochs | 2 |", "| global batch size | 8 = 8 per device x 1 process(es)",
                 "| mixed precision | fp32 (as asked) |", "| seed | 0 |"):
        assert fact in body
    assert ("finetune.py --epochs 2 --batch-size 8 --recipe d2l --mixed-precision no --model test_resnet "
            "--no-pretrained --data-dir tiny --seed 0 --output-dir run") in body
    assert 'timm.create_model("hf-hub:me/hotdog-run", pretrained=True)' in body
    assert 'pipeline("image-classification", model="me/hotdog-run")' in body
    assert "python scripts/predict.py me/hotdog-run img.jpg" in body
    assert "- timm " in body and "@book{zhang2023dive" in body and "@misc{rw2019timm" in body
    local_paths = (run["config"]["data_dir"], run["config"]["output_dir"], run_dir.parent)
    assert all(Path(path).is_absolute() for path in local_paths)  # the records name them; the card must not
    for secret in (*map(str, local_paths), "/tmp"):
        assert secret not in text


def test_pretrained_hub_source_and_hub_dataset_fill_front_matter(hub, tmp_path):
    from huggingface_hub import HfApi

    photos = make_image_folder(tmp_path / "hotdogs", classes=("hotdog", "not_hotdog"), per_class=(8, 4))
    HfApi().create_repo("food/hotdogs", repo_type="dataset", token="hf_test_token")
    HfApi().upload_folder(folder_path=photos, repo_id="food/hotdogs", repo_type="dataset", token="hf_test_token")
    run = train_run(tmp_path / "run", "--model", "tf_efficientnet_lite0.in1k", "--dataset-name", "food/hotdogs",
                    "--img-size", "64", "--epochs", "1")
    text = write_model_card(run, "me/x").read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "timm/tf_efficientnet_lite0.in1k"
    # The source's license as timm reports it (apache-2.0 in timm's config for lite0 from 1.0.2x on; none at 1.0.20).
    license = _records(run)[0]["source"]["license"]
    assert meta.get("license") == (license.lower() if license else None)
    assert meta["datasets"] == ["food/hotdogs"]
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "food/hotdogs"
    assert ("fine-tuned from [`timm/tf_efficientnet_lite0.in1k`](https://huggingface.co/timm/tf_efficientnet_lite0.in1k)"
            in text)


def test_frozen_layers_unreadable_images_and_matched_labels_are_documented(tmp_path):
    photos = make_image_folder(tmp_path / "photos", classes=tuple(LABELS), per_class=(8, 4))
    for index in range(3):
        (photos / "train" / LABELS[1] / f"broken-{index}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    run = train_run(tmp_path / "run", "--model", f"local-dir:{LITE0_WEIGHTS}", "--data-dir", photos,
                    "--img-size", "64", "--freeze", "stem,blocks.0", "--freeze-epochs", "1",
                    "--max-bad-fraction", "0.2", "--recipe", "lp-ft")
    config, metrics = _records(run)
    text = write_model_card(run).read_text()
    assert (f"| frozen layers | groups stem,blocks.0; {config['frozen']['num_params']:,} parameters; whole backbone "
            "for the first 1 epoch(s) (head warm-up); all BatchNorm statistics |") in text  # lp-ft keeps them
    assert "| unreadable images skipped | 3 |" in text and "broken-" not in text
    assert "| 0 | hot dog | 934 (hotdog, hot dog, red hot) |" in text
    assert "| 1 | not_hotdog |  |" in text
    # The default recipe's layer-wise decay: a group per depth; the epoch table shows the lowest and the head.
    lowest, *_, head = metrics["history"][0]["lr"]
    assert lowest.startswith("backbone.depth") and head == "head"
    assert f"| examples/sec | lr ({lowest}) | lr (head) |" in text


@pytest.mark.parametrize("argv, expected", [
    (["/home/alice/src/scripts/finetune.py", "--data-dir", "/home/alice/photos/"],
     ["finetune.py", "--data-dir", "photos"]),
    (["scripts/finetune.py", "--data_dir=~/photos", "--output-dir", "runs/one", "--push-to-hub", "me/model"],
     ["scripts/finetune.py", "--data_dir=photos", "--output-dir", "one", "--push-to-hub", "me/model"]),
    (["finetune.py", "--model", "local-dir:/srv/alice/weights", "--pretrained-path", "weights/a.safetensors"],
     ["finetune.py", "--model", "local-dir:weights", "--pretrained-path", "a.safetensors"]),
    (["finetune.py", "--model", "hf-hub:timm/resnet18.a1_in1k", "--no-pretrained", "--lr", "0.01",
      "--config", "C:\\Users\\alice\\run.yaml"],
     ["finetune.py", "--model", "hf-hub:timm/resnet18.a1_in1k", "--no-pretrained", "--lr", "0.01",
      "--config", "run.yaml"]),
])
def test_command_keeps_only_the_last_component_of_local_paths(argv, expected):
    assert sanitize_command(argv) == expected


def test_template_is_found_in_an_installed_package(tmp_path, monkeypatch):
    # The wheel carries the template as data installed under <prefix>/share/hf_finetune ...
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ files in it
    for name in ("hf_finetune", "model_cards"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    data_path = "hf_finetune-0.1.0.data/data/share/hf_finetune/model_cards/template.md"
    assert zipfile.ZipFile(wheel).read(data_path) == (REPO_ROOT / "model_cards/template.md").read_bytes()
    # ... and the package, away from the source tree, looks there.
    prefix = tmp_path / "prefix"
    (prefix / "share/hf_finetune/model_cards").mkdir(parents=True)
    (prefix / "share/hf_finetune/model_cards/template.md").write_text("{{ card_data }}")
    monkeypatch.setattr(card_module, "__file__", str(prefix / "lib/site-packages/hf_finetune/publish/card.py"))
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert find_template() == prefix / "share/hf_finetune/model_cards/template.md"


def test_card_says_which_weights_were_selected_and_how(tiny_folder, tmp_path):
    from huggingface_hub import ModelCard

    # An impossible --min-delta: no epoch improves on the first, so patience 1 stops after epoch 2 of 3.
    run = train_run(tmp_path / "run", "--model", "test_resnet", "--no-pretrained", "--data-dir", tiny_folder,
                    "--epochs", "3", "--model-ema", "--ema-decay", "0.5", "--patience", "1", "--min-delta", "100")
    _, metrics = _records(run)
    selected = metrics["selected"]["selected"]
    weights = {"ema": "the exponential moving average (EMA) of the weights", "trained": "the trained weights"}
    text = write_model_card(run).read_text()
    assert (f"The model is {weights[selected['weights']]} of epoch {selected['epoch']} of 2, the best by "
            "`eval_loss` on the `val` split, which therefore helped choose it.") in text
    assert "An EMA of the weights (decay 0.5) was evaluated beside them every epoch." in text
    assert "Early stopping (patience 1) stopped training after 2 of 3 epochs." in text
    assert "![Confusion matrix on the val split](confusion_matrix.png)" in text
    # metrics.json as runs wrote it before model selection existed: its one accuracy and no selection section.
    del metrics["selected"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "confusion_matrix.png").unlink()
    card = ModelCard.load(write_model_card(run))
    accuracy = metrics["final"]["eval_acc"]
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", accuracy)]
    assert "therefore helped choose it" not in card.text and "Per class" not in card.text
