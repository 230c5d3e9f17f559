"""What a run section records besides its tables (the machine, the load) and how it is collected."""

from __future__ import annotations

import os
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path


def machine() -> str:
    """Cores, CPU model and whether it runs bf16 natively (bf16 autocast is fast only where it does: 10-14x slower
    than fp32 on an AVX2-only AMD EPYC), torch, its CPU capability, RAM."""
    import torch

    from hf_finetune.hardware import cpu_has_native_bf16, cpu_model

    amx = ", AMX-BF16" if "amx_bf16" in Path("/proc/cpuinfo").read_text() else ""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return (f"{len(os.sched_getaffinity(0))} cores, {cpu_model()}, native bf16: "
            f"{'yes' if cpu_has_native_bf16() else 'no'}, torch {torch.__version__}, "
            f"{torch.backends.cpu.get_cpu_capability()}{amx}, {memory:.0f} GiB RAM")


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


class Report:
    """The lines of one run section: each is printed as it comes (a full run takes ~15 min) and kept."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def section_header(module: str, title: str = "") -> list[str]:
    """The lines that open a run section in BENCHMARKS.md: date, the command that wrote it, machine, load."""
    return [f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC{f' ({title})' if title else ''}", "",
            f"- command: `{shlex.join(['python', '-m', module, *sys.argv[1:]])}`",
            f"- machine: {machine()}", f"- load average (1/5/15 min) at start: {load()}"]


def append_section(output: str, lines: list[str]) -> None:
    """Add a run section to the end of BENCHMARKS.md (or another file); '' writes nothing."""
    if output:
        with open(output, "a") as file:
            file.write("\n".join(lines) + "\n")
