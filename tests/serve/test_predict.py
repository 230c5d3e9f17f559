"""Pulling a pushed model back by name with timm, transformers, load_classifier and scripts/predict.py."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import torch
from conftest import run_script
from finished_run import LABELS, make_finished_run

from hf_finetune.errors import UserError
from hf_finetune.publish.hub import fixed_batch, push_to_hub
from hf_finetune.serve.predict import load_classifier, open_rgb, predict

REPO = "tester/predict-model"  # private, as pushes are by default


@pytest.fixture(scope="module")
def token():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", "hf_predict_token")
        yield "hf_predict_token"


@pytest.fixture(scope="module")
def pushed(hub, token, tmp_path_factory) -> Path:
    run = make_finished_run(tmp_path_factory.mktemp("predict") / "run")
    push_to_hub(run, REPO)
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    paths = [folder / "red.jpg", folder / "green.png", folder / "gray.png", folder / "clear.png"]
    Image.new("RGB", (64, 48), (220, 30, 30)).save(paths[0])
    Image.new("RGB", (30, 70), (20, 200, 40)).save(paths[1])
    Image.new("L", (50, 50), 128).save(paths[2])
    Image.new("RGBA", (40, 40), (10, 10, 240, 90)).save(paths[3])
    return paths


def test_timm_pulls_the_model_by_name_with_labels_and_identical_logits(pushed):
    import timm

    model = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == LABELS
    local = load_classifier(pushed).model
    batch = fixed_batch(local)
    with torch.no_grad():
        assert torch.equal(model(batch), local(batch))


def test_load_classifier_accepts_a_hub_id_an_hf_hub_name_and_a_folder(pushed, images):
    from PIL import Image
    from timm.data import resolve_model_data_config

    results = []
    for name in (REPO, f"hf-hub:{REPO}", pushed):
        classifier = load_classifier(name)
        assert classifier.label_names == LABELS and not classifier.model.training
        # The eval transform follows the model's own config: test_resnet is 160 px, not 224.
        size = tuple(resolve_model_data_config(classifier.model)["input_size"][1:])  # a list in timm 1.0.20
        assert tuple(classifier.transform(Image.new("RGB", (9, 9))).shape[1:]) == size
        results.append(predict(classifier, images, top_k=2))
    assert results[0] == results[1] == results[2]
    assert all(len(top) == 2 and top[0][1] >= top[1][1] for top in results[0])
    assert predict(load_classifier(pushed), images[:1], top_k=10)[0][0][0] in LABELS  # k capped at 3


def test_transformers_pipeline_uses_the_real_label_names(pushed, images):
    from transformers import pipeline

    classifier = pipeline("image-classification", model=REPO)
    assert classifier.model.config.id2label == dict(enumerate(LABELS))
    # Opaque images only: the pipeline decodes with convert("RGB"), which shows the colour under transparent
    # pixels, where hf_finetune composites them on white as training did (tests/serve/test_prediction_parity.py).
    opaque = images[:3]
    ours = predict(load_classifier(REPO), opaque, top_k=3)
    for image, expected in zip(opaque, ours):
        theirs = classifier(str(image), top_k=3)
        assert [row["label"] for row in theirs] == [label for label, _ in expected]
        assert [row["score"] for row in theirs] == pytest.approx([p for _, p in expected], abs=1e-4)


def test_predict_script_prints_the_same_top_k(pushed, images, hub_env):
    result = run_script("predict.py", REPO, *images[:2], "--top-k", "2", env={**hub_env, "HF_TOKEN": "hf_x"})
    expected = predict(load_classifier(pushed), images[:2], top_k=2)
    lines = result.stdout.splitlines()
    assert lines[0] == str(images[0]) and lines[3] == str(images[1])
    printed = [[line.split(maxsplit=1) for line in lines[1:3]], [line.split(maxsplit=1) for line in lines[4:6]]]
    assert printed == [[[f"{p:.4f}", label] for label, p in top] for top in expected]


def test_predict_script_skips_an_unreadable_image_names_it_and_exits_1(pushed, images, tmp_path, hub_env):
    broken = tmp_path / "lunch.jpg"
    broken.write_text("not a picture")
    result = run_script("predict.py", pushed, images[0], broken, env=hub_env, check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == str(images[0]) and str(broken) not in result.stdout
    assert f"skipping {broken}: not an image PIL can read" in result.stderr.splitlines()


def test_images_are_upright_rgb_as_in_training(pushed, images, tmp_path):
    from PIL import Image

    upright = Image.new("RGB", (80, 40), (200, 40, 40))
    upright.paste((20, 20, 220), (0, 0, 20, 40))  # a blue band on the left marks the orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise to show it upright
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = open_rgb(tmp_path / "rotated.jpg")
    assert shown.mode == "RGB" and shown.size == (80, 40)
    red, green, blue = shown.getpixel((5, 20))
    assert blue > 150 and red < 100
    assert {open_rgb(path).mode for path in images} == {"RGB"}  # grayscale and RGBA too
    assert len(predict(load_classifier(pushed), [*images, tmp_path / "rotated.jpg"], top_k=1)) == 5


def test_unknown_or_private_models_fail_clearly(pushed, monkeypatch, tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_classifier(tmp_path / "missing")
    with pytest.raises(UserError, match="no model repo tester/no-such-model on the Hub"):
        load_classifier("tester/no-such-model")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserError, match="private repo set HF_TOKEN"):
        load_classifier(REPO, cache_dir=tmp_path / "fresh_cache")


def test_finetune_push_and_predict_end_to_end(hub, hub_env, tiny_folder, tmp_path):
    output = tmp_path / "out"
    token = "hf_" + secrets.token_hex(16)
    env = {**hub_env, "HF_TOKEN": token}
    result = run_script("finetune.py", "--model", "test_resnet", "--no-pretrained", "--data-dir", tiny_folder,
                        "--output-dir", output, "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
                        "--push-to-hub", "tester/e2e-tiny", "--report-to", "tensorboard", env=env)
    assert "pushed: " in result.stdout
    assert token not in result.stdout + result.stderr
    for file in output.rglob("*"):  # model, card, metrics, run config, checkpoints, tracker logs
        assert not file.is_file() or token.encode() not in file.read_bytes(), file
    assert f"Bearer {token}" in hub.auth_headers
    assert list(output.rglob("events.out.tfevents*")), "--report-to tensorboard wrote no event file"
    assert hub.files("tester/e2e-tiny")["README.md"] == (output / "README.md").read_bytes()
    card = hub.files("tester/e2e-tiny")["README.md"].decode()
    final = json.loads((output / "metrics.json").read_text())["final"]
    assert f"value: {final['eval_acc']}" in card and str(tmp_path) not in card
    image = next((tiny_folder / "val" / "dog").iterdir())
    printed = run_script("predict.py", "tester/e2e-tiny", image, "--top-k", "1", env=hub_env).stdout.splitlines()
    [[(label, probability)]] = predict(load_classifier(output), [image], top_k=1)
    assert printed == [str(image), f"  {probability:.4f}  {label}"]


@pytest.mark.slow
def test_a_multi_label_run_pulled_back_by_name_gives_its_logits_sigmoid_scores_and_thresholds(hub, token, tmp_path):
    """The multi-label run pushed to the (local) Hub and pulled back by name: timm gives the same logits,
    transformers' pipeline sigmoid scores (config.json's problem_type), load_classifier the tuned thresholds."""
    import timm
    from finished_run import make_finished_multi_label_run
    from transformers import pipeline

    run, data = make_finished_multi_label_run(tmp_path / "run")
    repo = "tester/multi-label-model"
    push_to_hub(run, repo)
    pushed = hub.files(repo)
    assert "per_label_ap.png" in pushed and "confusion_matrix.png" not in pushed
    assert hub.commits(repo)[0]["message"].startswith("Upload fine-tuned model (eval exact match ")
    config = json.loads((run / "config.json").read_text())
    local = load_classifier(run)
    model = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == config["label_names"] == local.label_names
    batch = fixed_batch(local.model)
    with torch.no_grad():
        assert torch.equal(model(batch), local.model(batch))
    pulled = load_classifier(repo)
    assert pulled.task.name == "multi_label" and pulled.task.thresholds == config["thresholds"]
    images = [data / "val" / f"{index}.jpg" for index in (3, 6)]  # two labels; all three
    with torch.no_grad():
        logits = pulled.model(pulled.transform(images[0]).unsqueeze(0))[0]
    sigmoids = dict(zip(config["label_names"], logits.sigmoid().tolist()))
    assert dict(predict(pulled, images[:1], top_k=3)[0]) == pytest.approx(sigmoids, abs=1e-6)
    classify = pipeline("image-classification", model=repo, top_k=None)
    for image, ours in zip(images, predict(pulled, images, top_k=3)):
        theirs = {row["label"]: row["score"] for row in classify(str(image))}
        assert theirs == pytest.approx(dict(ours), abs=1e-4)
        assert abs(sum(theirs.values()) - 1) > 1e-3  # sigmoids, not a softmax
