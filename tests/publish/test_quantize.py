"""int8 ONNX (scripts/export.py --quantize int8): onnxruntime's static QDQ quantization of a finished run, kept only
when it agrees with fp32 on the eval split, and served by `predict.py --onnx --int8`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import run_script
from finished_run import make_finished_run

from hf_finetune.errors import UserError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A finished run with model.onnx (and the run's image folder, which the quantization reads)."""
    run = make_finished_run(tmp_path_factory.mktemp("quantize") / "run")
    run_script("export.py", run, "--format", "onnx")
    return run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_int8_is_qdq_per_channel_kept_beside_fp32_and_served_by_predict_int8(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    fp32_digest = digest(exported / "model.onnx")
    printed = run_script("export.py", exported, "--format", "onnx", "--quantize", "int8").stdout
    assert "quantized" in printed and "required 98%" in printed
    assert digest(exported / "model.onnx") == fp32_digest  # re-exported identically, not replaced by int8
    record = json.loads((exported / "model.int8.json").read_text())
    assert record["agreement"] >= record["min_agreement"] == 0.98
    assert record["eval_images"] == 12 and record["calibration_images"] == 24  # the tiny folder: 4 and 8 per class
    graph = onnx.load(exported / "model.int8.onnx").graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    int8_weights = [name for name, array in initializers.items() if array.dtype.name == "int8" and array.ndim == 4]
    assert int8_weights, "conv weights are stored as int8"
    # Per channel: every conv weight's DequantizeLinear has one scale per output channel.
    per_channel = [node for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights]
    assert all(initializers[node.input[1]].shape == (initializers[node.input[0]].shape[0],) for node in per_channel)

    val = Path(json.loads((exported / "run_config.json").read_text())["config"]["data_dir"]) / "val"
    rows = {}
    for name, flags in (("fp32", ["--onnx"]), ("int8", ["--onnx", "--int8"])):
        run_script("predict.py", exported, val, "--top-k", "1", "--output", tmp_path / f"{name}.jsonl", *flags)
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    agreement = sum(a["labels"] == b["labels"] for a, b in zip(rows["fp32"], rows["int8"])) / len(rows["fp32"])
    assert agreement == pytest.approx(record["agreement"])
    # --int8 ran the int8 file: its probabilities are not fp32's.
    assert [row["probabilities"] for row in rows["int8"]] != [row["probabilities"] for row in rows["fp32"]]


def test_int8_below_the_agreement_bound_is_not_kept(exported):
    from hf_finetune.publish.quantize import quantize_int8

    (exported / "model.int8.onnx").unlink(missing_ok=True)
    fp32_digest = digest(exported / "model.onnx")
    with pytest.raises(UserError, match=r"agrees with fp32 on the top-1 label of .* below the required 101%"):
        quantize_int8(exported, exported, min_agreement=1.01)  # a bound no model can meet
    assert not (exported / "model.int8.onnx").exists()
    assert digest(exported / "model.onnx") == fp32_digest
    assert not [path for path in exported.iterdir() if path.name.startswith(".int8-")]


def test_predict_int8_without_an_int8_export_and_quantize_without_images_say_what_to_do(exported, tmp_path):
    folder = tmp_path / "fp32-only"
    folder.mkdir()
    for name in ("model.onnx", "preprocessor.json"):
        (folder / name).write_bytes((exported / name).read_bytes())
    result = run_script("predict.py", folder, exported / "training_curves.png", "--onnx", "--int8", check=False)
    assert result.returncode == 2 and "no model.int8.onnx" in result.stderr and "--quantize int8" in result.stderr
    result = run_script("export.py", folder, "--format", "onnx", "--quantize", "int8", check=False)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "run_config.json" in result.stderr
    assert "Traceback" not in result.stderr
