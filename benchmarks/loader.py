"""Loader throughput: images/s each pipeline delivers to the training step at epoch >= 2, at 1x/4x/16x the
images and several worker counts, a cProfile of one epoch on request, and the one-time cache build."""

from __future__ import annotations

import math
import time
from pathlib import Path

from benchmarks.chapter import chapter_loaders
from benchmarks.isolated import measure_isolated
from benchmarks.memory import MEMORY_COLUMNS, memory_cells
from benchmarks.photos import replicated
from benchmarks.report import Report, median_after_first
from benchmarks.spec import finetune_config, settings_model


def _train_loader(spec: dict):
    """(loader, what the training step does to its batch before the model): the chapter's batches are model
    input already; ours are uint8 and get loaders.Normalize in the step, which is timed separately."""
    if spec["pipeline"] == "chapter":
        return chapter_loaders(Path(spec["root"]), spec["workers"], spec["batch_size"], spec["img_size"])[0], None
    from hf_finetune.data.cache import prepare_images
    from hf_finetune.data.sources import load_image_data
    from hf_finetune.data.loaders import create_dataloaders, create_normalize

    model = settings_model(spec)
    data = prepare_images(load_image_data(finetune_config(spec)), model, report=False)
    loader = create_dataloaders(data, model, spec["batch_size"], spec["workers"])[0]
    return loader, create_normalize(model)


def _epoch(loader, normalize=None) -> tuple[int, float, float]:
    """Images, seconds waiting for the loader, seconds normalizing in the step."""
    count, loading, normalizing = 0, 0.0, 0.0
    started = time.perf_counter()
    for batch in loader:
        delivered = time.perf_counter()
        loading += delivered - started
        images, labels = (batch[0], batch[1]) if isinstance(batch, list) else (batch["pixel_values"], batch["label"])
        if normalize is not None:
            normalize(images)
        count += len(labels)
        started = time.perf_counter()
        normalizing += started - delivered
    return count, loading, normalizing


def measure_loader(spec: dict) -> dict:
    loader, normalize = _train_loader(spec)
    epochs = [_epoch(loader, normalize) for _ in range(spec["epochs"])]
    return {"rates": [count / loading for count, loading, _ in epochs],
            "rates_normalized": [count / (loading + normalizing) for count, loading, normalizing in epochs],
            "images": epochs[-1][0]}


def measure_profile(spec: dict) -> dict:
    """cProfile of one epoch (after a warm-up epoch) of a loader in this process: where the time goes."""
    import cProfile
    import io
    import pstats

    loader, normalize = _train_loader(spec)
    _epoch(loader, normalize)
    profiler = cProfile.Profile()
    count, loading, normalizing = profiler.runcall(_epoch, loader, normalize)
    seconds = loading + normalizing
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    body = text.getvalue()
    return {"profile": f"{count} images in {seconds:.2f} s ({count / seconds:.0f}/s, profiled)\n"
                       + body[body.index("   ncalls"):].rstrip()}


def measure_cache_build(spec: dict) -> dict:
    from hf_finetune.data.cache import prepare_images
    from hf_finetune.data.sources import load_image_data

    data = load_image_data(finetune_config(spec))
    model = settings_model(spec)
    started = time.perf_counter()
    prepare_images(data, model, report=False)
    return {"seconds": time.perf_counter() - started, "images": len(data.train) + len(data.eval)}


def loader_section(report: Report, args, photos: Path, work: Path, base: dict, ours: int) -> None:
    """(a), (c), (d): the loaders on 1x / 4x / 16x the images, and the one-time cache build."""
    report.say("| loader | images | workers | images/s (epochs >= 2) | vs chapter, 0 workers | vs chapter, same "
               "workers | with the step's Normalize (ours: uint8 batch → float on its device), images/s | vs chapter, "
               "0 workers | " + MEMORY_COLUMNS)
    report.say("|---|---|---|---|---|---|---|---|---|---|---|")
    builds = {}
    for copies in args.scales:
        root = replicated(photos, work / f"x{copies}", copies)
        # Enough epochs that the medians cover >= 3000 images: a 200-image epoch is over in 0.2 s.
        epochs = max(args.loader_epochs, 1 + math.ceil(3000 / sum(1 for _ in (root / "train").glob("*/*"))))
        spec = {**base, "root": str(root), "cache_dir": str(work / f"cache_x{copies}"), "measure": "loader",
                "epochs": epochs}
        builds[copies] = measure_isolated({**spec, "measure": "cache_build"})
        # At 1x every worker count; at larger sizes our default and the most workers, to see memory scale.
        counts = args.workers if copies == 1 else sorted({ours, max(args.workers)})
        chapter_rate = _loader_rows(report, spec, copies, counts)
        # The chapter's epoch decodes the train images and, in its test pass, the val images: all the build decodes.
        builds[copies]["chapter_epoch"] = builds[copies]["images"] / chapter_rate
    report.say()
    if args.profile:
        _profiles(report, spec, copies)
    _cache_build_table(report, builds)


def _loader_rows(report: Report, spec: dict, copies: int, counts: list[int]) -> float:
    """One row per pipeline and worker count at this scale; returns the chapter's rate without workers."""
    configs = [("chapter", w) for w in sorted({0, *(counts if copies == 1 else [])})]
    chapter = {}
    for pipeline, workers in configs + [("ours", w) for w in counts]:
        result = measure_isolated({**spec, "pipeline": pipeline, "workers": workers})
        rate, normalized = median_after_first(result["rates"]), median_after_first(result["rates_normalized"])
        if pipeline == "chapter":
            chapter[workers] = rate
        same = f"{rate / chapter[workers]:.2f}x" if workers in chapter else "-"
        report.say(f"| {pipeline} | {result['images']} ({copies}x) | {workers} | {rate:.0f} | {rate / chapter[0]:.2f}x "
                   f"| {same} | {normalized:.0f} | {normalized / chapter[0]:.2f}x | " + memory_cells(result))
    return chapter[0]


def _profiles(report: Report, spec: dict, copies: int) -> None:
    for pipeline in ("chapter", "ours"):
        result = measure_isolated({**spec, "measure": "profile", "pipeline": pipeline, "workers": 0})
        report.say(f"One epoch of the {pipeline} loader at {copies}x, 0 workers, cProfile by own time:")
        report.say()
        report.say("```\n" + result["profile"] + "\n```")
        report.say()


def _cache_build_table(report: Report, builds: dict) -> None:
    report.say("| cache build | images (train + val) | seconds | images/s | vs one chapter epoch (its loader, 0 "
               "workers, over train + val) | " + MEMORY_COLUMNS)
    report.say("|---|---|---|---|---|---|---|---|")
    for copies, build in builds.items():
        report.say(f"| {copies}x | {build['images']} | {build['seconds']:.1f} | "
                   f"{build['images'] / build['seconds']:.0f} | {build['seconds'] / build['chapter_epoch']:.2f}x "
                   "the time | " + memory_cells(build))
    report.say()
