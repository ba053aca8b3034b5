"""Exact and near-duplicate detection of texts: MinHash signatures + LSH (datasketch).

Texts are normalised (lower case, collapsed whitespace), cut into character n-grams and signed
with MinHash; `NearDuplicateIndex` finds earlier texts whose estimated Jaccard similarity reaches
the threshold through an LSH index, then confirms each LSH candidate on the stored signatures, so
LSH's false positives never drop a row. Exact duplicates are caught first by a hash of the
normalised text. The index is global (it grows across shards); `near_duplicates` compares a few
texts among themselves (the candidates of one prompt) without an index.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def shingles(text: str, ngram: int) -> list[bytes]:
    """Character n-grams of the normalised text (the whole text when it is shorter than n)."""
    t = normalise(text)
    if len(t) <= ngram:
        return [t.encode()]
    return list({t[i:i + ngram].encode() for i in range(len(t) - ngram + 1)})


def signatures(texts: list[str], num_perm: int = 256, ngram: int = 5) -> list[MinHash]:
    # xxh32 (a dependency of `datasets`) hashes shingles ~10x faster than datasketch's default SHA-1.
    return MinHash.bulk([shingles(t, ngram) for t in texts], num_perm=num_perm, hashfunc=xxhash.xxh32_intdigest)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)


def _exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalise(text).encode(), digest_size=12).digest()


class NearDuplicateIndex:
    """A growing set of texts; `add` tells whether a new text duplicates one already kept.

    Only texts that are not duplicates enter the index, so the decision for a text depends only on
    the texts before it: replaying the same texts in the same order rebuilds the same index (resume).
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = 256, ngram: int = 5):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._exact: dict[bytes, str] = {}
        self._signatures: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._exact)

    def add_many(self, keys: list[str], texts: list[str]) -> list[tuple[str, float] | None]:
        """For each (key, text) in order: None if new (it is added), else (key of the kept original, similarity)."""
        out: list[tuple[str, float] | None] = []
        todo = []
        for i, (key, text) in enumerate(zip(keys, texts)):
            original = self._exact.get(_exact_key(text))
            out.append((original, 1.0) if original is not None else None)
            if original is None:
                todo.append(i)
        sigs = signatures([texts[i] for i in todo], self.num_perm, self.ngram) if todo else []
        for i, sig in zip(todo, sigs):
            exact = _exact_key(texts[i])
            if exact in self._exact:  # an exact duplicate of a text earlier in this same batch
                out[i] = (self._exact[exact], 1.0)
                continue
            values = sig.hashvalues.astype(np.uint32)
            best = None
            for other in self._lsh.query(sig):
                sim = _jaccard(values, self._signatures[other])
                if sim >= self.threshold and (best is None or sim > best[1]):
                    best = (other, sim)
            if best is not None:
                out[i] = best
                continue
            self._exact[exact] = keys[i]
            self._signatures[keys[i]] = values
            self._lsh.insert(keys[i], sig)
        return out


def near_duplicates(texts: list[str], threshold: float = 0.85, num_perm: int = 256, ngram: int = 5,
                    values: list[np.ndarray] | None = None) -> list[tuple[int, float] | None]:
    """Within a small list (kept in order): for each text, None or (index of the earlier kept text it duplicates, similarity).

    `values`: the texts' MinHash hash values when already computed (one bulk call per shard is cheaper).
    """
    out: list[tuple[int, float] | None] = [None] * len(texts)
    if len(texts) < 2:
        return out
    exact = [_exact_key(t) for t in texts]
    if values is None:
        values = [s.hashvalues for s in signatures(texts, num_perm, ngram)]
    kept: list[int] = []
    for i in range(len(texts)):
        for j in kept:
            sim = 1.0 if exact[i] == exact[j] else _jaccard(values[i], values[j])
            if sim >= threshold:
                out[i] = (j, sim)
                break
        else:
            kept.append(i)
    return out
