"""Loader and training throughput, side by side with the d2l Fine-Tuning chapter's pipeline, on one machine.

    python scripts/benchmark.py                       # hotdog-mini upscaled to 300-600 px photos
    python scripts/benchmark.py --data-dir PHOTOS     # any DIR/train/<class>/*.jpg (+ val/) folder

Every configuration runs in its own subprocess, so its peak RSS is its own. Reported:
(a) images/sec the loader delivers at epoch >= 2: the chapter's (torchvision ImageFolder, RandomResizedCrop
    + flip + ToTensor + Normalize(ImageNet), batch 128) with no workers and with ours, vs ours (decode-once
    cache + uint8 v2 augmentation, uint8 batches), also counting the float conversion + normalization our
    training step does on the batch's device; the one-time cache build;
(b) training epoch wall time (train + eval pass): chapter-style (fp32, NCHW, decode every epoch) vs
    hf_finetune's own `finetune` (cache, channels_last, bf16 autocast), also with --compile;
(c) peak RSS of each configuration's process tree, and its anonymous (non file-backed) part;
(d) ours with 0/1/2 workers, and both pipelines at 1x/4x/16x the images (symlinked copies).
Results print as ratios and are appended to BENCHMARKS.md with the command, machine, date and load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOTDOG_MINI = REPO.parent / "shared" / "data" / "hotdog-mini"
LITE0 = REPO.parent / "shared" / "weights" / "tf_efficientnet_lite0.in1k"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- measuring, inside one configuration's subprocess -------------------------------------------------------

class PeakMemory:
    """Peak memory of the process tree (this process and its DataLoader / map workers), sampled every 50 ms
    from /proc/PID/smaps_rollup: total PSS (shared pages split between the processes that map them, so forked
    workers are not counted twice) and its anonymous part. A memory-mapped cache's pages count in PSS/RSS but
    are page cache the kernel reclaims under pressure; anonymous memory is what the processes themselves hold.
    Plus this process's own peak RSS (VmHWM)."""

    def __init__(self):
        self.pss = self.anon = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.rss = _proc_fields("self/status")["VmHWM"]

    def _run(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            pss = anon = 0
            for process in [me, *me.children(recursive=True)]:
                fields = _proc_fields(f"{process.pid}/smaps_rollup")
                pss, anon = pss + fields.get("Pss", 0), anon + fields.get("Pss_Anon", 0)
            self.pss, self.anon = max(self.pss, pss), max(self.anon, anon)
            self._stop.wait(0.05)


def _proc_fields(name: str) -> dict[str, int]:
    """The 'Key: N kB' lines of a /proc file, in bytes (empty if the process is gone)."""
    try:
        text = Path(f"/proc/{name}").read_text()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if line.endswith(" kB"))
    return {key: int(value.split()[0]) * 1024 for key, value in fields}


def chapter_loaders(root: Path, workers: int, batch_size: int, img_size: int):
    """The chapter's data pipeline, verbatim apart from the size: ImageFolder, its augmentations, ImageNet stats."""
    import torch
    import torchvision
    from torchvision import transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_augs = transforms.Compose([transforms.RandomResizedCrop(img_size), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalize])
    resize = round(img_size * 256 / 224)
    test_augs = transforms.Compose([transforms.Resize([resize, resize]), transforms.CenterCrop(img_size),
                                    transforms.ToTensor(), normalize])
    common = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    train = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root / "train", train_augs), shuffle=True,
                                        **common)
    test = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root / "val", test_augs), **common)
    return train, test


def _settings_model(spec: dict):
    from hf_finetune.model import create_classifier

    return create_classifier(spec["model"], ["a", "b"], pretrained=False, img_size=spec["img_size"])[0]


def _finetune_config(spec: dict, **overrides):
    from hf_finetune.config import FinetuneConfig

    return FinetuneConfig(data_dir=str(spec["root"]), cache_dir=spec["cache_dir"], model=spec["model"],
                          img_size=spec["img_size"], **overrides)


def _train_loader(spec: dict):
    """(loader, what the training step does to its batch before the model): the chapter's batches are model
    input already; ours are uint8 and get loaders.Normalize in the step, which is timed separately."""
    if spec["pipeline"] == "chapter":
        return chapter_loaders(Path(spec["root"]), spec["workers"], spec["batch_size"], spec["img_size"])[0], None
    from hf_finetune.cache import prepare_images
    from hf_finetune.data import load_image_data
    from hf_finetune.loaders import create_dataloaders, create_normalize

    model = _settings_model(spec)
    data = prepare_images(load_image_data(_finetune_config(spec)), model, report=False)
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
    from hf_finetune.cache import prepare_images
    from hf_finetune.data import load_image_data

    data = load_image_data(_finetune_config(spec))
    model = _settings_model(spec)
    started = time.perf_counter()
    prepare_images(data, model, report=False)
    return {"seconds": time.perf_counter() - started, "images": len(data.train) + len(data.eval)}


def measure_chapter_training(spec: dict) -> dict:
    """The chapter's train_fine_tuning loop: fp32, NCHW, summed loss, SGD; test accuracy every epoch."""
    import timm
    import torch

    torch.manual_seed(spec["seed"])
    train_iter, test_iter = chapter_loaders(Path(spec["root"]), 0, spec["batch_size"], spec["img_size"])
    net = timm.create_model(spec["model"], pretrained=False, num_classes=2)
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    trainer = torch.optim.SGD(net.parameters(), lr=spec["lr"] / spec["batch_size"], weight_decay=1e-3)
    epochs = []
    for _ in range(spec["epochs"]):
        started = time.perf_counter()
        net.train()
        images = 0
        for features, labels in train_iter:
            trainer.zero_grad()
            loss(net(features), labels).sum().backward()
            trainer.step()
            images += len(labels)
        train_seconds = time.perf_counter() - started
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for features, labels in test_iter:
                correct += (net(features).argmax(1) == labels).sum().item()
                total += len(labels)
        epochs.append({"seconds": time.perf_counter() - started, "train_images_per_sec": images / train_seconds,
                       "eval_acc": correct / total})
    return {"epochs": epochs}


def measure_our_training(spec: dict) -> dict:
    """hf_finetune's own run (`finetune`), with the settings in spec["overrides"]."""
    from hf_finetune.finetune import finetune

    with tempfile.TemporaryDirectory() as output_dir:
        config = _finetune_config(spec, reuse_classifier=False, epochs=spec["epochs"], batch_size=spec["batch_size"],
                                  seed=spec["seed"], output_dir=output_dir, keep_checkpoints=1, **spec["overrides"])
        history = finetune(config)["history"]
    return {"epochs": [{"seconds": row["epoch_seconds"], "train_images_per_sec": row["examples_per_sec"],
                        "eval_acc": row["eval_acc"]} for row in history]}


MEASURES = {"loader": measure_loader, "profile": measure_profile, "cache_build": measure_cache_build,
            "chapter_training": measure_chapter_training, "our_training": measure_our_training}


def run_measure(spec: dict) -> None:
    with PeakMemory() as memory:
        result = MEASURES[spec["measure"]](spec)
    print("RESULT " + json.dumps({**result, "peak_rss": memory.rss, "peak_pss": memory.pss,
                                  "peak_anon": memory.anon}))


# ---- orchestrating, in the parent process ----------------------------------------------------------------

def run_config(spec: dict) -> dict:
    """Run one configuration in a fresh interpreter and return what it measured."""
    process = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True,
                             text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"configuration {spec} failed:\n{process.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def upscaled_photos(source: Path, target: Path, seed: int = 0) -> Path:
    """Real photos at realistic sizes: each image's shorter side drawn from 300-600 px, saved as JPEG q90."""
    from PIL import Image

    rng = random.Random(seed)
    for path in sorted(source.rglob("*.jpg")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("RGB")
        scale = rng.randint(300, 600) / min(image.size)
        image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC).save(out, quality=90)
    return target


def replicated(source: Path, target: Path, copies: int, limit: int = 0) -> Path:
    """`copies` symlinked copies of every train image (the first `limit` per class if given); val as is."""
    for class_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())[: limit or None]
        (target / "train" / class_dir.name).mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            for file in files:
                (target / "train" / class_dir.name / f"{copy}_{file.name}").symlink_to(file.resolve())
    (target / "val").symlink_to(eval_folder(source).resolve(), target_is_directory=True)
    return target


def eval_folder(photos: Path) -> Path:
    """The held-out split of a DIR/train + DIR/<val|validation|valid|test> photo folder."""
    from hf_finetune.config import EVAL_SPLIT_NAMES

    found = next((photos / name for name in EVAL_SPLIT_NAMES if (photos / name).is_dir()), None)
    if not (photos / "train").is_dir() or found is None:
        raise SystemExit(f"--data-dir {photos}: expected train/<class>/ and one of "
                         f"{'/'.join(EVAL_SPLIT_NAMES)}/<class>/ folders of photos")
    return found


def median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    import torch

    amx = ", AMX-BF16" if "amx_bf16" in cpuinfo else ""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return (f"{len(os.sched_getaffinity(0))} cores, {model}, torch {torch.__version__}, "
            f"{torch.backends.cpu.get_cpu_capability()}{amx}, {memory:.0f} GiB RAM")


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


MEMORY_COLUMNS = "peak RSS, main process (MiB) | peak PSS, all processes (MiB) | of which anonymous (MiB) |"


def _memory(result: dict) -> str:
    return " | ".join(f"{result[key] / 2**20:.0f}" for key in ("peak_rss", "peak_pss", "peak_anon")) + " |"


def benchmark(args, work: Path) -> list[str]:
    from hf_finetune.loaders import default_num_workers

    ours = default_num_workers(1)
    photos = Path(args.data_dir) if args.data_dir else upscaled_photos(HOTDOG_MINI, work / "photos")
    eval_folder(photos)  # a wrong --data-dir fails now, with what it should hold
    base = dict(model=args.model, img_size=args.img_size, batch_size=args.batch_size, seed=0)
    lines = [f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"- command: `{' '.join(shlex.quote(arg) for arg in sys.argv)}`",
             f"- machine: {machine()}", f"- load average (1/5/15 min) at start: {load()}",
             f"- data: {photos if args.data_dir else 'hotdog-mini upscaled to 300-600 px shorter sides'}; "
             f"model {args.model} at {args.img_size} px, batch {args.batch_size}; our default workers: {ours}", ""]

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    # (a), (c), (d): the loaders on 1x / 4x / 16x the images, and the one-time cache build
    say("| loader | images | workers | images/s (epochs >= 2) | vs chapter, 0 workers | vs chapter, same workers | "
        "with the step's Normalize (ours: uint8 batch → float on its device), images/s | vs chapter, 0 workers | "
        + MEMORY_COLUMNS)
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    builds = {}
    for copies in args.scales:
        root = replicated(photos, work / f"x{copies}", copies)
        # Enough epochs that the medians cover >= 3000 images: a 200-image epoch is over in 0.2 s.
        epochs = max(args.loader_epochs, 1 + math.ceil(3000 / sum(1 for _ in (root / "train").glob("*/*"))))
        spec = {**base, "root": str(root), "cache_dir": str(work / f"cache_x{copies}"), "measure": "loader",
                "epochs": epochs}
        builds[copies] = run_config({**spec, "measure": "cache_build"})
        # At 1x every worker count; at larger sizes our default and the most workers, to see memory scale.
        counts = args.workers if copies == 1 else sorted({ours, max(args.workers)})
        configs = [("chapter", w) for w in sorted({0, *(counts if copies == 1 else [])})]
        chapter = {}
        for pipeline, workers in configs + [("ours", w) for w in counts]:
            result = run_config({**spec, "pipeline": pipeline, "workers": workers})
            rate, normalized = median_after_first(result["rates"]), median_after_first(result["rates_normalized"])
            if pipeline == "chapter":
                chapter[workers] = rate
            same = f"{rate / chapter[workers]:.2f}x" if workers in chapter else "-"
            say(f"| {pipeline} | {result['images']} ({copies}x) | {workers} | {rate:.0f} | {rate / chapter[0]:.2f}x | "
                f"{same} | {normalized:.0f} | {normalized / chapter[0]:.2f}x | " + _memory(result))
        # The chapter's epoch decodes the train images and, in its test pass, the val images: all the build decodes.
        builds[copies]["chapter_epoch"] = builds[copies]["images"] / chapter[0]
    say()
    if args.profile:
        for pipeline in ("chapter", "ours"):
            result = run_config({**spec, "measure": "profile", "pipeline": pipeline, "workers": 0})
            say(f"One epoch of the {pipeline} loader at {copies}x, 0 workers, cProfile by own time:")
            say()
            say("```\n" + result["profile"] + "\n```")
            say()
    say("| cache build | images (train + val) | seconds | images/s | vs one chapter epoch (its loader, 0 workers, "
        "over train + val) | "
        + MEMORY_COLUMNS)
    say("|---|---|---|---|---|---|---|---|")
    for copies, build in builds.items():
        say(f"| {copies}x | {build['images']} | {build['seconds']:.1f} | {build['images'] / build['seconds']:.0f} | "
            f"{build['seconds'] / build['chapter_epoch']:.2f}x the time | " + _memory(build))
    say()

    # (b) training: the chapter's loop vs hf_finetune's, ours with each worker count
    if args.epochs:
        spec = {**base, "root": str(replicated(photos, work / "train_subset", 1, limit=args.train_images // 2)),
                "cache_dir": str(work / "cache_train"), "epochs": args.epochs, "lr": args.lr}
        say(f"| training: {args.model}, {args.epochs} epochs of {args.train_images} images | workers | epoch seconds "
            "(train + eval; median of epochs >= 2) | vs chapter | training images/s (data loading included; median "
            "of epochs >= 2) | vs chapter | eval accuracy per epoch | " + MEMORY_COLUMNS)
        say("|---|---|---|---|---|---|---|---|---|---|")
        runs = [("chapter-style: fp32, NCHW, decode every epoch", {"measure": "chapter_training"}, 0)]
        fast = {"pretrained": False, "param_group": False, "lr": args.lr, "mixed_precision": "bf16"}
        runs += [("hf_finetune: cache, channels_last, bf16", {"measure": "our_training",
                                                              "overrides": {**fast, "num_workers": workers}}, workers)
                 for workers in [ours] + [w for w in args.workers if w != ours]]
        if args.compile:
            runs.append(("hf_finetune: the same + --compile (inductor; compiles in epoch 1)",
                         {"measure": "our_training", "overrides": {**fast, "num_workers": ours, "compile": True}}, ours))
        baseline = None
        for name, measure, workers in runs:
            result = run_config({**spec, **measure})
            seconds = median_after_first([epoch["seconds"] for epoch in result["epochs"]])
            rate = median_after_first([epoch["train_images_per_sec"] for epoch in result["epochs"]])
            baseline = baseline or (seconds, rate)
            accuracies = ", ".join(f"{epoch['eval_acc']:.2f}" for epoch in result["epochs"])
            say(f"| {name} | {workers} | {seconds:.1f} | {seconds / baseline[0]:.2f}x | {rate:.1f} | "
                f"{rate / baseline[1]:.2f}x | {accuracies} | " + _memory(result))
        say()
    # (e) accuracy: the fast settings against the plain ones, fine-tuning real pretrained weights
    if args.accuracy_seeds:
        spec = {**base, "root": str(photos), "cache_dir": str(work / "cache_accuracy"), "model": f"local-dir:{LITE0}",
                "img_size": args.accuracy_img_size, "batch_size": 32, "epochs": args.accuracy_epochs}
        say(f"| accuracy: {LITE0.name} pretrained, {args.accuracy_img_size} px, {args.accuracy_epochs} epochs, "
            "batch 32, SGD momentum 0.9 | final eval accuracy per seed | mean | epoch seconds (median) |")
        say("|---|---|---|---|")
        for name, overrides in (("fast: cache, channels_last, bf16", {"mixed_precision": "bf16"}),
                                ("plain: --no-cache, NCHW, fp32", {"cache": False, "channels_last": False})):
            results = [run_config({**spec, "seed": seed, "measure": "our_training",
                                   "overrides": {**overrides, "momentum": 0.9, "num_workers": ours}})
                       for seed in range(args.accuracy_seeds)]
            final = [result["epochs"][-1]["eval_acc"] for result in results]
            seconds = statistics.median(median_after_first([epoch["seconds"] for epoch in result["epochs"]])
                                        for result in results)
            say(f"| {name} | {', '.join(f'{acc:.3f}' for acc in final)} | {statistics.mean(final):.3f} | "
                f"{seconds:.1f} |")
        say()
    say(f"- load average (1/5/15 min) at end: {load()}")
    say()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="a real photo folder DIR/train/<class>, DIR/val/<class> (or validation, "
                                           "valid, test); default: "
                                           "../shared/data/hotdog-mini upscaled to 300-600 px")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="worker counts for our loader at 1x and our training runs")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16], help="dataset sizes, in copies")
    parser.add_argument("--loader-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run (0: skip training)")
    parser.add_argument("--train-images", type=int, default=200, help="train images for the training runs")
    parser.add_argument("--lr", type=float, default=6.4e-3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also train ours with --compile (about a minute of compiling)")
    parser.add_argument("--accuracy-seeds", type=int, default=3, help="seeds per setting for (e) (0: skip)")
    parser.add_argument("--accuracy-epochs", type=int, default=5)
    parser.add_argument("--accuracy-img-size", type=int, default=160)
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="append the tables here ('' to skip)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of one epoch of each loader")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return run_measure(json.loads(args.measure))
    # Upscaled and replicated photos plus their caches take ~1-2 GB: gone when the run ends, however it ends.
    with tempfile.TemporaryDirectory(prefix="hf_finetune_benchmark_") as work:
        lines = benchmark(args, Path(work))
    if args.output:
        with open(args.output, "a") as file:
            file.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
