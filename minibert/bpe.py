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
the most frequent adjacent pair. :class:`RobertaTokenizer` puts the model behind the call
that :class:`~minibert.tokenization.BertTokenizer` has (``<s> A </s></s> B </s>``).
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict

import numpy as np
import regex

from .backend import is_int_at_least
from .tokenization import (ADDED_TOKENS_NAME, SPECIAL_TOKEN_NAMES, TOKENIZER_CONFIG_NAME, PreTrainedTokenizer,
                           VocabularyNotFoundError, _check_side, _check_text, _Sequence, read_json_object,
                           split_at_matches)

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


# --------------------------------------------------------------------------------------
# RoBERTa's tokenizer: the byte-level BPE behind the call every tokenizer shares
# --------------------------------------------------------------------------------------

VOCAB_JSON_NAME = "vocab.json"
MERGES_NAME = "merges.txt"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
# the special tokens, in the order they take ids when the vocabulary lacks them
ROBERTA_SPECIALS = ("cls_token", "pad_token", "sep_token", "unk_token", "mask_token")
_CONFIG_KEYS = ("add_prefix_space", "trim_offsets", "errors", "model_max_length", "padding_side", "truncation_side",
                "clean_up_tokenization_spaces", "bos_token", "eos_token", *SPECIAL_TOKEN_NAMES)


class RobertaTokenizer(PreTrainedTokenizer):
    """RoBERTa's (and GPT-2's) byte-level BPE tokenizer, with the call of :class:`BertTokenizer`.

        tok = RobertaTokenizer.from_pretrained("path/to/model")     # vocab.json + merges.txt
        tok.tokenize("Hello world")            # ['Hello', 'Ġworld']
        batch = tok(["a question"], ["a passage"], max_length=128)
        batch["input_ids"], batch["attention_mask"]                 # (B, T) int64

    The layout of the special tokens: ``<s> A </s>`` and ``<s> A </s></s> B </s>``, every token
    of type 0 (``token_type_ids`` only when asked: RoBERTa has one token type). ``<s>`` is the
    class token (``cls_token``, also ``bos_token``), ``</s>`` the separator (``sep_token``,
    ``eos_token``); ``<pad>``, ``<unk>`` and ``<mask>`` complete them. Special tokens that the
    vocabulary lacks are added after it, as transformers does.

    ``add_prefix_space``: every text (and every pre-split word, and every stretch of text
    after a special or added token) is tokenized as if a space came before it, so its first
    word has the same tokens as inside a sentence; pre-split words need it. Offsets leave out
    the spaces a token starts or ends with (transformers' ``trim_offsets=True``), except the
    added space of a sequence's first token. Each piece of GPT-2's pre-tokenization (a word
    with the space before it, a number, a run of symbols or of spaces) is a word of
    ``word_ids()``, as in transformers.
    """

    SPECIAL_LAYOUT = {False: (1, 0, 1), True: (1, 2, 1)}
    SECOND_TYPE_ID = 0
    model_input_names = ("input_ids", "attention_mask")

    def __init__(self, vocab_file, merges_file, errors: str = "replace", bos_token: str = "<s>",
                 eos_token: str = "</s>", sep_token: str = "</s>", cls_token: str = "<s>", unk_token: str = "<unk>",
                 pad_token: str = "<pad>", mask_token: str = "<mask>", add_prefix_space: bool = False,
                 trim_offsets: bool = True, model_max_length: int | None = 512, padding_side: str = "right",
                 truncation_side: str = "right", clean_up_tokenization_spaces: bool = False,
                 additional_special_tokens=()):
        if isinstance(vocab_file, (str, os.PathLike)):
            vocab = _read_vocab_json(os.fspath(vocab_file))
        elif isinstance(vocab_file, dict):
            vocab = dict(vocab_file)
        else:
            raise TypeError(f"vocab_file must be the path of vocab.json or a token -> id dict, "
                            f"got {type(vocab_file).__name__}")
        if isinstance(merges_file, (str, os.PathLike)):
            merges = read_merges(os.fspath(merges_file))
        elif isinstance(merges_file, (list, tuple)):
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges_file]
            bad = next((m for m in merges if len(m) != 2 or not all(isinstance(s, str) and s for s in m)), None)
            if bad is not None:
                raise ValueError(f"a merge is two symbols, got {bad!r}")
        else:
            raise TypeError(f"merges_file must be the path of merges.txt or a list of pairs, "
                            f"got {type(merges_file).__name__}")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError(f"the vocabulary's ids must be exactly 0 .. {len(vocab) - 1} (each once)")
        for name, value in (("add_prefix_space", add_prefix_space), ("trim_offsets", trim_offsets),
                            ("clean_up_tokenization_spaces", clean_up_tokenization_spaces)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if not trim_offsets:
            raise ValueError("trim_offsets=False is not supported: offsets always leave out the spaces around "
                             "a token, as transformers' default trim_offsets=True")
        if errors != "replace":
            raise ValueError(f"errors={errors!r} is not supported: decode replaces bytes that are not UTF-8 "
                             "with U+FFFD (errors='replace')")
        if model_max_length is not None and not is_int_at_least(model_max_length, 2):
            raise ValueError(f"model_max_length must be an integer of at least 2 (or None), got {model_max_length!r}")
        if isinstance(additional_special_tokens, str):
            raise TypeError("additional_special_tokens must be a list of tokens, got the string "
                            f"{additional_special_tokens!r}")
        self.bpe = ByteLevelBPE(vocab, merges)
        self.merges = list(merges)
        self.ids_to_tokens = sorted(vocab, key=vocab.__getitem__)      # id -> token
        self.vocab = dict(vocab)
        self.base_vocab_size = len(vocab)
        self.add_prefix_space = bool(add_prefix_space)
        self.trim_offsets = True
        self.errors = errors
        self.model_max_length = model_max_length
        self.padding_side = _check_side(padding_side, "padding_side")
        self.truncation_side = _check_side(truncation_side, "truncation_side")
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.added_tokens: dict[str, int] = {}
        self.additional_special_tokens: list[str] = []
        named = {"bos_token": bos_token, "eos_token": eos_token, "sep_token": sep_token, "cls_token": cls_token,
                 "unk_token": unk_token, "pad_token": pad_token, "mask_token": mask_token}
        for name, token in named.items():
            setattr(self, name, _check_text(token, name))
            if not token:
                raise ValueError(f"{name} must be a non-empty string")
        self._special_re = None
        missing = [getattr(self, name) for name in ROBERTA_SPECIALS if getattr(self, name) not in self.vocab]
        missing += [t for t in (self.bos_token, self.eos_token) if t not in self.vocab]
        for token in dict.fromkeys(missing):           # special tokens the vocabulary lacks take the next ids
            self.add_tokens([token], special_tokens=True)
            self.additional_special_tokens.remove(token)
        self.unk_token_id = self.vocab[self.unk_token]
        self._update_splitting()
        if additional_special_tokens:
            self.add_special_tokens({"additional_special_tokens": list(additional_special_tokens)})

    def _update_splitting(self):
        """Rebuild what is cut out of the raw text whole: the special and the added tokens."""
        whole = [self.bos_token, self.eos_token, self.unk_token, self.sep_token, self.pad_token, self.cls_token,
                 self.mask_token, *self.additional_special_tokens, *self.added_tokens]
        whole = [t for t in dict.fromkeys(whole) if t in self.vocab]
        # longest first, so that a token wins over a shorter one that starts it
        alternatives = sorted(whole, key=lambda t: (-len(t), t))
        self._special_re = regex.compile("(" + "|".join(map(regex.escape, alternatives)) + ")") if whole else None
        self._special_ids = {t: self.vocab[t] for t in whole}

    bos_token_id = property(lambda self: self.vocab.get(self.bos_token))
    eos_token_id = property(lambda self: self.vocab.get(self.eos_token))

    @property
    def vocab_size(self) -> int:
        """Tokens of ``vocab.json``, added tokens not counted (``len(tok)`` counts them)."""
        return self.base_vocab_size

    @property
    def all_special_tokens(self) -> list[str]:
        named = [self.bos_token, self.eos_token, self.unk_token, self.sep_token, self.pad_token, self.cls_token,
                 self.mask_token]
        return [t for t in dict.fromkeys(named + self.additional_special_tokens) if t in self.vocab]

    # ---- loading and saving ---------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "RobertaTokenizer":
        """Load ``vocab.json`` and ``merges.txt`` from a folder, with the settings of
        ``tokenizer_config.json`` and ``special_tokens_map.json`` when present (keyword
        arguments override them) and the tokens of ``added_tokens.json``."""
        directory = os.fspath(path)
        if not os.path.isdir(directory):
            raise VocabularyNotFoundError(f"no tokenizer at {directory}: expected a folder holding "
                                          f"{VOCAB_JSON_NAME} and {MERGES_NAME}")
        for name in (VOCAB_JSON_NAME, MERGES_NAME):
            if not os.path.isfile(os.path.join(directory, name)):
                hint = (" (only tokenizer.json is there: minibert reads the vocabulary from vocab.json and "
                        "merges.txt)" if os.path.isfile(os.path.join(directory, "tokenizer.json")) else "")
                raise VocabularyNotFoundError(f"{name} not found in {directory}{hint}")
        settings, config = {}, {}
        for name in (SPECIAL_TOKENS_MAP_NAME, TOKENIZER_CONFIG_NAME):     # the config wins over the map
            file = os.path.join(directory, name)
            if not os.path.isfile(file):
                continue
            values = read_json_object(file)
            if name == TOKENIZER_CONFIG_NAME:
                config = values
            for key in (*_CONFIG_KEYS, "additional_special_tokens"):
                value = values.get(key)
                if isinstance(value, dict):            # {"content": "<s>", ...} form
                    value = value.get("content")
                if isinstance(value, list):
                    value = [v.get("content") if isinstance(v, dict) else v for v in value]
                if value is not None:
                    settings[key] = value
            for key in ("add_prefix_space", "trim_offsets", "clean_up_tokenization_spaces"):
                if key in settings and not isinstance(settings[key], bool):
                    raise ValueError(f"{file}: {key} must be true or false, got {settings[key]!r}")
        if isinstance(settings.get("model_max_length"), (int, float)) and settings["model_max_length"] > 1e9:
            settings["model_max_length"] = None        # "no limit" written as a huge number
        settings.update(overrides)
        specials = settings.pop("additional_special_tokens", None) or []
        if isinstance(specials, str):
            raise TypeError(f"additional_special_tokens must be a list of tokens, got the string {specials!r}")
        tokenizer = cls(os.path.join(directory, VOCAB_JSON_NAME), os.path.join(directory, MERGES_NAME), **settings)
        tokenizer._restore_added_tokens(directory, config, specials)
        return tokenizer

    def save_pretrained(self, directory) -> str:
        """``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` (the settings),
        ``special_tokens_map.json`` and, when tokens were added (special tokens the vocabulary
        lacked included), ``added_tokens.json``: a folder transformers' RobertaTokenizer loads."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, VOCAB_JSON_NAME), "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(self.ids_to_tokens[:self.base_vocab_size])}, f, ensure_ascii=False)
        with open(os.path.join(directory, MERGES_NAME), "w", encoding="utf-8", newline="\n") as f:
            f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in self.merges))
        names = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        special_map = {name: getattr(self, name) for name in names}
        if self.additional_special_tokens:
            special_map["additional_special_tokens"] = list(self.additional_special_tokens)
        config = {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": self.add_prefix_space,
                  "trim_offsets": self.trim_offsets, "errors": self.errors,
                  "model_max_length": self.model_max_length,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                  "padding_side": self.padding_side, "truncation_side": self.truncation_side, **special_map}
        if self.model_max_length is None:
            del config["model_max_length"]
        files = {SPECIAL_TOKENS_MAP_NAME: special_map, TOKENIZER_CONFIG_NAME: config}
        if self.added_tokens:
            files[ADDED_TOKENS_NAME] = self.added_tokens
        for name, values in files.items():
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                json.dump(values, f, indent=2, ensure_ascii=False)
                f.write("\n")
        return directory

    # ---- text -> tokens / ids ---------------------------------------------------------

    def _split(self, text: str) -> list[tuple[bool, str]]:
        """[(is a special or added token, segment), ...] in order; empty segments left out."""
        return split_at_matches(self._special_re, text)

    def tokenize_to_ids(self, text: str) -> list[int]:
        """The ids of ``text`` (no ``<s>`` / ``</s>`` added)."""
        text = _check_text(text)
        ids = []
        for special, segment in self._split(text):
            if special:
                ids.append(self._special_ids[segment])
            else:
                ids += self.bpe.encode_ids(segment, self.add_prefix_space)
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings (bytes written as printable characters: "Ġ" is a space)."""
        return list(map(self.ids_to_tokens.__getitem__, self.tokenize_to_ids(text)))

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the (start, end) characters of ``text`` each token covers."""
        encoded = self._align_text(text)
        return encoded.ids, encoded.offsets

    def _align_text(self, text: str) -> _Sequence:
        """Ids of ``text`` with, for every token, its word's number (the piece of GPT-2's
        pre-tokenization it came from; a special or added token is one) and its offsets."""
        text = _check_text(text)
        ids, words, offsets = [], [], []
        first_offsets = [] if self.add_prefix_space else None
        position = 0
        for special, segment in self._split(text):
            if special:
                ids.append(self._special_ids[segment])
                offsets.append((position, position + len(segment)))
                words.append(words[-1] + 1 if words else 0)
                if first_offsets is not None:
                    first_offsets.append(None)
            else:
                self._align_segment(segment, position, ids, offsets, words, first_offsets)
            position += len(segment)
        return _Sequence(ids, words, offsets, first_offsets)

    def _align_segment(self, segment, position, ids, offsets, words, first_offsets=None):
        """Append the tokens of a segment free of special tokens that starts at ``position``.

        With ``add_prefix_space`` the segment is tokenized as ``" " + segment``. The token
        that holds the added space covers, like every token, its characters less its
        spaces, counted in the text with the space: (1, end - 1) in the segment; except the
        first token of the sequence, which starts at the start, (0, end - 1) (both as the
        Rust library's byte-level offsets). ``first_offsets`` (with ``add_prefix_space``)
        gets the offsets each token takes when it begins a window or a truncated text: a
        token that starts with one space keeps it there too.
        """
        shift = 0
        if self.add_prefix_space and not segment[0].isspace():
            segment, shift = " " + segment, 1
        number = words[-1] + 1 if words else 0
        bpe, start = self.bpe, 0
        for piece in PIECES.findall(segment):
            for token_id, begin, end, leading, raw_begin, end_after_raw_begin in (
                    bpe.cache.get(piece) or bpe._encode_piece(piece)):
                if shift and start + raw_begin == 0 and ids:        # holds the space added after a special token
                    first, begin, end = None, position + begin, position + end - shift
                else:
                    first = (position + max(start + raw_begin - shift, 0),
                             position + max(start + end_after_raw_begin - shift, 0))
                    if not ids and leading == 1 and self.add_prefix_space:      # the sequence's first token
                        begin, end = first
                    else:
                        begin, end = position + start + begin - shift, position + start + end - shift
                ids.append(token_id)
                offsets.append((begin, end))
                words.append(number)
                if first_offsets is not None:
                    first_offsets.append(first if leading == 1 else None)
            number += 1
            start += len(piece)

    def _align_words(self, words) -> _Sequence:
        self._check_words_option()
        return super()._align_words(words)

    def _ids_of_words(self, words) -> _Sequence:
        self._check_words_option()
        return super()._ids_of_words(words)

    def _check_words_option(self):
        if not self.add_prefix_space:
            raise ValueError("pre-split words (is_split_into_words=True) need add_prefix_space=True, so that every "
                             "word is tokenized as after a space: RobertaTokenizer.from_pretrained(folder, "
                             "add_prefix_space=True)")

    # ---- the special-token layout: <s> A </s></s> B </s> -------------------------------

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 4 if pair else 2

    def build_inputs_with_special_tokens(self, ids_a, ids_b=None) -> list[int]:
        """<s> A </s>   or   <s> A </s></s> B </s>"""
        cls, sep = self._require("cls_token"), self._require("sep_token")
        if ids_b is None:
            return [cls, *ids_a, sep]
        return [cls, *ids_a, sep, sep, *ids_b, sep]

    def create_token_type_ids(self, ids_a, ids_b=None) -> list[int]:
        """All 0: RoBERTa has one token type."""
        return [0] * (len(ids_a) + 2 + (0 if ids_b is None else len(ids_b) + 2))

    # ---- ids -> text ------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens) -> str:
        """The text of the tokens: their characters back to bytes, decoded as UTF-8 (added
        and special tokens stand for their own text; an incomplete character, from a
        sequence cut inside it, becomes U+FFFD)."""
        whole = self._special_ids
        data = bytearray()
        for token in tokens:
            if token in whole or any(c not in CHAR_TO_BYTE for c in token):
                data += token.encode("utf-8")
            else:
                data += bytes(CHAR_TO_BYTE[c] for c in token)
        return data.decode("utf-8", errors="replace")

    def __repr__(self):
        return (f"RobertaTokenizer(vocab_size={self.vocab_size}, add_prefix_space={self.add_prefix_space}, "
                f"model_max_length={self.model_max_length})")


def _read_vocab_json(path: str) -> dict:
    """``vocab.json``: a JSON object of token -> integer id."""
    if not os.path.isfile(path):
        raise VocabularyNotFoundError(f"vocabulary file not found: {path}")
    try:
        vocab = read_json_object(path)
    except ValueError as exc:
        raise ValueError(f"{exc} (vocab.json maps each token to its id)") from None
    bad = next((t for t, i in vocab.items() if isinstance(i, bool) or not isinstance(i, int)), None)
    if bad is not None:
        raise ValueError(f"{path}: the id of {bad!r} is {vocab[bad]!r}, not an integer")
    return vocab
