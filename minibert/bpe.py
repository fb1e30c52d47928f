"""Byte-level BPE, as GPT-2 and RoBERTa tokenize: text -> bytes -> pieces -> merges -> ids.

1. **Pre-tokenization.** The text is split into pieces by GPT-2's pattern
   (:data:`PIECES`): contractions (``'s``, ``'ll``...), a run of letters, of digits, or of
   other symbols, each with at most one leading space, and runs of whitespace. A word keeps
   the space before it: ``" world"`` is one piece, so the model can tell a word that starts
   a text from one that follows a space.
2. **Bytes as characters.** Each piece is encoded as UTF-8 and every byte is written as one
   printable character (:data:`BYTE_TO_CHAR`: printable bytes stand for themselves, the
   others for code points from 256 on; the space is ``Ġ``). Any text can be tokenized: the
   256 byte characters are in every vocabulary, so there is no unknown token.
3. **Merges.** ``merges.txt`` lists pairs of symbols in the order they were learned. A
   piece starts as its byte characters; the pair with the lowest rank (learned first) is
   merged everywhere in the piece, and again, until no adjacent pair is in the list. The
   result is looked up in ``vocab.json``. Pieces recur, so results are cached.
4. **Back to text.** The tokens' characters map back to bytes, decoded as UTF-8: decoding
   gives the exact text back.

:func:`train_bpe` learns the merges from text: count the pieces, then repeatedly merge
the most frequent adjacent pair.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict

import regex

# GPT-2's pre-tokenization pattern (\p{L}: any letter, \p{N}: any digit, in every script)
PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _byte_characters() -> list[str]:
    """The printable character that stands for each byte value 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[byte] = chr(byte)
        else:
            characters[byte] = chr(256 + extra)
            extra += 1
    return [characters[byte] for byte in range(256)]


BYTE_TO_CHAR = _byte_characters()
CHAR_TO_BYTE = {character: byte for byte, character in enumerate(BYTE_TO_CHAR)}
UNRANKED = float("inf")
SPACE = BYTE_TO_CHAR[ord(" ")]                 # "Ġ"


class ByteLevelBPE:
    """The byte-level BPE model: a vocabulary (token -> id) and ranked merges.

    ``encode(text)`` gives ids and, for each, the (start, end) characters of the text it
    came from; ``decode(ids)`` gives the text back.
    """

    def __init__(self, vocab: dict, merges: list):
        if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
            raise ValueError("the vocabulary must map token strings to integer ids")
        self.vocab = vocab
        self.tokens = {i: token for token, i in vocab.items()}
        self.ranks = {}
        for rank, (left, right) in enumerate(merges):
            if left + right not in vocab:
                raise ValueError(f"merge {rank + 1} ({left} {right}) makes {left + right!r}, which is not in the vocabulary")
            self.ranks.setdefault((left, right), rank)
        missing = [c for c in BYTE_TO_CHAR if c not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} of the 256 byte characters (e.g. {missing[0]!r}): "
                             "it is not a byte-level BPE vocabulary")
        self.cache: dict[str, list] = {}            # piece -> its tokens' (id, start, end)

    @classmethod
    def from_files(cls, vocab_file: str, merges_file: str) -> "ByteLevelBPE":
        """Read ``vocab.json`` (an object: token -> id) and ``merges.txt`` (a pair per line)."""
        try:
            with open(vocab_file, encoding="utf-8") as f:
                vocab = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{vocab_file} is not valid JSON: {exc}") from None
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_file} must hold a JSON object (token -> id), not a {type(vocab).__name__}")
        return cls(vocab, read_merges(merges_file))

    def save(self, folder: str, merges: list | None = None) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.vocab, f, ensure_ascii=False)
        ordered = merges if merges is not None else sorted(self.ranks, key=self.ranks.get)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in ordered))

    def merge(self, piece: str) -> list[str]:
        """Apply the merges to one piece (in byte characters): the adjacent pair of lowest rank
        is merged wherever it occurs, left to right, until no pair has a rank."""
        symbols = list(piece)
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, UNRANKED))
            if pair not in self.ranks:
                break
            left, right = pair
            merged, i = [], 0
            while i < len(symbols):
                if symbols[i] == left and i + 1 < len(symbols) and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode(self, text: str, add_prefix_space: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and each token's (start, end) in ``text``.

        ``add_prefix_space``: tokenize ``" " + text``, so a first word is tokenized as after a
        space (RoBERTa does this for pre-split words). Offsets leave out the spaces a token
        starts or ends with (``Ġworld`` points at ``world``; a token of one space, at the empty
        span after it), except the added space of the first token.
        """
        shift = 0
        if add_prefix_space and text and not text[0].isspace():
            text, shift = " " + text, 1
        ids, offsets = [], []
        start = 0                                    # the pieces tile the text: each starts where the last ended
        for piece in PIECES.findall(text):
            for token_id, begin, end, leading, raw_begin, end_after_raw_begin in (
                    self.cache.get(piece) or self._encode_piece(piece)):
                if add_prefix_space and leading == 1 and (not ids or start + raw_begin == 0):
                    begin, end = raw_begin, end_after_raw_begin      # the first token keeps its prefix space
                ids.append(token_id)
                offsets.append((max(start + begin - shift, 0), max(start + end - shift, 0)))
            start += len(piece)
        return ids, offsets

    def encode_ids(self, text: str, add_prefix_space: bool = False) -> list[int]:
        """The token ids of ``text`` alone (:meth:`encode` without the offsets, faster)."""
        if add_prefix_space and text and not text[0].isspace():
            text = " " + text
        ids = []
        for piece in PIECES.findall(text):
            cached = self.cache.get(piece) or self._encode_piece(piece)
            ids += [token[0] for token in cached]
        return ids

    def _encode_piece(self, piece: str) -> list[tuple]:
        """For each token of one piece: ``(id, start, end, leading spaces, untrimmed start,
        end trimmed from that start)``, positions in the piece's characters; start and end
        leave out the spaces the token starts and ends with."""
        cached = self.cache.get(piece)
        if cached is not None:
            return cached
        char_of_byte = [i for i, character in enumerate(piece) for _ in character.encode("utf-8")]
        result, position = [], 0
        for token in self.merge("".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))):
            begin, end = char_of_byte[position], char_of_byte[position + len(token) - 1] + 1
            position += len(token)
            leading = len(token) - len(token.lstrip(SPACE))
            trailing = len(token) - len(token.rstrip(SPACE))
            trimmed_begin = min(begin + leading, end)
            trimmed_end = max(end - trailing, trimmed_begin) if trailing else end
            result.append((self.vocab[token], trimmed_begin, trimmed_end, leading, begin,
                           max(end - trailing, begin) if trailing else end))
        self.cache[piece] = result
        return result

    def tokenize(self, text: str, add_prefix_space: bool = False) -> list[str]:
        return [self.tokens[i] for i in self.encode_ids(text, add_prefix_space)]

    def decode(self, ids) -> str:
        """The text of ``ids``: their characters back to bytes, decoded as UTF-8 (an incomplete
        character, from a sequence cut inside it, becomes U+FFFD)."""
        data = bytes(CHAR_TO_BYTE[c] for i in ids for c in self.tokens[int(i)])
        return data.decode("utf-8", errors="replace")


def read_merges(path: str) -> list[tuple[str, str]]:
    """The pairs of ``merges.txt`` in rank order (a ``#version`` first line is skipped)."""
    merges = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if (number == 1 and line.startswith("#version")) or not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{path}: line {number}: a merge is two symbols separated by one space, "
                                 f"got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


def train_bpe(texts, vocab_size: int, min_frequency: int = 2, special_tokens=("<s>", "<pad>", "</s>", "<unk>",
                                                                              "<mask>")):
    """Learn byte-level BPE merges from ``texts`` (an iterable of str).

    The vocabulary starts as the special tokens and the 256 byte characters; each step merges
    the most frequent adjacent pair over all pieces (ties: the pair whose symbols come first
    in string order), until ``vocab_size`` or no pair occurs ``min_frequency`` times. Returns
    ``(vocab, merges)``.
    """
    if vocab_size < len(special_tokens) + 256:
        raise ValueError(f"vocab_size {vocab_size} leaves no room: the special tokens and the 256 bytes take "
                         f"{len(special_tokens) + 256}")
    counts = Counter()
    for text in ([texts] if isinstance(texts, str) else texts):
        counts.update(PIECES.findall(text))
    words = [[BYTE_TO_CHAR[b] for b in piece.encode("utf-8")] for piece in counts]
    frequencies = list(counts.values())
    vocab = {token: i for i, token in enumerate([*special_tokens, *BYTE_TO_CHAR])}
    merges = []

    pair_counts = defaultdict(int)
    pair_words = defaultdict(set)
    for index, (word, frequency) in enumerate(zip(words, frequencies)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += frequency
            pair_words[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue                                    # an outdated entry: a newer one is in the heap
        if -negative < min_frequency:
            break
        left, right = pair
        merges.append(pair)
        vocab.setdefault(left + right, len(vocab))
        changed = defaultdict(int)
        for index in pair_words.pop(pair):
            word, frequency = words[index], frequencies[index]
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            for old in zip(word, word[1:]):
                changed[old] -= frequency
            for new in zip(merged, merged[1:]):
                changed[new] += frequency
                pair_words[new].add(index)
            words[index] = merged
        for changed_pair, delta in changed.items():
            if delta:
                pair_counts[changed_pair] += delta
                if pair_counts[changed_pair] > 0:
                    heapq.heappush(heap, (-pair_counts[changed_pair], changed_pair))
        pair_counts.pop(pair, None)
    return vocab, merges
