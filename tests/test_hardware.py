"""What the machine offers: its cores per process (DataLoader workers), and the precision that fits it
(`--mixed-precision auto` and the warning for emulated bf16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_image_folder, run_script
from hub_server import free_port

from hf_finetune.hardware import (available_cpus, cores_per_process, cpu_has_native_bf16, cuda_has_native_bf16,
                                  machine_precision,
                                  processes_on_this_machine, resolve_precision)


@pytest.mark.parametrize("environ, expected", [
    ({}, 64),  # no launcher says otherwise: one machine runs them all
    ({"WORLD_SIZE": "64", "LOCAL_WORLD_SIZE": "8"}, 8),  # torchrun / accelerate launch, 8 nodes x 8 GPUs
    ({"OMPI_COMM_WORLD_SIZE": "64", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, 8),  # Open MPI
    ({"MPI_LOCALNRANKS": "4"}, 4),  # Intel MPI / MPICH
    ({"MV2_COMM_WORLD_LOCAL_SIZE": "2"}, 2),  # MVAPICH2
    ({"LOCAL_WORLD_SIZE": ""}, 64), ({"LOCAL_WORLD_SIZE": "0"}, 64),  # unset or nonsense: all of them
])
def test_processes_on_this_machine_come_from_the_launcher(environ, expected):
    assert processes_on_this_machine(64, environ) == expected


def test_cores_are_shared_by_this_machines_processes_not_the_whole_launch():
    # 8 machines x 8 GPUs, 32 cores each: 4 cores per process (the total count gave 32 // 64 = 0 workers)
    assert cores_per_process(64, {"WORLD_SIZE": "64", "LOCAL_WORLD_SIZE": "8"}, cpus=32) == 4
    assert cores_per_process(8, {"LOCAL_WORLD_SIZE": "8"}, cpus=32) == cores_per_process(8, {}, cpus=32) == 4
    assert cores_per_process(2, {}) == available_cpus() // 2


CORES_SCRIPT = """
from accelerate import Accelerator
from hf_finetune.hardware import available_cpus, cores_per_process
accelerator = Accelerator(cpu=True)
print(f"process {accelerator.process_index} of {accelerator.num_processes}: "
      f"{cores_per_process(accelerator.num_processes)} of {available_cpus()} cores")
"""


def test_two_machines_of_one_process_each_give_each_process_all_its_machines_cores(tmp_path):
    """A real two-node launch (two torchrun agents meeting on 127.0.0.1): each node runs one of 2 processes."""
    script = tmp_path / "cores.py"
    script.write_text(CORES_SCRIPT)
    port = free_port()
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                                "1", "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                                str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for node in (0, 1)]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    cpus = available_cpus()
    for node, (agent, (out, err)) in enumerate(zip(agents, outputs)):
        assert agent.returncode == 0, err[-3000:]
        assert f"process {node} of 2: {cpus} of {cpus} cores" in out, out


@pytest.mark.parametrize("device, bf16_supported, expected", [
    ("cpu", True, "bf16"),  # Xeon with AMX / AVX512-BF16
    ("cpu", False, "no"),  # AMD EPYC with AVX2 only: bf16 would be emulated, 10-14x slower
    ("cuda", True, "bf16"),
    ("cuda", False, "fp16"),  # e.g. a V100: fp16 with a gradient scaler
    ("mps", False, "no"),
])
def test_auto_picks_bf16_only_where_it_runs_natively(device, bf16_supported, expected):
    precision = resolve_precision("auto", device, bf16_supported)
    assert precision.mixed_precision == expected
    assert precision.reason.startswith("auto: ") and precision.slow_warning is None


@pytest.mark.parametrize("gpu, capability, hip, expected", [
    ("V100", (7, 0), False, "fp16"),  # torch.cuda.is_bf16_supported() says True: bf16 emulated, slow
    ("T4", (7, 5), False, "fp16"),  # likewise
    ("A100", (8, 0), False, "bf16"),
    ("RTX 4090", (8, 9), False, "bf16"),
    ("H100", (9, 0), False, "bf16"),
    ("MI250 (ROCm)", (9, 0), True, "bf16"),  # ROCm reports gfx90a as 9.0; torch counts every ROCm GPU as native
])
def test_auto_on_a_gpu_is_bf16_from_ampere_on_and_fp16_before(gpu, capability, hip, expected):
    precision = resolve_precision("auto", "cuda", cuda_has_native_bf16(capability, hip))
    assert precision.mixed_precision == expected, gpu
    if expected == "fp16":  # Accelerate's "fp16" scales the loss (torch GradScaler): the run says so
        assert "gradient scaler" in precision.reason and "8.0" in precision.reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_capability_rule_is_torchs_on_this_gpu():
    assert cuda_has_native_bf16(torch.cuda.get_device_capability(), bool(torch.version.hip)) == \
        torch.cuda.is_bf16_supported(including_emulation=False)
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    assert machine_precision("auto").mixed_precision == expected


@pytest.mark.parametrize("mixed_precision, name", [("no", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_a_precision_is_named_as_people_name_it(mixed_precision, name):
    precision = resolve_precision(mixed_precision, "cpu", bf16_native=True)
    assert precision.name == name and precision.describe() == f"{name} (as asked)"


@pytest.mark.parametrize("requested", ["no", "bf16", "fp16"])
def test_an_explicit_choice_is_kept(requested):
    for device, supported in (("cpu", True), ("cuda", True), ("cuda", False)):
        precision = resolve_precision(requested, device, supported)
        assert (precision.mixed_precision, precision.reason, precision.slow_warning) == (requested, "as asked", None)


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_in_one_line():
    warning = resolve_precision("bf16", "cpu", bf16_native=False).slow_warning
    assert warning and "\n" not in warning and "--mixed-precision auto" in warning and "slower" in warning


def test_a_run_prints_and_records_the_precision_it_chose(tmp_path):
    folder = make_image_folder(tmp_path / "data")
    out = tmp_path / "out"
    result = run_script("finetune.py", "--data-dir", folder, "--model", "test_resnet", "--no-pretrained",
                        "--batch-size", "4", "--num-workers", "0", "--epochs", "1", "--output-dir", out)
    chosen = machine_precision("auto")
    assert chosen.mixed_precision == ("bf16" if cpu_has_native_bf16() else "no")
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["config"]["mixed_precision"] == "auto"
    assert (run_config["mixed_precision"], run_config["mixed_precision_reason"]) == (chosen.mixed_precision,
                                                                                     chosen.reason)
    assert f"precision {chosen.describe()}" in result.stdout
    assert chosen.reason in (out / "README.md").read_text()
    assert "much slower" not in result.stderr  # auto never picks the slow path


# This CPU limited to the kernels of one without native bf16 (e.g. an AMD EPYC with AVX2 only): oneDNN then
# reports no native bf16, exactly as it does there.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def test_without_native_bf16_auto_trains_in_fp32_and_explicit_bf16_warns_once(tmp_path):
    folder = make_image_folder(tmp_path / "data")
    env = {**os.environ, **AVX2_ONLY}
    common = ["--data-dir", folder, "--model", "test_resnet", "--no-pretrained", "--batch-size", "4",
              "--num-workers", "0", "--epochs", "1"]
    auto = run_script("finetune.py", *common, "--output-dir", tmp_path / "auto", env=env)
    run_config = json.loads((tmp_path / "auto" / "run_config.json").read_text())
    assert run_config["mixed_precision"] == "no" and "no native bf16" in run_config["mixed_precision_reason"]
    assert "precision fp32 (auto: this CPU has no native bf16" in auto.stdout and "much slower" not in auto.stderr
    asked = run_script("finetune.py", *common, "--mixed-precision", "bf16", "--output-dir", tmp_path / "bf16",
                       env=env, processes=2)
    assert asked.stderr.count("--mixed-precision bf16 on a CPU without native bf16") == 1  # once, not per process
