"""Synthetic multi-script text, made offline, for training and testing multilingual vocabularies.

    lines = multilingual_lines(2000, seed=0)          # list of str, one paragraph per line
    lines = multilingual_text(300_000, seed=0)        # paragraphs up to ~300 kB of UTF-8
    for line in iter_paragraphs(seed=0, languages=["fr", "zh"]): ...     # endless

What it is, and what it is not
------------------------------
The text is **not** real language. Each "language" below is a small invented lexicon of
pseudo-words spelled with the real letters, marks and punctuation of a script, put together
in sentences with the writing conventions that matter to a tokenizer:

* which characters occur, in their usual composed (NFC) form: French, German, Spanish and
  Vietnamese accents (Vietnamese stacks two marks on one vowel: ``ế``, ``ự``), Greek tonos and
  final sigma, Cyrillic ``й``/``ё``, Arabic letters with occasional vowel marks (harakat),
  Devanagari consonants with vowel signs and virama, CJK ideographs, Hangul syllables, kana
  with voiced marks (``が``, ``パ``);
* casing: capitals at the start of sentences (cased scripts only), capitalised proper
  names, German nouns always capitalised, some all-capital acronyms and words;
* word boundaries: spaces between words, except in Chinese and Japanese, where words run
  together and only punctuation separates them; each script's punctuation (``¿ ¡ « » ، ؟ ।
  。 、 ，``) and digits (Arabic-Indic ones in Arabic);
* a little code-switching (a Latin-script name or acronym inside another script) and a few
  paragraphs in decomposed form (NFD: ``e`` + U+0301 instead of ``é``), as text copied from
  some file systems comes.

Word frequencies follow Zipf's law (the k-th word of a lexicon is drawn with weight 1/k), so a
vocabulary trainer finds frequent whole words and frequent pieces, as in real text. The
letters come from the Unicode character database (``unicodedata.lookup`` by name), so the
module needs no data file and no download.

Deterministic: the same ``seed`` gives the same text in every run and on every platform. Each
random stream is a ``random.Random`` seeded with a string made from ``seed`` (string seeds are
hashed with SHA-512, independent of ``PYTHONHASHSEED``), so one language's lexicon does not
change when other languages are added or left out. ``multilingual_lines(n)`` is a prefix of
``multilingual_lines(n + k)``.
"""

from __future__ import annotations

import random
import unicodedata
from typing import NamedTuple

from ..backend import is_int_at_least


def _letters(prefix: str, names: str) -> list[str]:
    """``_letters("GREEK SMALL LETTER", "ALPHA BETA")`` -> ["α", "β"] (by Unicode name)."""
    return [unicodedata.lookup(f"{prefix} {name}") for name in names.split(",")]


def _pick(rng: random.Random, items):
    return items[rng.randrange(len(items))]


# --------------------------------------------------------------------------------------
# Syllables of each script
# --------------------------------------------------------------------------------------

def _latin_syllables(consonants: str, vowels: str, codas: str):
    onsets, nuclei, finals = consonants.split(), vowels.split(), codas.split()

    def syllable(rng):
        coda = _pick(rng, finals) if rng.random() < 0.3 else ""
        return _pick(rng, onsets) + _pick(rng, nuclei) + coda
    return syllable


_VI_TONES = ("", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323")    # grave, acute, hook, tilde, dot below
_VI_VOWELS = ("a", "a\u0306", "a\u0302", "e", "e\u0302", "i", "o", "o\u0302", "o\u031b", "u", "u\u031b", "y")


def _vietnamese_syllable(rng):
    onset = _pick(rng, "b c ch d \u0111 g gi h k kh l m n ng nh ph qu r s t th tr v x".split())
    vowel = _pick(rng, _VI_VOWELS) + _pick(rng, _VI_TONES)           # base, shape mark, tone mark
    coda = _pick(rng, "c ch m n ng nh p t".split()) if rng.random() < 0.4 else ""
    return unicodedata.normalize("NFC", onset + vowel + coda)


_GREEK_CONSONANTS = _letters("GREEK SMALL LETTER", "BETA,GAMMA,DELTA,ZETA,THETA,KAPPA,LAMDA,MU,NU,XI,PI,RHO,"
                                                   "SIGMA,TAU,PHI,CHI,PSI")
_GREEK_VOWELS = _letters("GREEK SMALL LETTER", "ALPHA,EPSILON,ETA,IOTA,OMICRON,UPSILON,OMEGA")
_GREEK_TONOS = _letters("GREEK SMALL LETTER", "ALPHA WITH TONOS,EPSILON WITH TONOS,ETA WITH TONOS,"
                                              "IOTA WITH TONOS,OMICRON WITH TONOS,UPSILON WITH TONOS,"
                                              "OMEGA WITH TONOS")


def _greek_syllable(rng):
    vowel = _pick(rng, _GREEK_TONOS) if rng.random() < 0.25 else _pick(rng, _GREEK_VOWELS)
    coda = _pick(rng, ("\u03c3", "\u03bd")) if rng.random() < 0.25 else ""     # σ or ν
    return _pick(rng, _GREEK_CONSONANTS) + vowel + coda


_CYRILLIC_CONSONANTS = _letters("CYRILLIC SMALL LETTER", "BE,VE,GHE,DE,ZHE,ZE,KA,EL,EM,EN,PE,ER,ES,TE,EF,HA,TSE,"
                                                         "CHE,SHA,SHCHA")
_CYRILLIC_VOWELS = _letters("CYRILLIC SMALL LETTER", "A,IE,IO,I,O,U,YERU,E,YU,YA")
_CYRILLIC_CODAS = _letters("CYRILLIC SMALL LETTER", "SHORT I,SOFT SIGN,EN,ES,TE,EL")


def _cyrillic_syllable(rng):
    coda = _pick(rng, _CYRILLIC_CODAS) if rng.random() < 0.3 else ""
    return _pick(rng, _CYRILLIC_CONSONANTS) + _pick(rng, _CYRILLIC_VOWELS) + coda


_ARABIC_LETTERS = _letters("ARABIC LETTER", "BEH,TEH,THEH,JEEM,HAH,KHAH,DAL,REH,ZAIN,SEEN,SHEEN,SAD,DAD,TAH,AIN,"
                                            "GHAIN,FEH,QAF,KAF,LAM,MEEM,NOON,HEH,WAW,YEH")
_ARABIC_LONG_VOWELS = _letters("ARABIC LETTER", "ALEF,WAW,YEH")
_ARABIC_HARAKAT = ("\u064e", "\u064f", "\u0650", "\u0652", "\u0651")   # fatha, damma, kasra, sukun, shadda


def _arabic_syllable(rng):
    # mostly unvocalised, as most Arabic is written; sometimes a short-vowel mark (haraka)
    mark = _pick(rng, _ARABIC_HARAKAT) if rng.random() < 0.08 else ""
    vowel = _pick(rng, _ARABIC_LONG_VOWELS) if rng.random() < 0.4 else ""
    return _pick(rng, _ARABIC_LETTERS) + mark + vowel


_DEVANAGARI_CONSONANTS = _letters("DEVANAGARI LETTER", "KA,KHA,GA,CA,JA,TTA,DDA,TA,THA,DA,DHA,NA,PA,BA,BHA,MA,YA,"
                                                       "RA,LA,VA,SHA,SA,HA")
_DEVANAGARI_SIGNS = _letters("DEVANAGARI VOWEL SIGN", "AA,I,II,U,UU,E,AI,O,AU")
_DEVANAGARI_MARKS = _letters("DEVANAGARI SIGN", "ANUSVARA,CANDRABINDU,VIRAMA")


def _devanagari_syllable(rng):
    syllable = _pick(rng, _DEVANAGARI_CONSONANTS)
    if rng.random() < 0.15:                                   # a conjunct: consonant + virama + consonant
        syllable += _DEVANAGARI_MARKS[2] + _pick(rng, _DEVANAGARI_CONSONANTS)
    if rng.random() < 0.7:
        syllable += _pick(rng, _DEVANAGARI_SIGNS)
    if rng.random() < 0.1:
        syllable += _pick(rng, _DEVANAGARI_MARKS[:2])
    return syllable


# Hangul syllables: U+AC00 + (lead * 21 + vowel) * 28 + tail (the Unicode composition formula)
_HANGUL_LEADS, _HANGUL_VOWELS, _HANGUL_TAILS = (0, 2, 3, 5, 6, 7, 9, 11, 12, 14, 15, 16, 17, 18), \
    (0, 4, 8, 13, 18, 20, 1, 6), (0, 0, 0, 4, 8, 16, 21, 1)


_COMMON_HANGUL = "한국어문장는이가을다의에서하고있습니"


def _hangul_syllable(rng):
    if rng.random() < 0.3:
        return _pick(rng, _COMMON_HANGUL)
    lead, vowel, tail = _pick(rng, _HANGUL_LEADS), _pick(rng, _HANGUL_VOWELS), _pick(rng, _HANGUL_TAILS)
    return chr(0xAC00 + (lead * 21 + vowel) * 28 + tail)


_KANA = ("A I U E O KA KI KU KE KO SA SI SU SE SO TA TI TU TE TO NA NI NU NE NO HA HI HU HE HO MA MI MU ME MO "
         "YA YU YO RA RI RU RE RO WA GA GI GU GE GO ZA ZI ZU ZE ZO DA DE DO BA BI BU BE BO PA PI PU PE PO").split()
_HIRAGANA = _letters("HIRAGANA LETTER", ",".join(_KANA))
_KATAKANA = _letters("KATAKANA LETTER", ",".join(_KANA))
_KATAKANA_LONG = unicodedata.lookup("KATAKANA-HIRAGANA PROLONGED SOUND MARK")

# Ideographs: some of the most frequent characters of Chinese and Japanese text first, then a
# fixed sample of the CJK Unified Ideographs block (U+4E00..U+9FA5, all assigned); the k-th is
# drawn with weight 1/(k + 5), so the most frequent is about 4% of the characters and a few
# hundred carry most of the text, roughly as in Chinese
_COMMON_IDEOGRAPHS = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年日本語文章字学生会"
_IDEOGRAPHS = list(dict.fromkeys(_COMMON_IDEOGRAPHS + "".join(chr(0x4E00 + (k * 7919) % 0x51A6)
                                                             for k in range(560))))
_IDEOGRAPH_WEIGHTS = [1 / (k + 5) for k in range(len(_IDEOGRAPHS))]


def _ideograph_word(rng):
    return "".join(rng.choices(_IDEOGRAPHS, weights=_IDEOGRAPH_WEIGHTS, k=_pick(rng, (1, 2, 2, 2, 3))))


# --------------------------------------------------------------------------------------
# Languages
# --------------------------------------------------------------------------------------

class Language(NamedTuple):
    """How one invented language writes: its words and its conventions."""

    code: str                 # a tag naming the real language whose script and marks it borrows
    word: object              # rng -> one new word of the lexicon (str)
    cased: bool               # capitals at sentence starts and on names
    spaced: bool              # words separated by spaces
    stops: tuple              # sentence-final punctuation, drawn at random
    comma: str
    nouns_capitalised: bool = False
    opening: tuple = ()       # (final punctuation, its opening counterpart): Spanish ¿ ¡
    quotes: tuple = ('"', '"')
    digits: str = "0123456789"


def _finish_greek(word: str) -> str:
    # a lower-case sigma at the end of a word is written in its final form
    return word[:-1] + "\u03c2" if word.endswith("\u03c3") else word


def _japanese_word(rng):
    kind = rng.random()
    if kind < 0.45:
        return _ideograph_word(rng)                    # a word written in ideographs (kanji)
    if kind < 0.75:                                    # a loanword in katakana, maybe with a long vowel
        word = "".join(_pick(rng, _KATAKANA) for _ in range(rng.randint(2, 4)))
        return word + _KATAKANA_LONG if rng.random() < 0.4 else word
    return "".join(_pick(rng, _HIRAGANA) for _ in range(rng.randint(1, 3)))   # particles, endings


def _words_of(syllable, fewest: int, most: int, finish=lambda word: word):
    """rng -> a word of ``fewest`` to ``most`` syllables, then ``finish``-ed."""
    return lambda rng: finish("".join(syllable(rng) for _ in range(rng.randint(fewest, most))))


LANGUAGES = {
    "fr": Language("fr", _words_of(_latin_syllables("b c d f g j l m n p r s t v ch qu",
                                                    "a e i o u é è ê à â î ô û ç ë ï ou ai eau", "r l n s t"), 1, 3),
                   True, True, (".", ".", "!", "?"), ",", quotes=("\u00ab ", " \u00bb")),
    "de": Language("de", _words_of(_latin_syllables("b d f g h k l m n p r s t w z sch ch st",
                                                    "a e i o u ä ö ü ei au ie", "n r s t ß ch ng"), 1, 3),
                   True, True, (".", ".", "!", "?"), ",", nouns_capitalised=True, quotes=("\u201e", "\u201c")),
    "es": Language("es", _words_of(_latin_syllables("b c d f g l m n p r s t v ll ñ j",
                                                    "a e i o u á é í ó ú ü ue ia", "n s r l"), 1, 3),
                   True, True, (".", ".", "!", "?"), ",", opening=(("?", "\u00bf"), ("!", "\u00a1"))),
    "vi": Language("vi", _words_of(_vietnamese_syllable, 1, 1), True, True, (".", ".", "?"), ","),
    "el": Language("el", _words_of(_greek_syllable, 1, 4, _finish_greek), True, True, (".", ".", ";"), ",",
                   quotes=("\u00ab", "\u00bb")),
    "ru": Language("ru", _words_of(_cyrillic_syllable, 1, 4), True, True, (".", ".", "!", "?"), ",",
                   quotes=("\u00ab", "\u00bb")),
    "ar": Language("ar", _words_of(_arabic_syllable, 2, 4), False, True, (".", "\u061f"), "\u060c",
                   digits="".join(chr(0x0660 + d) for d in range(10))),
    "hi": Language("hi", _words_of(_devanagari_syllable, 1, 3), False, True, ("\u0964",), ","),
    "zh": Language("zh", _ideograph_word, False, False, ("\u3002", "\uff1f", "\uff01"), "\uff0c",
                   quotes=("\u201c", "\u201d")),
    "ko": Language("ko", _words_of(_hangul_syllable, 1, 3), False, True, (".", "?"), ","),
    "ja": Language("ja", _japanese_word, False, False, ("\u3002",), "\u3001", quotes=("\u300c", "\u300d")),
}


def _capitalise(word: str) -> str:
    return word[:1].upper() + word[1:]


# Latin-script names and acronyms that turn up inside other scripts
_LOANS = ("Paris", "Berlin", "Unicode", "Python", "BERT", "NASA", "UNESCO", "iPhone", "Wi-Fi", "COVID-19")


class _Lexicon:
    """The invented words of one language, drawn with Zipf weights (the k-th with weight 1/k)."""

    def __init__(self, language: Language, seed, size: int = 400):
        rng = random.Random(f"{seed}:{language.code}:lexicon")
        words = []
        seen = set()
        while len(words) < size:
            word = language.word(rng)
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        self.nouns = frozenset(words[k] for k in range(1, size, 3))      # German capitalises these
        self.names = [_capitalise(w) for w in words[size // 2:size // 2 + 40]] if language.cased else words[-40:]
        self._cumulative = []
        total = 0.0
        for k in range(size):
            total += 1.0 / (k + 1)
            self._cumulative.append(total)

    def draw(self, rng: random.Random) -> str:
        return rng.choices(self.words, cum_weights=self._cumulative)[0]


def _sentence(language: Language, lexicon: _Lexicon, rng: random.Random) -> str:
    words = []
    for position in range(rng.randint(3, 12)):
        roll = rng.random()
        if roll < 0.06:
            word = _pick(rng, lexicon.names)
        elif roll < 0.08:
            word = "".join(_pick(rng, language.digits) for _ in range(rng.randint(1, 4)))
        elif roll < 0.10:
            word = _pick(rng, _LOANS)
        else:
            word = lexicon.draw(rng)
            if language.nouns_capitalised and word in lexicon.nouns:
                word = _capitalise(word)
            elif language.cased and roll < 0.12:
                word = word.upper()                                  # an acronym or a shouted word
        if language.cased and position == 0:
            word = _capitalise(word)
        if words and rng.random() < 0.08:
            words[-1] += language.comma
        words.append(word)
    stop = _pick(rng, language.stops)
    if rng.random() < 0.05:
        words[0], words[-1] = language.quotes[0] + words[0], words[-1] + language.quotes[1]
    text = (" " if language.spaced else "").join(words) + stop
    return dict(language.opening).get(stop, "") + text


def _check_languages(languages) -> tuple:
    if isinstance(languages, str):
        languages = (languages,)
    languages = tuple(languages)
    unknown = [code for code in languages if code not in LANGUAGES]
    if unknown or not languages:
        raise ValueError(f"unknown language code(s) {unknown or list(languages)!r}; "
                         f"choose from {', '.join(LANGUAGES)}")
    return languages


def iter_paragraphs(seed=0, languages=tuple(LANGUAGES)):
    """An endless stream of paragraphs, each of 1-4 sentences in one language.

    The languages take turns at random (uniformly); ``languages`` picks which (codes of
    :data:`LANGUAGES`). About one paragraph in 30 is written decomposed (NFD).
    """
    languages = _check_languages(languages)
    lexicons = {code: _Lexicon(LANGUAGES[code], seed) for code in languages}
    rng = random.Random(f"{seed}:paragraphs")
    while True:
        code = _pick(rng, languages)
        separator = " " if LANGUAGES[code].spaced else ""
        line = separator.join(_sentence(LANGUAGES[code], lexicons[code], rng) for _ in range(rng.randint(1, 4)))
        if rng.random() < 1 / 30:
            line = unicodedata.normalize("NFD", line)
        yield line


def multilingual_lines(count: int, seed=0, languages=tuple(LANGUAGES)) -> list[str]:
    """The first ``count`` paragraphs of :func:`iter_paragraphs`, one per line."""
    if not is_int_at_least(count, 0):
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    paragraphs = iter_paragraphs(seed, languages)
    return [next(paragraphs) for _ in range(count)]


def multilingual_text(size_bytes: int, seed=0, languages=tuple(LANGUAGES)) -> list[str]:
    """The first paragraphs of :func:`iter_paragraphs` whose UTF-8 size (one newline per line
    counted) reaches ``size_bytes``."""
    if not is_int_at_least(size_bytes, 1):
        raise ValueError(f"size_bytes must be a positive integer, got {size_bytes!r}")
    lines, size = [], 0
    for line in iter_paragraphs(seed, languages):
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
        if size >= size_bytes:
            return lines
