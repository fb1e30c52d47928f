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

import numpy as np

from .backend import is_int_at_least

SPECIAL_TOKEN_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
VOCAB_FILE_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"


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
              tokenize_chinese_chars: bool = True) -> str:
    """clean_text -> space_cjk_chars -> strip_accents -> lowercase, as configured.

    ``strip_accents_=None`` follows ``do_lower_case`` (uncased BERT strips accents).
    """
    if strip_accents_ is None:
        strip_accents_ = do_lower_case
    text = clean_text(text)
    if tokenize_chinese_chars:
        text = space_cjk_chars(text)
    if strip_accents_:
        text = strip_accents(text)
    if do_lower_case:
        text = lowercase(text)
    return text


def basic_tokenize(text: str, do_lower_case: bool = True, strip_accents_: bool | None = None,
                   tokenize_chinese_chars: bool = True) -> list[str]:
    """Normalized words of ``text`` (no special-token handling, no WordPiece)."""
    return split_words(normalize(text, do_lower_case, strip_accents_, tokenize_chinese_chars))


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
    Face's Rust tokenizer matches its special tokens).
    """

    def __init__(self, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, never_split=()):
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self._strip = self.do_lower_case if strip_accents is None else bool(strip_accents)
        self.never_split = tuple(dict.fromkeys(_check_text(t, "never_split entry") for t in never_split or ()))
        if any(t == "" for t in self.never_split):
            raise ValueError("never_split entries must be non-empty strings")
        # longest first, so that "[MASK]" wins over a shorter entry that starts it
        alternatives = sorted(self.never_split, key=lambda t: (-len(t), t))
        self._special_re = (re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
                            if alternatives else None)
        self._table = _CharTable(self.transform_char)

    def transform_char(self, char: str) -> str:
        """The normalization steps applied to one character; " " separates words."""
        return mark_word_boundaries(normalize(char, self.do_lower_case, self._strip,
                                              self.tokenize_chinese_chars))

    def split_special(self, text: str) -> list[tuple[bool, str]]:
        """[(is_special, segment), ...] in order; empty segments are left out."""
        if self._special_re is None or not self._special_re.search(text):
            return [(False, text)] if text else []
        parts = self._special_re.split(text)       # odd positions hold the matches
        return [(i % 2 == 1, part) for i, part in enumerate(parts) if part]

    def words(self, text: str) -> list[str]:
        """Normalized words of a text that holds no special token."""
        if text.isascii() and not _ASCII_CONTROL.search(text):
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

class BatchEncoding(dict):
    """The result of a batch call: a dict of NumPy arrays, also readable as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def load_vocab(path) -> list[str]:
    """Read ``vocab.txt`` (one token per line, line number = id) and check it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, VOCAB_FILE_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
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


class BertTokenizer:
    """WordPiece tokenizer compatible with BERT checkpoints' ``vocab.txt``.

        tok = BertTokenizer.from_pretrained("path/to/model")     # vocab.txt (+ tokenizer_config.json)
        tok.tokenize("Héllo world!")          # ['hello', 'world', '!']
        tok.encode("a question", "a passage") # [CLS] a question [SEP] a passage [SEP] as ids
        batch = tok(["first text", "second"], max_length=128)
        batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]   # (B, T) int64

    ``vocab_file`` is a path to ``vocab.txt`` (or its directory), or the tokens themselves
    (a list in id order, or a token -> id dict with ids 0..V-1).

    Caching: the ids of every distinct word are remembered (two dictionaries, one keyed by
    raw ASCII words, one by normalized words). Each holds at most ``cache_size`` words and
    is emptied when it is full, so memory stays bounded on endless streams of new words.
    """

    def __init__(self, vocab_file, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, never_split=None, unk_token: str = "[UNK]",
                 sep_token: str = "[SEP]", pad_token: str = "[PAD]", cls_token: str = "[CLS]",
                 mask_token: str = "[MASK]", model_max_length: int | None = 512,
                 max_input_chars_per_word: int = 100, cache_size: int = 1 << 18):
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
                            ("strip_accents", True if strip_accents is None else strip_accents)):
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
        self.model_max_length = model_max_length
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.cache_size = int(cache_size)
        specials = [t for t in (unk_token, sep_token, pad_token, cls_token, mask_token) if t]
        self.never_split = tuple(dict.fromkeys(list(never_split or ()) + specials))
        self.basic = BasicTokenizer(do_lower_case, strip_accents, tokenize_chinese_chars, self.never_split)
        self.unk_token_id = self.vocab[unk_token]
        self._special_ids = {t: self.vocab.get(t, self.unk_token_id) for t in self.never_split}
        self._max_piece_chars = max(map(len, tokens))
        self._ascii_cache: dict[str, tuple] = {}      # raw ASCII word -> ids
        self._word_cache: dict[str, tuple] = {}       # normalized word -> ids

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
            raise FileNotFoundError(f"no tokenizer at {path}: expected a directory holding "
                                    f"{VOCAB_FILE_NAME} or the path of a vocabulary file")
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"vocabulary file not found: {vocab_path}")
        settings = {}
        config_path = os.path.join(directory, TOKENIZER_CONFIG_NAME)
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                try:
                    config = json.load(f)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
            if not isinstance(config, dict):
                raise ValueError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "never_split",
                        "model_max_length", "max_input_chars_per_word", *SPECIAL_TOKEN_NAMES):
                value = config.get(key)
                if isinstance(value, dict):            # {"content": "[UNK]", ...} form
                    value = value.get("content")
                if value is not None:
                    settings[key] = value
            if "strip_accents" in config:
                settings["strip_accents"] = config["strip_accents"]
            if isinstance(settings.get("model_max_length"), (int, float)) and settings["model_max_length"] > 1e9:
                settings["model_max_length"] = None    # "no limit" written as a huge number
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
                if key in settings and not isinstance(settings[key], bool) and settings[key] is not None:
                    raise ValueError(f"{config_path}: {key} must be true or false, got {settings[key]!r}")
            if isinstance(settings.get("never_split"), str):
                raise ValueError(f"{config_path}: never_split must be a list of tokens, "
                                 f"got the string {settings['never_split']!r}")
        settings.update(overrides)
        return cls(vocab_path, **settings)

    def save_vocabulary(self, directory, filename_prefix: str | None = None) -> tuple[str]:
        """Write ``vocab.txt`` (one token per line, in id order) into ``directory``."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE_NAME
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(self.ids_to_tokens) + "\n")
        return (path,)

    def save_pretrained(self, directory) -> str:
        """``vocab.txt`` plus ``tokenizer_config.json`` holding this tokenizer's settings."""
        self.save_vocabulary(directory)
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "strip_accents": self.strip_accents,
                  "tokenize_chinese_chars": self.tokenize_chinese_chars,
                  "model_max_length": self.model_max_length,
                  **{name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES}}
        extra = [t for t in self.never_split if t not in self.all_special_tokens]
        if extra:
            config["never_split"] = extra
        with open(os.path.join(directory, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")
        return os.fspath(directory)

    # ---- vocabulary -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.ids_to_tokens)

    def __len__(self) -> int:
        return len(self.ids_to_tokens)

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
        return [t for t in (self.unk_token, self.sep_token, self.pad_token, self.cls_token,
                            self.mask_token) if t and t in self.vocab]

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

    # ---- text -> tokens / ids ---------------------------------------------------------

    def _word_ids(self, word: str) -> tuple:
        """Ids of the WordPiece pieces of one normalized word."""
        pieces = wordpiece(word, self.vocab, self.unk_token, self.max_input_chars_per_word,
                           "##", self._max_piece_chars)
        return tuple(self.vocab[p] for p in pieces)

    def _plain_ids(self, text: str) -> list[int]:
        """Ids of a text that holds no special token."""
        if text.isascii() and not _ASCII_CONTROL.search(text):
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
                ids.append(self._special_ids[segment])
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
        text = _check_text(text)
        ids, offsets = [], []
        position = 0
        for special, segment in self.basic.split_special(text):
            if special:
                ids.append(self._special_ids[segment])
                offsets.append((position, position + len(segment)))
            elif segment.isascii() and not _ASCII_CONTROL.search(segment):
                # ASCII: one character in, one character out, so a word's characters are
                # contiguous in the original text
                cache = self._ascii_cache
                for match in _ASCII_WORDS.finditer(segment):
                    word = match.group()
                    word_ids = cache.get(word)
                    if word_ids is None:
                        word_ids = self._word_ids(word.lower() if self.do_lower_case else word)
                    first = position + match.start()
                    self._piece_offsets(word_ids, range(first, first + len(word)), ids, offsets)
            else:
                for word, where in self.basic.words_with_offsets(segment, position):
                    word_ids = self._word_cache.get(word)
                    if word_ids is None:
                        word_ids = self._word_ids(word)
                    self._piece_offsets(word_ids, where, ids, offsets)
            position += len(segment)
        return ids, offsets

    def _piece_offsets(self, word_ids, where, ids, offsets):
        """Append the ids of one word and the offsets of its pieces; ``where[k]`` is the
        original index of the word's k-th normalized character."""
        if len(word_ids) == 1 and word_ids[0] == self.unk_token_id:
            ids.append(word_ids[0])
            offsets.append((where[0], where[-1] + 1))
            return
        to_token = self.ids_to_tokens
        start = 0
        for k, i in enumerate(word_ids):
            length = len(to_token[i]) - (2 if k else 0)
            ids.append(i)
            offsets.append((where[start], where[start + length - 1] + 1))
            start += length

    # ---- special tokens, truncation, encoding ------------------------------------------

    def _require(self, name):
        token_id = self._special_id(name)
        if token_id is None:
            raise ValueError(f"the vocabulary has no {name.replace('_', ' ')} {getattr(self, name)!r}, "
                             "which encoding with special tokens needs")
        return token_id

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

    def _resolve_max_length(self, max_length, truncation, pair, add_special_tokens):
        if truncation in (None, False, "do_not_truncate"):
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
        return int(max_length) - need, truncation

    @staticmethod
    def _truncate(ids_a, ids_b, budget, strategy):
        """Cut token lists so that they fit ``budget`` tokens (specials already set aside).

        longest_first, as the Rust library does it: a shorter sequence keeps all its tokens
        as long as it takes no more than half the budget; otherwise both get half, the
        extra token of an odd budget going to the longer one (to B when equal).
        """
        if ids_b is None:
            if strategy == "only_second":
                raise ValueError("truncation='only_second' needs a text pair")
            return ids_a[:budget], None
        n_a, n_b = len(ids_a), len(ids_b)
        if n_a + n_b <= budget:
            return ids_a, ids_b
        if strategy == "only_first":
            if n_b > budget:
                raise ValueError(f"cannot truncate only the first text: the second alone has {n_b} "
                                 f"tokens, more than the {budget} that fit")
            return ids_a[:budget - n_b], ids_b
        if strategy == "only_second":
            if n_a > budget:
                raise ValueError(f"cannot truncate only the second text: the first alone has {n_a} "
                                 f"tokens, more than the {budget} that fit")
            return ids_a, ids_b[:budget - n_a]
        short = min(n_a, n_b)
        keep_short = short
        keep_long = short if short > budget else max(short, budget - short)
        if keep_short + keep_long > budget:
            keep_short = budget // 2
            keep_long = keep_short + budget % 2
        keep_a, keep_b = (keep_long, keep_short) if n_a > n_b else (keep_short, keep_long)
        return ids_a[:keep_a], ids_b[:keep_b]

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               max_length: int | None = None, truncation=None) -> list[int]:
        """Ids of ``[CLS] text [SEP]`` (or ``[CLS] text [SEP] text_pair [SEP]``).

        ``truncation=None`` truncates (longest first) only when ``max_length`` is given.
        """
        if truncation is None:
            truncation = max_length is not None
        encoded = self._encode_one(text, text_pair, add_special_tokens, max_length, truncation, False)
        return encoded[0]

    def _encode_one(self, text, text_pair, add_special_tokens, max_length, truncation, offsets):
        text = _check_text(text)
        pair = text_pair is not None
        if pair:
            text_pair = _check_text(text_pair, "text_pair")
        limit = self._resolve_max_length(max_length, truncation, pair, add_special_tokens)
        if offsets:
            ids_a, off_a = self.tokenize_with_offsets(text)
            ids_b, off_b = self.tokenize_with_offsets(text_pair) if pair else (None, None)
        else:
            ids_a = self.tokenize_to_ids(text)
            ids_b = self.tokenize_to_ids(text_pair) if pair else None
        if limit is not None:
            ids_a, ids_b = self._truncate(ids_a, ids_b, *limit)
            if offsets:
                off_a = off_a[:len(ids_a)]
                off_b = off_b[:len(ids_b)] if pair else None
        if add_special_tokens:
            ids = self.build_inputs_with_special_tokens(ids_a, ids_b)
            types = self.create_token_type_ids(ids_a, ids_b)
            special = [1] + [0] * len(ids_a) + [1] + ([] if ids_b is None else [0] * len(ids_b) + [1])
        else:
            ids = ids_a + (ids_b or [])
            types = [0] * len(ids_a) + [1] * len(ids_b or [])
            special = [0] * len(ids)
        offs = None
        if offsets:
            if add_special_tokens:
                offs = [(0, 0)] + off_a + [(0, 0)] + ([] if ids_b is None else off_b + [(0, 0)])
            else:
                offs = off_a + (off_b or [])
        return ids, types, special, offs

    def __call__(self, texts, text_pairs=None, max_length: int | None = None, truncation=True,
                 padding="longest", return_offsets_mapping: bool = False,
                 return_special_tokens_mask: bool = False, add_special_tokens: bool = True,
                 pad_to_multiple_of: int | None = None) -> BatchEncoding:
        """Encode a batch into rectangular (B, T) int64 arrays.

        Returns ``input_ids``, ``token_type_ids`` and ``attention_mask`` (1 = real token), plus
        ``offset_mapping`` (B, T, 2) of character offsets into the original texts ((0, 0) for
        special tokens and padding) and ``special_tokens_mask`` when asked.

        ``truncation=True`` cuts to ``max_length`` (default ``model_max_length``), pairs longest
        first. ``padding``: "longest" (to the longest in the batch), "max_length", or False
        (every sequence must then have the same length). A single str is a batch of one.
        """
        if isinstance(texts, (str, bytes, bytearray)):
            texts = [texts]
            if text_pairs is not None:
                text_pairs = [text_pairs]
        if texts is None or not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        texts = list(texts)
        if text_pairs is not None:
            text_pairs = list(text_pairs)
            if len(text_pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(text_pairs)} text pairs")
        if pad_to_multiple_of is not None and not is_int_at_least(pad_to_multiple_of, 1):
            raise ValueError(f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}")
        if padding is True:
            padding = "longest"
        if padding in (False, None, "do_not_pad"):
            padding = None
        elif padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest', 'max_length' or False, got {padding!r}")
        rows = [self._encode_one(t, None if text_pairs is None else text_pairs[i], add_special_tokens,
                                 max_length, truncation, return_offsets_mapping)
                for i, t in enumerate(texts)]
        lengths = [len(r[0]) for r in rows]
        longest = max(lengths, default=0)
        if padding == "max_length":
            target = max_length if max_length is not None else self.model_max_length
            if target is None:
                raise ValueError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
            width = max(target, longest)
        elif padding == "longest":
            width = longest
        else:
            if len(set(lengths)) > 1:
                raise ValueError(f"padding=False but the sequences have different lengths "
                                 f"({min(lengths)} to {longest}); use padding='longest'")
            width = longest
        if pad_to_multiple_of and width % pad_to_multiple_of:
            width += pad_to_multiple_of - width % pad_to_multiple_of
        batch = len(rows)
        pad_id = self._require("pad_token") if width > min(lengths, default=width) else 0
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)         # (B, T)
        token_type_ids = np.zeros((batch, width), dtype=np.int64)           # (B, T)
        attention_mask = np.zeros((batch, width), dtype=np.int64)           # (B, T)
        special_mask = np.ones((batch, width), dtype=np.int64)              # (B, T)
        offset_mapping = np.zeros((batch, width, 2), dtype=np.int64)        # (B, T, 2)
        for b, (ids, types, special, offs) in enumerate(rows):
            n = len(ids)
            input_ids[b, :n] = ids
            token_type_ids[b, :n] = types
            attention_mask[b, :n] = 1
            special_mask[b, :n] = special
            if offs:
                offset_mapping[b, :n] = offs
        out = BatchEncoding(input_ids=input_ids, token_type_ids=token_type_ids,
                            attention_mask=attention_mask)
        if return_offsets_mapping:
            out["offset_mapping"] = offset_mapping
        if return_special_tokens_mask:
            out["special_tokens_mask"] = special_mask
        return out

    # ---- ids -> text ------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens) -> str:
        """Join tokens with spaces, gluing "##" pieces to the piece before them."""
        return " ".join(tokens).replace(" ##", "").strip()

    def decode(self, ids, skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False) -> str:
        """Ids -> text: "##" pieces rejoin their word, words are separated by one space.

        Normalization cannot be undone (case and accents are gone for uncased vocabularies),
        but ``tokenize(decode(encode(x))) == tokenize(x)``. ``clean_up_tokenization_spaces``
        removes the space before punctuation ("hello , world" -> "hello, world") and
        contractions; that reads better but may join words differently.
        """
        tokens = self.convert_ids_to_tokens(_id_list(ids), skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens)
        if clean_up_tokenization_spaces:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                                  (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                                  (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in sequences]

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
