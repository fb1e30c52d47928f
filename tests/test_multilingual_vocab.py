"""Cased multilingual WordPiece: the synthetic multi-script text, vocabularies trained on it
with each tokenization setting, and their tokens.

The default run checks the generator, the train-vocab options and golden tokens. The tests
marked ``reference`` (they need ``transformers``, with ``tokenizers`` behind its fast BERT
tokenizer) check that minibert's ``BertTokenizer`` and transformers' give the same tokens
and ids with the same vocabulary and options, over generated text and hand-written cases.
"""

from __future__ import annotations

import json
import unicodedata

import pytest

from minibert.cli_tokenizer import main as cli_main
from minibert.data.multilingual import LANGUAGES, iter_paragraphs, multilingual_lines, multilingual_text
from minibert.tokenization import BertTokenizer
from minibert.vocab_trainer import save_vocab, train_wordpiece

from conftest import load_script

CASED = dict(do_lower_case=False, strip_accents=False, tokenize_chinese_chars=True)
UNCASED = dict(do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True)
SETTINGS = {
    "cased": CASED,
    "uncased": UNCASED,
    "uncased, accents kept": dict(do_lower_case=True, strip_accents=False, tokenize_chinese_chars=True),
    "cased, accents stripped": dict(do_lower_case=False, strip_accents=True, tokenize_chinese_chars=True),
    "cased, CJK unsplit": dict(do_lower_case=False, strip_accents=False, tokenize_chinese_chars=False),
}


def script(char: str) -> str:
    """The first word of a character's Unicode name: LATIN, GREEK, CJK, HANGUL, ..."""
    return unicodedata.name(char, "?").split()[0]


# --------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_seedable():
    first = multilingual_lines(200, seed=3)
    assert multilingual_lines(200, seed=3) == first
    assert multilingual_lines(50, seed=3) == first[:50]            # a prefix of the same stream
    assert multilingual_lines(200, seed=4) != first
    assert multilingual_lines(0) == []
    text = multilingual_text(20_000, seed=3)
    size = sum(len(line.encode("utf-8")) + 1 for line in text)
    assert 20_000 <= size < 20_000 + len(text[-1].encode("utf-8")) + 1
    assert text == multilingual_lines(len(text), seed=3)


def test_generator_writes_every_script_with_its_conventions():
    lines = multilingual_lines(2000, seed=0)
    chars = {c for line in lines for c in line}
    scripts = {script(c) for c in chars}
    assert {"LATIN", "GREEK", "CYRILLIC", "ARABIC", "DEVANAGARI", "CJK", "HANGUL", "HIRAGANA",
            "KATAKANA", "COMBINING"} <= scripts
    for accented in "éèçäöüßñáíóúếựđ":                            # French, German, Spanish, Vietnamese
        assert accented in chars, accented
    assert {"ς", "ά", "й", "ё", "ガ", "ー", "\u0651", "\u094d", "¿", "«", "،", "؟", "।", "。", "、"} <= chars
    assert any(c.isupper() for c in chars if script(c) == "GREEK")
    assert any(c.isupper() for c in chars if script(c) == "CYRILLIC")
    # Chinese and Japanese run their words together; the other scripts put spaces between them
    zh = multilingual_lines(50, seed=0, languages="zh")
    assert all(" " not in line for line in zh)
    assert all(" " in line for line in multilingual_lines(50, seed=0, languages=["ko", "hi", "vi"]))
    assert all(any(script(c) == "CJK" for c in line) for line in zh)
    # some paragraphs are decomposed (NFD), the rest composed (NFC)
    nfd = [line for line in lines if not unicodedata.is_normalized("NFC", line)]
    assert 20 < len(nfd) < 150
    assert all(unicodedata.is_normalized("NFD", line) for line in nfd)
    # every character is old enough (Unicode 3.2) for every tokenizer's tables; no controls
    assert all(unicodedata.ucd_3_2_0.category(c) != "Cn" for c in chars)
    assert not any(unicodedata.category(c).startswith("C") for c in chars)


def test_german_nouns_and_sentence_starts_are_capitalised():
    lines = multilingual_lines(300, seed=1, languages=["de", "ru"])
    sentences = [s for line in lines for s in line.replace("!", ".").replace("?", ".").split(". ") if s]
    starts = [s.lstrip("\u201e\u00ab\u00bf\u00a1\"")[0] for s in sentences]
    assert all(c.isupper() or c.isdigit() for c in starts), [s for s in sentences if not s[0].isupper()][:3]
    german = " ".join(multilingual_lines(200, seed=1, languages="de")).split()
    inner_capitals = [w for w in german[1:] if w[0].isupper() and not w.isupper()]
    assert len(inner_capitals) > len(german) / 5                   # nouns, names, sentence starts


def test_generator_bad_input():
    with pytest.raises(ValueError, match="unknown language code.*'xx'.*choose from fr, de"):
        multilingual_lines(3, languages=["fr", "xx"])
    with pytest.raises(ValueError, match="unknown language code"):
        next(iter_paragraphs(languages=[]))
    with pytest.raises(ValueError, match="count must be a non-negative integer, got -1"):
        multilingual_lines(-1)
    with pytest.raises(ValueError, match="size_bytes must be a positive integer, got 0"):
        multilingual_text(0)
    assert set(LANGUAGES) == {"fr", "de", "es", "vi", "el", "ru", "ar", "hi", "zh", "ko", "ja"}


# --------------------------------------------------------------------------------------
# vocabularies and their tokens (golden cases)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus():
    return multilingual_text(120_000, seed=0)


@pytest.fixture(scope="module")
def tokenizers(corpus):
    """One vocabulary per setting, trained on the same text with the options it is used with."""
    return {name: BertTokenizer(train_wordpiece(corpus, vocab_size=3000, limit_alphabet=2000, **options),
                                **options)
            for name, options in SETTINGS.items()}


GOLDEN = [
    # text, setting, tokens
    ("Café Ärger", "cased", ["C", "##a", "##f", "##é", "Ä", "##r", "##g", "##er"]),
    ("Café Ärger", "uncased", ["ca", "##fe", "a", "##r", "##ge", "##r"]),
    ("Café Ärger", "uncased, accents kept", ["c", "##a", "##f", "##é", "ä", "##r", "##g", "##er"]),
    ("Café Ärger", "cased, accents stripped", ["C", "##a", "##f", "##e", "A", "##r", "##ge", "##r"]),
    ("e\u0301te\u0301", "cased", ["e", "##\u0301", "##t", "##e", "##\u0301"]),     # combining marks kept as pieces
    ("e\u0301te\u0301", "uncased", ["e", "##te"]),
    ("Tiếng Việt", "cased", ["T", "##i", "##ế", "##ng", "V", "##i", "##ệ", "##t"]),
    ("Tiếng Việt", "uncased", ["ti", "##eng", "vi", "##et"]),
    ("ΟΔΟΣ", "cased", ["Ο", "##Δ", "##Ο", "##Σ"]),
    ("ΟΔΟΣ", "uncased", ["ο", "##δ", "##οσ"]),                      # no final-sigma rule
    ("й ё", "cased", ["й", "ё"]),
    ("й ё", "uncased", ["и", "е"]),                                          # the breve and diaeresis are marks
    ("日本語の文章です", "cased", ["日", "本", "語", "の", "文", "章", "で", "##す"]),
    ("日本語の文章です", "uncased", ["日", "本", "語", "の", "文", "章", "て", "##す"]),   # で = て + ゙
    ("日本語", "cased, CJK unsplit", ["日", "##本", "##語"]),
    ("한국어", "cased", ["한", "##국", "##어"]),
    ("中文BERT模型", "cased", ["中", "文", "BERT", "[UNK]", "[UNK]"]),       # 模, 型: not in the text
    ("中文BERT模型", "cased, CJK unsplit", ["[UNK]"]),                         # one unknown spoils the word
]


@pytest.mark.parametrize("text, setting, expected", GOLDEN)
def test_golden_tokens(tokenizers, text, setting, expected):
    assert tokenizers[setting].tokenize(text) == expected


def test_what_each_setting_does(tokenizers, corpus):
    cased, uncased = tokenizers["cased"], tokenizers["uncased"]
    # a cased vocabulary holds both cases and the accented letters; an uncased one neither
    # (a final sigma ς is a lower-case letter of its own: lower-casing keeps it, Σ becomes σ)
    assert {"É", "é", "Ä", "ä", "Σ", "σ", "ς", "Й", "й"} <= set(cased.vocab)
    assert not {"É", "é", "Ä", "Σ", "й"} & set(uncased.vocab)
    assert {"σ", "ς"} <= set(uncased.vocab)
    # stripping accents decomposes Hangul syllables into their letters (jamo) and drops the
    # voiced mark of kana, so the uncased vocabulary spells Korean with jamo
    assert uncased.tokenize("한") == ["\u1112\u1161\u11ab"] and "한" in cased.vocab
    assert uncased.tokenize("ガ") == ["カ"]
    # every generated line tokenises without [UNK] (its characters are all in the alphabet),
    # and a cased line's pieces spell it again, marks included
    for line in corpus[:300]:
        tokens = cased.tokenize(line)
        assert "[UNK]" not in tokens
        words = cased.basic.tokenize(line)
        assert "".join(t.removeprefix("##") for t in tokens) == "".join(words)
    # CJK ideographs are always words of their own when split; never ## pieces
    cjk_pieces = [t for line in corpus[:300] for t in cased.tokenize(line)
                  if any(script(c) == "CJK" for c in t)]
    assert cjk_pieces and all(len(t) == 1 for t in cjk_pieces)


def test_cased_vocabulary_round_trips_through_save_and_from_pretrained(tmp_path, corpus):
    vocab = train_wordpiece(corpus, vocab_size=3000, limit_alphabet=2000, **CASED)
    save_vocab(vocab, tmp_path, **CASED)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["do_lower_case"], config["strip_accents"], config["tokenize_chinese_chars"]) == (False, False, True)
    tok = BertTokenizer.from_pretrained(tmp_path)
    assert tok.tokenize("Café 日本") == ["C", "##a", "##f", "##é", "日", "本"]
    in_memory = BertTokenizer(vocab, **CASED)
    assert all(tok.tokenize_to_ids(line) == in_memory.tokenize_to_ids(line) for line in corpus[:100])


def test_example_script_trains_and_shows_every_setting(tmp_path, capsys):
    example = load_script("examples", "multilingual_vocab.py")
    assert example.main(["--size", "30000", "--vocab-size", "2500", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in example.SETTINGS:
        folder = tmp_path / name.replace(", ", "_").replace(" ", "_")
        assert (folder / "vocab.txt").is_file() and f"{name} " in out
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert {k: config[k] for k in example.SETTINGS[name]} == example.SETTINGS[name]
    rows = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(rows) == len(example.EXAMPLES) * len(example.SETTINGS)
    assert "  cased, CJK unsplit   [UNK]" in out                   # 中文BERT模型: one word, unknown
    assert example.show("##\u1112\u1161\u11ab") == "##\u1112\u00b7\u1161\u00b7\u11ab"   # jamo shown apart
    assert example.show("##\u0301") == "##\u25cc\u0301" and example.show("Café") == "Café"
    assert example.main(["--size", "5000", "--vocab-size", "100", "--output", str(tmp_path / "small")]) == 2
    assert "error: vocab_size=100 is too small" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# minibert train-vocab: the tokenization options
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, options", [
    ([], UNCASED),
    (["--cased"], dict(do_lower_case=False, strip_accents=None, tokenize_chinese_chars=True)),
    (["--keep-accents"], SETTINGS["uncased, accents kept"]),
    (["--cased", "--strip-accents"], SETTINGS["cased, accents stripped"]),
    (["--cased", "--no-split-cjk"], dict(do_lower_case=False, strip_accents=None, tokenize_chinese_chars=False)),
])
def test_train_vocab_options(tmp_path, capsys, flags, options):
    lines = multilingual_text(15_000, seed=2)
    corpus = tmp_path / "multilingual.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert cli_main(["train-vocab", str(corpus), "--vocab-size", "1000", "--limit-alphabet", "400",
                     "--output", str(out), *flags]) == 0
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab == train_wordpiece(lines, vocab_size=1000, limit_alphabet=400, **options)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert {k: config[k] for k in options} == options
    assert "wrote 1000 tokens" in capsys.readouterr().err


def test_tokenize_command_follows_the_saved_cased_settings(tmp_path, capsys, corpus):
    save_vocab(train_wordpiece(corpus, vocab_size=3000, limit_alphabet=2000, **CASED), tmp_path, **CASED)
    assert cli_main(["tokenize", "--vocab", str(tmp_path), "Café ΟΔΟΣ 日本語"]) == 0
    assert capsys.readouterr().out == "C ##a ##f ##é Ο ##Δ ##Ο ##Σ 日 本 語\n"


def test_train_vocab_accent_flags_exclude_each_other(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Café\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train-vocab", str(corpus), "--output", str(tmp_path / "o"), "--strip-accents", "--keep-accents"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------
# parity with transformers (optional)
# --------------------------------------------------------------------------------------

# hand-written cases: accents composed and combining, stacked marks, CJK (with extension B and
# compatibility ideographs), Hangul syllables and conjoining jamo, kana with combining voiced
# marks, scripts mixed inside one word, and case (title case, dotted İ, ß, final sigma)
HAND_WRITTEN = [
    "Café naïve résumé Ärger Straße ¿Qué tal? ¡Sí! Tiếng Việt đẹp",
    "Cafe\u0301 nai\u0308ve e\u0301te\u0301 a\u0300\u0301\u0302 o\u031b\u0323 x\u0327\u0300",
    "ΟΔΟΣ Ὀδυσσεύς ΣΊΣΥΦΟΣ Ελληνικά; ᾼ ᾳ",
    "Москва Ёжик ЙОД й ё Ї ў",
    "हिन्दी क्षत्रिय बिस्मिल्लाह بِسْمِ ٱللَّٰهِ كتاب ١٢٣",
    "日本語の文章です。中文，标点！𠀀𠀁 豈更 ㈱ 中文BERT模型",
    "한국어 문장 \u1112\u1161\u11ab\u1100\u116e\u11a8 ㄱㄴ ﾊﾝｶｸ",
    "ガイド か\u3099 ハ\u309a ヴ パーティー",
    "İstanbul ǅemal ǈ ß ẞ ﬁ ΣΑΣ Σ σς ΐ \u2126 \u212b \u212a ＡＢＣ",     # Ohm, Angstrom, Kelvin signs
    "mixedСкрипт αβγdef 中a한b ひらがなKATAKANA",
    "[CLS] Café [MASK] 日本 [SEP] ",
]


@pytest.fixture(scope="module")
def reference_pair(corpus, tmp_path_factory):
    """(minibert, transformers) tokenizers for each setting, from the same saved vocabulary folder."""
    transformers = pytest.importorskip("transformers", reason="parity tests need transformers")
    pytest.importorskip("tokenizers", reason="transformers' fast BERT tokenizer needs tokenizers")
    pairs = {}
    for name, options in SETTINGS.items():
        folder = tmp_path_factory.mktemp(name)
        save_vocab(train_wordpiece(corpus, vocab_size=3000, limit_alphabet=2000, **options), folder, **options)
        theirs = transformers.BertTokenizerFast.from_pretrained(str(folder), **options)
        normalizer = json.loads(theirs.backend_tokenizer.normalizer.__getstate__())
        assert (normalizer["lowercase"], normalizer["strip_accents"], normalizer["handle_chinese_chars"]) == \
            (options["do_lower_case"], options["strip_accents"], options["tokenize_chinese_chars"])
        pairs[name] = (BertTokenizer.from_pretrained(folder), theirs, folder)
    return pairs


def _differences(ours, theirs, lines):
    """The lines on which tokens, ids (with [CLS] and [SEP]), character offsets or the decoded
    text differ."""
    out = []
    for line in lines:
        ours_encoding = ours(line, return_offsets_mapping=True)
        theirs_encoding = theirs(line, return_offsets_mapping=True)
        ids = ours_encoding["input_ids"][0].tolist()
        if (ours.tokenize(line) != theirs.tokenize(line) or ids != theirs_encoding["input_ids"]
                or ours_encoding["offset_mapping"][0].tolist() != [list(o) for o in theirs_encoding["offset_mapping"]]
                or ours.decode(ids) != theirs.decode(ids)
                or ours.decode(ids, skip_special_tokens=True) != theirs.decode(ids, skip_special_tokens=True)):
            out.append((line, ours.tokenize(line), theirs.tokenize(line)))
    return out


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_same_tokens_and_ids_as_transformers(reference_pair, setting):
    """transformers' fast BertTokenizer (the Rust library), same vocabulary, same options:
    cased (do_lower_case=False, strip_accents=False, tokenize_chinese_chars=True) as
    multilingual cased BERT, uncased as multilingual uncased BERT, and the other settings.
    Tokens, ids, offsets and decoded text are compared."""
    ours, theirs, _ = reference_pair[setting]
    lines = HAND_WRITTEN + multilingual_lines(1500 if setting == "cased" else 500, seed=11)
    assert not _differences(ours, theirs, lines)[:5]
    unknown = sum(theirs.tokenize(line).count("[UNK]") for line in HAND_WRITTEN)
    assert 0 < unknown < 40                           # the hand-written cases reach outside the vocabulary too


@pytest.mark.reference
def test_same_tokens_as_transformers_python_tokenizer_on_composed_text(reference_pair):
    """transformers' pure-Python BertTokenizer composes the text (NFC) before splitting it; the
    Rust library and minibert do not. On composed text all three agree; on decomposed text the
    Python tokenizer gives minibert's tokens of the composed text."""
    transformers = pytest.importorskip("transformers")
    slow_class = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    ours, _, folder = reference_pair["cased"]
    slow = slow_class(str(folder / "vocab.txt"), **CASED)
    lines = HAND_WRITTEN + multilingual_lines(600, seed=12)
    composed = [line for line in lines if unicodedata.is_normalized("NFC", line)]
    decomposed = [line for line in lines if line not in composed]
    assert len(decomposed) >= 10
    assert [line for line in composed if ours.tokenize(line) != slow.tokenize(line)][:3] == []
    assert [line for line in decomposed
            if ours.tokenize(unicodedata.normalize("NFC", line)) != slow.tokenize(line)][:3] == []
