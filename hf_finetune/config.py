"""The run's configuration: one dataclass whose field docs are the `--help` (litgpt style).

`transformers.HfArgumentParser` turns every field into `--field-name` (and `--field_name`); a
YAML or JSON file given with `--config` supplies defaults that flags on the command line override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from hf_finetune.errors import UserError, first_line
from hf_finetune.hardware import Precision

EVAL_SPLIT_NAMES = ("val", "validation", "valid", "test")
# The size resolve_config fills the recipe for when a stream's size is unknown: a large set (the largest batch).
STREAM_OF_UNKNOWN_SIZE = 1_000_000
# --select-metric name -> (key of metrics.ClassificationMetrics.compute(), True when higher is better)
SELECT_METRICS = {"eval_loss": ("loss", False), "accuracy": ("accuracy", True), "macro_f1": ("macro_f1", True),
                  "balanced_accuracy": ("balanced_accuracy", True), "top5": ("top5", True)}
# the same for multi-label data (tasks.multi_label.MultiLabel)
MULTI_LABEL_SELECT_METRICS = {"eval_loss": ("loss", False), "map": ("map", True), "micro_f1": ("micro_f1", True),
                              "macro_f1": ("macro_f1", True), "exact_match": ("exact_match", True)}


from hf_finetune.recipes import DEFAULT_RECIPE, RECIPES, backbone_lr, fill_from_recipe, get_recipe  # noqa: F401

# Options a recipe fills when left unset (None); the --help of each says "default: the recipe's".
RECIPE_NOTE = " Default: the --recipe's value."


def _to_bool(text: str) -> bool:
    """An Optional[bool] flag's value (HfArgumentParser's own parsing covers plain bool fields only)."""
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise UserError(f"expected true or false, got {text!r}")


def _doc(text: str, argparse: Optional[dict] = None, **kwargs):
    """A field whose `--help` is `text`; `argparse` adds add_argument options (HfArgumentParser passes them)."""
    return field(metadata={"help": text, **(argparse or {})}, **kwargs)


@dataclass
class FinetuneConfig:
    # data
    data_dir: Optional[str] = _doc(
        "Class-per-folder image tree: DIR/train/<class>/*.jpg plus an eval split named "
        f"{'/'.join(EVAL_SPLIT_NAMES)} (or no eval split: see --val-fraction); or manifests named after the "
        "splits, train.csv beside val.csv (see --train-file). "
        "Unset (and no --dataset-name): the d2l hotdog set, downloaded once and SHA-1 checked.",
        default=None,
    )
    dataset_name: Optional[str] = _doc(
        "Hub dataset id (e.g. 'user/food'), loaded with datasets.load_dataset; needs an image column "
        "and a ClassLabel (or string) label column.",
        default=None,
    )
    dataset_config: Optional[str] = _doc("Configuration name of the Hub dataset, if it has several.", default=None)
    train_split: str = _doc("Name of the training split.", default="train")
    eval_split: Optional[str] = _doc(
        f"Name of the eval split; default: the first of {', '.join(EVAL_SPLIT_NAMES)} that exists.",
        default=None,
    )
    val_fraction: float = _doc(
        "When the data has no eval split: hold out this fraction of train, stratified by class and "
        "seeded with --seed.",
        default=0.1,
    )
    train_file: Optional[str] = _doc(
        "Manifest of the training images, CSV or JSONL: an image path column (relative to the manifest's folder) "
        "and a label column of one label or several (see --label-delimiter). A --data-dir holding train.csv (or "
        ".jsonl) beside val.csv / test.csv is read the same way.",
        default=None,
    )
    eval_file: Optional[str] = _doc("Manifest of the eval split (needs --train-file); none: --val-fraction of "
                                    "train is held out.", default=None)
    test_file: Optional[str] = _doc("Manifest of a test split that scores the selected model once (needs "
                                    "--eval-file, which selects it).", default=None)
    label_delimiter: Optional[str] = _doc(
        "What separates several labels: in a manifest's label cell (default: a space in CSV; JSONL takes a JSON "
        "list), or in a --data-dir class folder's name ('_': red_dress/ gives its images the labels red and dress).",
        default=None,
    )
    task: Literal["auto", "single-label", "multi-label"] = _doc(
        "'auto': multi-label when any image (of any split) has no label or several, else single-label (the "
        "start-up line says which and why); or force one. Single-label refuses such images.",
        default="auto",
    )
    image_column: Optional[str] = _doc("Image column of a Hub dataset (default 'image' or 'img') or a manifest "
                                       "(default image, image_path, path, file_name, filename, file or img).",
                                       default=None)
    label_column: Optional[str] = _doc("Label column of a Hub dataset (default 'label' or 'labels'), or a manifest "
                                       "(default label, labels, tags or target); a Hub column of lists (a "
                                       "Sequence of ClassLabel or of strings) is multi-label.", default=None)
    streaming: bool = _doc(
        "Stream the training split (--dataset-name, or --data-files shards) record by record instead of decoding it "
        "once into the cache: for data larger than the disk. Each process reads its own shards; labels come from "
        "the dataset's ClassLabel features or --label-names; the length is --max-steps (or --epochs when the "
        "dataset's info gives its size); the eval split stays map-style (or its first --max-eval-samples records "
        "are streamed). With --streaming an 'epoch' of metrics.json and the checkpoints is a round of "
        "--checkpoint-every steps.",
        default=False,
    )
    data_files: Optional[str] = _doc(
        "With --streaming: the training shards, parquet files or webdataset tars: a glob ('shards/train-*.parquet', "
        "'hf://datasets/org/name/data/*.parquet') or a brace range ('shards/train-{000000..000099}.tar').",
        default=None,
    )
    eval_data_files: Optional[str] = _doc("With --data-files: the eval split's files, as --data-files.", default=None)
    label_names: Optional[str] = _doc(
        "With --streaming: the class names in class-index order, 'cat,dog' or a file with one per line, for a "
        "stream whose label column is not a ClassLabel (a stream cannot be scanned for them); records may hold "
        "the names or the indices.",
        default=None,
    )
    shuffle_buffer: int = _doc(
        "With --streaming: records shuffled together in memory (in blocks of this many, resumable exactly), "
        "after the shard order is shuffled per epoch.",
        default=1000,
    )
    cache_dir: Optional[str] = _doc(
        "Where downloads (hotdog.zip) and the datasets cache go; default ~/.cache/hf_finetune "
        "(or $HF_FINETUNE_CACHE).",
        default=None,
    )
    cache: bool = _doc(
        "Decode every image once into a resized uint8 Arrow cache (memory-mapped, reused across epochs and "
        "runs, rebuilt when the files or the model's data config change); --no-cache decodes every epoch.",
        default=True,
    )
    max_bad_fraction: float = _doc(
        "Unreadable images (truncated, empty, not an image, decompression bombs) are reported and skipped; "
        "more than this fraction of a split fails the run instead.",
        default=0.01,
    )
    num_workers: Optional[int] = _doc(
        "DataLoader worker processes per training process; default: with a GPU, CPU cores / processes (at "
        "most 8); CPU-only, 0 below 8 cores per process (workers would steal the training step's cores).",
        default=None,
    )

    # model
    model: str = _doc(
        "Any timm model name, 'hf-hub:org/name' or 'local-dir:PATH'. A bare name loads timm's default "
        "pretrained tag (resnet18 -> resnet18.a1_in1k); the d2l chapter used torchvision's weights, "
        "'resnet18.tv_in1k'.",
        default="resnet18",
    )
    pretrained: bool = _doc("Start from pretrained weights (--no-pretrained: random init, the chapter's "
                            "scratch baseline).", default=True)
    pretrained_path: Optional[str] = _doc(
        "Local weights file (.safetensors, or a state dict .pth/.bin loaded with weights_only) for the "
        "--model architecture, instead of downloading.",
        default=None,
    )
    reuse_classifier: bool = _doc(
        "Start the output row of every label that names a source class (e.g. 'hotdog' = ImageNet 934 "
        "'hotdog, hot dog, red hot'; case and _/-/space ignored) from the pretrained classifier's row and "
        "bias; the others start Xavier-initialized. Only with pretrained weights whose classes are known.",
        default=True,
    )
    label_map: Optional[str] = _doc(
        "Matches stated by hand, overriding the automatic ones: 'hotdog=934,pie=pizza' (source index or "
        "name) or a JSON file {\"hotdog\": 934}.",
        default=None,
    )
    img_size: Optional[int] = _doc(
        "Train and evaluate at this square input size instead of the model's default (e.g. 160 to train "
        "faster on a CPU); it is saved in the model's config so inference uses it too.",
        default=None,
    )
    channels_last: bool = _doc("Run the model in channels_last memory format (faster on CPU and "
                               "tensor-core GPUs).", default=True)

    freeze: Optional[str] = _doc(
        "Freeze these timm layer groups (comma-separated group names of the model's group_matcher, e.g. "
        "'stem,stages.0' or 'stem,blocks.0'): no gradient, not in the optimizer, BatchNorm in eval mode.",
        default=None,
    )
    freeze_fraction: float = _doc(
        "Freeze this fraction of the backbone's layer groups, from the bottom (the most general features).",
        default=0.0,
    )
    freeze_epochs: Optional[int] = _doc(
        "Head warm-up (fastai's fine_tune, LP-FT): train only the head for this many epochs, backbone frozen "
        "with BatchNorm in eval mode, then unfreeze with the layer-wise learning rates." + RECIPE_NOTE,
        default=None,
    )
    freeze_bn: Optional[bool] = _doc(
        "Keep every BatchNorm's running statistics fixed (eval mode) throughout: small batches estimate them "
        "poorly." + RECIPE_NOTE, argparse={"type": _to_bool, "nargs": "?", "const": True}, default=None)
    layer_decay: Optional[float] = _doc(
        "Scale each backbone layer group's LR by layer_decay ** (depth from the top), using timm's group_matcher; "
        "multiplied with --head-lr-mult for the head. 1 turns it off. Recipe lp-ft: 0.75 up to 1,000 training "
        "photos, 0.05 more for each doubling beyond, at most 0.9 (off for a model without a group_matcher); "
        "d2l: off." + RECIPE_NOTE,
        default=None,
    )

    # optimization
    recipe: str = _doc(
        "Defaults for every option marked 'Default: the --recipe's value' that is not given (a flag or --config "
        "value always wins). "
        + "; ".join(f"'{name}': {recipe.description}" for name, recipe in RECIPES.items()).replace("%", "%%")
        + ". Either recipe with --optimizer adamw: lr 1e-4, weight decay 0.05. See ACCURACY.md.",
        default=DEFAULT_RECIPE,
    )
    optimizer: Optional[Literal["sgd", "adamw"]] = _doc("Optimizer." + RECIPE_NOTE, default=None)
    lr: Optional[float] = _doc(
        "Backbone learning rate for the MEAN loss over the global batch (the PyTorch/timm convention). "
        "The chapter's 5e-5 is for the SUMMED loss at batch 128, which is 5e-5 x 128 = 6.4e-3 here. Left unset, "
        "the recipe's LR for the batch it was measured at, scaled with --batch-size: by the square root (d2l: "
        "linearly, as the chapter's summed loss does); lp-ft with SGD also multiplies it by 2^(1/3) for each "
        "doubling of the training photos beyond 1,000 (x2 from 8,000)." + RECIPE_NOTE,
        default=None,
    )
    head_lr_mult: Optional[float] = _doc("The new classifier head trains at this multiple of --lr (the chapter: "
                                         "10)." + RECIPE_NOTE, default=None)
    param_group: bool = _doc(
        "Give the head its own learning rate; '--param-group false' puts every parameter in one group at "
        "--lr, as the chapter's scratch baseline.",
        default=True,
    )
    weight_decay: Optional[float] = _doc(
        "Weight decay on every parameter, for the mean loss. d2l: 1e-3 / 128 = 7.8125e-6, the chapter's 1e-3 "
        "under its summed loss at batch 128 (with a mean loss the decay term is not scaled up); adamw 0.05, "
        "AdamW's usual decoupled decay for fine-tuning (the SGD value would be none at all)." + RECIPE_NOTE,
        default=None,
    )
    momentum: Optional[float] = _doc("SGD momentum (the chapter: 0)." + RECIPE_NOTE, default=None)
    lr_scheduler: Optional[Literal["constant", "cosine"]] = _doc(
        "Learning-rate schedule over optimizer updates: 'constant' (the chapter) or 'cosine' decay to 0."
        + RECIPE_NOTE, default=None,
    )
    warmup_steps: Optional[int] = _doc("Linear warm-up over this many optimizer updates (both schedules); the "
                                       "lp-ft recipe: 10%% of all updates." + RECIPE_NOTE, default=None)
    label_smoothing: Optional[float] = _doc(
        "Cross-entropy label smoothing: the target puts 1 - s on the label and s / classes on every class "
        "(torch's F.cross_entropy label_smoothing)." + RECIPE_NOTE, default=None)
    loss: Optional[Literal["ce", "bce", "asl"]] = _doc(
        "The training loss (the eval loss stays the plain one, so runs compare). Single-label: 'ce', cross-entropy "
        "(the only one). Multi-label: 'bce', binary cross-entropy with logits per label (default); 'asl', the "
        "asymmetric loss of Ridnik et al. 2021 (timm's AsymmetricLossMultiLabel at its defaults: gamma_neg 4, "
        "gamma_pos 1, clip 0.05), which down-weights the many easy negatives; both are the mean over every (image, "
        "label), so --lr carries over. Default: the task's.", default=None)
    mixup: float = _doc(
        "Mixup alpha (timm's Mixup, on the normalized batch on its device; 0 = off): images and targets are "
        "mixed with a Beta(alpha, alpha) weight and the loss is the soft-target cross-entropy (with "
        "--label-smoothing and --class-weights); multi-label: the multi-hot targets are mixed alike (lam y + "
        "(1 - lam) y_flipped) under --loss. Train accuracy is counted against the unmixed labels. "
        "E.g. 0.2.", default=0.0)
    cutmix: float = _doc("CutMix alpha (timm's Mixup; 0 = off); with --mixup too, each batch picks one of the "
                         "two with probability 0.5. E.g. 1.0.", default=0.0)
    auto_augment: Optional[Literal["rand", "trivial"]] = _doc(
        "Add torchvision's RandAugment ('rand': 2 ops, magnitude 9) or TrivialAugmentWide ('trivial') to the "
        "training crops (uint8, seeded per sample like the crop).", default=None)
    drop_path: float = _doc("Stochastic depth rate (timm's drop_path_rate at create_model), e.g. 0.1; for "
                            "models that have it.", default=0.0)
    class_weights: Optional[Literal["balanced"]] = _doc(
        "'balanced': weight each class's loss by train_size / (classes x class count) (sklearn's 'balanced'), "
        "for imbalanced folders; the weights are printed.", default=None)
    threshold: Optional[float] = _doc(
        "Multi-label: one decision threshold for every label (e.g. 0.5). Default: each label's threshold is tuned "
        "to its best F1 on the eval split, for the saved weights; saved in config.json either way.", default=None)

    # training
    epochs: Optional[int] = _doc("Number of passes over the training split." + RECIPE_NOTE, default=None)
    batch_size: Optional[int] = _doc(
        "GLOBAL batch per optimizer update, whatever the number of processes: each process takes "
        "batch_size / (processes x gradient_accumulation_steps) images per step. Recipe d2l: 128; lp-ft: the "
        "largest power of two at most 1/8 of the training images, within [16, 128] (at least 8 updates an "
        "epoch), rounded up to a multiple of processes x accumulation steps.",
        default=None,
    )
    max_train_samples: Optional[int] = _doc(
        "Train on at most this many images, picked stratified by class and seeded with --seed (the HF example "
        "scripts' option), e.g. to try a huge folder in a minute; only those are decoded and cached.",
        default=None)
    max_eval_samples: Optional[int] = _doc("Evaluate (and test) on at most this many images per split, chosen as "
                                           "--max-train-samples.", default=None)
    max_steps: Optional[int] = _doc(
        "With --streaming: train for this many optimizer steps (the LR schedule and warm-up follow it); default: "
        "--epochs passes when the stream's size is known.",
        default=None,
    )
    checkpoint_every: Optional[int] = _doc(
        "With --streaming: evaluate, select and checkpoint every this many optimizer steps; default: --max-steps "
        "/ --epochs (one pass, when the size is known).",
        default=None,
    )
    gradient_accumulation_steps: int = _doc("Micro-batches accumulated per optimizer update.", default=1)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _doc(
        "Autocast precision; weights and the saved model stay fp32. 'auto': bf16 where it is native (a GPU of "
        "compute capability 8.0+, a CPU with AVX512-BF16/AMX); fp16 with a gradient scaler on an older GPU (V100, "
        "T4: bf16 emulated); fp32 on other CPUs (bf16 emulated, measured 10-14x slower). 'no' is fp32. The run "
        "prints its choice and why.",
        default="auto",
    )
    seed: int = _doc("Seed for initialization, shuffling, augmentation and the holdout split.", default=0)
    output_dir: str = _doc(
        "Where the model (config.json, model.safetensors: the selected epoch's weights), metrics.json, "
        "confusion_matrix.png, calibration.png, training_curves.png and checkpoints/ go.",
        default="output",
    )
    resume: str = _doc(
        "'auto' (also a bare --resume): continue from the newest complete checkpoint in OUTPUT_DIR/checkpoints, "
        "if any (re-running a finished command trains and pushes nothing; after a crash it resumes); a "
        "checkpoint folder; or 'none' to start over, moving an earlier run's checkpoints and results in "
        "OUTPUT_DIR aside into OUTPUT_DIR/previous-run-<time>/ (said in the log). A checkpoint made with other "
        "options that change what is trained is refused (more --epochs only on a constant schedule).",
        argparse={"nargs": "?", "const": "auto"},
        default="auto",
    )
    keep_checkpoints: int = _doc("How many per-epoch checkpoints to keep (the newest); 0 keeps all.", default=2)
    compile: bool = _doc("torch.compile the model with inductor (about a minute of compiling in the first steps; "
                         "within noise of eager on a 2-core CPU, see BENCHMARKS.md).", default=False)
    # model selection and evaluation
    select_metric: Optional[str] = _doc(
        "Which epoch's weights are saved, carded and pushed: the best by this eval metric; single-label: "
        f"{', '.join(SELECT_METRICS)}; multi-label: {', '.join(MULTI_LABEL_SELECT_METRICS)}. Default: eval_loss "
        "for single-label (continuous, while on small eval sets accuracy moves in steps of 1/N and ties, so it "
        "would pick on noise; ties keep the earlier epoch), map for multi-label (threshold-free).",
        default=None,
    )
    save_last: bool = _doc("Save, card and push the last epoch's weights instead of the best epoch's.",
                           default=False)
    patience: Optional[int] = _doc(
        "Early stopping: stop after this many epochs in a row without the --select-metric improving by more "
        "than --min-delta (every process stops at the same epoch; a resumed run stops where it would have).",
        default=None,
    )
    min_delta: float = _doc("An improvement of --select-metric must exceed this (in its units) to count.",
                            default=0.0)
    model_ema: bool = _doc(
        "Keep an exponential moving average of the weights (timm ModelEmaV3), evaluated every epoch beside the "
        "trained weights; the better of the two by --select-metric is selected.",
        default=False,
    )
    ema_decay: float = _doc("EMA decay per optimizer update (timm's default 0.9998).", default=0.9998)
    ema_warmup: bool = _doc(
        "Warm the EMA decay up (1 - (1 + updates)^-2/3, capped at --ema-decay), so short fine-tunes average "
        "recent weights rather than keep the pretrained ones.",
        default=True,
    )
    tta: Literal["none", "flip"] = _doc(
        "Test-time augmentation for the final report: 'flip' also scores the mean logits of each image and its "
        "mirror, reported beside the plain numbers (selection uses the plain ones).",
        default="none",
    )
    calibrate: Literal["temperature", "none"] = _doc(
        "'temperature': after selection, fit one temperature T on the eval split's logits of the saved weights "
        "(minimum NLL; Guo et al. 2017) and divide the classifier's weight and bias by it, so every consumer of "
        "the saved model gets calibrated probabilities (the argmax is unchanged; multi-label: one T per label, "
        "tuned thresholds re-expressed, so no decision changes); ECE and NLL before and after go to "
        "metrics.json, calibration.png and the card. 'none': save the weights as trained.",
        default="temperature",
    )

    push_to_hub: Optional[str] = _doc(
        "After training, publish config.json, model.safetensors, README.md (the generated model card), "
        "training_curves.png, confusion_matrix.png (multi-label: per_label_ap.png) and calibration.png to this Hub "
        "repo ('user/name') in one commit, then pull it back and check the logits. The token comes from HF_TOKEN "
        "or `hf auth login`, never from a flag.",
        default=None,
    )
    hub_public: bool = _doc("Make a newly created Hub repo public (default: private).", default=False)
    report_to: str = _doc(
        "Accelerate tracker(s), comma-separated: tensorboard, wandb, mlflow, comet_ml, aim, ... or 'none'.",
        default="none",
    )

    # Set once by resolve_config (the record every part of the run reads): what the recipe filled
    # ({option: value}), the recipe values this model does not take ({option: why}), and the precision.
    recipe_values: dict = field(default_factory=dict, init=False, compare=False)
    recipe_adjusted: dict = field(default_factory=dict, init=False, compare=False)
    precision: Optional[Precision] = field(default=None, init=False, compare=False)

    def validate(self) -> "FinetuneConfig":
        """Refuse bad given values with a one-line UserError (options left unset are resolve_config's)."""
        if sum(map(bool, (self.data_dir, self.dataset_name, self.train_file))) > 1:
            raise UserError("give one of --data-dir, --dataset-name and --train-file")
        self._validate_manifests()
        self._validate_streaming()
        self._validate_paths()
        get_recipe(self.recipe)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "max_steps": self.max_steps,
                    "checkpoint_every": self.checkpoint_every, "shuffle_buffer": self.shuffle_buffer,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "max_train_samples": self.max_train_samples, "max_eval_samples": self.max_eval_samples}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if any(value is not None and value <= 0 for value in (self.lr, self.head_lr_mult)):
            raise UserError("--lr and --head-lr-mult must be positive")
        if not 0 <= (self.label_smoothing or 0) < 1 or not 0 <= self.drop_path < 1:
            raise UserError("--label-smoothing and --drop-path must be in [0, 1)")
        if self.mixup < 0 or self.cutmix < 0:
            raise UserError("--mixup and --cutmix are Beta alphas: 0 (off) or positive, e.g. 0.2 and 1.0")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if min(self.weight_decay or 0, self.momentum or 0, self.warmup_steps or 0) < 0:
            raise UserError("--weight-decay, --momentum and --warmup-steps cannot be negative")
        if self.img_size is not None and self.img_size < 16:
            raise UserError(f"--img-size must be at least 16 pixels, got {self.img_size}")
        if not 0 <= self.freeze_fraction <= 1 or not 0 <= self.max_bad_fraction <= 1:
            raise UserError("--freeze-fraction and --max-bad-fraction must be between 0 and 1")
        if self.freeze_epochs is not None and not 0 <= self.freeze_epochs <= (self.epochs or self.freeze_epochs):
            raise UserError(f"--freeze-epochs must be between 0 and --epochs ({self.epochs})")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        known = {**SELECT_METRICS, **MULTI_LABEL_SELECT_METRICS}
        if self.select_metric is not None and self.select_metric not in known:
            raise UserError(f"--select-metric {self.select_metric}: unknown; use one of {', '.join(SELECT_METRICS)} "
                            f"(single-label) or {', '.join(MULTI_LABEL_SELECT_METRICS)} (multi-label)")
        if self.loss not in (None, "ce", "bce", "asl"):  # a --config file bypasses the flag's choices
            raise UserError(f"--loss {self.loss}: use ce (single-label), bce or asl (multi-label)")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise UserError(f"--threshold must be between 0 and 1 (a sigmoid score), got {self.threshold}")
        if self.patience is not None and self.patience < 1:
            raise UserError(f"--patience must be at least 1 epoch, got {self.patience}")
        if self.min_delta < 0 or not 0 < self.ema_decay < 1:
            raise UserError("--min-delta cannot be negative and --ema-decay must be between 0 and 1")
        for name in ("num_workers", "keep_checkpoints"):
            if (getattr(self, name) or 0) < 0:
                raise UserError(f"--{name.replace('_', '-')} cannot be negative, got {getattr(self, name)}")
        if not 0 <= self.seed < 2 ** 32:
            raise UserError(f"--seed must be in [0, 2**32) (numpy's seeds), got {self.seed}")
        self._validate_trackers()
        self._validate_outputs()
        return self

    def _validate_outputs(self) -> None:
        if self.push_to_hub:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.push_to_hub)
            except HFValidationError as error:
                raise UserError(f"--push-to-hub {self.push_to_hub!r} is no repo id ('user/name'): {error}") from None
        if self.calibrate not in ("temperature", "none"):  # a --config file bypasses the flag's choices
            raise UserError(f"--calibrate {self.calibrate}: use temperature or none")

    def _validate_manifests(self) -> None:
        if self.eval_file and not self.train_file:
            raise UserError("--eval-file needs --train-file")
        if self.test_file and not self.eval_file:
            raise UserError("--test-file needs --eval-file (the eval split selects the epoch, the test split "
                            "scores it)")
        for option, file in (("train-file", self.train_file), ("eval-file", self.eval_file),
                             ("test-file", self.test_file)):
            if file and not Path(file).expanduser().is_file():
                raise UserError(f"--{option} {file}: no such file")
            if file and Path(file).suffix not in (".csv", ".jsonl", ".json"):
                raise UserError(f"--{option} {file}: a manifest is a .csv or .jsonl file")
        if self.task not in ("auto", "single-label", "multi-label"):  # a --config file bypasses the flag's choices
            raise UserError(f"--task {self.task}: use auto, single-label or multi-label")
        if self.label_delimiter == "":
            raise UserError("--label-delimiter cannot be empty; e.g. ' ', ',', '|' or '_'")

    def _validate_streaming(self) -> None:
        if not self.streaming:
            given = [flag for flag, value in (("--data-files", self.data_files), ("--label-names", self.label_names),
                                              ("--max-steps", self.max_steps),
                                              ("--checkpoint-every", self.checkpoint_every)) if value]
            if given:
                raise UserError(f"{', '.join(given)}: for --streaming runs; a folder or a loaded dataset trains "
                                "--epochs")
            return
        if bool(self.dataset_name) == bool(self.data_files) or self.data_dir or self.train_file:
            raise UserError("--streaming reads --dataset-name or --data-files (one of them)")
        if self.eval_data_files and not self.data_files:
            raise UserError("--eval-data-files needs --data-files")
        if self.max_train_samples or self.class_weights:
            raise UserError("--streaming: a stream cannot be counted or subsampled; drop --max-train-samples (train "
                            "--max-steps) and --class-weights")

    def _validate_trackers(self) -> None:
        names = [name.strip() for name in self.report_to.split(",") if name.strip() not in ("", "none")]
        if not names:
            return  # Accelerate (and torch with it) is imported only when a tracker is asked for
        from accelerate.utils import LoggerType

        unknown = [name for name in names if name not in LoggerType.list()]
        if unknown:
            raise UserError(f"--report-to {', '.join(unknown)}: unknown tracker; choose from "
                            f"{', '.join(LoggerType.list())}, or none")

    def _validate_paths(self) -> None:
        """Missing input paths and outputs that are files fail here, before any data or model is loaded."""
        local_model = self.model[len("local-dir:"):] if self.model.startswith("local-dir:") else None
        folders = {"--data-dir": self.data_dir, "--model local-dir:": local_model}
        for flag, folder in folders.items():
            if folder and not Path(folder).is_dir():
                raise UserError(f"{flag}{'' if flag.endswith(':') else ' '}{folder}: no such folder")
        for flag, path in {"--pretrained-path": self.pretrained_path, "--label-map": self.label_map}.items():
            is_file_name = flag == "--pretrained-path" or str(path).endswith(".json")  # else 'hotdog=934,...'
            if path and is_file_name and not Path(path).is_file():
                raise UserError(f"{flag} {path}: no such file")
        for flag, path in {"--output-dir": self.output_dir, "--cache-dir": self.cache_dir}.items():
            if path and Path(path).exists() and not Path(path).is_dir():
                raise UserError(f"{flag} {path} is a file: name a folder")
        if self.resume not in ("auto", "latest", "none") and not Path(self.resume).is_dir():
            raise UserError(f"--resume {self.resume}: no such checkpoint folder; use 'auto', 'none' or a folder "
                            f"in OUTPUT_DIR/checkpoints/")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunFacts:
    """What resolving the options needs beyond them: the data, the model and the machine the run has."""

    train_size: Optional[int]  # training images (after unreadable ones are dropped); None: a stream's, unknown
    num_processes: int
    pretrained: bool  # the backbone starts from trained weights
    layer_groups: bool  # timm's group_matcher splits the model into layers (layer-wise LR decay needs it)
    precision: Precision  # hardware.machine_precision's choice for --mixed-precision
    default_num_workers: int  # DataLoader workers per process when --num-workers is not given
    default_select_metric: str  # the task's, when --select-metric is not given (tasks: Task.default_select_metric)
    default_loss: str  # the task's, when --loss is not given (tasks: Task.default_loss)


def resolve_config(config: FinetuneConfig, facts: RunFacts) -> FinetuneConfig:
    """The run's record: a copy of `config` with every derived value resolved, in this one step (the recipe's
    values, batch size, warm-up, workers, precision, the task's select metric and loss), checked. The run,
    run_config.json, the start-up line, the card and the resume identity read it; `config` itself stays as given."""
    if config.precision is not None:
        raise ValueError("resolve_config takes the options as given, not an already resolved record")
    resolved = dataclasses.replace(config.validate())
    # A stream of unknown size is a large one: the recipe's batch size for a large folder.
    train_size = STREAM_OF_UNKNOWN_SIZE if facts.train_size is None else facts.train_size
    resolved.recipe_values, resolved.recipe_adjusted = fill_from_recipe(
        resolved, train_size, facts.num_processes, facts.pretrained, facts.layer_groups)
    if resolved.streaming:
        _resolve_stream_length(resolved, facts.train_size)
    if resolved.num_workers is None:
        resolved.num_workers = facts.default_num_workers
    if resolved.select_metric is None:
        resolved.select_metric = facts.default_select_metric
    if resolved.loss is None:
        resolved.loss = facts.default_loss
    resolved.precision = facts.precision
    return resolved.validate()


def _resolve_stream_length(config: FinetuneConfig, train_size: Optional[int]) -> None:
    """--max-steps (from --epochs when the stream's size is known), the warm-up as a share of it, --checkpoint-every
    (default: an even share of --epochs), and `epochs` as the number of rounds of --checkpoint-every steps."""
    if config.max_steps is None:
        if train_size is None:
            raise UserError("--streaming: the stream's size is unknown (its dataset info gives no num_examples), so "
                            "--epochs cannot be counted in steps: give --max-steps N")
        config.max_steps = math.ceil(train_size / config.batch_size) * config.epochs
    elif "warmup_steps" in config.recipe_values:
        config.warmup_steps = math.ceil(get_recipe(config.recipe).warmup_fraction * config.max_steps)
        config.recipe_values["warmup_steps"] = config.warmup_steps
    if config.checkpoint_every is None:
        config.checkpoint_every = math.ceil(config.max_steps / config.epochs)
    config.epochs = math.ceil(config.max_steps / config.checkpoint_every)
    if "epochs" in config.recipe_values:  # the record says what the run does: this many rounds
        config.recipe_values["epochs"] = config.epochs
    if "freeze_epochs" in config.recipe_values:  # the recipe's head-only share of the rounds
        config.freeze_epochs = config.recipe_values["freeze_epochs"] = min(config.freeze_epochs, config.epochs // 2)


def _load_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    """The options of a YAML or JSON file, each checked and converted as its flag would be."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file")
    is_yaml = file.suffix in (".yaml", ".yml")
    try:
        if is_yaml:
            import yaml

            try:
                values = yaml.safe_load(file.read_text())
            except yaml.YAMLError as error:
                raise ValueError(" ".join(str(error).split())) from None
        else:
            values = json.loads(file.read_text())
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"--config {path}: not valid {'YAML' if is_yaml else 'JSON'} ({first_line(error)}); "
                        "fix the file") from None
    if values is None:  # an empty YAML file
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"--config {path} holds a {type(values).__name__}, not a mapping of options to values "
                        "(e.g. `epochs: 5`)")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    known = {f.name for f in dataclasses.fields(FinetuneConfig) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"--config {path}: unknown option(s) {', '.join(unknown)}; see --help")
    return {name: _file_value(parser, path, name, value) for name, value in values.items()}


def _file_value(parser: argparse.ArgumentParser, path: str, name: str, value):
    """VALUE checked and converted by the flag's own argparse type and choices, as if given on the command line."""
    typed = [action for action in parser._actions if action.dest == name and action.type is not None]
    default = next(f.default for f in dataclasses.fields(FinetuneConfig) if f.name == name)
    if value is None and default is None:
        return None
    problem = None
    if value is None:
        problem = "needs a value (null given)"
    elif isinstance(value, (list, dict)):
        problem = f"{value!r} is not a single value"
    elif typed:
        given = value
        try:
            value = typed[0].type(str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            problem = first_line(error)
        if problem is None and typed[0].choices and value not in typed[0].choices:
            problem = f"{given!r} is not one of {', '.join(map(str, typed[0].choices))}"
            if isinstance(given, bool):
                problem += " (YAML reads a bare no/yes/off/on as a boolean: quote it)"
    if problem:
        raise UserError(f"--config {path}: {name}: {problem}; fix the file")
    return value


def parse_config(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> FinetuneConfig:
    """Parse flags (and an optional `--config FILE.yaml|json` whose values flags override); `prog`: the command
    that --help's usage line names (argparse's default, the script's file name, says __main__.py under -m)."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(FinetuneConfig, prog=prog, description="Fine-tune a pretrained timm image classifier.")
    parser.add_argument("--config", help="YAML or JSON file with any of these options; flags override it.")
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_load_config_file(known.config, parser))
    namespace = parser.parse_args(argv)
    del namespace.config
    return FinetuneConfig(**vars(namespace)).validate()
