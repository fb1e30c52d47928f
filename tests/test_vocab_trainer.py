"""The WordPiece vocabulary trainer and the train-vocab command."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert.cli_tokenizer import main as cli_main
from minibert.tokenization import BasicTokenizer, BertTokenizer
from minibert.vocab_trainer import DEFAULT_SPECIAL_TOKENS, count_words, save_vocab, train_wordpiece

ALPHABET_AND_FORMS = ["b", "g", "h", "n", "p", "s", "u", "##b", "##g", "##h", "##n", "##p", "##s", "##u"]


def hug_corpus():
    return ["hug " * 10, "pug " * 5, "pun " * 12, "bun " * 4, "hugs " * 5]


def test_merges_by_count_with_documented_ties():
    vocab = train_wordpiece(hug_corpus(), vocab_size=100)
    assert vocab[:5] == list(DEFAULT_SPECIAL_TOKENS)
    assert vocab[5:19] == ALPHABET_AND_FORMS
    # counts: ##u+##g 20, ##u+##n 16, h+##ug 15, p+##un 12, then three pairs of 5 (hug+##s,
    # p+##ug: tie broken by the left symbol's text) and b+##un 4
    assert vocab[19:] == ["##ug", "##un", "hug", "pun", "hugs", "pug", "bun"]


def test_vocab_size_and_min_frequency_are_respected():
    assert len(train_wordpiece(hug_corpus(), vocab_size=22)) == 22
    assert train_wordpiece(hug_corpus(), vocab_size=22)[19:] == ["##ug", "##un", "hug"]
    only_frequent = train_wordpiece(hug_corpus(), vocab_size=100, min_frequency=6)
    assert only_frequent[19:] == ["##ug", "##un", "hug", "pun"]
    with pytest.raises(ValueError, match="vocab_size=10 is too small"):
        train_wordpiece(hug_corpus(), vocab_size=10)


def sample_corpus(seed=0, sentences=300):
    rng = random.Random(seed)
    words = ("the model reads tokens and predicts masked words while training pretraining fine "
             "tuning embeddings attention heads layers Café naïve résumé 日本語 ΟΔΟΣ don't it's "
             "e-mail 3.14 1,000 user@example.com").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) + rng.choice([".", "!", "?", ""])
            for _ in range(sentences)]


def test_deterministic_and_order_independent():
    corpus = sample_corpus()
    first = train_wordpiece(corpus, vocab_size=150)
    assert train_wordpiece(list(corpus), vocab_size=150) == first
    shuffled = corpus[:]
    random.Random(1).shuffle(shuffled)
    assert train_wordpiece(shuffled, vocab_size=150) == first      # only word counts matter
    assert len(first) == len(set(first)) == 150


def test_alphabet_covered_and_no_unknown_words(tmp_path):
    corpus = sample_corpus()
    vocab = train_wordpiece(corpus, vocab_size=150)
    words = {w for text in corpus for w in BasicTokenizer().tokenize(text)}
    chars = {c for w in words for c in w}
    assert all(c in vocab and "##" + c in vocab for c in chars)
    save_vocab(vocab, tmp_path)
    tok = BertTokenizer.from_pretrained(tmp_path)
    for word in words:
        assert "[UNK]" not in tok.tokenize(word), word
    big = train_wordpiece(corpus, vocab_size=1000)                # merges run out before 1000
    assert len(big) < 1000 and big[:150] == vocab
    assert BertTokenizer(big).tokenize("the model reads") == ["the", "model", "reads"]


def test_limit_alphabet_and_special_tokens():
    corpus = ["aaaa bbbb cccc z"] * 3
    vocab = train_wordpiece(corpus, vocab_size=50, limit_alphabet=3)
    assert "z" not in vocab and "a" in vocab
    vocab = train_wordpiece(["[MASK] hello [CLS]"] * 3, vocab_size=30, special_tokens=["[UNK]", "[MASK]", "[CLS]"])
    assert vocab[:3] == ["[UNK]", "[MASK]", "[CLS]"]
    assert not any(t in ("[", "]", "mask") for t in vocab[3:] if t not in "[]")
    # the special tokens in the text are not words: none of their characters are learned
    assert all(t.removeprefix("##").isalpha() and t.islower() for t in vocab[3:]), vocab
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        train_wordpiece(corpus, vocab_size=50, special_tokens=["[PAD]"])


def test_cased_training_and_saved_settings(tmp_path):
    vocab = train_wordpiece(["Hello Hello Café Café"], vocab_size=40, do_lower_case=False)
    assert "H" in vocab and "h" not in vocab and "##é" in vocab
    save_vocab(vocab, tmp_path, do_lower_case=False)
    tok = BertTokenizer.from_pretrained(tmp_path)
    assert tok.tokenize("Hello Café") == ["Hello", "Café"]


def test_bad_input():
    with pytest.raises(TypeError, match="bytes"):
        train_wordpiece([b"hello"], vocab_size=50)
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(["hello"], vocab_size=0)
    with pytest.raises(ValueError, match="min_frequency"):
        train_wordpiece(["hello"], vocab_size=50, min_frequency=0)
    assert train_wordpiece("one text as a str", vocab_size=40) == train_wordpiece(["one text as a str"], vocab_size=40)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), min_size=1, max_size=8),
       vocab_size=st.integers(100, 300))
def test_any_corpus_trains_a_usable_vocabulary(texts, vocab_size):
    if not count_words(texts, BasicTokenizer(never_split=DEFAULT_SPECIAL_TOKENS), DEFAULT_SPECIAL_TOKENS):
        with pytest.raises(ValueError, match="the texts hold no words"):   # blank, or only control characters
            train_wordpiece(texts, vocab_size=vocab_size, min_frequency=1)
        return
    try:
        vocab = train_wordpiece(texts, vocab_size=vocab_size, min_frequency=1)
    except ValueError as exc:      # up to 320 distinct characters: an alphabet (and ## forms) may not fit
        assert f"vocab_size={vocab_size} is too small" in str(exc)
        alphabet = {c for text in texts for word in BasicTokenizer().tokenize(text) for c in word}
        assert len(DEFAULT_SPECIAL_TOKENS) + len(alphabet) > vocab_size / 2
        return
    assert len(vocab) == len(set(vocab)) <= vocab_size
    tok = BertTokenizer(vocab)
    for text in texts:
        for word in tok.basic.tokenize(text):
            if len(word) <= 100 and word not in DEFAULT_SPECIAL_TOKENS:
                assert "[UNK]" not in tok.tokenize(word), word


# --------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------

def test_train_vocab_command(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sample_corpus()), encoding="utf-8")
    out = tmp_path / "tok"
    assert cli_main(["train-vocab", str(corpus), "--vocab-size", "250", "--output", str(out)]) == 0
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab == train_wordpiece(sample_corpus(), vocab_size=250)
    assert cli_main(["tokenize", "--vocab", str(out), "The model reads"]) == 0
    assert capsys.readouterr().out == "the model reads\n"


def test_train_vocab_reports_invalid_utf8(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nsecond line\ncaf\xe9 latin-1\n")
    assert cli_main(["train-vocab", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: line 3: invalid UTF-8" in err and "Traceback" not in err
    assert cli_main(["train-vocab", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "out")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert cli_main(["train-vocab", str(tmp_path / "blank.txt"), "--output", str(tmp_path / "out")]) == 2
    assert "the texts hold no words" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_save_vocab_refuses_tokens_that_cannot_be_one_per_line(tmp_path):
    with pytest.raises(ValueError, match="contains a line break"):
        save_vocab(["[UNK]", "a\nb"], tmp_path / "v")
    with pytest.raises(ValueError, match="duplicate entry"):
        save_vocab(["[UNK]", "a", "a"], tmp_path / "v")
    assert not (tmp_path / "v").exists()
