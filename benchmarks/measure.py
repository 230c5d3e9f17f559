"""`python -m benchmarks.measure SPEC`: measure one configuration in this process (started by
`isolated.measure_isolated`) and print what it measured, with the process tree's peak memory, as a RESULT line."""

from __future__ import annotations

import json
import sys

from benchmarks.chapter import measure_chapter_training
from benchmarks.loader import measure_cache_build, measure_loader, measure_profile
from benchmarks.memory import PeakMemory
from benchmarks.streaming import measure_cached, measure_streamed
from benchmarks.training import measure_our_training

MEASURES = {"loader": measure_loader, "profile": measure_profile, "cache_build": measure_cache_build,
            "chapter_training": measure_chapter_training, "our_training": measure_our_training,
            "streamed": measure_streamed, "cached": measure_cached}


def run_measure(spec: dict) -> None:
    with PeakMemory() as memory:
        result = MEASURES[spec["measure"]](spec)
    print("RESULT " + json.dumps({**result, "peak_rss": memory.rss, "peak_pss": memory.pss,
                                  "peak_anon": memory.anon}))


if __name__ == "__main__":
    run_measure(json.loads(sys.argv[1]))
