"""Whether bf16 pays on this CPU: one training step (forward + backward + SGD) in each number format.

    python -m benchmarks.precision [--model resnet18] [--img-size 224] [--batch-size 32] [--steps 5]

fp32 and bf16 autocast, each with an NCHW and a channels_last model. bf16 is fast only on a CPU that runs it
natively (AVX512-BF16 / AMX); elsewhere oneDNN emulates it, and an AVX2-only AMD EPYC measured it 10-14x slower
than fp32 channels_last: `--mixed-precision auto`, a run's default, then picks fp32. The table, with the command,
date, CPU model, native-bf16 flag and load, is appended to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import REPO
from benchmarks.report import append_section, load, section_header

# (precision, memory layout of the model): the four combinations a user can choose between.
FORMATS = [("fp32", "NCHW"), ("fp32", "channels_last"), ("bf16", "NCHW"), ("bf16", "channels_last")]


def training_step(model_name: str, img_size: int, batch_size: int, precision: str, layout: str):
    """One training step in this format, as a function of nothing. The batch stays NCHW, as hf_finetune's loader
    delivers it: a channels_last model's first convolution takes it as is."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=2).train()
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    images, labels = torch.randn(batch_size, 3, img_size, img_size), torch.randint(0, 2, (batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        # The autocast a run gets from Accelerate for --mixed-precision bf16 on the CPU.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def median_step_seconds(steps: dict, count: int) -> dict:
    """The median seconds of `count` timed calls of each step, after one warm-up call each (oneDNN picks its
    kernels on the first). Calls take turns, so a burst of load on the shared machine hits every format."""
    for step in steps.values():
        step()
    seconds = {name: [] for name in steps}
    for _ in range(count):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def precision_table(args) -> list[str]:
    """One row per format: images/s of the median step, and the ratio to fp32 NCHW (the chapter's format)."""
    steps = {f"{precision} {layout}": training_step(args.model, args.img_size, args.batch_size, precision, layout)
             for precision, layout in FORMATS}
    medians = median_step_seconds(steps, args.steps)
    baseline = medians["fp32 NCHW"]
    return [f"| one training step (fwd + bwd + SGD): {args.model}, {args.img_size} px, batch {args.batch_size}, "
            f"median of {args.steps} steps | images/s | vs fp32 NCHW |", "|---|---|---|",
            *(f"| {name} | {args.batch_size / median:.1f} | {baseline / median:.2f}x |"
              for name, median in medians.items())]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a timm architecture (random weights: speed only)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per format, after one warm-up step")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="append the table here ('' to skip)")
    return parser.parse_args()


def main() -> None:
    from hf_finetune.hardware import machine_precision

    args = parse_args()
    lines = [*section_header("benchmarks.precision", "precision micro-benchmark"),
             f"- `--mixed-precision auto` picks here: {machine_precision('auto').describe()}", ""]
    lines += precision_table(args)
    print("\n".join(lines), flush=True)
    lines += ["", f"- load average (1/5/15 min) at end: {load()}", ""]
    append_section(args.output, lines)


if __name__ == "__main__":
    main()
