"""Whole-model parity with Hugging Face transformers (optional: needs torch and transformers).

The same random weights go into both models (float64, dropout off); logits, losses and the
gradient of every parameter, by name, must agree; then a few SGD steps on both must produce
the same losses. Skipped cleanly when torch or transformers is not installed.
"""

import numpy as np
import pytest

from minibert.modeling import BertConfig, BertForPreTraining

torch = pytest.importorskip("torch", reason="the reference test needs PyTorch (pip install 'minibert[reference]')")
transformers = pytest.importorskip("transformers", reason="the reference test needs transformers")

pytestmark = pytest.mark.reference


def _config(**overrides):
    values = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, max_position_embeddings=40, type_vocab_size=2,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return BertConfig(**values)


def _reference_model(config, ours):
    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items()
                                           if k not in ("model_type", "attn_implementation")},
                                        attn_implementation="eager")
    theirs = transformers.BertForPreTraining(hf_config).double().eval()
    state = {name: torch.from_numpy(np.array(array)) for name, array in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    # the only keys we do not list are the tied decoder weight and bias, which share storage
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}, missing
    assert not unexpected, unexpected
    return theirs


def _batch(config, rng, batch=3, length=17):
    ids = rng.integers(5, config.vocab_size, (batch, length))
    token_types = (np.arange(length)[None, :] >= length // 2).astype(np.int64).repeat(batch, 0)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, 12:] = 0                                          # padded sequences
    mask[2, 9:] = 0
    labels = np.full((batch, length), -100)
    chosen = rng.random((batch, length)) < 0.3
    chosen &= mask.astype(bool)
    labels[chosen] = rng.integers(0, config.vocab_size, chosen.sum())
    nsp = np.array([0, 1, 0])
    return ids, token_types, mask, labels, nsp


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_loss_logits_and_every_gradient_match_transformers(hidden_act):
    config = _config(hidden_act=hidden_act)
    ours = BertForPreTraining(config, seed=3, dtype=np.float64)
    theirs = _reference_model(config, ours)
    ids, token_types, mask, labels, nsp = _batch(config, np.random.default_rng(0))

    out = ours.forward(ids, token_types, mask, labels=labels, next_sentence_label=nsp)
    ours.backward()
    ref = theirs(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(token_types),
                 attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels),
                 next_sentence_label=torch.from_numpy(nsp))
    ref.loss.backward()

    np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-10)
    selected = labels.reshape(-1) != -100
    ref_logits = ref.prediction_logits.detach().numpy().reshape(-1, config.vocab_size)[selected]
    np.testing.assert_allclose(out.prediction_logits, ref_logits, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out.seq_relationship_logits, ref.seq_relationship_logits.detach().numpy(),
                               rtol=1e-9, atol=1e-10)

    ref_grads = {name: p.grad.numpy() for name, p in theirs.named_parameters() if p.grad is not None}
    names = [name for name, _ in ours.named_parameters()]
    assert set(names) == set(ref_grads), set(names) ^ set(ref_grads)
    for name, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad, ref_grads[name], rtol=1e-7, atol=1e-10, err_msg=name)


def test_unlabelled_forward_scores_every_position_like_transformers():
    config = _config()
    ours = BertForPreTraining(config, seed=1, dtype=np.float64).eval()
    theirs = _reference_model(config, ours)
    ids, token_types, mask, _, _ = _batch(config, np.random.default_rng(1))
    out = ours.forward(ids, token_types, mask)
    with torch.no_grad():
        ref = theirs(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(token_types),
                     attention_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(out.prediction_logits, ref.prediction_logits.numpy(), rtol=1e-9, atol=1e-10)


def test_several_sgd_steps_follow_the_same_losses():
    config = _config()
    ours = BertForPreTraining(config, seed=5, dtype=np.float64)
    theirs = _reference_model(config, ours)
    theirs.train()
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1)
    ids, token_types, mask, labels, nsp = _batch(config, np.random.default_rng(2))
    for _ in range(5):
        out = ours.forward(ids, token_types, mask, labels=labels, next_sentence_label=nsp)
        ours.zero_grad()
        ours.backward()
        for _, p in ours.named_parameters():
            p.data -= 0.1 * p.grad
        optimizer.zero_grad()
        ref = theirs(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(token_types),
                     attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels),
                     next_sentence_label=torch.from_numpy(nsp))
        ref.loss.backward()
        optimizer.step()
        np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-8)
