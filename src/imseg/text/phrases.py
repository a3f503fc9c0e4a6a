"""Text prompts as phrases: splitting on ".", lower-casing, and Grounding DINO's token-to-phrase map.

The rules follow the detectors' own processors: ``GroundingDinoProcessor`` joins candidate labels as
``"a cat. a dog."`` (stripped, lower-cased, ``". "``-separated, a final ``"."``), and OWLv2 takes one
query string per phrase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import PromptError


def parse_phrases(text: str | Sequence[str]) -> list[str]:
    """``"Horse. rider."`` or ``["horse", "rider"]`` -> ``["horse", "rider"]`` (stripped, lower-cased).

    A final ``"."`` is optional; an empty phrase anywhere else (``"horse..rider"``, ``["horse", " "]``)
    is a :class:`PromptError`, as are duplicates (they would split one object's score between two labels).
    """
    if isinstance(text, str):
        parts = text.split(".")
        if parts and not parts[-1].strip():
            parts = parts[:-1]
    elif isinstance(text, Sequence) and all(isinstance(t, str) for t in text):
        parts = list(text)
        dotted = [t for t in parts if "." in t.strip().rstrip(".")]
        if dotted:
            raise PromptError(f"phrase {dotted[0]!r} contains '.', which separates phrases; give it as two phrases "
                              f"or drop the '.'.")
        parts = [t.strip().rstrip(".") for t in parts]
    else:
        raise PromptError(f"text must be a string like 'horse. rider.' or a list of phrases; got {type(text).__name__}.")
    phrases = [" ".join(p.split()).lower() for p in parts]
    if not phrases:
        raise PromptError("text has no phrase; give e.g. text='horse. rider.'.")
    for i, p in enumerate(phrases):
        if not p:
            raise PromptError(f"phrase {i + 1} of {text!r} is empty; separate phrases with a single '.' "
                              f"(e.g. 'horse. rider.').")
    seen = sorted({p for p in phrases if phrases.count(p) > 1})
    if seen:
        raise PromptError(f"phrase {seen[0]!r} is given more than once; give each phrase once.")
    return phrases


def grounding_text(phrases: Sequence[str]) -> str:
    """The caption Grounding DINO's processor builds from candidate labels: ``"horse. rider."``."""
    return ". ".join(phrases) + "."


def phrase_of_token(input_ids: Sequence[int], separator_ids: set[int], special_ids: set[int]) -> np.ndarray:
    """(L,) int: the phrase index of each token of a Grounding DINO caption, -1 for specials and separators.

    Phrases are the runs of tokens between separators (".") after the leading special token, as in
    the caption built by :func:`grounding_text`.
    """
    out = np.full(len(input_ids), -1, np.int64)
    phrase = 0
    in_phrase = False
    for i, tok in enumerate(int(t) for t in input_ids):
        if tok in special_ids:
            continue
        if tok in separator_ids:
            if in_phrase:
                phrase += 1
            in_phrase = False
            continue
        out[i] = phrase
        in_phrase = True
    return out


def phrase_scores(token_probs: Any, token_phrase: np.ndarray, n_phrases: int) -> np.ndarray:
    """(N, K) per-phrase scores: the highest token probability inside each phrase.

    ``token_probs`` (N, T) are sigmoid(logits) per box and text position (T >= L); positions past
    the caption and separator/special tokens never count.
    """
    probs = np.asarray(token_probs, np.float32)
    out = np.zeros((len(probs), n_phrases), np.float32)
    for k in range(n_phrases):
        cols = np.flatnonzero(token_phrase == k)
        if cols.size:
            out[:, k] = probs[:, cols].max(axis=1)
    return out
