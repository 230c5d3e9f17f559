"""Word forms of label names: singular and plural alike, and near misses worth suggesting as `--label-map`.

Folder names are usually plural ("ants", "french_fries"), ImageNet names singular ("ant, emmet, pismire").
Both sides are reduced to their candidate singular forms, inflecting only the last word (the head noun of an
English compound: "french fries" -> "french fry"), and compared without spaces ("cheese_burger" meets
"cheeseburger"). Candidates include wrong guesses ("bees" -> "be"); they are harmless because a match needs a
whole name on each side to land on the same string.

A near miss (suggested, never applied) shares a head noun: the two names, singular and without spaces, end
in the same word of at least MIN_HEAD letters (a word of its own in either name, or a noun of WordNet for a
head fused on both sides: "burger", not the rhyme "itten" of kitten / mitten), and that head takes at least
half of both names together (Dice coefficient 2 * head / (len(label) + len(source)) >= MIN_DICE):
  - suggested: "spaghetti carbonara" ~ 959 "carbonara" (a kind of the source, Dice 0.67), "hamburger" ~ 933
    "cheeseburger" (siblings, head "burger": 0.57), "breakfast burrito" ~ 965 "burrito" (0.61);
  - not "chicken wings" ~ 908 "wing" (of an aircraft): a short head is a common word, and common words have
    many senses, so MIN_HEAD = 6 rules out "wing", "plane", "board"; a long head ("carbonara") names one
    thing. The Dice threshold then keeps a long modifier from riding on a short head;
  - not when the source is the label with a modifier of its own ("horses" ~ "river horse", a hippo; "potatoes"
    ~ "mashed potato"): the source names a narrower class, or another thing;
  - not two different modifiers on one separate head word ("white wine" ~ "red wine"): different kinds;
  - not a negated label ("not_hotdog" ~ "hotdog").
Known imperfect hint: "sunflowers" ~ 938 "cauliflower" (a real shared noun, another meaning). Hints only.
"""

from __future__ import annotations

import re
from functools import lru_cache

MIN_HEAD = 6
MIN_DICE = 0.5
NEGATIONS = {"not", "no", "non", "other", "others", "without", "anti"}

# Irregular plurals that name photographed things; -ves, -ies, -es and -s are handled by rule.
IRREGULAR_SINGULARS = {
    "geese": "goose", "mice": "mouse", "lice": "louse", "teeth": "tooth", "feet": "foot", "men": "man",
    "women": "woman", "children": "child", "oxen": "ox", "people": "person", "cacti": "cactus",
    "fungi": "fungus", "octopi": "octopus", "dice": "die", "loaves": "loaf", "leaves": "leaf",
}


def normalize_label(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.lower()).strip()


def singular_forms(word: str) -> set[str]:
    """The word itself and every singular it may be the plural of: 'puppies' -> {'puppies', 'puppy', 'puppie'}."""
    forms = {word}
    if word in IRREGULAR_SINGULARS:
        forms.add(IRREGULAR_SINGULARS[word])
    if len(word) <= 3 or not word.endswith("s") or word.endswith("ss"):
        return forms
    forms.add(word[:-1])  # bees -> bee, horses -> horse
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")  # puppies -> puppy, fries -> fry
    if word.endswith("ves"):
        forms.update({word[:-3] + "f", word[:-3] + "fe"})  # wolves -> wolf, knives -> knife
    if re.search(r"(s|x|z|ch|sh|o)es$", word):
        forms.add(word[:-2])  # boxes -> box, dishes -> dish, tomatoes -> tomato
    return forms


def phrase_forms(name: str) -> list[list[str]]:
    """The normalized name as words, once per singular form of its last word."""
    words = normalize_label(name).split()
    if not words:
        return []
    return [words[:-1] + [last] for last in sorted(singular_forms(words[-1]))]


def match_keys(name: str) -> set[str]:
    """What two names must share to match: a singular form of the whole name, spaces removed."""
    return {"".join(words) for words in phrase_forms(name)}


def head_similarity(label_words: list[str], source_words: list[str]) -> float:
    """Dice coefficient of the shared ending of two names (see the module docstring), 0.0 when ruled out."""
    if label_words[-1].endswith("s") and source_words[-1].endswith("s"):
        # a shared plural ending is grammar, not a shared head: "oysters" and "balusters" share "ster" only
        label_words = label_words[:-1] + [label_words[-1][:-1]]
        source_words = source_words[:-1] + [source_words[-1][:-1]]
    label, source = "".join(label_words), "".join(source_words)
    shared = _common_suffix_length(label, source)
    if shared >= len(label) or 2 * shared / (len(label) + len(source)) < MIN_DICE:
        return 0.0  # the source is the label plus a modifier, or too little is shared
    label_starts, source_starts = _word_start_suffixes(label_words), _word_start_suffixes(source_words)
    head = _head_length(label, shared, label_starts | source_starts)
    if head < MIN_HEAD:
        return 0.0
    if head in label_starts and head in source_starts and head < len(source):
        return 0.0  # two different modifiers on one separate head word: "white wine" vs "red wine"
    dice = 2 * head / (len(label) + len(source))
    return dice if dice >= MIN_DICE else 0.0


def _head_length(label: str, shared: int, word_starts: set[int]) -> int:
    """The longest word within the shared ending: one that starts a word in either name ("veggie burger" and
    "cheeseburger" share "eburger", the head is "burger"), else a noun ("burger" of "hamburger"), not a rhyme
    ("icycle" of "bicycle" and "unicycle", "itten" of "kitten" and "mitten")."""
    words = [length for length in word_starts if length <= shared]
    if words and max(words) >= MIN_HEAD:
        return max(words)
    return next((length for length in range(shared, MIN_HEAD - 1, -1) if label[-length:] in _noun_lemmas()), 0)


@lru_cache(maxsize=1)
def _noun_lemmas() -> frozenset[str]:
    """One-word noun lemmas of the ImageNet-21k synsets that timm ships (WordNet nouns); read once, when needed."""
    from timm.data import ImageNetInfo

    return frozenset(part.strip().lower() for description in ImageNetInfo("imagenet-22k").label_descriptions()
                     for part in description.split(",") if part.strip().isalpha())


def index_by_ending(source_labels: list[str]) -> dict[str, list[tuple[int, list[str]]]]:
    """Every singular phrase form of every comma-separated synonym, keyed by its last MIN_HEAD letters."""
    index: dict[str, list[tuple[int, list[str]]]] = {}
    for source_index, source_label in enumerate(source_labels):
        for synonym in source_label.split(","):
            for words in phrase_forms(synonym):
                index.setdefault("".join(words)[-MIN_HEAD:], []).append((source_index, words))
    return index


def near_misses(label: str, ending_index: dict[str, list[tuple[int, list[str]]]], limit: int = 3) -> list[int]:
    """Source classes the label nearly names (module docstring), the most similar first; [] for a negated label."""
    label_phrases = phrase_forms(label)
    if not label_phrases or label_phrases[0][0] in NEGATIONS:
        return []
    best: dict[int, float] = {}
    for label_words in label_phrases:
        for source_index, source_words in ending_index.get("".join(label_words)[-MIN_HEAD:], ()):
            similarity = head_similarity(label_words, source_words)
            if similarity >= MIN_DICE and similarity > best.get(source_index, 0.0):
                best[source_index] = similarity
    return sorted(best, key=lambda index: (-best[index], index))[:limit]


def _common_suffix_length(first: str, second: str) -> int:
    length = 0
    while length < min(len(first), len(second)) and first[-1 - length] == second[-1 - length]:
        length += 1
    return length


def _word_start_suffixes(words: list[str]) -> set[int]:
    """Lengths of the endings that start at a word: for ['red', 'wine'] {4, 7}."""
    lengths, total = set(), 0
    for word in reversed(words):
        total += len(word)
        lengths.add(total)
    return lengths
