"""Label names: the source model's classes, and which target labels name one of them.

A folder named `hotdog` names ImageNet class 934 "hotdog, hot dog, red hot" (case, `_`, `-` and spaces
ignored; any comma-separated synonym of the source class counts). Failing that, singular and plural forms
and spacing match ("ants" names 310 "ant, emmet, pismire", "cheese_burger" 933 "cheeseburger"; label_forms.py
says how), when they name one source class only.
Near misses ("hamburger" ~ 933 "cheeseburger") are only suggested. `--label-map` states matches by hand.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from pathlib import Path
from typing import Optional

from hf_finetune.errors import UserError
from hf_finetune.model.label_forms import index_by_ending, match_keys, near_misses, normalize_label

logger = logging.getLogger(__name__)

_SYNSET = re.compile(r"n\d{8}")


def _synonyms(source_label: str) -> set[str]:
    return {normalize_label(part) for part in source_label.split(",")} | {normalize_label(source_label)}


def source_label_names(pretrained_cfg: dict) -> Optional[list[str]]:
    """Human-readable names of the source classes, or None when they cannot be known.

    Hub configs may give WordNet synsets ('n07697537') plus a description per synset, and timm's own
    ImageNet checkpoints give no names at all; both are turned into ImageNet descriptions, which is what
    users name their folders after.
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    names = pretrained_cfg.get("label_names")
    if not names:
        subset = infer_imagenet_subset(pretrained_cfg)  # timm itself guesses the subset from the class count
        return ImageNetInfo(subset).label_descriptions() if subset else None
    descriptions = pretrained_cfg.get("label_descriptions") or {}
    imagenet = ImageNetInfo() if any(_SYNSET.fullmatch(name) for name in names) else None
    return [descriptions.get(name) or (imagenet.label_name_to_description(name)
                                        if imagenet and _SYNSET.fullmatch(name) else name) for name in names]


def parse_label_map(spec: Optional[str], target_labels: list[str],
                    source_labels: Optional[list[str]]) -> dict[str, int]:
    """`--label-map`: "hotdog=934,pizza=pizza pie" or a JSON file {"hotdog": 934}; -> target label: source index."""
    if not spec:
        return {}
    if spec.endswith(".json") or Path(spec).is_file():
        try:
            pairs = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"--label-map {spec}: cannot read it as JSON ({error})") from None
        if not isinstance(pairs, dict):
            raise UserError(f'--label-map {spec}: expected a JSON object like {{"hotdog": 934}}')
    else:
        pieces = [piece for piece in spec.split(",") if piece.strip()]
        if any("=" not in piece for piece in pieces):
            raise UserError(f"--label-map {spec!r}: expected TARGET=SOURCE pairs separated by commas, e.g. "
                            "hotdog=934; names containing commas need a JSON file")
        pairs = dict(piece.split("=", 1) for piece in pieces)
    return {_resolve_target(str(target).strip(), target_labels): _resolve_source(value, source_labels)
            for target, value in pairs.items()}


def _resolve_target(name: str, target_labels: list[str]) -> str:
    if name in target_labels:
        return name
    same = [label for label in target_labels if normalize_label(label) == normalize_label(name)]
    if not same:
        raise UserError(f"--label-map: {name!r} is not a label of the dataset ({', '.join(target_labels)})")
    return same[0]


def _resolve_source(value, source_labels: Optional[list[str]]) -> int:
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        index = int(text)
        if index < 0 or (source_labels is not None and index >= len(source_labels)):
            limit = f"0..{len(source_labels) - 1}" if source_labels is not None else "0 or more"
            raise UserError(f"--label-map: source class {index} is out of range ({limit})")
        return index
    if source_labels is None:
        raise UserError(f"--label-map: the source model has no label names; give a class index instead of {text!r}")
    wanted = normalize_label(text)
    index_by_synonym = {}
    for index, label in enumerate(source_labels):
        if wanted in _synonyms(label):
            return index
        index_by_synonym.update({synonym: index for synonym in _synonyms(label) if synonym not in index_by_synonym})
    close = [index_by_synonym[synonym] for synonym in difflib.get_close_matches(wanted, index_by_synonym, n=3)]
    hint = ("; close: " + "; ".join(f"{index} ({source_labels[index]})" for index in dict.fromkeys(close))
            if close else "; give the class index instead")
    raise UserError(f"--label-map: no source class is named {text!r}{hint}")


def match_labels(target_labels: list[str], source_labels: Optional[list[str]],
                 explicit: Optional[dict[str, int]] = None) -> dict[int, int]:
    """Target index -> source index: the --label-map pairs, then every label named like a source class.

    An exact name (any synonym, normalized) wins; an ambiguous exact name takes the first class and warns.
    Then singular/plural forms, applied only when they name a single source class (otherwise a warning and
    no match). Labels still unmatched are logged with the source classes they nearly name, as suggestions.
    """
    explicit = explicit or {}
    keys_to_sources = _source_indices_by_key(source_labels or [])
    matches = {}
    for target_index, label in enumerate(target_labels):
        if label in explicit:
            matches[target_index] = explicit[label]
            continue
        candidates = [index for index, source_label in enumerate(source_labels or ())
                      if normalize_label(label) in _synonyms(source_label)]
        if len(candidates) > 1:
            logger.warning("label %r matches several source classes (%s); using %d, set --label-map %s=INDEX "
                           "to choose", label, ", ".join(map(str, candidates)), candidates[0], label)
        inflected = [] if candidates else _inflected_candidates(label, keys_to_sources)
        if candidates or len(inflected) == 1:
            matches[target_index] = (candidates or inflected)[0]
    reused = [f"{target_labels[target]} -> {source} ({source_labels[source] if source_labels else 'unnamed'})"
              for target, source in matches.items()]
    fresh = [label for index, label in enumerate(target_labels) if index not in matches]
    logger.info("source classifier rows reused: %s; new rows: %s", "; ".join(reused) or "none",
                ", ".join(fresh) or "none")
    _log_suggestions(suggest_label_map(fresh, source_labels), source_labels)
    return matches


def _source_indices_by_key(source_labels: list[str]) -> dict[str, set[int]]:
    keys: dict[str, set[int]] = {}
    for index, source_label in enumerate(source_labels):
        for synonym in source_label.split(","):
            for key in match_keys(synonym):
                keys.setdefault(key, set()).add(index)
    return keys


def _inflected_candidates(label: str, keys_to_sources: dict[str, set[int]]) -> list[int]:
    """Source classes a singular/plural form of the label names; several are not applied (which one?)."""
    candidates = sorted(set().union(*(keys_to_sources.get(key, set()) for key in match_keys(label))))
    if len(candidates) > 1:
        logger.warning("label %r: its singular/plural forms name several source classes (%s); none is reused, "
                       "set --label-map %s=INDEX to choose", label, ", ".join(map(str, candidates)), label)
    return candidates


def suggest_label_map(target_labels: list[str], source_labels: Optional[list[str]]) -> dict[str, list[int]]:
    """Label -> source classes it nearly names (label_forms.near_misses, best first), for labels that have any."""
    if not source_labels or not target_labels:
        return {}
    ending_index = index_by_ending(source_labels)
    suggestions = {label: near_misses(label, ending_index) for label in target_labels}
    return {label: indices for label, indices in suggestions.items() if indices}


def _log_suggestions(suggestions: dict[str, list[int]], source_labels: Optional[list[str]]) -> None:
    for label, indices in suggestions.items():
        close = "; ".join(f"{index} ({source_labels[index]})" for index in indices)
        logger.info("label %r names no source class but is close to %s: --label-map %s=%d would start it from "
                    "that class's row", label, close, label, indices[0])


def describe_matches(matches: dict[int, int], target_labels: list[str],
                     source_labels: Optional[list[str]]) -> list[dict]:
    """The matches as run_config.json and the model card record them."""
    return [{"label": target_labels[target], "source_index": source,
             "source_label": source_labels[source] if source_labels else None}
            for target, source in sorted(matches.items())]
