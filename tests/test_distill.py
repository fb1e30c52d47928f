"""Distillation (minibert/distill.py, ``minibert distill``): the losses' gradients, the student's
initial weights, the triple loss through a whole model, and the command end to end on tiny
random teachers (no download)."""

import json
import os

import numpy as np
import pytest

from minibert import ops
from minibert.cli import main
from minibert.config import BertConfig
from minibert.distilbert import DistilBertForMaskedLM
from minibert.distill import DistillationTask, evenly_spaced_layers, student_from_teacher
from minibert.gradcheck import check_op, gradcheck
from minibert.heads import BertForMaskedLM
from minibert.modeling import BertModel
from minibert.tokenization import BertTokenizer

WORDS = ("the value of a function returns data string number file object list in with for to "
         "this that is an").split()


# ------------------------------------------------------------------------------------ the ops
def test_cosine_embedding_gradient(rng):
    student, teacher = rng.standard_normal((7, 5)), rng.standard_normal((7, 5))
    weights = np.array([1, 1, 0, 1, 0, 1, 1], dtype=np.float64)

    def forward(s):
        loss, cache = ops.cosine_embedding_forward(s, teacher, weights)
        return np.array(loss), cache

    check_op(forward, lambda g, cache: ops.cosine_embedding_backward(float(g), cache), [student],
             samples=None).raise_if_failed()
    # the value: the mean of 1 - cos over the counted rows; padded rows get no gradient
    cos = (student * teacher).sum(-1) / np.linalg.norm(student, axis=-1) / np.linalg.norm(teacher, axis=-1)
    loss, cache = ops.cosine_embedding_forward(student, teacher, weights)
    assert loss == pytest.approx(((1 - cos) * weights).sum() / weights.sum(), rel=1e-10)
    grad = ops.cosine_embedding_backward(1.0, cache)
    assert np.all(grad[weights == 0] == 0)


def test_cosine_embedding_ignores_length_and_handles_no_rows(rng):
    student = rng.standard_normal((4, 3))
    loss, cache = ops.cosine_embedding_forward(3.0 * student, student)      # same directions
    assert loss == pytest.approx(0.0, abs=1e-12)
    assert np.abs(ops.cosine_embedding_backward(1.0, cache)).max() < 1e-12
    loss, cache = ops.cosine_embedding_forward(student, -student)            # opposite: 1 - (-1)
    assert loss == pytest.approx(2.0)
    loss, cache = ops.cosine_embedding_forward(student, student, np.zeros(4))
    assert loss == 0.0 and not ops.cosine_embedding_backward(1.0, cache).any()
    with pytest.raises(ValueError, match="same"):
        ops.cosine_embedding_forward(student, student[:, :2])
    with pytest.raises(ValueError, match="weights"):
        ops.cosine_embedding_forward(student, student, np.ones(3))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_target_cross_entropy_has_the_kl_gradient(rng, temperature):
    """-T^2 mean sum p log q differs from the KL op by the teacher's entropy, a constant: the
    finite differences of the cross-entropy form match the KL op's backward."""
    student, teacher = rng.standard_normal((6, 9)) * 2, rng.standard_normal((6, 9)) * 2
    p = np.exp(teacher / temperature) / np.exp(teacher / temperature).sum(-1, keepdims=True)

    def soft_cross_entropy():
        shifted = student / temperature
        log_q = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return temperature ** 2 * float(-(p * log_q).sum(-1).mean())

    _, cache = ops.distillation_forward(student, teacher, temperature)
    gradcheck(soft_cross_entropy, {"student": student},
              {"student": ops.distillation_backward(1.0, cache)}, samples=None).raise_if_failed()
    entropy = temperature ** 2 * float(-(p * np.log(p)).sum(-1).mean())
    assert soft_cross_entropy() == pytest.approx(ops.distillation_forward(student, teacher, temperature)[0]
                                                 + entropy, rel=1e-10)


def test_losses_agree_with_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    student, teacher = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    weights = np.array([1, 0, 1, 1, 1, 0], dtype=np.float64)
    # soft targets: T^2 * kl_div(log q, p, batchmean), DistilBERT's L_ce
    s = torch.tensor(student, requires_grad=True)
    temperature = 2.0
    reference = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(torch.tensor(teacher) / temperature, -1),
                         reduction="batchmean") * temperature ** 2
    reference.backward()
    loss, cache = ops.distillation_forward(student, teacher, temperature)
    assert loss == pytest.approx(reference.item(), rel=1e-10)
    np.testing.assert_allclose(ops.distillation_backward(1.0, cache), s.grad.numpy(), rtol=1e-9, atol=1e-12)
    # cosine: cosine_embedding_loss(target +1) over the counted rows
    s = torch.tensor(student, requires_grad=True)
    kept = torch.tensor(weights.astype(bool))
    reference = F.cosine_embedding_loss(s[kept], torch.tensor(teacher)[kept], torch.ones(int(weights.sum()),
                                        dtype=torch.float64))
    reference.backward()
    loss, cache = ops.cosine_embedding_forward(student, teacher, weights)
    assert loss == pytest.approx(reference.item(), rel=1e-9)
    np.testing.assert_allclose(ops.cosine_embedding_backward(1.0, cache), s.grad.numpy(), rtol=1e-7, atol=1e-12)


# ------------------------------------------------------------------------------------ the student
def test_evenly_spaced_layers():
    assert evenly_spaced_layers(6, 3) == [0, 2, 4]
    assert evenly_spaced_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced_layers(6, 2) == [0, 3]
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="--layers"):
        evenly_spaced_layers(6, 7)


def _teacher(dtype=np.float32, seed=1, layers=4):
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=24)
    return BertForMaskedLM(config, seed=seed, dtype=dtype)


def test_the_student_starts_as_the_chosen_teacher_layers():
    teacher = _teacher()
    student = student_from_teacher(teacher, [0, 3])
    t = {name: p.data for name, p in teacher.named_parameters()}
    s = {name: p.data for name, p in student.named_parameters()}
    assert isinstance(student, DistilBertForMaskedLM) and student.config.num_hidden_layers == 2
    assert student.base_model.pooler is None and not hasattr(student.base_model.embeddings, "token_type_embeddings")
    for student_layer, teacher_layer in ((0, 0), (1, 3)):
        names = [n for n in s if n.startswith(f"distilbert.encoder.layer.{student_layer}.")]
        assert len(names) == 16
        for name in names:
            source = name.replace(f"distilbert.encoder.layer.{student_layer}.", f"bert.encoder.layer.{teacher_layer}.")
            np.testing.assert_array_equal(s[name], t[source])
    for part in ("word_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"):
        np.testing.assert_array_equal(s[f"distilbert.embeddings.{part}"], t[f"bert.embeddings.{part}"])
    np.testing.assert_array_equal(s["distilbert.embeddings.position_embeddings.weight"],
                                  t["bert.embeddings.position_embeddings.weight"]
                                  + t["bert.embeddings.token_type_embeddings.weight"][0])
    for name in [n for n in s if n.startswith("cls.")]:
        np.testing.assert_array_equal(s[name], t[name])
    # the copies are copies: training the student leaves the teacher alone
    s["distilbert.encoder.layer.0.attention.self.query.weight"][...] += 1
    assert not np.array_equal(s["distilbert.encoder.layer.0.attention.self.query.weight"],
                              t["bert.encoder.layer.0.attention.self.query.weight"])
    # with all of the teacher's layers, the student computes what the teacher computes (token types 0)
    full = student_from_teacher(teacher, [0, 1, 2, 3])
    teacher.eval()
    full.eval()
    ids = np.random.default_rng(0).integers(0, 40, size=(2, 7))
    np.testing.assert_allclose(full.forward(ids).logits, teacher.forward(ids).logits, rtol=1e-5, atol=1e-5)


def test_the_triple_loss_gradient_through_the_student():
    """Every parameter's gradient of a_ce L_ce + a_mlm L_mlm + a_cos L_cos (float64, no dropout),
    sampled, against central differences."""
    teacher = _teacher(np.float64, seed=1)
    student = student_from_teacher(_teacher(np.float64, seed=2), [0, 2])   # not yet the teacher's copy
    student.eval()
    rng = np.random.default_rng(3)
    ids = rng.integers(5, 40, size=(3, 9))
    mask = np.ones((3, 9), dtype=np.int64)
    mask[1, 6:] = 0
    labels = np.full((3, 9), -100)
    labels[0, 2], labels[1, 4], labels[2, 1], labels[2, 7] = 7, 9, 11, 13
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    task = DistillationTask(teacher, [batch], alphas={"ce": 5.0, "mlm": 2.0, "cos": 1.5}, temperature=2.0)
    weights = {"ce_loss": 1.0, "mlm_loss": 1.0, "cos_loss": 1.0}
    student.zero_grad()
    values = task.forward_backward(student, batch, weights)
    assert set(values) == {"ce_loss", "mlm_loss", "cos_loss"} and all(v > 0 for v in values.values())
    params = dict(student.named_parameters())
    arrays = {n: p.data for n, p in params.items()}
    grads = {n: p.grad.copy() for n, p in params.items()}

    def loss():
        values, _, _ = task._losses(student, batch)
        student.clear_caches()
        return sum(task.alphas[k] * v for k, v in values.items())

    gradcheck(loss, arrays, grads, samples=6, atol=1e-6, rtol=1e-4).raise_if_failed()


# ------------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A corpus, and two tiny random teachers sharing a vocabulary: a BERT with its masked-LM
    head, and a BertModel without one (as a sentence-embedding checkpoint is)."""
    from minibert.vocab_trainer import save_vocab

    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    documents = ["\n".join(" ".join(rng.choice(WORDS, size=rng.integers(4, 12))).capitalize() + "."
                           for _ in range(8)) for _ in range(20)]
    (root / "corpus.txt").write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    save_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS], str(root / "vocab"))
    tokenizer = BertTokenizer.from_pretrained(str(root / "vocab"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)
    BertForMaskedLM(config, seed=1).save_pretrained(str(root / "teacher"), tokenizer)
    BertModel(config, seed=1).save_pretrained(str(root / "headless"), tokenizer)
    return root


def _distill(folders, teacher, output, *extra):
    return main(["distill", "--teacher", str(folders / teacher), "--output", str(output),
                 "--corpus", str(folders / "corpus.txt"), "--max-seq-length", "24", "--batch-size", "4",
                 "--steps", "4", "--eval-every", "2", "--eval-batches", "1", "--validation-fraction", "0.2",
                 "--no-progress", *extra])


def test_distill_end_to_end(folders, tmp_path, capsys):
    out = tmp_path / "student"
    assert _distill(folders, "teacher", out) == 0
    printed = capsys.readouterr().out
    assert "copied from teacher layers 0, 2" in printed and "5 L_ce" in printed
    for name in ("model.safetensors", "config.json", "vocab.txt", "metrics.jsonl", "results.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "distilbert" and config["n_layers"] == 2 and config["dim"] == 16
    results = json.loads((out / "results.json").read_text())
    assert results["student_layers"] == [0, 2] and results["steps"] == 4
    assert {"ce_loss", "mlm_loss", "cos_loss"} <= set(results["validation"])
    student = DistilBertForMaskedLM.from_pretrained(str(out))
    ids = np.array([[2, 7, 8, 9, 3]])
    logits = student.forward(ids).logits
    assert logits.shape == (1, 5, config["vocab_size"])
    # the --layers option: three evenly spaced layers of four
    assert _distill(folders, "teacher", tmp_path / "three", "--layers", "3", "--steps", "1") == 0
    assert "copied from teacher layers 0, 1, 2" in capsys.readouterr().out


def test_the_saved_student_loads_in_transformers(folders, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "student"
    assert _distill(folders, "teacher", out, "--steps", "1") == 0
    reference = transformers.DistilBertForMaskedLM.from_pretrained(str(out)).eval()
    student = DistilBertForMaskedLM.from_pretrained(str(out))
    ids = np.array([[2, 7, 8, 9, 10, 3]])
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(student.forward(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_a_teacher_without_masked_lm_head(folders, tmp_path, capsys):
    assert _distill(folders, "headless", tmp_path / "student") == 0
    printed = capsys.readouterr().out
    assert "has no masked-LM head" in printed and "0 L_ce" in printed and "0 L_mlm + 1 L_cos" in printed
    results = json.loads((tmp_path / "student" / "results.json").read_text())
    assert results["alphas"] == {"ce": 0, "mlm": 0, "cos": 1.0}
    assert set(results["validation"]) == {"loss", "cos_loss"}
    assert 0 <= results["validation"]["cos_loss"] < 2
    # the student's own masked-LM loss, on its new head, when asked for
    assert _distill(folders, "headless", tmp_path / "with-mlm", "--alpha-mlm", "2", "--steps", "1") == 0
    assert "(given: 2)" in capsys.readouterr().out
    results = json.loads((tmp_path / "with-mlm" / "results.json").read_text())
    assert {"mlm_loss", "cos_loss", "mlm_accuracy"} <= set(results["validation"])
    # soft targets asked of a teacher that cannot give them: one line, nothing written
    assert _distill(folders, "headless", tmp_path / "refused", "--alpha-ce", "5") == 2
    error = capsys.readouterr().err
    assert "no masked-LM head" in error and error.count("\n") == 1
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("extra, message", [
    (["--layers", "0"], "--layers must be a positive integer"),
    (["--layers", "5"], "--layers must be between 1 and the teacher's 4 layers"),
    (["--alpha-cos", "-1"], "--alpha-cos must be a number >= 0"),
    (["--alpha-ce", "0", "--alpha-mlm", "0", "--alpha-cos", "0"], "nothing to learn from"),
    (["--temperature", "0"], "--temperature must be a positive number"),
    (["--corpus", "/no/such/corpus.txt"], "--corpus /no/such/corpus.txt: no such file"),
])
def test_bad_options_are_one_line_and_write_nothing(folders, tmp_path, capsys, extra, message):
    out = tmp_path / "student"
    assert _distill(folders, "teacher", out, *extra) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not out.exists()


def test_a_missing_teacher_or_a_used_output_is_refused(folders, tmp_path, capsys):
    assert _distill(folders, "nothing-here", tmp_path / "a") == 2
    assert "no such folder" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("x")
    assert _distill(folders, "teacher", used) == 2
    assert "is not empty" in capsys.readouterr().err
    assert os.listdir(used) == ["keep.txt"]
