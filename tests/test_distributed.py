"""Data-parallel training: N processes under mpiexec take the steps of one process with an
N-times larger batch, ZeRO stage 1 gives the weights of plain data parallel, a run resumes
with another number of processes, and a fault on one rank stops every rank.

The multi-process tests start ``mpiexec -n 2`` on this file (``python tests/test_distributed.py
SCENARIO OUT_DIR``: the scenarios are at the bottom) and compare what the ranks wrote with a
one-process run made here. They are skipped, with the reason, when mpi4py or mpiexec is
absent (``pip install -e ".[distributed]"``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minibert import distributed
from minibert.backend import cuda_available
from minibert.distributed import Communicator, DataParallel, backward_groups, check_same_everywhere, shard_rows

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
WORDS = ("the value of a function returns data string number file object list in with for to "
         "this that is an").split()
STEPS = 30
GLOBAL_BATCH = 8                 # 2 processes x 4, or 1 process x 8


def _mpi_available() -> str:
    """Why the multi-process tests cannot run here ('' when they can)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[distributed]')"
    if shutil.which("mpiexec") is None:
        return "no mpiexec on PATH (pip install mpich)"
    return ""


needs_mpi = pytest.mark.skipif(bool(_mpi_available()), reason=_mpi_available() or "mpi available")


def _mpiexec(*words, processes: int = 2, timeout: float = 120, env=None):
    """Run ``mpiexec -n processes python tests/test_distributed.py words...``; returns the result."""
    command = ["mpiexec", "-n", str(processes), sys.executable, HERE, *map(str, words)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    environment["PYTHONPATH"] = ROOT + os.pathsep + environment.get("PYTHONPATH", "")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT)


# ---------------------------------------------------------------------------- the tiny run
def _documents():
    rng = np.random.default_rng(0)
    return [[" ".join(rng.choice(WORDS, size=rng.integers(4, 12))).capitalize() + "." for _ in range(8)]
            for _ in range(30)]


def _trainer(per_process_batch: int, output_dir, communicator=None, max_steps=STEPS, device="cpu", dropout=0.0,
             **overrides):
    """A tiny BERT without dropout on a synthetic corpus; global batch = per_process_batch x ranks,
    two micro-batches per step (gradient accumulation). The learning rate is constant after the
    warm-up, so a run stopped at step 10 continues as one that went on."""
    from minibert import pretrain as job
    from minibert.data.corpus import split_documents
    from minibert.modeling import BertConfig, BertForPreTraining
    from minibert.training import Trainer, TrainingArguments

    comm = communicator if communicator is not None else Communicator()
    train_docs, val_docs = split_documents(_documents(), 0.1, 0)
    tokenizer = job.build_tokenizer(train_docs, None, vocab_size=120, save=False)
    data = job.build_datasets(train_docs, val_docs, tokenizer, max_seq_length=32,
                              batch_size=per_process_batch * comm.size, dupe_factor=2, seed=0)
    config = BertConfig.preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=32,
                               hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = BertForPreTraining(config, seed=comm.rank, device=device)   # rank 0's weights are broadcast
    settings = dict(output_dir=str(output_dir) if output_dir else None, max_steps=max_steps, learning_rate=2e-3,
                    warmup_steps=3, schedule="constant", gradient_accumulation_steps=2, eval_every=10,
                    eval_batches=2, log_every=1, checkpoints=bool(output_dir), progress=False,
                    bucket_bytes=64 * 1024)               # small buckets: several in flight during backward
    settings.update(overrides)
    return Trainer(model, TrainingArguments(**settings), data.train, data.validation, tokenizer,
                   masking=data.masking, communicator=comm)


def _losses(history):
    return np.array([r["loss"] for r in history if r["split"] == "train"])


def _evaluations(history):
    return np.array([r["loss"] for r in history if r["split"] == "eval"])


def _weights(model):
    from minibert.backend import to_numpy

    return {name: np.array(to_numpy(p.data)) for name, p in model.named_parameters()}


def _save_run(trainer, path):
    np.savez(path, losses=_losses(trainer.history), evaluations=_evaluations(trainer.history),
             **{f"w:{k}": v for k, v in _weights(trainer.model).items()})


def _load_run(path):
    saved = np.load(path)
    return saved["losses"], saved["evaluations"], {k[2:]: saved[k] for k in saved.files if k.startswith("w:")}


def _assert_same_run(a, b, rtol, atol, what):
    (losses_a, evals_a, weights_a), (losses_b, evals_b, weights_b) = a, b
    assert len(losses_a) == len(losses_b) == STEPS and len(evals_a) == len(evals_b) == STEPS // 10
    np.testing.assert_allclose(losses_a, losses_b, rtol=rtol, err_msg=f"{what}: training losses")
    np.testing.assert_allclose(evals_a, evals_b, rtol=rtol, err_msg=f"{what}: validation losses")
    for name in weights_a:
        np.testing.assert_allclose(weights_a[name], weights_b[name], rtol=rtol, atol=atol, err_msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The reference: one process, global batch 8 (two micro-batches), 30 steps."""
    trainer = _trainer(GLOBAL_BATCH, None)
    trainer.train()
    path = tmp_path_factory.mktemp("one") / "run.npz"
    _save_run(trainer, path)
    return _load_run(path)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """mpiexec -n 2: plain data parallel and ZeRO stage 1, batch 4 per process (one job)."""
    reason = _mpi_available()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("two")
    result = _mpiexec("equivalence", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


# ---------------------------------------------------------------------------- the tests
@needs_mpi
def test_two_processes_take_the_steps_of_one_process_with_twice_the_batch(one_process_run, two_process_runs):
    plain = _load_run(two_process_runs / "plain.npz")
    # float32 sums added in another order (two halves of each batch, then the all-reduce): measured
    # 1e-7 apart at most (losses and weights), so a tolerance 20 times wider still catches any bug
    _assert_same_run(plain, one_process_run, rtol=5e-6, atol=2e-6, what="2 processes vs 1")
    assert plain[0][-1] < plain[0][0]                                    # and it trained
    summary = json.loads((two_process_runs / "summary.json").read_text())
    assert summary["world_size"] == [2, 2] and summary["buckets"] > 2   # several buckets were used


@needs_mpi
def test_zero_stage_1_gives_the_weights_of_plain_data_parallel(two_process_runs):
    plain, zero = _load_run(two_process_runs / "plain.npz"), _load_run(two_process_runs / "zero.npz")
    _assert_same_run(zero, plain, rtol=5e-6, atol=2e-6, what="ZeRO vs plain")
    summary = json.loads((two_process_runs / "summary.json").read_text())
    # each rank keeps the moments of half of the parameters
    assert summary["zero_optimizer_bytes"] == [summary["adamw_bytes_padded"] // 2] * 2


@needs_mpi
def test_with_dropout_a_run_on_two_processes_is_reproducible(two_process_runs):
    a, b = np.load(two_process_runs / "dropout-a.npz"), np.load(two_process_runs / "dropout-b.npz")
    assert len(a["losses"]) == 5
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@needs_mpi
def test_weights_that_drift_apart_fail_loudly_on_every_rank(two_process_runs):
    for rank in (0, 1):
        said = (two_process_runs / f"checksum-{rank}.txt").read_text()
        assert "the weights differ between the ranks" in said and "rank(s) 1" in said


@needs_mpi
def test_a_run_resumes_with_another_number_of_processes(tmp_path, one_process_run):
    # one process to step 10 (a checkpoint), two processes under ZeRO from there to step 30
    first = _trainer(GLOBAL_BATCH, tmp_path / "run", max_steps=10)
    first.train()
    result = _mpiexec("resume", tmp_path / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    losses, evaluations, weights = _load_run(tmp_path / "run" / "resumed.npz")
    np.testing.assert_allclose(losses, one_process_run[0], rtol=5e-6)    # steps 1-10 from the history
    np.testing.assert_allclose(evaluations, one_process_run[1], rtol=5e-6)
    for name, value in weights.items():
        np.testing.assert_allclose(value, one_process_run[2][name], rtol=5e-6, atol=2e-6, err_msg=name)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records if r["split"] == "train"] == [1] * 10 + [2] * 20


CLI_RUN = ["--corpus", "CORPUS", "--vocab-size", "120", "--max-seq-length", "32", "--batch-size", "4",
           "--eval-batches", "1", "--no-progress", "--dupe-factor", "2"]


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join("\n".join(doc) for doc in _documents()) + "\n", encoding="utf-8")
    return str(path)


def _cli(corpus, root, *extra):
    return [*(corpus if w == "CORPUS" else w for w in CLI_RUN), "--output-root", str(root), *extra]


@needs_mpi
def test_ranks_started_with_other_options_stop_with_a_clear_error_on_every_rank(tmp_path, corpus_file):
    command = [sys.executable, "-m", "minibert.cli", "pretrain"]
    words = ["mpiexec", "-n", "1", *command, *_cli(corpus_file, tmp_path, "--steps", "2"), ":",
             "-n", "1", *command, *_cli(corpus_file, tmp_path, "--steps", "3")]
    started = time.monotonic()
    result = subprocess.run(words, capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode != 0
    for rank in (0, 1):
        assert (f"minibert pretrain: error (rank {rank} of 2): the ranks were not started alike: they differ "
                "from rank 0 in options on rank(s) 1") in result.stderr
    assert time.monotonic() - started < 60 and "Traceback" not in result.stderr


@needs_mpi
def test_a_run_folder_refused_on_rank_0_stops_every_rank_at_once(tmp_path, corpus_file):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "notes.txt").write_text("not a run")
    command = ["mpiexec", "-n", "2", sys.executable, "-m", "minibert.cli", "pretrain",
               *_cli(corpus_file, tmp_path, "--steps", "2")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 2, result.stdout + result.stderr       # a clean stop: no abort
    assert "error (rank 0 of 2): " in result.stderr and "holds files that are not a run's" in result.stderr
    assert "error (rank 1 of 2): rank 0 refused to start the run" in result.stderr
    assert (tmp_path / "pretrain" / "notes.txt").exists()


@needs_mpi
def test_an_exception_on_one_rank_stops_every_rank(tmp_path, corpus_file):
    started = time.monotonic()
    result = _mpiexec("fail", tmp_path, "error", *_cli(corpus_file, tmp_path, "--steps", "20", "--eval-every", "2"))
    assert result.returncode != 0
    assert "minibert pretrain: error (rank 1 of 2): a fault planted on rank 1 at step 3" in result.stderr
    assert time.monotonic() - started < 90                 # rank 0 did not wait for ever in the all-reduce
    assert os.path.isfile(tmp_path / "pretrain" / "checkpoint-2" / "model.safetensors")   # the last good one


@needs_mpi
def test_a_nan_on_one_rank_stops_every_rank_and_keeps_the_checkpoint(tmp_path, corpus_file):
    result = _mpiexec("fail", tmp_path, "nan", *_cli(corpus_file, tmp_path, "--steps", "20", "--eval-every", "2"))
    assert result.returncode == 2, result.stdout + result.stderr      # both stopped together: no abort
    for rank in (0, 1):
        assert f"minibert pretrain: error (rank {rank} of 2): step 3: loss nan" in result.stderr
    assert "checkpoint-2) was kept" in result.stderr
    from minibert.training import latest_checkpoint

    assert latest_checkpoint(str(tmp_path / "pretrain")).endswith("checkpoint-2")


def test_mpiexec_without_mpi4py_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None; from minibert.cli import main; "
            "sys.exit(main(['pretrain', '--steps', '1']))")
    env = {**os.environ, "PMI_SIZE": "2", "PMI_RANK": "0", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "started by an MPI launcher but mpi4py cannot be imported" in result.stderr
    assert "pip install 'minibert[distributed]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- one GPU (NCCL)
@needs_mpi
@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")
def test_a_one_rank_nccl_communicator_runs_every_collective():
    import cupy
    from mpi4py import MPI

    from minibert.distributed import MPICommunicator, NCCLCommunicator

    comm = NCCLCommunicator(MPICommunicator(MPI.COMM_SELF))
    x = cupy.arange(8, dtype=cupy.float32)
    expected = cupy.arange(8, dtype=cupy.float32)
    for result in (comm.all_reduce(x), comm.all_reduce(x, "mean"), comm.all_reduce(x, "max"), comm.broadcast(x),
                   comm.all_gather(x), comm.all_gather_in_place(x), comm.reduce_scatter(x, cupy.empty_like(x))):
        cupy.testing.assert_array_equal(result, expected)
    handle = comm.all_reduce_async(x[2:6])                     # a bucket: a view into a larger array
    handle.wait()
    cupy.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(comm.all_reduce(np.ones(3)), np.ones(3))     # host values go through MPI
    comm.barrier()


@needs_mpi
@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")
def test_a_cuda_run_on_one_nccl_rank_equals_the_plain_cuda_run(tmp_path):
    plain = _trainer(GLOBAL_BATCH, None, max_steps=10, device="cuda")
    plain.train()
    result = _mpiexec("cuda", tmp_path, processes=1)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("nccl", "nccl-zero"):                 # ZeRO: the flat buffers, reduce-scatter, all-gather
        losses, _, weights = _load_run(tmp_path / f"{name}.npz")
        np.testing.assert_allclose(losses, _losses(plain.history), rtol=1e-5, err_msg=name)
        for key, value in _weights(plain.model).items():
            np.testing.assert_allclose(weights[key], value, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}")


# ---------------------------------------------------------------------------- one process
def test_a_global_batch_that_does_not_divide_is_refused():
    batch = {"input_ids": np.zeros((5, 8)), "attention_mask": np.ones((5, 8))}
    with pytest.raises(ValueError, match="a global batch of 5 sequences does not divide among 2 processes"):
        shard_rows(batch, 0, 2)
    halves = [shard_rows(batch, r, 2, exact=False)["input_ids"].shape[0] for r in (0, 1)]
    assert halves == [2, 3]                                    # evaluation: split as evenly as it goes
    assert shard_rows(batch, 0, 1) is batch


def test_gradients_are_grouped_in_the_order_backward_finishes_them():
    names = ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
             "bert.encoder.layer.1.output.dense.bias", "bert.pooler.dense.weight", "cls.predictions.bias",
             "bert.embeddings.LayerNorm.weight"]
    assert backward_groups(names) == [
        ("first", ["bert.pooler.dense.weight", "cls.predictions.bias"]),
        (1, ["bert.encoder.layer.1.output.dense.bias"]),
        (0, ["bert.encoder.layer.0.attention.self.query.weight"]),
        ("last", ["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight"])]


def test_one_process_collectives_give_back_their_input():
    comm = Communicator()
    x = np.arange(6, dtype=np.float32)
    assert comm.all_reduce(x) is x and comm.broadcast(x) is x
    out = np.empty(6, dtype=np.float32)
    comm.reduce_scatter(x, out)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(comm.all_gather(x), x)
    comm.all_reduce_async(x).wait()
    with pytest.raises(ValueError, match="op must be one of"):
        comm.all_reduce(x, "product")
    check_same_everywhere(comm, {"anything": "at all"})            # alone: nothing to compare
    assert distributed.world() is distributed.world()          # made once per process


def test_zero_in_one_process_equals_plain_adamw():
    plain, zero = _trainer(GLOBAL_BATCH, None, max_steps=6), _trainer(GLOBAL_BATCH, None, max_steps=6, zero=1)
    plain.train()
    zero.train()
    assert isinstance(zero.data_parallel, DataParallel) and zero.data_parallel.zero == 1
    np.testing.assert_allclose(_losses(zero.history), _losses(plain.history), rtol=1e-6)
    for name, value in _weights(plain.model).items():
        np.testing.assert_allclose(_weights(zero.model)[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    # the gathered optimizer state has AdamW's layout: plain AdamW loads it
    state = zero.optimizer.state_dict()
    plain.optimizer.load_state_dict(state)
    assert set(state) == set(plain.optimizer.state_dict())


def test_bad_data_parallel_settings_are_refused():
    from minibert.training import TrainingArguments

    with pytest.raises(ValueError, match="zero must be 0"):
        TrainingArguments(output_dir=None, checkpoints=False, zero=2)
    with pytest.raises(ValueError, match="check_weights_every must be a positive integer"):
        TrainingArguments(output_dir=None, checkpoints=False, check_weights_every=0)


# ---------------------------------------------------------------------------- the scenarios
def _scenario_equivalence(out):
    """Plain data parallel and ZeRO-1 on 2 ranks, then a planted weight difference."""
    from minibert.distributed import check_same_weights, world

    comm = world()
    summary = {}
    for name, zero in (("plain", 0), ("zero", 1)):
        trainer = _trainer(GLOBAL_BATCH // comm.size, None, comm, zero=zero, check_weights_every=10)
        trainer.train()
        if comm.is_main:
            _save_run(trainer, os.path.join(out, f"{name}.npz"))
        summary.setdefault("world_size", []).append(trainer.history[0]["world_size"])
        if zero:
            summary["zero_optimizer_bytes"] = comm.all_gather(
                np.array([trainer.optimizer.memory_bytes()])).tolist()
            summary["adamw_bytes_padded"] = 2 * trainer.data_parallel.flat.nbytes
        else:
            summary["buckets"] = len(trainer.data_parallel.buckets)
    for run in ("dropout-a", "dropout-b"):      # dropout on: the same run twice
        trainer = _trainer(GLOBAL_BATCH // comm.size, None, comm, max_steps=5, dropout=0.1)
        trainer.train()
        if comm.is_main:
            _save_run(trainer, os.path.join(out, f"{run}.npz"))
    if comm.rank == 1:                          # one rank's weights drift: the check must catch it
        next(iter(trainer.model.named_parameters()))[1].data[0, 0] += 1e-3
    try:
        check_same_weights(comm, trainer.model.named_parameters(), step=STEPS)
        said = "no error"
    except RuntimeError as error:
        said = str(error)
    with open(os.path.join(out, f"checksum-{comm.rank}.txt"), "w") as f:
        f.write(said)
    if comm.is_main:
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f)


def _scenario_resume(run_dir):
    from minibert.distributed import world

    comm = world()
    trainer = _trainer(GLOBAL_BATCH // comm.size, run_dir, comm, zero=1)
    trainer.train(resume_from=run_dir)
    if comm.is_main:
        _save_run(trainer, os.path.join(run_dir, "resumed.npz"))


def _scenario_cuda(out):
    """One rank on the GPU: NCCL, plain and ZeRO-1, 10 steps."""
    from minibert.distributed import select_local_gpu, world

    select_local_gpu()
    comm = world("cuda")
    for name, zero in (("nccl", 0), ("nccl-zero", 1)):
        trainer = _trainer(GLOBAL_BATCH, None, comm, max_steps=10, device="cuda", zero=zero)
        trainer.train()
        _save_run(trainer, os.path.join(out, f"{name}.npz"))


def _scenario_fail(root, fault, *cli_words):
    """``minibert pretrain`` with a fault planted on rank 1 at step 3: an exception or a NaN loss."""
    from minibert import cli
    from minibert.distributed import world
    from minibert.training import PretrainingTask

    cli.ERROR_HANDSHAKE_SECONDS = 3.0
    comm = world()
    calls = {"n": 0}
    forward_backward = PretrainingTask.forward_backward

    def planted(self, model, batch, weights):
        values = forward_backward(self, model, batch, weights)
        calls["n"] += 1
        if comm.rank == 1 and calls["n"] >= 3:         # one micro-batch a step: the third step
            if fault == "error":
                raise RuntimeError("a fault planted on rank 1 at step 3")
            values = {name: float("nan") for name in values}
        return values

    PretrainingTask.forward_backward = planted
    sys.exit(cli.main(["pretrain", *cli_words]))


if __name__ == "__main__":
    scenario, target, *rest = sys.argv[1:]
    if scenario == "fail":
        _scenario_fail(target, rest[0], *rest[1:])
    else:
        {"equivalence": _scenario_equivalence, "resume": _scenario_resume, "cuda": _scenario_cuda}[scenario](target)
