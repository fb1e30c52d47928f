"""Pretraining examples: sentence pairs for NSP, packed sequences, masked tokens for MLM,
shards on disk.

This follows the recipe of the original BERT data generator (``create_pretraining_data.py``
in google-research/bert), with each constant named below. The pipeline::

    documents of sentences --tokenize_documents--> documents of token-id lists
      --pairs_from_document--> SentencePair(tokens_a, tokens_b, is_random_next)
      --encode_pair-->         {input_ids, token_type_ids, attention_mask, next_sentence_label}
      --Masker-->              input_ids with some tokens corrupted, + labels
      --write_shards / examples_to_arrays--> ShardDataset / ArrayDataset --> batches

RoBERTa's recipe has no NSP: :func:`create_packed_examples` packs whole sentences,
read contiguously across document boundaries (a ``[SEP]`` between documents), into
``[CLS] s1 s2 [SEP] s3 ... [SEP] [PAD] ...`` with one token type and no NSP label.

Static masking (the original) masks every example once, ahead of time, making
``dupe_factor`` copies of the corpus with different masks. Dynamic masking (RoBERTa)
stores unmasked examples and draws new masks for every batch with :class:`DynamicMasking`,
so each epoch sees different masks.

One example, ``T = max_seq_length``::

    input_ids       [CLS] a1 a2 ... [SEP] b1 b2 ... [SEP] [PAD] ...   (T,) int32
    token_type_ids    0   0  0  ...   0   1  1  ...   1     0   ...   (T,) int32
    attention_mask    1   1  1  ...   1   1  1  ...   1     0   ...   (T,) int32
    labels          -100 .. original id where a token is to be predicted, else -100  (T,) int32
    next_sentence_label   0 if B is the text that follows A, 1 if B is random      () int32
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..backend import is_int_at_least
from ..ops.cross_entropy import IGNORE_INDEX
from .corpus import CorpusError

# ----------------------------------------------------------------------------- the recipe
# With probability SHORT_SEQ_PROB a document's target length is drawn uniformly from
# [2, max_seq_length - 3] instead of the full length, so the model also meets short
# sequences (as in fine-tuning) although pretraining pads little.
SHORT_SEQ_PROB = 0.1
# Probability that segment B is taken from another document (NSP label 1).
RANDOM_NEXT_PROB = 0.5
# Fraction of the tokens of a sequence (counting [CLS] and [SEP]) chosen for prediction ...
MASKED_LM_PROB = 0.15
# ... but never more than this many per sequence (the original uses 20 for length 128).
MAX_PREDICTIONS_PER_SEQ = 20
# What happens to a chosen token: replaced by [MASK] (80%), by a random token (10%), or
# left as it is (the remaining 10%). The model cannot tell which tokens were kept, so it
# must build a good representation of every token, not only of [MASK].
MASK_TOKEN_PROB = 0.8
RANDOM_TOKEN_PROB = 0.1
# Number of copies of the corpus made with static masking, each with different pairs and masks.
DUPE_FACTOR = 10
# [CLS] A [SEP] B [SEP]: three positions are not text, so A and B share max_seq_length - 3.
NUM_SPECIAL_TOKENS = 3
# The shortest sequence that holds a pair: the 3 special tokens and one token each of A and B.
MIN_SEQ_LENGTH = NUM_SPECIAL_TOKENS + 2

ID_DTYPE = np.int32
# Vocabulary entries such as "[unused0]" are reserved; a random replacement never uses them.
_BRACKETED = re.compile(r"^\[.*\]$")


# ----------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class VocabularyInfo:
    """What the data pipeline needs to know about a vocabulary.

    ``never_selected``: ids never chosen for prediction ([CLS], [SEP], [PAD], [MASK]).
    ``replacement_ids``: ids a "random token" may take: every id except the special
    tokens and bracketed reserved entries like ``[unused0]``.
    ``is_continuation``: (V,) bool, True for "##" pieces (for whole-word masking).
    """

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    never_selected: np.ndarray
    replacement_ids: np.ndarray
    is_continuation: np.ndarray

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "VocabularyInfo":
        """Read the ids from a tokenizer with ``vocab``, ``*_token_id`` and ``all_special_ids``."""
        size = len(tokenizer)
        tokens = [""] * size
        for token, i in tokenizer.vocab.items():
            if 0 <= i < size:
                tokens[i] = token
        special = set(int(i) for i in tokenizer.all_special_ids)
        ids = dict(pad_id=tokenizer.pad_token_id, cls_id=tokenizer.cls_token_id,
                   sep_id=tokenizer.sep_token_id, mask_id=tokenizer.mask_token_id)
        for name, value in ids.items():
            if value is None or not 0 <= value < size:
                raise ValueError(f"the tokenizer's {name} is {value!r}, not an id of its {size}-token vocabulary")
        replacement = np.array([i for i, t in enumerate(tokens) if i not in special and not _BRACKETED.match(t)],
                               dtype=ID_DTYPE)
        if replacement.size == 0:
            raise ValueError("the vocabulary has no ordinary tokens to use as random replacements")
        return cls(
            vocab_size=size, **{k: int(v) for k, v in ids.items()},
            never_selected=np.array(sorted(set(ids.values())), dtype=ID_DTYPE),
            replacement_ids=replacement,
            is_continuation=np.array([t.startswith("##") for t in tokens], dtype=bool),
        )


# ----------------------------------------------------------------------------- tokenizing
def tokenize_documents(documents, tokenizer) -> list[list[list[int]]]:
    """Token ids of every sentence, computed once: documents of sentences of ids.

    Sentences that produce no tokens, and documents left empty, are dropped. Uses the
    tokenizer's ``tokenize_to_ids`` when it has one (a fast path), else
    ``convert_tokens_to_ids(tokenize(text))``.
    """
    encode = getattr(tokenizer, "tokenize_to_ids", None)
    if encode is None:
        def encode(text):
            return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
    result = []
    for d, document in enumerate(documents):
        if isinstance(document, str) or not all(isinstance(sentence, str) for sentence in document):
            raise TypeError(f"documents[{d}] must be a list of sentences (str), got "
                            f"{'a str' if isinstance(document, str) else type(document).__name__}: "
                            "a corpus is a list of documents, each a list of sentences")
        ids_document = [list(ids) for ids in map(encode, document)]
        ids_document = [ids for ids in ids_document if ids]
        if ids_document:
            result.append(ids_document)
    return result


# ----------------------------------------------------------------------------- sentence pairs
@dataclass
class SentencePair:
    """Two token-id segments and whether B was drawn at random (NSP label 1) or follows A (0)."""

    tokens_a: list
    tokens_b: list
    is_random_next: bool


def truncate_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng) -> tuple[list, list]:
    """Shorten the pair to ``max_num_tokens`` tokens in all, longest first.

    One token at a time is removed from the longer segment (B on a tie), from its front or
    its back with equal probability, so neither end of a segment is always the one kept.
    The number taken from each end is drawn at once (a binomial count of coin flips).
    """
    len_a, len_b = len(tokens_a), len(tokens_b)
    cut_a = cut_b = 0
    while len_a + len_b > max_num_tokens:
        if len_a > len_b:
            len_a, cut_a = len_a - 1, cut_a + 1
        else:
            len_b, cut_b = len_b - 1, cut_b + 1
    front_a, front_b = int(rng.binomial(cut_a, 0.5)), int(rng.binomial(cut_b, 0.5))
    return (tokens_a[front_a: len(tokens_a) - (cut_a - front_a)],
            tokens_b[front_b: len(tokens_b) - (cut_b - front_b)])


def _concat(segments) -> list:
    return [token for segment in segments for token in segment]


def _random_segment(documents, exclude: int, target_length: int, rng) -> list:
    """Sentences of another document, from a random sentence on, up to ``target_length`` tokens."""
    j = int(rng.integers(len(documents) - 1))
    j += j >= exclude                                  # any document but ``exclude``, uniformly
    document = documents[j]
    tokens = []
    for segment in document[int(rng.integers(len(document))):]:
        tokens += segment
        if len(tokens) >= target_length:
            break
    return tokens


def pairs_from_document(documents, index: int, max_seq_length: int, rng,
                        short_seq_prob: float = SHORT_SEQ_PROB) -> Iterator[SentencePair]:
    """The NSP pairs made from document ``index`` (documents of sentences of token ids).

    Sentences are gathered into a chunk until it reaches the target length (``max_seq_length
    - 3``, or shorter with probability ``short_seq_prob``). A random cut splits the chunk
    into A (its first sentences) and the rest. With probability ``RANDOM_NEXT_PROB``, B is
    taken from another document (label 1), and the unused sentences go back to be the start
    of the next chunk; otherwise B is the rest of the chunk (label 0). The pair is then
    truncated to fit.

    One change from the original: a chunk of a single sentence is cut inside the sentence,
    so that B can still be the text that follows A. The original always pairs a lone
    sentence with a random B, which on a corpus of short documents (most docstrings are a
    sentence or two) would make most labels 1.
    """
    document = documents[index]
    max_num_tokens = max_seq_length - NUM_SPECIAL_TOKENS
    target_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_length = int(rng.integers(2, max_num_tokens + 1))
    chunk, chunk_length = [], 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_length:
            is_random_next = bool(rng.random() < RANDOM_NEXT_PROB)
            if len(chunk) >= 2:
                a_end = int(rng.integers(1, len(chunk)))          # A = chunk[:a_end], 1 <= a_end < len
                tokens_a, rest = _concat(chunk[:a_end]), chunk[a_end:]
            elif len(chunk[0]) >= 2:
                cut = int(rng.integers(1, len(chunk[0])))         # a lone sentence is cut in two
                tokens_a, rest = chunk[0][:cut], [chunk[0][cut:]]
            else:
                tokens_a, rest, is_random_next = list(chunk[0]), [], True
            if is_random_next:
                tokens_b = _random_segment(documents, index, target_length - len(tokens_a), rng)
                if len(chunk) >= 2:
                    i -= len(rest)                                 # unused sentences are read again
            else:
                tokens_b = _concat(rest)
            tokens_a, tokens_b = truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
            yield SentencePair(tokens_a, tokens_b, is_random_next)
            chunk, chunk_length = [], 0
        i += 1


def pad_to_length(ids: list, max_seq_length: int, vocab: VocabularyInfo, what: str) -> tuple:
    """``(input_ids, attention_mask)``, arrays (T,): ``ids`` then [PAD]s up to ``max_seq_length``,
    the mask 1 on ``ids``. ``what`` names the sequence in the error when it does not fit."""
    n = len(ids)
    if n > max_seq_length:
        raise ValueError(f"{what} holds {n} tokens with [CLS]/[SEP], more than max_seq_length={max_seq_length}")
    input_ids = np.full(max_seq_length, vocab.pad_id, dtype=ID_DTYPE)           # (T,)
    input_ids[:n] = ids
    attention_mask = np.zeros(max_seq_length, dtype=ID_DTYPE)                     # (T,)
    attention_mask[:n] = 1
    return input_ids, attention_mask


def encode_pair(pair: SentencePair, max_seq_length: int, vocab: VocabularyInfo) -> dict:
    """``[CLS] A [SEP] B [SEP]`` padded to ``max_seq_length``: one unmasked example (arrays (T,))."""
    ids = [vocab.cls_id, *pair.tokens_a, vocab.sep_id, *pair.tokens_b, vocab.sep_id]
    input_ids, attention_mask = pad_to_length(ids, max_seq_length, vocab, "the pair")
    n = len(ids)
    token_type_ids = np.zeros(max_seq_length, dtype=ID_DTYPE)                     # (T,)
    token_type_ids[len(pair.tokens_a) + 2: n] = 1                                 # B and its [SEP]
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "next_sentence_label": np.array(int(pair.is_random_next), dtype=ID_DTYPE)}


# ----------------------------------------------------------------------------- packed sequences
def pack_sentences(documents, max_seq_length: int, separator_id: int) -> list[list[int]]:
    """The bodies of RoBERTa's "full sentences" inputs: whole sentences read contiguously
    through the documents, packed into sequences of up to ``max_seq_length - 2`` tokens.

    The documents are read in order, each sentence whole; a sentence goes into the current
    sequence if it fits, otherwise it starts the next sequence. Inside a sequence, the
    sentences of a new document follow a ``separator_id`` token (``[SEP]``); a document that
    begins a sequence needs none. A sentence longer than a whole sequence is cut into full
    pieces, its last piece beginning the next sequence. So every token of the corpus is in
    exactly one sequence, in corpus order, and a sequence ends only where the next sentence
    (with its separator) would not fit. ``[CLS]`` and the closing ``[SEP]`` are added by
    :func:`encode_packed`, hence the 2 tokens of room.
    """
    capacity = int(max_seq_length) - 2
    if capacity < 2:
        raise ValueError(f"max_seq_length must be at least 4 ([CLS], two tokens, [SEP]), got {max_seq_length!r}")
    sequences, current = [], []
    for document in documents:
        for s, sentence in enumerate(document):
            sentence = list(sentence)
            if not sentence:
                continue
            separator = [separator_id] if s == 0 and current else []      # a new document inside a sequence
            if len(current) + len(separator) + len(sentence) <= capacity:
                current += separator + sentence
                continue
            if current:
                sequences.append(current)
            while len(sentence) > capacity:                             # longer than a whole sequence
                sequences.append(sentence[:capacity])
                sentence = sentence[capacity:]
            current = sentence
    if current:
        sequences.append(current)
    return sequences


def encode_packed(body: list, max_seq_length: int, vocab: VocabularyInfo) -> dict:
    """``[CLS] body [SEP]`` padded to ``max_seq_length``: one unmasked example (arrays (T,)),
    a single segment (token type 0 everywhere) and no next-sentence label."""
    input_ids, attention_mask = pad_to_length([vocab.cls_id, *body, vocab.sep_id], max_seq_length, vocab,
                                              "the sequence")
    return {"input_ids": input_ids, "token_type_ids": np.zeros(max_seq_length, dtype=ID_DTYPE),
            "attention_mask": attention_mask}


def create_packed_examples(documents, vocab: VocabularyInfo, max_seq_length: int = 128, *,
                           masker: Masker | None = None, seed: int = 0) -> list[dict]:
    """RoBERTa's pretraining examples: :func:`pack_sentences` then :func:`encode_packed`.

    With a ``masker`` each example is masked once, from ``seed`` (a validation set that is
    the same at every evaluation); without one they stay unmasked for :class:`DynamicMasking`.
    """
    if documents and documents[0] and isinstance(documents[0][0], str):
        raise TypeError("create_packed_examples needs token ids: pass the documents through "
                        "tokenize_documents first")
    examples = [encode_packed(body, max_seq_length, vocab)
                for body in pack_sentences(documents, max_seq_length, vocab.sep_id)]
    if not examples:
        raise CorpusError("the corpus holds no tokens to pack into sequences")
    if masker is None:
        return examples
    rng = np.random.default_rng(seed)
    return [masked for start in range(0, len(examples), _MASKING_BLOCK)
            for masked in _mask_block(examples[start: start + _MASKING_BLOCK], masker, rng)]


# ----------------------------------------------------------------------------- masking
class Masker:
    """Choose the tokens to predict and corrupt them: the masked-LM recipe.

    For each sequence of ``n`` tokens (without padding, with [CLS]/[SEP]):

    1. ``k = min(max_predictions_per_seq, max(1, round(n * masked_lm_prob)))`` positions
       are chosen at random among the candidates (every token but [CLS], [SEP], [PAD],
       [MASK]). With ``whole_word_masking`` whole words are chosen (a word is a token and
       the "##" pieces after it), never more than ``k`` tokens in all.
    2. Each chosen token becomes [MASK] with probability ``MASK_TOKEN_PROB`` (0.8), a random
       ordinary token with probability ``RANDOM_TOKEN_PROB`` (0.1), or stays as it is.
    3. ``labels`` holds the original token at chosen positions and ``IGNORE_INDEX`` (-100)
       everywhere else, so the loss looks at chosen positions only.
    """

    def __init__(self, vocab: VocabularyInfo, masked_lm_prob: float = MASKED_LM_PROB,
                 max_predictions_per_seq: int = MAX_PREDICTIONS_PER_SEQ, whole_word_masking: bool = False):
        if not 0.0 < masked_lm_prob < 1.0:
            raise ValueError(f"masked_lm_prob must be in (0, 1), got {masked_lm_prob!r}")
        if int(max_predictions_per_seq) < 1:
            raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq!r}")
        self.vocab = vocab
        self.masked_lm_prob = float(masked_lm_prob)
        self.max_predictions_per_seq = int(max_predictions_per_seq)
        self.whole_word_masking = bool(whole_word_masking)

    def __call__(self, input_ids, rng) -> tuple[np.ndarray, np.ndarray]:
        """(masked input_ids, labels) for ``input_ids`` of shape (B, T) or (T,); the input is not changed."""
        input_ids = np.asarray(input_ids)
        if input_ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids must hold integers, got dtype {input_ids.dtype}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        squeeze = input_ids.ndim == 1
        original = np.atleast_2d(input_ids)                                       # (B, T)
        if original.size and (original.min() < 0 or original.max() >= self.vocab.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.vocab.vocab_size}), "
                             f"got values from {original.min()} to {original.max()}")
        chosen = self.choose(original, rng)                                       # (B, T) bool
        labels = np.where(chosen, original, IGNORE_INDEX).astype(ID_DTYPE)        # (B, T)
        u = rng.random(original.shape)                                            # (B, T)
        to_mask = chosen & (u < MASK_TOKEN_PROB)
        to_random = chosen & (u >= MASK_TOKEN_PROB) & (u < MASK_TOKEN_PROB + RANDOM_TOKEN_PROB)
        masked = original.astype(ID_DTYPE, copy=True)                             # (B, T)
        masked[to_mask] = self.vocab.mask_id
        masked[to_random] = rng.choice(self.vocab.replacement_ids, size=int(to_random.sum()))
        if squeeze:
            return masked[0], labels[0]
        return masked, labels

    def choose(self, ids: np.ndarray, rng) -> np.ndarray:
        """(B, T) bool: the positions to predict in the sequences ``ids`` (B, T)."""
        batch, length = ids.shape
        rows = np.arange(batch)[:, None]                                          # (B, 1)
        candidate = ~np.isin(ids, self.vocab.never_selected)                      # (B, T)
        num_tokens = np.count_nonzero(ids != self.vocab.pad_id, axis=1)           # (B,)
        k = np.clip(np.rint(num_tokens * self.masked_lm_prob), 1, self.max_predictions_per_seq)  # (B,)
        if not self.whole_word_masking:
            # k random candidates per row: the k smallest of random scores (others score 2 > 1).
            scores = np.where(candidate, rng.random(ids.shape), 2.0)             # (B, T)
            rank = np.argsort(np.argsort(scores, axis=1), axis=1)                 # (B, T) rank in row
            return candidate & (rank < k[:, None])

        # Whole words: a word starts at a candidate that is not a "##" piece, or that follows
        # a non-candidate; ``word`` numbers the words of each row 0, 1, 2, ...
        previous_is_candidate = np.zeros_like(candidate)
        previous_is_candidate[:, 1:] = candidate[:, :-1]
        starts = candidate & (~self.vocab.is_continuation[ids] | ~previous_is_candidate)  # (B, T)
        word = np.maximum(np.cumsum(starts, axis=1) - 1, 0)                       # (B, T)
        num_words = starts.sum(axis=1)                                            # (B,)
        word_length = np.zeros((batch, length), dtype=np.int64)                   # (B, words)
        np.add.at(word_length, (np.broadcast_to(rows, ids.shape)[candidate], word[candidate]), 1)
        # Visit the words of each row in a random order; take a word if it still fits in k
        # (a word too long is skipped, a later shorter one may fit), all rows at once.
        scores = np.where(np.arange(length) < num_words[:, None], rng.random((batch, length)), 2.0)
        order = np.argsort(scores, axis=1)                                        # (B, words)
        taken = np.zeros((batch, length), dtype=bool)                             # (B, words)
        count = np.zeros(batch, dtype=np.int64)                                   # (B,)
        for r in range(int(num_words.max(initial=0))):
            w = order[:, r]                                                       # (B,) r-th word of each row
            n = word_length[rows[:, 0], w]
            fits = (r < num_words) & (count + n <= k)
            taken[rows[:, 0], w] |= fits
            count += n * fits
            if np.all((count == k) | (r + 1 >= num_words)):
                break
        return candidate & np.take_along_axis(taken, word, axis=1)


class DynamicMasking:
    """New masks for every batch: apply to unmasked batches (``labels`` is added)::

        masking = DynamicMasking(Masker(vocab), seed=0)
        for batch in dataset:                 # unmasked examples
            batch = masking(batch)            # input_ids corrupted, labels set

    Its random state is part of a training checkpoint (``state_dict`` / ``load_state_dict``,
    plain JSON-able numbers), so a resumed run draws the same masks.
    """

    def __init__(self, masker: Masker, seed: int = 0):
        self.masker = masker
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict) -> dict:
        if "labels" in batch:
            raise ValueError("this batch already has labels (statically masked examples); "
                             "dynamic masking needs examples made without a masker")
        masked = dict(batch)
        masked["input_ids"], masked["labels"] = self.masker(batch["input_ids"], self.rng)
        return masked

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


# ----------------------------------------------------------------------------- examples
def create_examples(documents, vocab: VocabularyInfo, max_seq_length: int = 128, *,
                    masker: Masker | None = None, dupe_factor: int = 1,
                    short_seq_prob: float = SHORT_SEQ_PROB, seed: int = 0) -> Iterator[dict]:
    """Pretraining examples (dicts of arrays, see the module docstring) from tokenized documents.

    ``documents`` are lists of sentences of token ids (:func:`tokenize_documents`). The
    corpus is read ``dupe_factor`` times, documents in a new random order each time. With a
    ``masker`` every example is masked once here (static masking, ``labels`` included);
    without one the examples stay unmasked for :class:`DynamicMasking`. The settings are
    checked at once; the examples come lazily (an iterator), so they can stream to shards.
    """
    if int(max_seq_length) < MIN_SEQ_LENGTH:
        raise ValueError(f"max_seq_length must be at least {MIN_SEQ_LENGTH} "
                         f"([CLS] A [SEP] B [SEP]), got {max_seq_length!r}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob!r}")
    if int(dupe_factor) < 1:
        raise ValueError(f"dupe_factor must be >= 1, got {dupe_factor!r}")
    if len(documents) < 2:
        raise CorpusError(f"next-sentence pairs need at least 2 documents (random B comes from "
                          f"another document); the corpus has {len(documents)}")
    if documents[0] and isinstance(documents[0][0], str):
        raise TypeError("create_examples needs token ids: pass the documents through tokenize_documents first")
    for d, document in enumerate(documents):
        if not document or not all(isinstance(sentence, (list, tuple, np.ndarray)) and len(sentence)
                                    for sentence in document):
            raise ValueError(f"documents[{d}] must be a non-empty list of sentences, each a non-empty list of "
                             "token ids (tokenize_documents drops empty ones)")
    num_tokens = sum(len(s) for doc in documents for s in doc)
    if num_tokens < max_seq_length:
        raise CorpusError(f"the corpus holds {num_tokens} tokens, fewer than one sequence of "
                          f"max_seq_length={max_seq_length}: use more text or a shorter max_seq_length")
    return _generate_examples(documents, vocab, int(max_seq_length), masker, int(dupe_factor),
                              short_seq_prob, seed)


def _generate_examples(documents, vocab, max_seq_length, masker, dupe_factor, short_seq_prob, seed):
    # Two independent random streams: the pairs do not depend on whether or how they are masked.
    pair_rng, mask_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    examples = (encode_pair(pair, max_seq_length, vocab)
                for _ in range(dupe_factor)
                for index in pair_rng.permutation(len(documents))
                for pair in pairs_from_document(documents, int(index), max_seq_length, pair_rng, short_seq_prob))
    if masker is None:
        yield from examples
        return
    block = []                      # masking a block of examples at once is much faster than one by one
    for example in examples:
        block.append(example)
        if len(block) == _MASKING_BLOCK:
            yield from _mask_block(block, masker, mask_rng)
            block = []
    yield from _mask_block(block, masker, mask_rng)


_MASKING_BLOCK = 256


def _mask_block(examples: list, masker: Masker, rng) -> list:
    if not examples:
        return []
    masked, labels = masker(np.stack([ex["input_ids"] for ex in examples]), rng)     # (n, T) each
    for example, ids, lab in zip(examples, masked, labels):
        example["input_ids"], example["labels"] = ids, lab
    return examples


def examples_to_arrays(examples: Iterable[dict]) -> dict:
    """Stack examples into arrays with a leading example axis: {name: (N, ...)}."""
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to stack")
    return {name: np.stack([ex[name] for ex in examples]) for name in examples[0]}


# ----------------------------------------------------------------------------- shards
SHARD_INDEX = "index.json"
SHARD_FORMAT = "minibert-pretraining-shards"
SHARD_VERSION = 1


def write_shards(examples: Iterable[dict], directory, examples_per_shard: int = 10_000,
                 overwrite: bool = False) -> dict:
    """Write examples to ``directory`` as NumPy shards and return the index.

    Each shard is one ``.npy`` file per field (``shard-00000.input_ids.npy``, shape
    ``(n, T)``), written with ``np.save`` (no pickle); ``index.json`` lists the shards and
    is written last, so an interrupted write leaves no index and is never mistaken for a
    complete one. At most one shard is held in memory: the examples may come from a
    generator over a corpus larger than memory.
    """
    if int(examples_per_shard) < 1:
        raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / SHARD_INDEX
    if index_path.exists():
        if not overwrite:
            raise FileExistsError(f"{index_path} exists: shards were already written there "
                                  "(pass overwrite=True to replace them)")
        index_path.unlink()

    shards, fields, buffer = [], None, []

    def flush():
        nonlocal fields
        arrays = examples_to_arrays(buffer)
        layout = {name: {"dtype": str(a.dtype), "shape": list(a.shape[1:])} for name, a in arrays.items()}
        if fields is None:
            fields = layout
        elif layout != fields:
            raise ValueError(f"examples differ in fields or shapes: {layout} after {fields}")
        files = {}
        for name, array in arrays.items():
            files[name] = f"shard-{len(shards):05d}.{name}.npy"
            np.save(directory / files[name], array, allow_pickle=False)
        shards.append({"num_examples": len(buffer), "files": files})
        buffer.clear()

    for example in examples:
        buffer.append(example)
        if len(buffer) == examples_per_shard:
            flush()
    if buffer:
        flush()
    if not shards:
        raise ValueError("no examples were given to write_shards")
    index = {"format": SHARD_FORMAT, "version": SHARD_VERSION,
             "num_examples": sum(s["num_examples"] for s in shards), "fields": fields, "shards": shards}
    temporary = directory / (SHARD_INDEX + ".tmp")
    temporary.write_text(json.dumps(index, indent=1))
    os.replace(temporary, index_path)
    return index


def read_shard_index(directory) -> dict:
    """The index of a shard directory, checked: format, version, and every listed file present."""
    index_path = Path(directory) / SHARD_INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"no shard index at {index_path} (were the shards written completely?)")
    index = json.loads(index_path.read_text())
    if index.get("format") != SHARD_FORMAT or index.get("version") != SHARD_VERSION:
        raise ValueError(f"{index_path} is not a {SHARD_FORMAT} index of version {SHARD_VERSION}")
    for shard in index["shards"]:
        for file in shard["files"].values():
            if not (Path(directory) / file).is_file():
                raise FileNotFoundError(f"shard file {Path(directory) / file} listed in {index_path} is missing")
    return index


# ----------------------------------------------------------------------------- datasets
class _Batches:
    """Batching over an epoch made of parts (shards), shared by the two datasets.

    The order of an epoch is a function of (seed, epoch) alone: the parts in a shuffled
    order, the examples of each part shuffled. So ``position`` = (epoch, number of examples
    already handed out in it) says exactly where the stream is, and setting it back
    reproduces the same batches bit for bit.
    """

    def __init__(self, part_sizes, batch_size, shuffle, seed, drop_last):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.part_sizes = [int(n) for n in part_sizes]
        self.num_examples = sum(self.part_sizes)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        if not is_int_at_least(seed, 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.example = 0

    def _load_part(self, part: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def position(self) -> dict:
        """Where the stream is: ``{"epoch": e, "example": i}`` (plain JSON)."""
        return {"epoch": self.epoch, "example": self.example}

    @position.setter
    def position(self, value: dict) -> None:
        epoch, example = int(value["epoch"]), int(value["example"])
        if epoch < 0 or not 0 <= example <= self.num_examples:
            raise ValueError(f"position {value} is outside this dataset of {self.num_examples} examples")
        self.epoch, self.example = epoch, example

    def _epoch_order(self):
        """(part order, permutation of each part) for the current epoch."""
        if not self.shuffle:
            return range(len(self.part_sizes)), lambda part: np.arange(self.part_sizes[part])
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.part_sizes))
        return order, lambda part: np.random.default_rng([self.seed, self.epoch, part]).permutation(
            self.part_sizes[part])

    def __iter__(self) -> Iterator[dict]:
        """Batches ({name: (B, ...)}) from the current position to the end of the epoch.

        The position moves past each batch as it is handed out; at the end of the epoch it
        moves to the start of the next one, so ``for batch in dataset`` is one epoch.
        """
        order, permutation = self._epoch_order()
        start = self.example                        # examples of this epoch handed out already
        pieces, pending = [], 0                     # parts of the next batch, their total size
        offset = 0                                  # examples of the epoch before this part
        for part in order:
            size = self.part_sizes[part]
            if offset + size <= start:              # handed out before (a resumed run)
                offset += size
                continue
            arrays = self._load_part(part)
            perm = permutation(part)
            lo = max(0, start - offset)
            while lo < size:
                take = min(self.batch_size - pending, size - lo)
                pieces.append({name: a[perm[lo: lo + take]] for name, a in arrays.items()})
                pending += take
                lo += take
                if pending == self.batch_size:
                    batch = _concatenate(pieces)
                    pieces, pending = [], 0
                    self.example += self.batch_size
                    yield batch
            offset += size
        if pieces and not self.drop_last:
            self.example += pending
            yield _concatenate(pieces)
        self.epoch, self.example = self.epoch + 1, 0


def _concatenate(pieces: list) -> dict:
    if len(pieces) == 1:
        return pieces[0]
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}


class ArrayDataset(_Batches):
    """Examples held in memory ({name: (N, ...)} arrays), served in batches.

    Same interface as :class:`ShardDataset`: iterate for one epoch of batches, and save and
    restore ``position`` to resume.
    """

    def __init__(self, arrays: dict, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        sizes = {name: len(a) for name, a in arrays.items()}
        if not sizes or len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise ValueError(f"arrays must be non-empty and share their first dimension, got sizes {sizes}")
        self.arrays = {name: np.asarray(a) for name, a in arrays.items()}
        super().__init__([next(iter(sizes.values()))], batch_size, shuffle, seed, drop_last)

    def _load_part(self, part: int) -> dict:
        return self.arrays


class ShardDataset(_Batches):
    """Examples streamed from shards written by :func:`write_shards`, in batches.

    One shard at a time is loaded (``np.load``, ``allow_pickle=False``) and shuffled in
    memory; the shard order is shuffled too, per epoch, from ``seed``.
    """

    def __init__(self, directory, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        self.directory = Path(directory)
        self.index = read_shard_index(self.directory)
        self.fields = self.index["fields"]
        super().__init__([s["num_examples"] for s in self.index["shards"]], batch_size, shuffle, seed, drop_last)

    def _load_part(self, part: int) -> dict:
        shard = self.index["shards"][part]
        arrays = {}
        for name, file in shard["files"].items():
            array = np.load(self.directory / file, allow_pickle=False)
            if len(array) != shard["num_examples"]:
                raise ValueError(f"{self.directory / file} holds {len(array)} examples, "
                                 f"the index says {shard['num_examples']}")
            arrays[name] = array
        return arrays
