"""PyTorch fp32 vs ONNX fp32 vs ONNX int8 (issue 23): throughput, file sizes and eval-split accuracy.

`python -m benchmarks.int8 RUN [RUN ...]`: each RUN is a finished run exported with
`scripts/export.py RUN --format onnx --quantize int8`. For every RUN: each model's top-1 accuracy on the run's eval
split (decoded and cropped by the model's own preprocessing), the file sizes, and images/s of the forward pass
alone at batch 1 and batch 32 on already-preprocessed inputs (decoding is the same for all three and would hide
the difference). Every engine uses its default thread count (torch: one per core; onnxruntime: one per physical
core). Prints a Markdown section with the machine, the CPU's int8 instructions and the load.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

BATCH_SIZES = (1, 32)
MIN_SECONDS, MIN_ROUNDS, WARMUP = 3.0, 5, 2


def cpu_description() -> str:
    import platform

    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), []))
    has = {flag: ("yes" if flag in flags else "no") for flag in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")}
    return f"{name}, {os.cpu_count()} cores; " + ", ".join(f"{flag}: {value}" for flag, value in has.items())


def images_per_second(forward, batch: np.ndarray) -> float:
    for _ in range(WARMUP):
        forward(batch)
    rounds, start = 0, time.perf_counter()
    while rounds < MIN_ROUNDS or time.perf_counter() - start < MIN_SECONDS:
        forward(batch)
        rounds += 1
    return rounds * len(batch) / (time.perf_counter() - start)


def engines(run: Path) -> dict:
    """name -> (forward on a float32 NCHW numpy batch, file)."""
    from hf_finetune.serve.onnx_model import INT8_FILE, ONNX_FILE, load_onnx_classifier
    from hf_finetune.serve.predict import load_classifier

    model = load_classifier(run).model.float().eval()

    def torch_forward(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    result = {"PyTorch fp32": (torch_forward, run / "model.safetensors")}
    for name, file in (("ONNX fp32", ONNX_FILE), ("ONNX int8", INT8_FILE)):
        session = load_onnx_classifier(run, file)
        result[name] = (lambda batch, session=session: session.session.run(None, {session.input_name: batch})[0],
                        run / file)
    return result


def measure(run: Path) -> list[dict]:
    from hf_finetune.publish.quantize import model_inputs, run_images
    from hf_finetune.serve.onnx_model import load_onnx_classifier

    classifier = load_onnx_classifier(run)
    eval_files = run_images(run)[1]
    batches = list(model_inputs(classifier, [path for path, _ in eval_files]))
    index = {name: position for position, name in enumerate(classifier.label_names)}
    truth = np.array([index[name] for _, name in eval_files])
    rows = []
    for name, (forward, file) in engines(run).items():
        predicted = np.concatenate([forward(batch).argmax(-1) for batch in batches])
        batch32 = np.concatenate(batches)[:32]
        rows.append({"model": name, "MB": file.stat().st_size / 1e6, "accuracy": float((predicted == truth).mean()),
                     "eval images": len(truth),
                     **{f"img/s batch {size}": images_per_second(forward, batch32[:size]) for size in BATCH_SIZES}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (int8 ONNX, issue 23)\n")
    print(f"`python -m benchmarks.int8 {' '.join(map(str, args.runs))}`; {cpu_description()}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load average {load:.1f} at start")
    for run in args.runs:
        rows = measure(run)
        columns = list(rows[0])
        print(f"\n{run.name} (eval split: {rows[0]['eval images']} images)\n")
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(f"{value:.3f}" if column == "accuracy" else f"{value:.1f}"
                                    if isinstance(value, float) else str(value)
                                    for column, value in row.items()) + " |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
