"""Pretraining examples: NSP pairs, masking statistics, static and dynamic masking, shards."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minibert.data.corpus import CorpusError, pydoc_topic_documents
from minibert.data.pretraining import (
    MASK_TOKEN_PROB,
    RANDOM_TOKEN_PROB,
    SentencePair,
    ArrayDataset,
    DynamicMasking,
    Masker,
    ShardDataset,
    VocabularyInfo,
    create_examples,
    encode_pair,
    examples_to_arrays,
    pairs_from_document,
    tokenize_documents,
    truncate_pair,
    write_shards,
)

IGNORE = -100


class StubTokenizer:
    """A tiny tokenizer with BertTokenizer's interface: lower-cased whitespace words, each
    cut into 3-letter pieces ("masking" -> "mas", "##kin", "##g") so words span tokens."""

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    def __init__(self, texts):
        pieces = sorted({p for text in texts for w in text.lower().split() for p in self.pieces(w)})
        self.ids_to_tokens = self.specials + ["[unused0]"] + pieces
        self.vocab = {t: i for i, t in enumerate(self.ids_to_tokens)}
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = range(5)
        self.all_special_ids = list(range(5))

    @staticmethod
    def pieces(word):
        return [word[:3]] + ["##" + word[i:i + 3] for i in range(3, len(word), 3)]

    def tokenize(self, text):
        return [p for w in text.lower().split() for p in self.pieces(w)]

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def __len__(self):
        return len(self.ids_to_tokens)


@pytest.fixture(scope="module")
def topics():
    """The reference-manual topics: about 80 documents, 3,000 sentences of real prose."""
    return pydoc_topic_documents()


@pytest.fixture(scope="module")
def tokenizer(topics):
    return StubTokenizer([s for doc in topics for s in doc])


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return VocabularyInfo.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def documents(topics, tokenizer):
    return tokenize_documents(topics, tokenizer)


@pytest.fixture(scope="module")
def unmasked(documents, vocab):
    return examples_to_arrays(create_examples(documents, vocab, max_seq_length=64, seed=7))


@pytest.fixture(scope="module")
def static(documents, vocab):
    return examples_to_arrays(create_examples(documents, vocab, max_seq_length=64, seed=7, masker=Masker(vocab)))


def num_to_predict(attention_mask, prob=0.15, cap=20):
    n = attention_mask.sum(axis=1)
    return np.clip(np.rint(n * prob), 1, cap)


# --------------------------------------------------------------------------- vocabulary
def test_vocabulary_info(tokenizer, vocab):
    assert set(vocab.never_selected) == {0, 2, 3, 4}                  # [PAD] [CLS] [SEP] [MASK]
    assert not set(vocab.replacement_ids) & {0, 1, 2, 3, 4, tokenizer.vocab["[unused0]"]}
    ordinary = [t for t in tokenizer.ids_to_tokens if not (t.startswith("[") and t.endswith("]"))]
    assert len(vocab.replacement_ids) == len(ordinary) > 1000
    assert vocab.is_continuation[tokenizer.vocab["##kin"]] and not vocab.is_continuation[tokenizer.vocab["the"]]


# --------------------------------------------------------------------------- pairs
def numbered_documents(sizes_per_document):
    """Documents whose tokens say where they come from: document d holds 1000*d + 1, +2, ..."""
    documents = []
    for d, sizes in enumerate(sizes_per_document):
        counter = iter(range(1000 * d + 1, 1000 * d + 1000))
        documents.append([[next(counter) for _ in range(size)] for size in sizes])
    return documents


def test_pairs_follow_or_come_from_another_document():
    rng = np.random.default_rng(0)
    documents = numbered_documents([rng.integers(1, 25, size=rng.integers(1, 12)) for _ in range(60)])
    labels = []
    for _ in range(10):
        for d in range(len(documents)):
            for pair in pairs_from_document(documents, d, 48, rng):
                a, b = pair.tokens_a, pair.tokens_b
                assert a and b and len(a) + len(b) <= 48 - 3
                assert all(t // 1000 == d for t in a)                      # A comes from this document
                assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)   # segments keep the text order
                if pair.is_random_next:
                    assert all(t // 1000 != d for t in b)                  # B from one other document
                    assert len({t // 1000 for t in b}) == 1
                else:
                    assert all(t // 1000 == d for t in b) and b[0] > a[-1]  # B follows A
                labels.append(pair.is_random_next)
    assert len(labels) > 1500
    assert abs(np.mean(labels) - 0.5) < 0.04


def test_nsp_labels_are_balanced(unmasked):
    assert abs(unmasked["next_sentence_label"].mean() - 0.5) < 0.03


@settings(max_examples=60, deadline=None)
@given(len_a=st.integers(1, 80), len_b=st.integers(1, 80), max_tokens=st.integers(2, 60), seed=st.integers(0, 99))
def test_truncation_is_longest_first(len_a, len_b, max_tokens, seed):
    a, b = list(range(len_a)), list(range(100, 100 + len_b))
    ta, tb = truncate_pair(a, b, max_tokens, np.random.default_rng(seed))
    assert len(ta) + len(tb) == min(len_a + len_b, max_tokens)
    assert ta and tb
    # each is a contiguous piece of its segment
    assert ta == a[ta[0]: ta[0] + len(ta)] and tb == b[tb[0] - 100: tb[0] - 100 + len(tb)]
    # a segment is cut only while it is the longer one (B on a tie)
    if len(ta) < len_a and len(tb) < len_b:
        assert abs(len(ta) - len(tb)) <= 1
    elif len(ta) < len_a:
        assert len(ta) >= len(tb)
    elif len(tb) < len_b:
        assert len(tb) >= len(ta) - 1


def test_truncation_cuts_both_ends():
    rng = np.random.default_rng(0)
    starts = [truncate_pair(list(range(50)), [1], 11, rng)[0][0] for _ in range(50)]
    assert len(set(starts)) > 5 and 15 < np.mean(starts) < 25     # 40 cuts, each from either end


@settings(max_examples=25, deadline=None)
@given(max_seq_length=st.integers(5, 48), short_seq_prob=st.sampled_from([0.0, 0.1, 1.0]), seed=st.integers(0, 10**6))
def test_example_layout(documents, vocab, max_seq_length, short_seq_prob, seed):
    docs = documents[:12]
    ex = examples_to_arrays(create_examples(docs, vocab, max_seq_length, short_seq_prob=short_seq_prob, seed=seed))
    ids, types, mask = ex["input_ids"], ex["token_type_ids"], ex["attention_mask"]
    assert ids.shape[1] == max_seq_length and ids.dtype == np.int32
    for row_ids, row_types, row_mask in zip(ids, types, mask):
        n = row_mask.sum()
        assert np.all(row_mask[:n] == 1) and np.all(row_mask[n:] == 0)
        assert row_ids[0] == vocab.cls_id and np.all(row_ids[n:] == vocab.pad_id)
        seps = np.flatnonzero(row_ids == vocab.sep_id)
        assert len(seps) == 2 and seps[1] == n - 1 and 1 < seps[0] < n - 2          # A and B non-empty
        assert np.all(row_types[: seps[0] + 1] == 0) and np.all(row_types[seps[0] + 1: n] == 1)
        assert np.all(row_types[n:] == 0)
    assert set(np.unique(ex["next_sentence_label"])) <= {0, 1}


# --------------------------------------------------------------------------- masking
def test_static_masking_statistics(static, unmasked, vocab):
    """Same seed, so the same pairs as the unmasked examples: compare token by token."""
    for name in ("token_type_ids", "attention_mask", "next_sentence_label"):
        np.testing.assert_array_equal(static[name], unmasked[name])
    original, masked, labels = unmasked["input_ids"], static["input_ids"], static["labels"]
    chosen = labels != IGNORE
    # labels: the original token exactly where a prediction is made, -100 elsewhere; elsewhere untouched
    np.testing.assert_array_equal(labels[chosen], original[chosen])
    np.testing.assert_array_equal(masked[~chosen], original[~chosen])
    # [CLS], [SEP] and padding are never chosen
    assert not np.isin(original[chosen], vocab.never_selected).any()
    # how many: round(15% of the tokens), at least 1, at most max_predictions_per_seq
    np.testing.assert_array_equal(chosen.sum(axis=1), num_to_predict(static["attention_mask"]))
    assert 0.14 < chosen.sum() / static["attention_mask"].sum() < 0.16
    # what becomes of a chosen token: 80% [MASK], 10% random, 10% kept
    total = chosen.sum()
    assert total > 15_000
    to_mask = (masked == vocab.mask_id) & chosen
    changed = (masked != original) & chosen & ~to_mask
    assert abs(to_mask.sum() / total - MASK_TOKEN_PROB) < 0.015
    assert abs(changed.sum() / total - RANDOM_TOKEN_PROB) < 0.01
    assert abs((masked == original)[chosen].mean() - (1 - MASK_TOKEN_PROB - RANDOM_TOKEN_PROB)) < 0.01
    # random replacements are ordinary tokens, never special
    assert np.isin(masked[changed], vocab.replacement_ids).all()


def test_cap_on_predictions(documents, vocab):
    masker = Masker(vocab, masked_lm_prob=0.5, max_predictions_per_seq=7)
    ex = examples_to_arrays(create_examples(documents[:20], vocab, 64, masker=masker, seed=1))
    np.testing.assert_array_equal((ex["labels"] != IGNORE).sum(axis=1),
                                  num_to_predict(ex["attention_mask"], 0.5, 7))


id_rows = st.lists(st.integers(0, 200), min_size=5, max_size=40)


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(id_rows, min_size=1, max_size=6), whole_word=st.booleans(), seed=st.integers(0, 10**6))
def test_masker_invariants(vocab, rows, whole_word, seed):
    """Any batch of ids: labels mark exactly the changed-or-predicted tokens, specials never chosen."""
    length = max(map(len, rows))
    specials = np.array([vocab.cls_id, vocab.sep_id], dtype=np.int32)
    ids = np.full((len(rows), length), vocab.pad_id, dtype=np.int32)
    for i, row in enumerate(rows):
        row = np.array(row) % vocab.vocab_size
        row[np.isin(row, [vocab.pad_id, vocab.mask_id])] = 1              # [UNK]: no padding inside
        row[::7] = specials[np.arange(len(row[::7])) % 2]                # some [CLS]/[SEP] inside
        ids[i, : len(row)] = row
    masker = Masker(vocab, whole_word_masking=whole_word)
    masked, labels = masker(ids, np.random.default_rng(seed))
    chosen = labels != IGNORE
    assert masked.shape == ids.shape == labels.shape
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
    assert not np.isin(ids[chosen], vocab.never_selected).any()
    assert not np.isin(masked[chosen], [vocab.cls_id, vocab.sep_id, vocab.pad_id]).any()
    k = num_to_predict(ids != vocab.pad_id)
    assert np.all(chosen.sum(axis=1) <= k)
    if not whole_word:
        candidates = (~np.isin(ids, vocab.never_selected)).sum(axis=1)
        np.testing.assert_array_equal(chosen.sum(axis=1), np.minimum(k, candidates))


def words_of(ids, vocab):
    """Positions grouped into whole words (a token and the "##" pieces after it)."""
    words = []
    for pos, token in enumerate(ids):
        if token in vocab.never_selected:
            continue
        if vocab.is_continuation[token] and words and words[-1][-1] == pos - 1:
            words[-1].append(pos)
        else:
            words.append([pos])
    return words


def test_whole_word_masking_selects_whole_words(documents, vocab, unmasked):
    ids = unmasked["input_ids"][:400]
    split_words = {}
    for whole_word in (True, False):
        masked, labels = Masker(vocab, whole_word_masking=whole_word)(ids, np.random.default_rng(0))
        chosen = labels != IGNORE
        partial = 0
        for row in range(len(ids)):
            for word in words_of(ids[row], vocab):
                picked = chosen[row, word]
                partial += bool(picked.any() and not picked.all())
        split_words[whole_word] = partial
        assert np.all(chosen.sum(axis=1) <= num_to_predict(unmasked["attention_mask"][:400]))
    assert split_words[True] == 0
    assert split_words[False] > 50            # without it, words are often cut (the test can fail)


def test_static_masking_duplicates_differ(documents, vocab):
    docs = documents[:10]
    once = examples_to_arrays(create_examples(docs, vocab, 64, masker=Masker(vocab), seed=3, dupe_factor=1))
    twice = examples_to_arrays(create_examples(docs, vocab, 64, masker=Masker(vocab), seed=3, dupe_factor=2))
    assert 1.5 < len(twice["input_ids"]) / len(once["input_ids"]) < 2.5
    again = examples_to_arrays(create_examples(docs, vocab, 64, masker=Masker(vocab), seed=3, dupe_factor=1))
    for name in once:                                                 # reproducible from the seed
        np.testing.assert_array_equal(once[name], again[name])


def test_dynamic_masking(unmasked, vocab):
    batch = {name: array[:32] for name, array in unmasked.items()}
    masking = DynamicMasking(Masker(vocab), seed=5)
    first, second = masking(batch), masking(batch)
    assert "labels" not in batch                                      # the input batch is left alone
    assert not np.array_equal(first["labels"], second["labels"])      # new masks every call
    for masked in (first, second):
        chosen = masked["labels"] != IGNORE
        np.testing.assert_array_equal(masked["labels"][chosen], batch["input_ids"][chosen])
        np.testing.assert_array_equal(masked["token_type_ids"], batch["token_type_ids"])
    # the random state is saved and restored with a checkpoint
    state = json.loads(json.dumps(masking.state_dict()))
    third = masking(batch)
    restored = DynamicMasking(Masker(vocab), seed=999)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored(batch)["input_ids"], third["input_ids"])
    with pytest.raises(ValueError, match="already has labels"):
        masking(first)


# --------------------------------------------------------------------------- datasets and shards
def small_arrays(n=53, length=6):
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, 100, size=(n, length)).astype(np.int32),
            "next_sentence_label": np.arange(n, dtype=np.int32)}          # doubles as an example id


def as_examples(arrays):
    n = len(arrays["input_ids"])
    return ({name: a[i] for name, a in arrays.items()} for i in range(n))


def collect(dataset):
    return [batch for batch in dataset]


def test_shards_round_trip(tmp_path):
    arrays = small_arrays()
    index = write_shards(as_examples(arrays), tmp_path, examples_per_shard=10)
    assert index["num_examples"] == 53 and len(index["shards"]) == 6
    assert index["fields"]["input_ids"] == {"dtype": "int32", "shape": [6]}
    for file in tmp_path.glob("*.npy"):
        np.load(file, allow_pickle=False)                                 # plain arrays, no pickle
    dataset = ShardDataset(tmp_path, batch_size=8, shuffle=False)
    batches = collect(dataset)
    assert len(batches) == len(dataset) == 7 and len(batches[-1]["input_ids"]) == 5
    for name in arrays:
        np.testing.assert_array_equal(np.concatenate([b[name] for b in batches]), arrays[name])
    assert dataset.position == {"epoch": 1, "example": 0}


@pytest.mark.parametrize("make", ["shards", "memory"])
def test_shuffled_epochs_and_resume(tmp_path, make):
    arrays = small_arrays()

    def dataset():
        if make == "shards":
            return ShardDataset(tmp_path, batch_size=8, shuffle=True, seed=11, drop_last=True)
        return ArrayDataset(arrays, batch_size=8, shuffle=True, seed=11, drop_last=True)

    if make == "shards":
        write_shards(as_examples(arrays), tmp_path, examples_per_shard=10)
    uninterrupted = dataset()
    epochs = [collect(uninterrupted) for _ in range(3)]
    for batches in epochs:
        ids = np.concatenate([b["next_sentence_label"] for b in batches])
        assert len(batches) == 6 and len(set(ids)) == 48                 # each example at most once
    assert not np.array_equal(epochs[0][0]["next_sentence_label"], epochs[1][0]["next_sentence_label"])
    # interrupted in the middle of epoch 1, position saved as JSON, resumed in a new object
    interrupted = dataset()
    collect(interrupted)
    stream = iter(interrupted)
    for _ in range(4):
        next(stream)
    position = json.loads(json.dumps(interrupted.position))
    assert position == {"epoch": 1, "example": 32}
    resumed = dataset()
    resumed.position = position
    rest = collect(resumed) + collect(resumed)
    expected = epochs[1][4:] + epochs[2]
    assert len(rest) == len(expected)
    for got, want in zip(rest, expected):
        for name in arrays:
            np.testing.assert_array_equal(got[name], want[name])


def test_static_examples_through_shards(tmp_path, documents, vocab):
    examples = create_examples(documents[:15], vocab, 64, masker=Masker(vocab), seed=2)
    write_shards(examples, tmp_path, examples_per_shard=40)
    batch = next(iter(ShardDataset(tmp_path, batch_size=16)))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
    assert batch["input_ids"].shape == batch["labels"].shape == (16, 64)


def test_shard_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard index"):
        ShardDataset(tmp_path, batch_size=4)
    write_shards(as_examples(small_arrays()), tmp_path, examples_per_shard=20)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_shards(as_examples(small_arrays()), tmp_path)
    write_shards(as_examples(small_arrays(n=5)), tmp_path, overwrite=True)
    assert ShardDataset(tmp_path, batch_size=4).num_examples == 5
    next(tmp_path.glob("shard-00000.input_ids.npy")).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        ShardDataset(tmp_path, batch_size=4)
    with pytest.raises(ValueError, match="no examples"):
        write_shards(iter([]), tmp_path / "empty")
    with pytest.raises(ValueError, match="batch_size"):
        ArrayDataset(small_arrays(), batch_size=0)


# --------------------------------------------------------------------------- bad input
def test_bad_corpus_and_settings(documents, vocab):
    with pytest.raises(CorpusError, match="at least 2 documents"):
        create_examples(documents[:1], vocab, 64)
    with pytest.raises(CorpusError, match="fewer than one sequence"):
        create_examples([[[7, 8, 9]], [[10, 11]]], vocab, 128)
    with pytest.raises(ValueError, match="max_seq_length must be at least 5"):
        create_examples(documents, vocab, 4)
    with pytest.raises(ValueError, match="dupe_factor"):
        create_examples(documents, vocab, 64, dupe_factor=0)
    with pytest.raises(ValueError, match="masked_lm_prob"):
        Masker(vocab, masked_lm_prob=0.0)
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        Masker(vocab, max_predictions_per_seq=0)
    with pytest.raises(ValueError, match="input_ids must lie in"):
        Masker(vocab)(np.array([[2, vocab.vocab_size, 3]]), np.random.default_rng(0))
    assert tokenize_documents([[""], []], StubTokenizer(["a"])) == []
    with pytest.raises(TypeError, match="tokenize_documents first"):
        create_examples([["A sentence."], ["Another one."]], vocab, 64)


# --------------------------------------------------------------------------- the real tokenizer
def test_with_bert_tokenizer(topics):
    tokenization = pytest.importorskip("minibert.tokenization")
    words = sorted({w for doc in topics[:10] for s in doc for w in s.lower().split() if w.isalpha()})
    tokens = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", '"', "(", ")"] + words
    tokenizer = tokenization.BertTokenizer(tokens)
    vocab = VocabularyInfo.from_tokenizer(tokenizer)
    assert vocab.never_selected.tolist() == sorted([0, 3, 4, 5])
    assert 1 not in vocab.replacement_ids and 2 not in vocab.replacement_ids
    documents = tokenize_documents(topics[:10], tokenizer)
    assert documents[0][0] == tokenizer.convert_tokens_to_ids(tokenizer.tokenize(topics[0][0]))
    ex = examples_to_arrays(create_examples(documents, vocab, 32, masker=Masker(vocab, whole_word_masking=True)))
    assert ex["input_ids"].shape[1] == 32 and (ex["labels"] != IGNORE).any()


def test_inputs_of_the_wrong_kind_are_refused(tokenizer, vocab):
    with pytest.raises(TypeError, match=r"documents\[0\] must be a list of sentences \(str\), got a str"):
        tokenize_documents(["The quick brown fox.", "Paris is nice."], tokenizer)
    masker = Masker(vocab)
    with pytest.raises(TypeError, match="input_ids must hold integers, got dtype float64"):
        masker(np.array([[2.0, 7.6, 3.0]]), np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        masker(np.array([[2, 7, 3]]), 0)

    with pytest.raises(ValueError, match=r"documents\[1\] must be a non-empty list of sentences"):
        list(create_examples([[[5, 6, 7]] * 20, [], [[8, 9, 10]] * 20], vocab, 16))
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        ArrayDataset({"input_ids": np.zeros((4, 3), np.int64)}, 2, seed=-1)


def test_masking_proportions_are_berts_80_10_10():
    # the statistics test reads these constants, so it cannot see them change
    assert (MASK_TOKEN_PROB, RANDOM_TOKEN_PROB) == (0.8, 0.1)


def _five_token_vocab():
    """0 [PAD] 1 [UNK] 2 [CLS] 3 [SEP] 4 [MASK] 5 a 6 b 7 ##b"""
    return VocabularyInfo(vocab_size=8, pad_id=0, cls_id=2, sep_id=3, mask_id=4,
                          never_selected=np.array([0, 2, 3, 4], np.int32),
                          replacement_ids=np.array([5, 6, 7], np.int32),
                          is_continuation=np.array([False] * 7 + [True]))


def test_nsp_label_one_means_b_is_random():
    vocab = _five_token_vocab()
    assert int(encode_pair(SentencePair([5], [6], True), 8, vocab)["next_sentence_label"]) == 1
    assert int(encode_pair(SentencePair([5], [6], False), 8, vocab)["next_sentence_label"]) == 0


def test_truncation_cuts_b_when_both_are_equally_long():
    a, b = truncate_pair([1, 2, 3], [4, 5, 6], 5, np.random.default_rng(0))
    assert (len(a), len(b)) == (3, 2)


def test_whole_word_masking_a_continuation_after_sep_is_its_own_word():
    # front truncation can leave a segment starting with a ## piece: it must not join the word before [SEP]
    masker = Masker(_five_token_vocab(), whole_word_masking=True)
    ids = np.array([[2, 5, 3, 7, 3]])                           # [CLS] a [SEP] ##b [SEP]: one prediction
    picked = set()
    for seed in range(40):
        _, labels = masker(ids, np.random.default_rng(seed))
        chosen = np.flatnonzero(labels[0] != IGNORE)
        assert len(chosen) == 1
        picked |= set(chosen.tolist())
    assert picked == {1, 3}
