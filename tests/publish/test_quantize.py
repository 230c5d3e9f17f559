"""int8 ONNX (scripts/export.py --quantize int8): onnxruntime's static QDQ quantization of a finished run, kept only
when it agrees with fp32 on the eval split (multi-label: when its eval mAP is within 1 point of fp32's), and
served by `predict.py --onnx --int8`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import run_script
from finished_run import make_finished_multi_label_run, make_finished_run

from hf_finetune.errors import UserError

# onnxruntime's calibration and quantization of a run (minutes under load): CI's first step runs them,
# its floors step does not.
pytestmark = pytest.mark.slow

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> tuple[Path, str]:
    """A finished run (whose image folder the quantization reads) exported with --quantize int8; what it printed."""
    run = make_finished_run(tmp_path_factory.mktemp("quantize") / "run")
    return run, run_script("export.py", run, "--format", "onnx", "--quantize", "int8").stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_int8_is_qdq_per_channel_kept_beside_fp32_and_served_by_predict_int8(quantized, tmp_path):
    import onnx
    from onnx import numpy_helper

    run, printed = quantized
    assert "quantized" in printed and "required 98%" in printed
    assert "QuantizeLinear" not in {node.op_type for node in onnx.load(run / "model.onnx").graph.node}
    record = json.loads((run / "model.int8.json").read_text())
    assert record["agreement"] >= record["min_agreement"] == 0.98
    assert record["eval_images"] == 12 and record["calibration_images"] == 24  # the tiny folder: 4 and 8 per class
    graph = onnx.load(run / "model.int8.onnx").graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    int8_weights = [name for name, array in initializers.items() if array.dtype.name == "int8" and array.ndim == 4]
    assert int8_weights, "conv weights are stored as int8"
    # Per channel: every conv weight's DequantizeLinear has one scale per output channel.
    per_channel = [node for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights]
    assert all(initializers[node.input[1]].shape == (initializers[node.input[0]].shape[0],) for node in per_channel)

    val = Path(json.loads((run / "run_config.json").read_text())["config"]["data_dir"]) / "val"
    rows = {}
    for name, flags in (("fp32", ["--onnx"]), ("int8", ["--onnx", "--int8"])):
        run_script("predict.py", run, val, "--top-k", "1", "--output", tmp_path / f"{name}.jsonl", *flags)
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    agreement = sum(a["labels"] == b["labels"] for a, b in zip(rows["fp32"], rows["int8"])) / len(rows["fp32"])
    assert agreement == pytest.approx(record["agreement"])
    # --int8 ran the int8 file: its probabilities are not fp32's.
    assert [row["probabilities"] for row in rows["int8"]] != [row["probabilities"] for row in rows["fp32"]]


def test_int8_below_the_agreement_bound_is_not_kept(quantized, tmp_path):
    from hf_finetune.publish.quantize import quantize_int8

    run = quantized[0]
    export_dir = tmp_path / "export"  # the run's fp32 export alone
    export_dir.mkdir()
    for name in ("model.onnx", "preprocessor.json"):
        (export_dir / name).write_bytes((run / name).read_bytes())
    with pytest.raises(UserError, match=r"top-1 agrees with fp32 on .* \(required 101%\).*not kept"):
        quantize_int8(run, export_dir, min_agreement=1.01)  # a bound no model can meet
    assert sorted(path.name for path in export_dir.iterdir()) == ["model.onnx", "preprocessor.json"]
    assert digest(export_dir / "model.onnx") == digest(run / "model.onnx")


def test_an_int8_model_of_an_earlier_export_is_refused(quantized, tmp_path):
    import onnx

    run = quantized[0]
    folder = tmp_path / "re-exported"
    folder.mkdir()
    for name in ("model.int8.onnx", "model.int8.json", "preprocessor.json"):
        (folder / name).write_bytes((run / name).read_bytes())
    fp32 = onnx.load(run / "model.onnx")
    fp32.doc_string = "exported again"  # other bytes: what a later export without --quantize leaves beside it
    onnx.save(fp32, folder / "model.onnx")
    result = run_script("predict.py", folder, run / "training_curves.png", "--onnx", "--int8", check=False)
    assert result.returncode == 2 and "quantized from an earlier model.onnx" in result.stderr


def test_predict_int8_without_an_int8_export_and_quantize_without_images_say_what_to_do(quantized, tmp_path):
    run = quantized[0]
    folder = tmp_path / "fp32-only"
    folder.mkdir()
    for name in ("model.onnx", "preprocessor.json"):
        (folder / name).write_bytes((run / name).read_bytes())
    result = run_script("predict.py", folder, run / "training_curves.png", "--onnx", "--int8", check=False)
    assert result.returncode == 2 and "no model.int8.onnx" in result.stderr and "--quantize int8" in result.stderr
    result = run_script("export.py", folder, "--format", "onnx", "--quantize", "int8", check=False)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "run_config.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_int8_export_goes_to_the_hub_and_predict_int8_pulls_it_by_name(quantized, hub, hub_env, monkeypatch,
                                                                           tmp_path):
    from hf_finetune.publish.hub import push_onnx
    from hf_finetune.serve.onnx_model import INT8_RECORD

    run = quantized[0]
    run_script("push.py", run, "tester/int8-model", env=hub_env)
    monkeypatch.setenv("HF_TOKEN", hub_env["HF_TOKEN"])
    push_onnx(run, "tester/int8-model", run, ("model.int8.onnx", INT8_RECORD))
    pushed = hub.files("tester/int8-model")
    assert pushed["model.int8.onnx"] == (run / "model.int8.onnx").read_bytes() and INT8_RECORD in pushed
    val = Path(json.loads((run / "run_config.json").read_text())["config"]["data_dir"]) / "val"
    for source, name in ((run, "local"), ("tester/int8-model", "hub")):
        run_script("predict.py", source, val, "--onnx", "--int8", "--output", tmp_path / f"{name}.jsonl", env=hub_env)
    assert (tmp_path / "local.jsonl").read_text() == (tmp_path / "hub.jsonl").read_text()


@pytest.fixture(scope="module")
def multi_label_export(tmp_path_factory) -> tuple[Path, Path]:
    """A finished multi-label run (colour manifests) exported to ONNX; its data folder."""
    run, data = make_finished_multi_label_run(tmp_path_factory.mktemp("quantize-multi-label") / "run")
    run_script("export.py", run, "--format", "onnx")
    return run, data


def test_multi_label_export_keeps_int8_exactly_when_its_map_is_within_one_point(multi_label_export, tmp_path):
    """export.py --quantize int8 on a multi-label run: the decision follows the mAP bound (the tiny model of
    this test may land on either side of it), and says both mAPs and the decisions' agreement."""
    import re
    import shutil

    run = tmp_path / "run"
    shutil.copytree(multi_label_export[0], run)
    result = run_script("export.py", run, "--format", "onnx", "--quantize", "int8", check=False)
    found = re.search(r"eval mAP fp32 ([0-9.]+), int8 ([0-9.]+) \(required: at most 1 point below fp32\); every "
                      r"decision agrees on [0-9.]+% of 8 eval images", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    drop = float(found.group(1)) - float(found.group(2))
    if result.returncode == 0:
        assert drop <= 0.01 + 1e-4 and (run / "model.int8.onnx").is_file()
    else:
        assert result.returncode == 2 and result.stderr.startswith("error: the int8 model falls short")
        assert drop > 0.01 - 1e-4 and not (run / "model.int8.onnx").exists()


def test_multi_label_int8_records_its_map_as_predict_int8_scores_it(multi_label_export, tmp_path):
    """model.int8.json's mAPs (the task's metrics) are those of `--onnx` and `--onnx --int8` predictions of the
    eval manifest, and its agreement is the share of images whose predicted labels are the same."""
    import csv
    import shutil

    from hf_finetune.publish.quantize import quantize_int8
    from hf_finetune.tasks.multi_label_metrics import average_precision

    run, data = tmp_path / "run", multi_label_export[1]
    shutil.copytree(multi_label_export[0], run)
    quantize_int8(run, run, max_map_drop=1.0)  # kept whatever its mAP, to compare what it recorded
    record = json.loads((run / "model.int8.json").read_text())
    assert record["eval_images"] == 8 and record["calibration_images"] == 16 and record["max_map_drop"] == 1.0
    with open(data / "val.csv") as file:
        truth = {str(data / row["image"]): row["labels"].split() for row in csv.DictReader(file)}
    predicted = {}
    for name, flags in (("fp32", ["--onnx"]), ("int8", ["--onnx", "--int8"])):
        output = tmp_path / f"{name}.jsonl"
        run_script("predict.py", run, *sorted(truth), "--top-k", "3", "--output", output, *flags)
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        predicted[name] = [sorted(row["predicted"]) for row in rows]
        aps = []
        for label in ("blue", "green", "red"):
            scores = torch.tensor([dict(zip(row["labels"], row["probabilities"]))[label] for row in rows])
            aps.append(average_precision(scores, torch.tensor([label in truth[row["path"]] for row in rows])))
        assert sum(aps) / 3 == pytest.approx(record[f"{name}_map"], abs=1e-6), name
    agreement = sum(a == b for a, b in zip(predicted["fp32"], predicted["int8"])) / 8
    assert agreement == pytest.approx(record["agreement"])


def test_multi_label_int8_below_the_map_bound_is_not_kept(multi_label_export, tmp_path):
    from hf_finetune.publish.quantize import quantize_int8

    run = multi_label_export[0]
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    for name in ("model.onnx", "preprocessor.json"):
        (export_dir / name).write_bytes((run / name).read_bytes())
    with pytest.raises(UserError, match=r"eval mAP fp32 .* \(required: at most -100 point below fp32\).*not kept"):
        quantize_int8(run, export_dir, max_map_drop=-1.0)  # int8 would have to beat fp32 by 100 points
    assert sorted(path.name for path in export_dir.iterdir()) == ["model.onnx", "preprocessor.json"]
