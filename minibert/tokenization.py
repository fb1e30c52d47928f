"""BERT's WordPiece tokenizer: text -> tokens -> ids, and back.

The pipeline, one small function per step, in the order the reference implementation
(Hugging Face ``tokenizers``, the Rust library behind every "fast" BERT tokenizer)
applies them::

    "Héllo, 世界! [MASK]"
      split_special_tokens   cut [CLS] [SEP] [MASK] [PAD] [UNK] (and never_split strings)
                             out of the raw text; they are kept whole, case-sensitively
      clean_text             drop NUL, U+FFFD and control/format characters; whitespace -> " "
      space_cjk_chars        " 世 " " 界 ": every CJK ideograph becomes a word of its own
      strip_accents          NFD, then drop the non-spacing marks (category Mn): é -> e
      lowercase              character by character                       (do_lower_case)
      split_words            split on whitespace; each punctuation character is a word
      wordpiece              greedy longest-match-first sub-words, "##" marks a continuation
    -> ["hello", ",", "世", "界", "!", "[MASK]"]

A word longer than ``max_input_chars_per_word`` (100) characters, or one that cannot be
covered by vocabulary pieces, becomes a single ``[UNK]``.

Every step before ``split_words`` maps each character independently of its neighbours,
so :class:`BertTokenizer` runs them once per *distinct character* (a table used by
``str.translate``), then caches the pieces of every distinct word it has seen. Plain
ASCII text takes a shorter road still (one regular expression, one dictionary lookup per
word). The readable step functions are the definition; the fast paths are tested against
them.

The call ``tokenizer(texts, ...)`` takes transformers' arguments (pre-split words, windows
of long inputs, padding and truncation on either side) and returns a :class:`BatchEncoding`
of NumPy arrays that also maps tokens to words and characters (``word_ids``, ...). The call
belongs to :class:`PreTrainedTokenizer`, which RoBERTa's byte-level BPE tokenizer
(``minibert/bpe.py``) shares.

Unicode tables: this module uses Python's :mod:`unicodedata`; the Rust library uses older
(and, for lower-casing, newer) tables. The few characters on which they disagree are
listed in ``docs/tokenizer.md``; where it costs nothing we follow the Rust library
(unassigned code points are kept, not dropped; its CJK ranges; its list of whitespace).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from itertools import chain
from typing import NamedTuple

import numpy as np

from .backend import is_int_at_least

SPECIAL_TOKEN_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
VOCAB_FILE_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
ADDED_TOKENS_NAME = "added_tokens.json"


# --------------------------------------------------------------------------------------
# Character classes
# --------------------------------------------------------------------------------------

def is_whitespace(char: str) -> bool:
    """Unicode White_Space: tab, newline, carriage return, space, NBSP, U+2028 ... .

    ``str.isspace`` also counts the information separators U+001C..U+001F, which are
    control characters (and dropped by :func:`clean_text`), not white space.
    """
    return char.isspace() and not "\x1c" <= char <= "\x1f"


def is_control(char: str) -> bool:
    """Control (Cc), format (Cf), private-use (Co) and surrogate (Cs) characters.

    Tab, newline and carriage return are white space, not control characters. Unassigned
    code points (Cn) are kept, as the Rust library keeps them.
    """
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs")


def is_punctuation(char: str) -> bool:
    """Any Unicode punctuation (categories P*) plus every ASCII non-alphanumeric symbol.

    BERT counts ``$ + < = > ^ ` | ~`` as punctuation although Unicode calls them symbols.
    """
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


# The CJK Unified Ideographs blocks, as the Rust library lists them (its extension-E
# range starts at U+2B920, not U+2B820; we follow it so the tokens agree).
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def is_cjk_char(char: str) -> bool:
    """A CJK ideograph (Chinese characters, also used in Japanese and Korean text).

    Hangul, Hiragana and Katakana are *not* in these blocks: they are written with spaces
    between words, so they are split like any other script.
    """
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


# --------------------------------------------------------------------------------------
# The pipeline, step by step (readable reference; BertTokenizer runs the same steps fast)
# --------------------------------------------------------------------------------------

def clean_text(text: str) -> str:
    """Drop NUL, U+FFFD (the replacement character) and control characters; whitespace -> " "."""
    out = []
    for char in text:
        if char == "\x00" or char == "\ufffd" or is_control(char):
            continue
        out.append(" " if is_whitespace(char) else char)
    return "".join(out)


def space_cjk_chars(text: str) -> str:
    """Put a space on both sides of every CJK ideograph, so each becomes its own word."""
    return "".join(f" {char} " if is_cjk_char(char) else char for char in text)


def strip_accents(text: str) -> str:
    """Decompose (NFD: é -> e + U+0301) and drop the non-spacing combining marks (Mn)."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def lowercase(text: str) -> str:
    """Lower-case each character on its own (full Unicode mappings: "İ" -> "i̇").

    ``str.lower`` alone would turn a word-final capital sigma into the final form "ς";
    BERT's tokenizers lower-case character by character, giving "σ" everywhere.
    """
    if "\u03a3" in text:
        text = text.replace("\u03a3", "\u03c3")
    return text.lower()


def mark_word_boundaries(text: str) -> str:
    """Whitespace -> " ", and a space on each side of every punctuation character."""
    out = []
    for char in text:
        if is_whitespace(char):
            out.append(" ")
        elif is_punctuation(char):
            out.append(f" {char} ")
        else:
            out.append(char)
    return "".join(out)


def split_words(text: str) -> list[str]:
    """Split on whitespace; every punctuation character is a word of its own."""
    return mark_word_boundaries(text).split()


def normalize(text: str, do_lower_case: bool = True, strip_accents_: bool | None = None,
              tokenize_chinese_chars: bool = True, remove_control_chars: bool = True) -> str:
    """clean_text -> space_cjk_chars -> strip_accents -> lowercase, as configured.

    ``strip_accents_=None`` follows ``do_lower_case`` (uncased BERT strips accents).
    ``remove_control_chars=False`` skips ``clean_text``: control characters stay in their
    words (white space still separates words, in ``split_words``).
    """
    if strip_accents_ is None:
        strip_accents_ = do_lower_case
    if remove_control_chars:
        text = clean_text(text)
    if tokenize_chinese_chars:
        text = space_cjk_chars(text)
    if strip_accents_:
        text = strip_accents(text)
    if do_lower_case:
        text = lowercase(text)
    return text


def basic_tokenize(text: str, do_lower_case: bool = True, strip_accents_: bool | None = None,
                   tokenize_chinese_chars: bool = True, remove_control_chars: bool = True) -> list[str]:
    """Normalized words of ``text`` (no special-token handling, no WordPiece)."""
    return split_words(normalize(text, do_lower_case, strip_accents_, tokenize_chinese_chars,
                                 remove_control_chars))


def wordpiece(word: str, vocab, unk_token: str = "[UNK]", max_input_chars_per_word: int = 100,
              prefix: str = "##", max_piece_chars: int | None = None) -> list[str]:
    """Greedy longest-match-first: take the longest vocabulary entry that starts the rest of
    the word, pieces after the first carrying the ``##`` prefix.

        wordpiece("unaffable", vocab) -> ["una", "##ff", "##able"]

    A word that is too long, or that reaches a point no vocabulary piece matches, is one
    ``[UNK]`` (never a mix of pieces and unknowns). ``max_piece_chars`` (the length of the
    longest vocabulary entry) only saves work: no longer candidate is tried.
    """
    n = len(word)
    if n > max_input_chars_per_word:
        return [unk_token]
    limit = n if max_piece_chars is None else max_piece_chars
    pieces = []
    start = 0
    while start < n:
        end = min(n, start + limit)
        while end > start:
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:                       # nothing matched at `start`: the whole word is unknown
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# --------------------------------------------------------------------------------------
# Fast paths
# --------------------------------------------------------------------------------------

# ASCII text without control characters: a word is a run of letters and digits, every
# other printable character is punctuation, and the rest is whitespace.
_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[^ \t\n\rA-Za-z0-9]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_SPACE = re.compile(r"\S+")         # the words of do_basic_tokenize=False (as str.split)
# a run between ASCII white space that holds a character other than printable ASCII
_UNUSUAL_RUNS = re.compile(r"[^ \t\n\r]*[^\x20-\x7e\t\n\r][^ \t\n\r]*")


class _CharTable(dict):
    """``str.translate`` table: code point -> what the normalization steps turn it into.

    Filled lazily: the first time a character is met, the step functions are applied to it
    alone (see :meth:`BasicTokenizer.transform_char`); the result is a string in which
    " " separates words ("" when the character is dropped).
    """

    def __init__(self, transform):
        super().__init__()
        self._transform = transform
        for cp in range(128):
            self[cp] = transform(chr(cp))

    def __missing__(self, cp):
        value = self[cp] = self._transform(chr(cp))
        return value


def _check_text(text, what="text"):
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(f"{what} must be str, got {type(text).__name__}; "
                        "decode it first, e.g. data.decode('utf-8')")
    raise TypeError(f"{what} must be str, got {type(text).__name__}")


class BasicTokenizer:
    """Everything before WordPiece: special tokens, normalization, splitting into words.

    ``tokenize(text)`` gives the normalized words, special tokens and ``never_split``
    strings kept whole (case-sensitive, wherever they occur in the raw text, as Hugging
    Face's Rust tokenizer matches its special tokens). The ``never_split`` strings that are
    also in ``caseless`` match whatever their case (added tokens of an uncased tokenizer).
    """

    def __init__(self, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, never_split=(), remove_control_chars: bool = True,
                 caseless=()):
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.remove_control_chars = bool(remove_control_chars)
        self._strip = self.do_lower_case if strip_accents is None else bool(strip_accents)
        self.never_split = tuple(dict.fromkeys(_check_text(t, "never_split entry") for t in never_split or ()))
        if any(t == "" for t in self.never_split):
            raise ValueError("never_split entries must be non-empty strings")
        caseless = set(caseless)
        # longest first, so that "[MASK]" wins over a shorter entry that starts it
        alternatives = sorted(self.never_split, key=lambda t: (-len(t), t))
        patterns = [f"(?i:{re.escape(t)})" if t in caseless else re.escape(t) for t in alternatives]
        self._special_re = re.compile("(" + "|".join(patterns) + ")") if patterns else None
        self._table = _CharTable(self.transform_char)

    def transform_char(self, char: str) -> str:
        """The normalization steps applied to one character; " " separates words."""
        return mark_word_boundaries(normalize(char, self.do_lower_case, self._strip,
                                              self.tokenize_chinese_chars, self.remove_control_chars))

    def split_special(self, text: str) -> list[tuple[bool, str]]:
        """[(is_special, segment), ...] in order; empty segments are left out."""
        return split_at_matches(self._special_re, text)

    def words(self, text: str) -> list[str]:
        """Normalized words of a text that holds no special token."""
        if text.isascii() and not _ASCII_CONTROL.search(text):     # (no control character to keep or drop)
            return _ASCII_WORDS.findall(text.lower() if self.do_lower_case else text)
        return text.translate(self._table).split()

    def tokenize(self, text: str) -> list[str]:
        text = _check_text(text)
        out = []
        for special, segment in self.split_special(text):
            if special:
                out.append(segment)
            else:
                out += self.words(segment)
        return out

    def words_with_offsets(self, text: str, start: int = 0):
        """Yield (normalized word, [original index of each of its characters]).

        A character that normalizes to several (Hangul syllable -> jamo, "İ" -> "i̇") lends
        its index to all of them; dropped characters (controls, stripped accents) lend none.
        """
        table = self._table
        chars, where = [], []
        for i, char in enumerate(text, start):
            for out in table[ord(char)]:
                if out == " ":
                    if chars:
                        yield "".join(chars), where
                        chars, where = [], []
                else:
                    chars.append(out)
                    where.append(i)
        if chars:
            yield "".join(chars), where


# --------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------

class TokenSpan(NamedTuple):
    """Tokens ``start`` .. ``end - 1`` of an encoded row."""

    start: int
    end: int


class CharSpan(NamedTuple):
    """Characters ``start`` .. ``end - 1`` of the original text."""

    start: int
    end: int


class Alignment(NamedTuple):
    """Where each position of one encoded row came from; None for special tokens and padding.

    words: the word's index in its text (a pre-split word, or one the basic tokenizer found);
    sequences: 0 for the text, 1 for the text pair; offsets: (start, end) characters in the
    text (within its word for pre-split input).
    """

    words: list
    sequences: list
    offsets: list


class BatchEncoding(dict):
    """The result of the tokenizer call: a dict of NumPy arrays, also readable as attributes,
    and the alignment of tokens with words and characters (as transformers' BatchEncoding).

    Methods taking ``(batch_or_x_index, x_index=None)``: with one argument it is the index
    in row 0, with two the first is the row.
    """

    def __init__(self, data=None, alignments=None, id_to_token=None, split_into_words=False, align_later=None):
        super().__init__(data or {})
        self._alignments = alignments           # one Alignment per row, or None
        self._align_later = align_later         # () -> the alignments, made the first time they are needed
        self._id_to_token = id_to_token
        self._split_into_words = split_into_words

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _row(self, batch_index) -> Alignment:
        if self._alignments is None and self._align_later is not None:
            self._alignments = self._align_later()
            self._align_later = None
        if self._alignments is None:
            raise ValueError("this encoding has no token alignment (only the tokenizer call makes one, "
                             "not pad())")
        rows = len(self._alignments)
        if not isinstance(batch_index, (int, np.integer)) or not -rows <= batch_index < rows:
            raise IndexError(f"batch index {batch_index!r} is outside the {rows} rows")
        return self._alignments[batch_index]

    def _position(self, row: Alignment, token_index) -> int:
        width = len(row.words)
        if not isinstance(token_index, (int, np.integer)) or not -width <= token_index < width:
            raise IndexError(f"token index {token_index!r} is outside the row's {width} positions")
        return int(token_index) % width

    @staticmethod
    def _indices(first, second):
        return (0, first) if second is None else (first, second)

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The token strings of row ``batch_index`` (padding included)."""
        self._row(batch_index)
        return [self._id_to_token[i] for i in self["input_ids"][batch_index].tolist()]

    def word_ids(self, batch_index: int = 0) -> list:
        """The word index of every position of the row (None for special tokens and padding)."""
        return list(self._row(batch_index).words)

    def sequence_ids(self, batch_index: int = 0) -> list:
        """0 (text), 1 (text pair) or None (special tokens, padding) for every position."""
        return list(self._row(batch_index).sequences)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None):
        batch, token = self._indices(batch_or_token_index, token_index)
        row = self._row(batch)
        return row.words[self._position(row, token)]

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None):
        batch, token = self._indices(batch_or_token_index, token_index)
        row = self._row(batch)
        return row.sequences[self._position(row, token)]

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """The characters of the original text a token covers (None for special tokens, padding)."""
        batch, token = self._indices(batch_or_token_index, token_index)
        row = self._row(batch)
        span = row.offsets[self._position(row, token)]
        return None if span is None else CharSpan(*span)

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None,
                       sequence_index: int = 0) -> TokenSpan | None:
        """The tokens of one word of the text (``sequence_index`` 1: of the pair); None when the
        word is not in this row (cut off, or in another window)."""
        batch, word = self._indices(batch_or_word_index, word_index)
        row = self._row(batch)
        found = [t for t, (w, s) in enumerate(zip(row.words, row.sequences)) if w == word and s == sequence_index]
        return TokenSpan(found[0], found[-1] + 1) if found else None

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None,
                      sequence_index: int = 0) -> int | None:
        """The token covering character ``char_index`` of the text (``sequence_index`` 1: of the
        pair); None for a character no token covers (white space, dropped characters)."""
        if self._split_into_words:
            raise ValueError("char_to_token needs text input: with is_split_into_words=True the offsets "
                             "count characters within each word, so a character index is ambiguous; "
                             "use word_to_tokens")
        batch, char = self._indices(batch_or_char_index, char_index)
        row = self._row(batch)
        for t, (span, s) in enumerate(zip(row.offsets, row.sequences)):
            if span is not None and s == sequence_index and span[0] <= char < span[1]:
                return t
        return None


class VocabularyNotFoundError(FileNotFoundError, ValueError):
    """No vocabulary file where one was expected (both a FileNotFoundError and a ValueError)."""


def load_vocab(path) -> list[str]:
    """Read ``vocab.txt`` (one token per line, line number = id) and check it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, VOCAB_FILE_NAME)
    if not os.path.exists(path):
        raise VocabularyNotFoundError(f"vocabulary file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"vocabulary file {path}: line {line} is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]                  # a byte-order mark some editors write: not part of token 0
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()                     # the newline that ends the last line
    tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]
    if not tokens:
        raise ValueError(f"vocabulary file {path} is empty")
    return _check_vocab(tokens, source=f"vocabulary file {path}")


def _check_vocab(tokens, source="vocabulary"):
    seen = {}
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(f"{source}: entry {i} is {type(token).__name__}, expected str")
        if token == "":
            raise ValueError(f"{source}: line {i + 1} is empty (every line must hold one token)")
        if "\n" in token or "\r" in token:
            raise ValueError(f"{source}: entry {i} ({token!r}) contains a line break; vocab.txt holds "
                             "one token per line, so it could not be saved")
        if token in seen:
            raise ValueError(f"{source}: duplicate entry {token!r} on lines {seen[token] + 1} and {i + 1}")
        seen[token] = i
    return list(tokens)


class PreTrainedTokenizer:
    """What every tokenizer shares: the call (padding, truncation, windows of long inputs,
    offsets and word alignment), ``pad``, ``encode`` / ``decode``, special and added tokens.

    A subclass supplies the vocabulary and the way text becomes tokens:

    - ``ids_to_tokens`` (a list: id -> token), ``vocab`` (token -> id), ``added_tokens``,
      ``additional_special_tokens``, the special tokens ``unk_token`` ... ``mask_token``
      (:data:`SPECIAL_TOKEN_NAMES`), ``padding_side``, ``truncation_side``,
      ``model_max_length``, ``clean_up_tokenization_spaces``, and ``_special_ids``
      (the ids of the tokens cut out of the text whole);
    - ``tokenize_to_ids(text)``: the ids of a text;
    - ``_align_text(text)``: the same ids with, for every token, the number of its word and
      its (start, end) characters in ``text`` (a :class:`_Sequence`);
    - the special-token layout: ``build_inputs_with_special_tokens``,
      ``create_token_type_ids``, ``num_special_tokens_to_add`` and ``SPECIAL_LAYOUT``
      (how many special tokens go before the text, between text and pair, after the last);
    - ``convert_tokens_to_string(tokens)``, for ``decode``;
    - ``_update_splitting()``, called when tokens are added.
    """

    # the arrays the call returns by default (return_token_type_ids=None follows it)
    model_input_names = ("input_ids", "token_type_ids", "attention_mask")
    SECOND_TYPE_ID = 1              # the token type of the pair's tokens without special tokens
    do_lower_case = False           # added tokens that are not special are lower-cased when True
    _vocabulary_changes = 0         # counts add_tokens / add_special_tokens calls

    def _ids_of_text(self, text) -> "_Sequence":
        """The ids of a text, without its alignment."""
        return _Sequence(self.tokenize_to_ids(text))

    def _ids_of_words(self, words) -> "_Sequence":
        """The ids of pre-split words, without their alignment (see :meth:`_align_words`)."""
        if isinstance(words, str) or not hasattr(words, "__iter__"):
            raise TypeError(f"with is_split_into_words=True a text is a list of words, got {type(words).__name__}")
        tokenize = self.tokenize_to_ids
        return _Sequence([i for word in words for i in tokenize(_check_text(word, "word"))])

    def __len__(self) -> int:
        return len(self.ids_to_tokens)

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add tokens that the text is cut at and that keep one id each; returns how many are
        new to the vocabulary (their ids follow the last one: ``model.resize_token_embeddings(len(tok))``).

        Like special tokens they are found anywhere in the raw text, before normalization;
        with ``do_lower_case`` an added token that is not special is lower-cased and matches
        whatever its case in the text. ``special_tokens=True`` makes them special: matched
        exactly, skipped by ``decode(skip_special_tokens=True)``. A token already in the
        vocabulary keeps its id and is from then on matched whole.
        """
        if isinstance(new_tokens, str):
            new_tokens = [new_tokens]
        self._vocabulary_changes += 1
        count = 0
        for token in new_tokens:
            token = _check_text(token, "added token")
            if not token.strip() or token != token.strip():
                raise ValueError(f"added tokens must be non-empty and have no white space around them, got {token!r}")
            if not special_tokens and self.do_lower_case:
                token = token.lower()
            if special_tokens and token not in self.additional_special_tokens:
                self.additional_special_tokens.append(token)
            if token not in self.vocab:
                self.vocab[token] = len(self.ids_to_tokens)
                self.ids_to_tokens.append(token)
                count += 1
            self.added_tokens.setdefault(token, self.vocab[token])
        self._update_splitting()
        return count

    def add_special_tokens(self, special_tokens_dict: dict) -> int:
        """Set special tokens, e.g. ``{"pad_token": "[PAD]", "additional_special_tokens": ["<e>"]}``;
        tokens the vocabulary lacks are added (see :meth:`add_tokens`). Returns how many are new."""
        if not isinstance(special_tokens_dict, dict):
            raise TypeError(f"add_special_tokens takes a dict such as {{'additional_special_tokens': ['<e>']}}, "
                            f"got {type(special_tokens_dict).__name__}")
        self._vocabulary_changes += 1
        count = 0
        for name, value in special_tokens_dict.items():
            if name == "additional_special_tokens":
                if isinstance(value, str) or not hasattr(value, "__iter__"):
                    raise TypeError(f"additional_special_tokens must be a list of tokens, got {value!r}")
                count += self.add_tokens(list(value), special_tokens=True)
            elif name in SPECIAL_TOKEN_NAMES:
                token = _check_text(value, name)
                if token not in self.vocab:
                    count += self.add_tokens([token], special_tokens=True)
                    self.additional_special_tokens.remove(token)    # it has its own name instead
                setattr(self, name, token)
                if name == "unk_token":
                    self.unk_token_id = self.vocab[token]
                self._update_splitting()
            else:
                raise ValueError(f"unknown special token name {name!r}; expected one of "
                                 f"{', '.join(SPECIAL_TOKEN_NAMES)} or additional_special_tokens")
        return count

    def get_vocab(self) -> dict:
        return dict(self.vocab)

    def _special_id(self, name):
        token = getattr(self, name)
        return self.vocab.get(token) if token else None

    pad_token_id = property(lambda self: self._special_id("pad_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))

    @property
    def all_special_tokens(self) -> list[str]:
        named = [self.unk_token, self.sep_token, self.pad_token, self.cls_token, self.mask_token]
        return [t for t in dict.fromkeys(named + self.additional_special_tokens) if t and t in self.vocab]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.vocab[t] for t in self.all_special_tokens]

    def convert_tokens_to_ids(self, tokens):
        """A token or a list of tokens -> id(s); unknown tokens give ``unk_token_id``."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return [self.vocab.get(_check_text(t, "token"), self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """An id or a sequence of ids -> token(s)."""
        if isinstance(ids, (int, np.integer)):
            return self.ids_to_tokens[self._check_id(ids)]
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self.ids_to_tokens[self._check_id(i)] for i in _id_list(ids) if i not in special]

    def _check_id(self, i):
        if not 0 <= i < len(self.ids_to_tokens):
            raise ValueError(f"token id {int(i)} is outside the vocabulary (ids 0 .. {len(self.ids_to_tokens) - 1})")
        return int(i)

    def _added_id(self, segment: str) -> int:
        """The id of a special, never_split or added token cut out of the text."""
        ids = self._special_ids
        if segment in ids:
            return ids[segment]
        if segment.lower() in ids:                     # an added token matched whatever its case
            return ids[segment.lower()]
        return next(i for token, i in ids.items() if re.fullmatch(f"(?i:{re.escape(token)})", segment))

    def _restore_added_tokens(self, directory, config: dict, specials) -> None:
        """What a saved folder added to the vocabulary, back in place (``from_pretrained``): its
        added tokens in the order of their ids, each taking the next id after the vocabulary
        (a token already there, such as a special one the constructor added, is kept), then
        the ``specials`` that had no id saved."""
        added = _read_added_tokens(directory, config, self.base_vocab_size)
        for token, _ in sorted(added.items(), key=lambda item: item[1]):
            if token not in self.vocab:
                self.add_tokens([token], special_tokens=token in specials)
        wrong = {t: i for t, i in added.items() if self.vocab.get(t) != i}
        if wrong:
            raise ValueError(f"{directory}: added tokens must take the ids after the vocabulary's "
                             f"{self.base_vocab_size} in order, got {wrong}")
        rest = [t for t in specials if t not in self.additional_special_tokens]
        if rest:
            self.add_special_tokens({"additional_special_tokens": rest})

    def _align_words(self, words) -> "_Sequence":
        """Ids of pre-split words, each token numbered with its word's position in the list
        and its offsets counted within that word (as transformers does)."""
        if isinstance(words, str) or not hasattr(words, "__iter__"):
            raise TypeError(f"with is_split_into_words=True a text is a list of words, got {type(words).__name__}")
        ids, numbers, offsets = [], [], []
        for w, word in enumerate(words):
            encoded = self._align_text(_check_text(word, "word"))
            ids += encoded.ids
            offsets += encoded.offsets
            numbers += [w] * len(encoded.ids)
        return _Sequence(ids, numbers, offsets)

    # ---- special tokens, truncation, encoding ------------------------------------------

    def _require(self, name):
        token_id = self._special_id(name)
        if token_id is None:
            raise ValueError(f"the vocabulary has no {name.replace('_', ' ')} {getattr(self, name)!r}, "
                             "which encoding with special tokens needs")
        return token_id

    def _truncation(self, truncation, max_length, pair, add_special_tokens):
        """(token budget left after the special tokens, strategy), or None for no truncation.

        ``truncation=None`` truncates (longest first) only when ``max_length`` is given; True
        without ``max_length`` cuts to ``model_max_length``.
        """
        if truncation is None:
            truncation = max_length is not None
        if truncation in (False, "do_not_truncate"):
            return None
        if truncation is True:
            truncation = "longest_first"
        if truncation not in ("longest_first", "only_first", "only_second"):
            raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or "
                             f"'only_second', got {truncation!r}")
        if max_length is None:
            max_length = self.model_max_length
            if max_length is None:
                return None
        if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool):
            raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
        need = self.num_special_tokens_to_add(pair) if add_special_tokens else 0
        if max_length < need or max_length < 0:
            raise ValueError(f"max_length={max_length} is too small: the special tokens of "
                             f"{'a text pair' if pair else 'a single text'} alone need {need}")
        if truncation == "only_second" and not pair:
            raise ValueError("truncation='only_second' needs a text pair")
        return int(max_length) - need, truncation

    @staticmethod
    def _truncate(n_a, n_b, budget, strategy):
        """How many tokens of A and B to keep so that they fit ``budget`` (specials set aside).

        longest_first, as the Rust library does it: a shorter sequence keeps all its tokens
        as long as it takes no more than half the budget; otherwise both get half, the
        extra token of an odd budget going to the longer one (to B when equal).
        """
        if n_b is None:
            return min(n_a, budget), None
        if n_a + n_b <= budget:
            return n_a, n_b
        if strategy == "only_first":
            if n_b > budget:
                raise ValueError(f"cannot truncate only the first text: the second alone has {n_b} "
                                 f"tokens, more than the {budget} that fit")
            return budget - n_b, n_b
        if strategy == "only_second":
            if n_a > budget:
                raise ValueError(f"cannot truncate only the second text: the first alone has {n_a} "
                                 f"tokens, more than the {budget} that fit")
            return n_a, budget - n_a
        short = min(n_a, n_b)
        keep_short = short
        keep_long = short if short > budget else max(short, budget - short)
        if keep_short + keep_long > budget:
            keep_short = budget // 2
            keep_long = keep_short + budget % 2
        return (keep_long, keep_short) if n_a > n_b else (keep_short, keep_long)

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               max_length: int | None = None, truncation=None) -> list[int]:
        """Ids of ``[CLS] text [SEP]`` (or ``[CLS] text [SEP] text_pair [SEP]``).

        ``truncation=None`` truncates (longest first) only when ``max_length`` is given.
        """
        a = _Sequence(self.tokenize_to_ids(text))
        b = None if text_pair is None else _Sequence(self.tokenize_to_ids(_check_text(text_pair, "text_pair")))
        limit = self._truncation(truncation, max_length, b is not None, add_special_tokens)
        if limit is not None:
            a, b = self._cut(a, b, *limit, self.truncation_side)
        return self._assemble(a, b, add_special_tokens)["ids"]

    @staticmethod
    def _cut(a, b, budget, strategy, side):
        """A and B truncated to fit ``budget`` tokens, cut on ``side``."""
        keep_a, keep_b = PreTrainedTokenizer._truncate(len(a), None if b is None else len(b), budget, strategy)
        return a.keep(keep_a, side), None if b is None else b.keep(keep_b, side)

    def _windows(self, a, b, budget, strategy, stride, side):
        """(A, B) pairs of the windows of an over-long input: the side that is cut is shown in
        windows of the tokens left to it, consecutive windows sharing ``stride`` tokens."""
        if b is not None and strategy == "longest_first":
            raise ValueError("return_overflowing_tokens with a text pair needs truncation='only_second' "
                             "(or 'only_first'): with 'longest_first' the windows of both texts are ill-defined")
        cut_a = b is None or strategy == "only_first"
        fixed = 0 if b is None else len(b) if cut_a else len(a)
        room = budget - fixed
        if room <= 0:
            which = "second" if cut_a else "first"
            raise ValueError(f"cannot truncate only the {'first' if cut_a else 'second'} text: the {which} alone "
                             f"has {fixed} tokens, leaving no room in the {budget} that fit")
        if stride >= room:
            raise ValueError(f"stride={stride} must be smaller than the window it overlaps ({room} tokens: "
                             f"max_length less the special tokens{' and the other text' if b is not None else ''})")
        cut = a if cut_a else b
        spans = _window_spans(len(cut), room, stride, side)
        return [(cut.slice(start, stop), b) if cut_a else (a, cut.slice(start, stop)) for start, stop in spans]

    def _assemble(self, a, b, add_special_tokens) -> dict:
        """One row: ids, token types, special mask, sequence numbers, and when A and B carry
        their alignment, word numbers and offsets (None at the special tokens)."""
        n_a, n_b = len(a), 0 if b is None else len(b)
        seq_b = [] if b is None else [1] * n_b
        if add_special_tokens:
            ids = self.build_inputs_with_special_tokens(a.ids, None if b is None else b.ids)
            types = self.create_token_type_ids(a.ids, None if b is None else b.ids)
            before, between, after = self.SPECIAL_LAYOUT[b is not None]
            wrap = lambda first, second, filler: ([filler] * before + first + (                  # noqa: E731
                [filler] * after if b is None else [filler] * between + second + [filler] * after))
            row = {"ids": ids, "types": types, "sequences": wrap([0] * n_a, seq_b, None)}
        else:
            row = {"ids": a.ids + ([] if b is None else b.ids), "types": [0] * n_a + [self.SECOND_TYPE_ID] * n_b,
                   "sequences": [0] * n_a + seq_b}
            wrap = lambda first, second, filler: first + ([] if b is None else second)      # noqa: E731
        row["special"] = wrap([0] * n_a, [0] * n_b, 1)
        if a.words is not None:
            row["words"] = wrap(a.words, None if b is None else b.words, None)
            row["offsets"] = wrap(a.offsets, None if b is None else b.offsets, None)
        return row

    def __call__(self, text, text_pair=None, *, add_special_tokens: bool = True, padding=False,
                 truncation=None, max_length: int | None = None, stride: int = 0,
                 is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, return_tensors=None, return_token_type_ids: bool | None = None,
                 return_attention_mask: bool = True, return_overflowing_tokens: bool = False,
                 return_special_tokens_mask: bool = False, return_offsets_mapping: bool = False,
                 return_length: bool = False) -> BatchEncoding:
        """Encode a text, a text pair, or a batch of them, into (B, T) int64 NumPy arrays.

        Returns ``input_ids``, ``token_type_ids`` and ``attention_mask`` (1 = real token), and
        when asked ``special_tokens_mask``, ``offset_mapping`` (B, T, 2: characters of the
        original text, (0, 0) for special tokens and padding), ``length`` and, with
        ``return_overflowing_tokens``, ``overflow_to_sample_mapping``. The result also aligns
        tokens with words and characters (``word_ids(i)``, ``word_to_tokens``, ...).

        - ``text``: a str or a list of str; with ``is_split_into_words=True`` a list of words
          or a list of such lists. A single text is a batch of one.
        - ``padding``: False (default: none, except that a batch of unequal lengths is padded
          to its longest, since the arrays are rectangular), True / "longest", "max_length";
          ``pad_to_multiple_of`` rounds the length up; ``padding_side`` "right" or "left".
        - ``truncation``: None (default: cut to ``max_length`` only when it is given), True /
          "longest_first", "only_first", "only_second", False; cut on ``truncation_side``.
        - ``return_overflowing_tokens``: instead of dropping what truncation cuts, return it
          in more rows (windows), consecutive windows sharing ``stride`` tokens;
          ``overflow_to_sample_mapping[row]`` is the input it came from.
        - ``return_token_type_ids``: None (default) returns them when the model takes them
          (``model_input_names``: BERT does, RoBERTa does not).

        The alignment is made only when asked for (``return_offsets_mapping``) or, later,
        the first time the result needs it (``word_ids()``, ...): the inputs are then
        tokenized again with their alignment, giving what an aligned call gives.
        """
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: minibert returns NumPy arrays only "
                             "(return_tensors='np' or None)")
        texts, pairs = _as_batch(text, text_pair, is_split_into_words)
        pair = pairs is not None
        padding = _padding_strategy(padding)
        side = _check_side(self.padding_side if padding_side is None else padding_side, "padding_side")
        if pad_to_multiple_of is not None and not is_int_at_least(pad_to_multiple_of, 1):
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}")
        if not is_int_at_least(stride, 0):
            raise ValueError(f"stride must be an integer >= 0, got {stride!r}")
        limit = self._truncation(truncation, max_length, pair, add_special_tokens)
        if padding == "max_length" and max_length is None:
            max_length = self.model_max_length
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
        if pad_to_multiple_of is not None:
            if padding is None:
                raise ValueError("pad_to_multiple_of needs padding (padding=True or 'max_length'); "
                                 "with padding=False nothing would be padded")
            cut_at = None if limit is None else limit[0] + (self.num_special_tokens_to_add(pair)
                                                            if add_special_tokens else 0)
            if cut_at is not None and cut_at % pad_to_multiple_of:
                raise ValueError(f"truncation to max_length={cut_at} and pad_to_multiple_of={pad_to_multiple_of} "
                                 f"contradict each other: a sequence cut to {cut_at} tokens would be padded past "
                                 f"max_length; choose a max_length that is a multiple of {pad_to_multiple_of}")
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_overflowing_tokens and limit is None:
            raise ValueError("return_overflowing_tokens=True needs truncation (truncation=True and a max_length)")
        if stride and not return_overflowing_tokens:
            raise ValueError(f"stride={stride} is the overlap of the windows of return_overflowing_tokens=True, "
                             "which is off")

        if is_split_into_words:                  # the alignment may be made later: keep the words as they are now
            texts = [_word_list(words) for words in texts]
            pairs = None if pairs is None else [_word_list(words) for words in pairs]

        def encode_rows(aligned: bool):
            """The rows and the input each came from; ``aligned``: with word numbers and offsets."""
            if aligned:
                encode = self._align_words if is_split_into_words else self._align_text
            else:
                encode = self._ids_of_words if is_split_into_words else self._ids_of_text
            rows, owners = [], []
            for i, t in enumerate(texts):
                a = encode(t)
                b = encode(pairs[i]) if pair else None
                if return_overflowing_tokens:
                    windows = self._windows(a, b, *limit, stride, self.truncation_side)
                else:
                    windows = [self._cut(a, b, *limit, self.truncation_side) if limit is not None else (a, b)]
                for a_part, b_part in windows:
                    rows.append(self._assemble(a_part, b_part, add_special_tokens))
                    owners.append(i)
            return rows, owners

        # the word and character alignment costs about as much as the ids: it is made only
        # when offsets are asked for, or later, the first time the result needs it
        rows, owners = encode_rows(return_offsets_mapping)
        lengths = [len(row["ids"]) for row in rows]
        width = max(lengths, default=0)
        if padding == "max_length":
            width = max(width, max_length)
        if padding is not None and pad_to_multiple_of and width % pad_to_multiple_of:
            width += pad_to_multiple_of - width % pad_to_multiple_of
        pad_id = self._require("pad_token") if any(n < width for n in lengths) else 0
        batch = len(rows)
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)         # (B, T)
        token_type_ids = np.zeros((batch, width), dtype=np.int64)           # (B, T)
        attention_mask = np.zeros((batch, width), dtype=np.int64)           # (B, T)
        special_mask = np.ones((batch, width), dtype=np.int64)              # (B, T)
        offset_mapping = np.zeros((batch, width, 2), dtype=np.int64)        # (B, T, 2)
        for b, row in enumerate(rows):
            n = len(row["ids"])
            where = slice(0, n) if side == "right" else slice(width - n, width)
            input_ids[b, where] = row["ids"]
            if return_token_type_ids:
                token_type_ids[b, where] = row["types"]
            attention_mask[b, where] = 1
            if return_special_tokens_mask:
                special_mask[b, where] = row["special"]
            if return_offsets_mapping and n:
                offset_mapping[b, where] = [span or (0, 0) for span in row["offsets"]]

        def alignments_of(aligned_rows) -> list:
            """Each row's Alignment, padded like the arrays."""
            alignments = []
            for row in aligned_rows:
                fill = [None] * (width - len(row["ids"]))
                padded = (lambda values: values + fill) if side == "right" else (lambda values: fill + values)
                alignments.append(Alignment(padded(row["words"]), padded(row["sequences"]), padded(row["offsets"])))
            return alignments

        if return_offsets_mapping:
            alignments, align_later = alignments_of(rows), None
        else:
            changes = self._vocabulary_changes

            def align_later():
                if self._vocabulary_changes != changes:
                    raise ValueError("tokens were added to the tokenizer after this call, so its word and character "
                                     "alignment can no longer be made; call it with return_offsets_mapping=True to "
                                     "keep the alignment")
                return alignments_of(encode_rows(True)[0])
            alignments = None
        out = {"input_ids": input_ids}
        if return_token_type_ids:
            out["token_type_ids"] = token_type_ids
        if return_attention_mask:
            out["attention_mask"] = attention_mask
        if return_special_tokens_mask:
            out["special_tokens_mask"] = special_mask
        if return_offsets_mapping:
            out["offset_mapping"] = offset_mapping
        if return_length:
            out["length"] = np.asarray(lengths, dtype=np.int64)
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = np.asarray(owners, dtype=np.int64)
        return BatchEncoding(out, alignments, self.ids_to_tokens, is_split_into_words, align_later)

    def pad(self, encoded_inputs, padding=True, max_length: int | None = None,
            pad_to_multiple_of: int | None = None, padding_side: str | None = None,
            return_attention_mask: bool = True, return_tensors=None) -> BatchEncoding:
        """Pad already-encoded features (a list of dicts, or a dict of lists) into arrays.

        ``input_ids`` get ``[PAD]``, ``token_type_ids`` 0, ``attention_mask`` 0 (made when
        missing), ``special_tokens_mask`` 1; other keys (e.g. ``labels``) are stacked as they
        are and must already have equal lengths. ``padding``: True / "longest",
        "max_length" (to ``max_length``), or False (the rows must have equal lengths).
        """
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: minibert returns NumPy arrays only")
        if isinstance(encoded_inputs, dict):
            if "input_ids" not in encoded_inputs:
                raise ValueError(f"pad needs input_ids among the features, got keys {sorted(encoded_inputs)}")
            columns = {key: list(value) for key, value in encoded_inputs.items()}
        elif isinstance(encoded_inputs, (list, tuple)) and all(isinstance(f, dict) for f in encoded_inputs):
            keys = list(encoded_inputs[0]) if encoded_inputs else ["input_ids"]
            for k, feature in enumerate(encoded_inputs):
                if set(feature) != set(keys):
                    raise ValueError(f"feature {k} has keys {sorted(feature)}, feature 0 has {sorted(keys)}")
            if "input_ids" not in keys:
                raise ValueError(f"pad needs input_ids among the features, got keys {sorted(keys)}")
            columns = {key: [feature[key] for feature in encoded_inputs] for key in keys}
        else:
            raise TypeError(f"pad takes a list of dicts or a dict of lists, got {type(encoded_inputs).__name__}")
        padding = _padding_strategy(padding)
        side = _check_side(self.padding_side if padding_side is None else padding_side, "padding_side")
        rows = [_id_list(row) for row in columns["input_ids"]]
        lengths = [len(row) for row in rows]
        width = max(lengths, default=0)
        if padding is None and len(set(lengths)) > 1:
            raise ValueError(f"padding=False but the rows have different lengths ({min(lengths)} to {width})")
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            width = max(width, max_length)
        if padding is not None and pad_to_multiple_of and width % pad_to_multiple_of:
            width += pad_to_multiple_of - width % pad_to_multiple_of
        if return_attention_mask and "attention_mask" not in columns:
            columns["attention_mask"] = [[1] * n for n in lengths]
        fill = {"input_ids": self._require("pad_token") if any(n < width for n in lengths) else 0,
                "token_type_ids": 0, "attention_mask": 0, "special_tokens_mask": 1}
        out = {}
        for key, values in columns.items():
            if key not in fill:
                try:
                    out[key] = np.asarray(values)
                except ValueError:
                    raise ValueError(f"pad pads {', '.join(fill)}; {key!r} has rows of different lengths: "
                                     "pad it first (labels, e.g., with -100)") from None
                continue
            array = np.full((len(values), width), fill[key], dtype=np.int64)     # (B, T)
            for b, row in enumerate(values):
                row = _id_list(row)
                if len(row) != lengths[b]:
                    raise ValueError(f"feature {b}: {key} has {len(row)} entries but input_ids has {lengths[b]}")
                array[b, slice(0, len(row)) if side == "right" else slice(width - len(row), width)] = row
            out[key] = array
        return BatchEncoding(out, None, self.ids_to_tokens)

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        """Ids -> text: "##" pieces rejoin their word, words are separated by one space
        (none before . , ! ?); special tokens are kept unless ``skip_special_tokens``.

        Normalization cannot be undone (case and accents are gone for uncased vocabularies),
        but ``tokenize(decode(encode(x))) == tokenize(x)``. ``clean_up_tokenization_spaces``
        (None: the tokenizer's setting, False unless its config says otherwise) also removes
        the spaces in contractions ("don ' t" -> "don't", "it 's" -> "it's"); that reads
        better but may join words differently.
        """
        tokens = self.convert_ids_to_tokens(_id_list(ids), skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                                  (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                                  (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in sequences]



class BertTokenizer(PreTrainedTokenizer):
    """WordPiece tokenizer compatible with BERT checkpoints' ``vocab.txt``.

        tok = BertTokenizer.from_pretrained("path/to/model")     # vocab.txt (+ tokenizer_config.json)
        tok.tokenize("Héllo world!")          # ['hello', 'world', '!']
        tok.encode("a question", "a passage") # [CLS] a question [SEP] a passage [SEP] as ids
        batch = tok(["first text", "second"], max_length=128)
        batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]   # (B, T) int64

    ``vocab_file`` is a path to ``vocab.txt`` (or its directory), or the tokens themselves
    (a list in id order, or a token -> id dict with ids 0..V-1).

    Settings beyond the normalization ones (``docs/tokenizer.md`` has the details):
    ``do_basic_tokenize=False`` splits on white space only, then WordPiece (no lower-casing,
    no punctuation split); ``remove_control_chars=False`` keeps control characters in their
    words; ``padding_side`` / ``truncation_side`` ("right" or "left") say where the call pads
    and cuts; ``clean_up_tokenization_spaces`` is decode's default; ``additional_special_tokens``
    are kept whole and skipped by decode (see also :meth:`add_tokens`).

    Caching: the ids of every distinct word are remembered (two dictionaries, one keyed by
    raw ASCII words, one by normalized words). Each holds at most ``cache_size`` words and
    is emptied when it is full, so memory stays bounded on endless streams of new words.
    """

    def __init__(self, vocab_file, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, never_split=None, unk_token: str = "[UNK]",
                 sep_token: str = "[SEP]", pad_token: str = "[PAD]", cls_token: str = "[CLS]",
                 mask_token: str = "[MASK]", model_max_length: int | None = 512,
                 max_input_chars_per_word: int = 100, cache_size: int = 1 << 18,
                 do_basic_tokenize: bool = True, remove_control_chars: bool = True,
                 padding_side: str = "right", truncation_side: str = "right",
                 clean_up_tokenization_spaces: bool = False, additional_special_tokens=()):
        if isinstance(vocab_file, (str, os.PathLike)):
            tokens = load_vocab(vocab_file)
        elif isinstance(vocab_file, dict):
            ids = sorted(vocab_file.values())
            if ids != list(range(len(ids))):
                raise ValueError("vocabulary ids must be exactly 0 .. V-1")
            tokens = _check_vocab(sorted(vocab_file, key=vocab_file.__getitem__))
        elif isinstance(vocab_file, (list, tuple)):
            tokens = _check_vocab(list(vocab_file))
        else:
            raise TypeError(f"vocab_file must be a path or a list of tokens, got {type(vocab_file).__name__}")
        if not tokens:
            raise ValueError("the vocabulary is empty")
        self.ids_to_tokens = tokens                    # id -> token (a list: ids are 0..V-1)
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.unk_token, self.sep_token, self.pad_token = unk_token, sep_token, pad_token
        self.cls_token, self.mask_token = cls_token, mask_token
        if unk_token not in self.vocab:
            padded = [i for i, t in enumerate(tokens) if t.strip() == unk_token]
            hint = (f" (line {padded[0] + 1} holds {tokens[padded[0]]!r}: remove the spaces around it)"
                    if padded else "")
            raise ValueError(f"the vocabulary has no unknown token {unk_token!r}{hint}; "
                             "every WordPiece vocabulary needs one (usually on its own line '[UNK]')")
        for name, value in (("do_lower_case", do_lower_case), ("tokenize_chinese_chars", tokenize_chinese_chars),
                            ("strip_accents", True if strip_accents is None else strip_accents),
                            ("do_basic_tokenize", do_basic_tokenize), ("remove_control_chars", remove_control_chars),
                            ("clean_up_tokenization_spaces", clean_up_tokenization_spaces)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if isinstance(never_split, (str, bytes)):
            raise TypeError(f"never_split must be a list of tokens, got the string {never_split!r} "
                            f"(write [{never_split!r}] for one token)")
        if model_max_length is not None and not is_int_at_least(model_max_length, 2):
            raise ValueError(f"model_max_length must be an integer of at least 2 (or None), got {model_max_length!r}")
        if not is_int_at_least(max_input_chars_per_word, 1):
            raise ValueError(f"max_input_chars_per_word must be a positive integer, got {max_input_chars_per_word!r}")
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.do_basic_tokenize = bool(do_basic_tokenize)
        self.remove_control_chars = bool(remove_control_chars)
        self.padding_side = _check_side(padding_side, "padding_side")
        self.truncation_side = _check_side(truncation_side, "truncation_side")
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.model_max_length = model_max_length
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.cache_size = int(cache_size)
        self._pieces = dict(self.vocab)               # what WordPiece may use: never the added tokens
        self.base_vocab_size = len(tokens)
        self.added_tokens: dict[str, int] = {}        # added token -> id (see add_tokens)
        if isinstance(additional_special_tokens, str):
            raise TypeError("additional_special_tokens must be a list of tokens, got the string "
                            f"{additional_special_tokens!r}")
        self.additional_special_tokens: list[str] = []
        self._extra_never_split = list(never_split or ())
        self.unk_token_id = self.vocab[unk_token]
        self._max_piece_chars = max(map(len, tokens))
        self._ascii_cache: dict[str, tuple] = {}      # raw ASCII word -> ids
        self._word_cache: dict[str, tuple] = {}       # normalized word -> ids
        self._update_splitting()
        if additional_special_tokens:
            self.add_special_tokens({"additional_special_tokens": list(additional_special_tokens)})

    def _update_splitting(self):
        """Rebuild what is cut out of the raw text whole: special, never_split and added tokens."""
        specials = [t for t in (self.unk_token, self.sep_token, self.pad_token, self.cls_token,
                                self.mask_token) if t]
        self.never_split = tuple(dict.fromkeys(self._extra_never_split + specials + self.additional_special_tokens
                                               + list(self.added_tokens)))
        # added tokens that are not special match whatever their case when the text is lower-cased
        caseless = [t for t in self.added_tokens if self.do_lower_case and t not in self.additional_special_tokens]
        self.basic = BasicTokenizer(self.do_lower_case, self.strip_accents, self.tokenize_chinese_chars,
                                    self.never_split, self.remove_control_chars, caseless)
        self._special_ids = {t: self.vocab.get(t, self.unk_token_id) for t in self.never_split}
        self._special_ids.update({t.lower(): self.vocab[t] for t in caseless})
        self._ascii_cache.clear()
        self._word_cache.clear()

    # ---- loading and saving ---------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "BertTokenizer":
        """Load ``vocab.txt`` and, when present, ``tokenizer_config.json`` from a directory.

        ``path`` may also be the ``vocab.txt`` file itself. Keyword arguments override the
        settings read from the config.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            directory, vocab_path = path, os.path.join(path, VOCAB_FILE_NAME)
        elif os.path.isfile(path):
            directory, vocab_path = os.path.dirname(path), path
        else:
            raise VocabularyNotFoundError(f"no tokenizer at {path}: expected a directory holding "
                                          f"{VOCAB_FILE_NAME} or the path of a vocabulary file")
        if not os.path.isfile(vocab_path):
            raise VocabularyNotFoundError(f"vocabulary file not found: {vocab_path}")
        settings = {}
        config_path = os.path.join(directory, TOKENIZER_CONFIG_NAME)
        if os.path.isfile(config_path):
            config = read_json_object(config_path)
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "never_split",
                        "model_max_length", "max_input_chars_per_word", "do_basic_tokenize",
                        "remove_control_chars", "clean_up_tokenization_spaces", "padding_side", "truncation_side",
                        "additional_special_tokens", *SPECIAL_TOKEN_NAMES):
                value = config.get(key)
                if isinstance(value, dict):            # {"content": "[UNK]", ...} form
                    value = value.get("content")
                if value is not None:
                    settings[key] = value
            if "strip_accents" in config:
                settings["strip_accents"] = config["strip_accents"]
            if isinstance(settings.get("model_max_length"), (int, float)) and settings["model_max_length"] > 1e9:
                settings["model_max_length"] = None    # "no limit" written as a huge number
            if isinstance(settings.get("additional_special_tokens"), list):     # entries may be {"content": ...}
                settings["additional_special_tokens"] = [t.get("content") if isinstance(t, dict) else t
                                                         for t in settings["additional_special_tokens"]]
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "do_basic_tokenize",
                        "remove_control_chars", "clean_up_tokenization_spaces"):
                if key in settings and not isinstance(settings[key], bool) and settings[key] is not None:
                    raise ValueError(f"{config_path}: {key} must be true or false, got {settings[key]!r}")
            if isinstance(settings.get("never_split"), str):
                raise ValueError(f"{config_path}: never_split must be a list of tokens, "
                                 f"got the string {settings['never_split']!r}")
        settings.update(overrides)
        specials = settings.pop("additional_special_tokens", None) or []
        if isinstance(specials, str):
            raise TypeError(f"additional_special_tokens must be a list of tokens, got the string {specials!r}")
        tokenizer = cls(vocab_path, **settings)
        tokenizer._restore_added_tokens(directory, config if os.path.isfile(config_path) else {}, specials)
        return tokenizer

    def save_vocabulary(self, directory, filename_prefix: str | None = None) -> tuple[str]:
        """Write ``vocab.txt`` (one token per line, in id order) into ``directory``; added tokens
        are not in it (``save_pretrained`` writes them to ``added_tokens.json``)."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE_NAME
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(self.ids_to_tokens[:self.base_vocab_size]) + "\n")
        return (path,)

    def save_pretrained(self, directory) -> str:
        """``vocab.txt`` plus ``tokenizer_config.json`` holding this tokenizer's settings, and
        ``added_tokens.json`` (token -> id) when tokens were added."""
        self.save_vocabulary(directory)
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "strip_accents": self.strip_accents,
                  "tokenize_chinese_chars": self.tokenize_chinese_chars,
                  "model_max_length": self.model_max_length,
                  "do_basic_tokenize": self.do_basic_tokenize,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                  "padding_side": self.padding_side, "truncation_side": self.truncation_side,
                  **{name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES}}
        if not self.remove_control_chars:
            config["remove_control_chars"] = False
        if self.additional_special_tokens:
            config["additional_special_tokens"] = list(self.additional_special_tokens)
        extra = [t for t in self._extra_never_split if t not in self.all_special_tokens]
        if extra:
            config["never_split"] = extra
        if self.added_tokens:
            with open(os.path.join(directory, ADDED_TOKENS_NAME), "w", encoding="utf-8") as f:
                json.dump(self.added_tokens, f, indent=2, ensure_ascii=False)
                f.write("\n")
        with open(os.path.join(directory, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")
        return os.fspath(directory)

    # ---- vocabulary -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Tokens of the WordPiece vocabulary, added tokens not counted (``len(tok)`` counts them)."""
        return self.base_vocab_size

    # ---- text -> tokens / ids ---------------------------------------------------------

    def _word_ids(self, word: str) -> tuple:
        """Ids of the WordPiece pieces of one normalized word."""
        pieces = wordpiece(word, self._pieces, self.unk_token, self.max_input_chars_per_word,
                           "##", self._max_piece_chars)
        return tuple(self.vocab[p] for p in pieces)

    def _plain_ids(self, text: str) -> list[int]:
        """Ids of a text that holds no special token."""
        if not self.do_basic_tokenize:
            # white space only: each run of other characters goes to WordPiece as it is
            words = text.split()
            cache = self._word_cache
            lower = False
        elif text.isascii() and not _ASCII_CONTROL.search(text):
            # ASCII: split the raw text, look each raw word up ("Hello" -> ids of "hello")
            words = _ASCII_WORDS.findall(text)
            cache = self._ascii_cache
            lower = self.do_lower_case
        else:
            words = text.translate(self.basic._table).split()
            cache = self._word_cache
            lower = False
        try:
            return list(chain.from_iterable(map(cache.__getitem__, words)))
        except KeyError:
            pass
        if len(cache) + len(words) > self.cache_size:  # full: start afresh
            cache.clear()
            if len(words) > self.cache_size:           # this text alone would overflow it
                cache = {}
        for word in words:                             # fill the misses, then look up again
            if word not in cache:
                cache[word] = self._word_ids(word.lower() if lower else word)
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    def tokenize_to_ids(self, text: str) -> list[int]:
        """``convert_tokens_to_ids(tokenize(text))``, without building the token strings."""
        text = _check_text(text)
        basic = self.basic
        if basic._special_re is None or not basic._special_re.search(text):
            return self._plain_ids(text)
        ids = []
        for special, segment in basic.split_special(text):
            if special:
                ids.append(self._added_id(segment))
            else:
                ids += self._plain_ids(segment)
        return ids

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` (no [CLS]/[SEP] added)."""
        return list(map(self.ids_to_tokens.__getitem__, self.tokenize_to_ids(text)))

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and (start, end) character offsets into ``text`` of each token.

        A piece covers the original characters its normalized characters came from; an
        ``[UNK]`` covers its whole word. Same convention as the Rust tokenizer's offsets.
        """
        encoded = self._align_text(text)
        return encoded.ids, encoded.offsets

    def _align_text(self, text: str) -> "_Sequence":
        """Ids of ``text`` with, for every token, its word's number and its character offsets.

        Words are what the basic tokenizer splits the text into (each punctuation character,
        special or added token is one); with ``do_basic_tokenize=False`` the runs of non-space
        characters.
        """
        text = _check_text(text)
        ids, words, offsets = [], [], []
        position = 0
        for special, segment in self.basic.split_special(text):
            if special:
                ids.append(self._added_id(segment))
                offsets.append((position, position + len(segment)))
                words.append(words[-1] + 1 if words else 0)
            elif not self.do_basic_tokenize:
                self._align_plain(segment, position, _NON_SPACE, self._word_cache, False, ids, offsets, words)
            elif segment.isascii() and not _ASCII_CONTROL.search(segment):
                self._align_plain(segment, position, _ASCII_WORDS, self._ascii_cache, self.do_lower_case,
                                  ids, offsets, words)
            else:
                # ASCII white space always separates words: the runs between it that hold a
                # character other than printable ASCII go character by character, the plain
                # ASCII around them takes the short road
                done = 0
                for run in _UNUSUAL_RUNS.finditer(segment):
                    self._align_plain(segment[done:run.start()], position + done, _ASCII_WORDS, self._ascii_cache,
                                      self.do_lower_case, ids, offsets, words)
                    for word, where in self.basic.words_with_offsets(run.group(), position + run.start()):
                        word_ids = self._cached_word_ids(self._word_cache, word, word)
                        self._piece_offsets(word_ids, where, ids, offsets, words)
                    done = run.end()
                self._align_plain(segment[done:], position + done, _ASCII_WORDS, self._ascii_cache,
                                  self.do_lower_case, ids, offsets, words)
            position += len(segment)
        return _Sequence(ids, words, offsets)

    def _align_plain(self, segment, position, pattern, cache, lower, ids, offsets, words):
        """Align a segment in which one character in is one character out (ASCII, or no basic
        tokenization): each match of ``pattern`` is a word, its characters contiguous."""
        number = words[-1] + 1 if words else 0
        for match in pattern.finditer(segment):
            word = match.group()
            word_ids = cache.get(word) or self._cached_word_ids(cache, word, word.lower() if lower else word)
            first = position + match.start()
            if len(word_ids) == 1:                     # the common case, written out
                ids.append(word_ids[0])
                offsets.append((first, first + len(word)))
                words.append(number)
            else:
                self._piece_offsets(word_ids, range(first, first + len(word)), ids, offsets, words)
            number += 1

    def _cached_word_ids(self, cache, key, word) -> tuple:
        """``_word_ids(word)``, remembered under ``key`` (the cache is emptied when full)."""
        word_ids = cache.get(key)
        if word_ids is None:
            if len(cache) >= self.cache_size:
                cache.clear()
            word_ids = cache[key] = self._word_ids(word)
        return word_ids

    def _piece_offsets(self, word_ids, where, ids, offsets, words):
        """Append the ids of one word, the offsets of its pieces and the word's number;
        ``where[k]`` is the original index of the word's k-th normalized character."""
        number = words[-1] + 1 if words else 0
        if len(word_ids) == 1:                         # a whole word (or [UNK]) covers all its characters
            ids.append(word_ids[0])
            offsets.append((where[0], where[-1] + 1))
            words.append(number)
            return
        to_token = self.ids_to_tokens
        start = 0
        for k, i in enumerate(word_ids):
            length = len(to_token[i]) - (2 if k else 0)
            ids.append(i)
            offsets.append((where[start], where[start + length - 1] + 1))
            words.append(number)
            start += length

    # ---- the special-token layout: [CLS] A [SEP] B [SEP] -------------------------------

    # special tokens (before A, between A and B, after the last text) of a single text and a pair
    SPECIAL_LAYOUT = {False: (1, 0, 1), True: (1, 1, 1)}

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    def build_inputs_with_special_tokens(self, ids_a, ids_b=None) -> list[int]:
        """[CLS] A [SEP]   or   [CLS] A [SEP] B [SEP]"""
        cls, sep = self._require("cls_token"), self._require("sep_token")
        if ids_b is None:
            return [cls, *ids_a, sep]
        return [cls, *ids_a, sep, *ids_b, sep]

    def create_token_type_ids(self, ids_a, ids_b=None) -> list[int]:
        """0 for [CLS] A [SEP], 1 for B [SEP]."""
        first = [0] * (len(ids_a) + 2)
        return first if ids_b is None else first + [1] * (len(ids_b) + 1)

    # ---- ids -> text ------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens) -> str:
        """Join tokens with spaces, gluing "##" pieces to the piece before them and the
        punctuation marks . , ! ? to the token before them (as the Rust library's WordPiece
        decoder does: "hello , world !" -> "hello, world!")."""
        out = []
        for k, token in enumerate(tokens):
            if k and token.startswith("##"):
                out.append(token[2:])
            elif k and not token.startswith((".", ",", "!", "?")):
                out.append(" " + token)
            else:
                out.append(token)
        return "".join(out)

    def __repr__(self):
        return (f"BertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars})")


def _id_list(ids) -> list[int]:
    """Accept a list/tuple/NumPy array of integer ids (one sequence)."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"expected one sequence of ids (1-D), got an array of shape {ids.shape}; "
                             "use batch_decode for a batch")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
        return ids.tolist()
    if isinstance(ids, (int, np.integer)):
        return [int(ids)]
    if ids is None or isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"token ids must be a list of integers, got {type(ids).__name__}")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"token ids must be integers, got {type(i).__name__}")
        out.append(int(i))
    return out


class _Sequence:
    """One text's tokens before the special tokens: ids, and when aligned each token's word
    number and character offsets (lists of the same length).

    ``first_offsets`` (optional, a list of the same length): the offsets a token takes when
    it begins a sequence, a window or a truncated text (None where they are its usual ones);
    the byte-level tokenizer's first token keeps the space before it.
    """

    __slots__ = ("ids", "words", "offsets", "first_offsets")

    def __init__(self, ids, words=None, offsets=None, first_offsets=None):
        self.ids, self.words, self.offsets, self.first_offsets = ids, words, offsets, first_offsets

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> "_Sequence":
        cut = lambda values: None if values is None else values[start:stop]        # noqa: E731
        offsets = cut(self.offsets)
        if start and offsets and self.first_offsets is not None and self.first_offsets[start] is not None:
            offsets[0] = self.first_offsets[start]
        return _Sequence(self.ids[start:stop], cut(self.words), offsets, cut(self.first_offsets))

    def keep(self, count: int, side: str) -> "_Sequence":
        """The first ``count`` tokens (side "right": the end is cut) or the last (side "left")."""
        return self.slice(0, count) if side == "right" else self.slice(len(self) - count, len(self))


def _window_spans(n: int, size: int, stride: int, side: str) -> list[tuple[int, int]]:
    """(start, stop) of windows of at most ``size`` of n tokens, neighbours sharing ``stride``.

    side "right" (the end is what truncation cuts): the first window is the start, the next
    ones move towards the end. side "left": the first window is the end, the next ones move
    towards the start. 10 tokens, size 4, stride 1: right [0, 4) [3, 7) [6, 10); left
    [6, 10) [3, 7) [0, 4).
    """
    step = size - stride
    spans = []
    if side == "right":
        start = 0
        while True:
            spans.append((start, min(start + size, n)))
            if start + size >= n:
                return spans
            start += step
    stop = n
    while True:
        spans.append((max(0, stop - size), stop))
        if stop - size <= 0:
            return spans
        stop -= step


def _word_list(words):
    """A copy of one input's pre-split words (a list of str); other values are passed on for
    the encoder to refuse with its own message."""
    return list(words) if isinstance(words, (list, tuple)) else words


def _check_side(side, name: str) -> str:
    if side not in ("right", "left"):
        raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
    return side


def _padding_strategy(padding):
    """None (no padding), "longest" or "max_length"."""
    if padding is True:
        return "longest"
    if padding in (False, None, "do_not_pad"):
        return None
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
    return padding


def _as_batch(text, text_pair, is_split_into_words: bool):
    """(texts, pairs or None) as lists, whatever form the call got them in."""
    def is_one(value):                   # one input, as opposed to a batch of them
        if is_split_into_words:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise TypeError(f"with is_split_into_words=True give a list of words (or a list of such "
                                f"lists), got {type(value).__name__}")
            return not value or isinstance(value[0], str)
        if value is None or not (isinstance(value, (str, bytes, bytearray)) or hasattr(value, "__iter__")):
            raise TypeError(f"texts must be a str or a list of str, got {type(value).__name__}")
        return isinstance(value, (str, bytes, bytearray))

    single = is_one(text)
    texts = [text] if single else list(text)
    if text_pair is None:
        return texts, None
    if is_one(text_pair) != single:
        raise ValueError("text and text_pair must both be single inputs or both batches")
    pairs = [text_pair] if single else list(text_pair)
    if len(pairs) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
    return texts, pairs


def split_at_matches(pattern, text: str) -> list[tuple[bool, str]]:
    """[(is a match of ``pattern``, segment), ...] in order, empty segments left out; the
    whole text as one segment when ``pattern`` is None (``pattern`` has one capturing group)."""
    if pattern is None or not pattern.search(text):
        return [(False, text)] if text else []
    parts = pattern.split(text)                # odd positions hold the matches
    return [(i % 2 == 1, part) for i, part in enumerate(parts) if part]


def read_json_object(path: str) -> dict:
    """The JSON object in the file ``path``; a clear error when it is not valid JSON or not an object."""
    with open(path, encoding="utf-8") as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}")
    return values


def _read_added_tokens(directory: str, config: dict, base_size: int) -> dict:
    """{token: id} of the added tokens saved with a tokenizer: ``added_tokens.json``, or the
    ``added_tokens_decoder`` entries of tokenizer_config.json past the vocabulary."""
    path = os.path.join(directory, ADDED_TOKENS_NAME)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                added = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(added, dict) or not all(isinstance(t, str) and isinstance(i, int) for t, i in added.items()):
            raise ValueError(f"{path} must hold a JSON object of token: id")
        return added
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    if isinstance(decoder, dict):
        return {entry["content"]: int(i) for i, entry in decoder.items()
                if isinstance(entry, dict) and "content" in entry and str(i).isdigit() and int(i) >= base_size}
    return {}

