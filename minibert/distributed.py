"""Data-parallel training across processes: MPI (mpi4py) for NumPy arrays, NCCL for CuPy arrays.

``mpiexec -n N minibert pretrain`` starts N processes (ranks). Each holds the whole model and
computes the gradient of its share of the global batch; the gradients are summed across the
ranks before every update, so every rank makes the same update and keeps the same weights::

    every rank reads the same global batch of N*b examples (and masks it with the shared seed)
    rank r keeps rows [r*b, (r+1)*b)
    forward + backward of its rows, each loss weighted by n_r / n     (n: the global item count)
    gradients SUM-all-reduced  ->  sum_r (n_r / n) * grad(mean loss of rank r's items)
                                =  grad(mean loss over the whole global batch), on every rank
    clip, AdamW step                                                   (the same on every rank)

so N processes with batch b follow one process with batch N*b, up to the order in which
float32 sums are added.

The communicators (one interface; :func:`world` picks one from the launcher and the device):

    Communicator       one process: every collective gives back its input (the default)
    MPICommunicator    ranks started by an MPI launcher; NumPy buffers through mpi4py's
                       buffer calls (the upper-case ones: nothing is pickled)
    NCCLCommunicator   one GPU per rank: CuPy arrays through NCCL, NumPy arrays through MPI;
                       the NCCL id is made on rank 0 and broadcast over MPI

:class:`DataParallel` keeps the model's gradients in one flat array cut into buckets, in
the order backward finishes them, and starts each bucket's all-reduce as soon as backward
has filled it, so communication overlaps the rest of backward. With ``zero=1`` (ZeRO stage
1) the gradient is reduce-scattered instead, each rank updates its slice of the parameters
with its slice of AdamW's moments (:class:`ZeroAdamW`), and the slices are all-gathered.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time

import numpy as np

from .backend import get_array_module, to_numpy
from .nn import Parameter
from .optim import DEFAULT_NO_DECAY, clip_grad_norm
from .registry import implementation

# Environment variables set by MPI launchers (MPICH's Hydra, Open MPI, PMIx, Slurm's PMI):
# any of them means this process is one rank of a job that mpiexec started.
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
INSTALL_HINT = "pip install 'minibert[distributed]' (mpi4py and an MPI runtime)"
BUCKET_BYTES = 25 * 2 ** 20         # gradient bucket size: large enough for full-speed transfers
NCCL_ID_BYTES = 128                 # sizeof(ncclUniqueId)
_REDUCTIONS = ("sum", "mean", "max", "min")


def launched_by_mpi() -> bool:
    """True when an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def _check_op(op: str) -> None:
    if op not in _REDUCTIONS:
        raise ValueError(f"op must be one of {_REDUCTIONS}, got {op!r}")


class Done:
    """The handle of a collective that has already finished."""

    def test(self) -> bool:
        return True

    def wait(self) -> None:
        pass


# ---------------------------------------------------------------------------- one process
class Communicator:
    """One process: rank 0 of a world of 1, where every collective gives back its input.

    The interface of every communicator. Collectives work in place on contiguous arrays and
    return them; every rank must call the same collectives in the same order.
    """

    rank = 0
    size = 1
    backend = "none"

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, draws progress bars and writes the files."""
        return self.rank == 0

    def all_reduce(self, array, op: str = "sum"):
        """``array`` becomes the element-wise ``op`` ("sum", "mean", "max", "min") over the ranks."""
        _check_op(op)
        return array

    def all_reduce_async(self, array):
        """Start a SUM all-reduce of ``array`` in place; returns a handle: ``handle.wait()``
        before reading ``array`` (and do not write to it until then)."""
        return Done()

    def broadcast(self, array, root: int = 0):
        """``array`` becomes rank ``root``'s."""
        return array

    def reduce_scatter(self, array, out):
        """``array`` (N*k elements) is summed over the ranks; rank r receives part r, elements
        [r*k, (r+1)*k), in ``out`` (k elements)."""
        out[...] = array.reshape(out.shape)
        return out

    def all_gather(self, part, out=None):
        """``out`` (N*k elements) becomes the ranks' ``part`` (k elements each), in rank order."""
        if out is None:
            out = get_array_module(part).empty(part.size * self.size, dtype=part.dtype)
        out[...] = part.reshape(out.shape)
        return out

    def all_gather_in_place(self, buffer):
        """``buffer`` holds N parts of k elements; part r is rank r's: every rank receives them all."""
        return buffer

    def barrier(self) -> None:
        """Wait until every rank has reached this call."""

    def abort(self, code: int = 1) -> None:
        """Stop every rank at once (a rank that cannot go on must not leave the others waiting)."""
        raise SystemExit(code)

    def all_stopped_together(self, timeout: float) -> bool:
        """After an error: True when every rank reaches this call within ``timeout`` seconds
        (they all failed at the same point, and may exit normally); False otherwise."""
        return True


# ---------------------------------------------------------------------------- MPI
def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(f"this process was started by an MPI launcher but mpi4py cannot be imported "
                           f"({exc}): {INSTALL_HINT}") from None
    return MPI


def _contiguous(array, what: str = "array"):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"the MPI communicator takes NumPy arrays, got {type(array).__name__} as {what}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous to be sent without a copy")
    return array


class MPIRequest:
    """The handle of a non-blocking MPI collective."""

    def __init__(self, request):
        self.request = request

    def test(self) -> bool:
        """Let MPI move the transfer on; True once it is complete."""
        return bool(self.request.Test())

    def wait(self) -> None:
        self.request.Wait()


class MPICommunicator(Communicator):
    """The ranks of an MPI job; NumPy arrays go through mpi4py's buffer calls (never pickled)."""

    backend = "mpi"

    def __init__(self, comm=None):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.ops = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        # a communicator of its own for the end-of-run handshake, so that it can never be
        # matched with a collective that another rank is still waiting in
        self._error_comm = self.comm.Dup()

    def all_reduce(self, array, op="sum"):
        _check_op(op)
        self.comm.Allreduce(self.MPI.IN_PLACE, _contiguous(array), op=self.ops[op])
        if op == "mean":
            array /= self.size
        return array

    def all_reduce_async(self, array):
        return MPIRequest(self.comm.Iallreduce(self.MPI.IN_PLACE, _contiguous(array), op=self.MPI.SUM))

    def broadcast(self, array, root=0):
        self.comm.Bcast(_contiguous(array), root=root)
        return array

    def reduce_scatter(self, array, out):
        self.comm.Reduce_scatter_block(_contiguous(array), _contiguous(out, "out"), op=self.MPI.SUM)
        return out

    def all_gather(self, part, out=None):
        if out is None:
            out = np.empty(part.size * self.size, dtype=part.dtype)
        self.comm.Allgather(_contiguous(part, "part"), _contiguous(out, "out"))
        return out

    def all_gather_in_place(self, buffer):
        self.comm.Allgather(self.MPI.IN_PLACE, _contiguous(buffer, "buffer"))
        return buffer

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)

    def all_stopped_together(self, timeout):
        request = self._error_comm.Ibarrier()
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


# ---------------------------------------------------------------------------- NCCL
class NCCLRequest:
    """The handle of an NCCL collective running on the communication stream."""

    def __init__(self, done_event):
        self.done = done_event

    def test(self) -> bool:
        return bool(self.done.done)

    def wait(self) -> None:
        import cupy

        cupy.cuda.get_current_stream().wait_event(self.done)   # later work waits on the GPU, not the host


class NCCLCommunicator(Communicator):
    """One GPU per rank: CuPy arrays go through NCCL, NumPy arrays (counts, hashes) through MPI.

    Set-up as in llm.c: rank 0 makes the NCCL unique id, MPI broadcasts its 128 bytes, and
    every rank joins the NCCL communicator on its own GPU (select it first:
    :func:`select_local_gpu`). Blocking collectives run on the current stream, in order with
    the computation; :meth:`all_reduce_async` runs on a stream of its own that first waits for
    the work already queued, so backward goes on while the bucket travels.
    """

    backend = "nccl"

    def __init__(self, mpi: MPICommunicator):
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl, self.mpi = cupy, nccl, mpi
        self.rank, self.size = mpi.rank, mpi.size
        unique_id = np.zeros(NCCL_ID_BYTES, dtype=np.uint8)
        if mpi.rank == 0:
            made = nccl.get_unique_id()            # bytes, or (older CuPy) a tuple of 128 chars as ints
            unique_id[:] = [c & 0xFF for c in made]
        mpi.broadcast(unique_id)
        try:
            self.comm = nccl.NcclCommunicator(self.size, unique_id.tobytes(), self.rank)
        except TypeError:                          # older CuPy takes the id as a tuple of ints
            self.comm = nccl.NcclCommunicator(self.size, tuple(int(c) for c in unique_id.view(np.int8)),
                                              self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)      # the communication stream
        self.dtypes = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
                       np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8}
        self.ops = {"sum": nccl.NCCL_SUM, "mean": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}

    def _on_host(self, array) -> bool:
        return isinstance(array, np.ndarray)

    def _dtype(self, array):
        if not array.flags.c_contiguous:
            raise ValueError("arrays sent through NCCL must be C-contiguous")
        if array.dtype not in self.dtypes:
            raise TypeError(f"NCCL cannot send dtype {array.dtype}")
        return self.dtypes[array.dtype]

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def all_reduce(self, array, op="sum"):
        _check_op(op)
        if self._on_host(array):
            return self.mpi.all_reduce(array, op)
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._dtype(array), self.ops[op],
                            self._stream())
        if op == "mean":
            array /= self.size
        return array

    def all_reduce_async(self, array):
        if self._on_host(array):
            return self.mpi.all_reduce_async(array)
        ready = self.cupy.cuda.get_current_stream().record()      # backward has written the bucket
        self.stream.wait_event(ready)
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._dtype(array), self.nccl.NCCL_SUM,
                            self.stream.ptr)
        return NCCLRequest(self.stream.record())

    def broadcast(self, array, root=0):
        if self._on_host(array):
            return self.mpi.broadcast(array, root)
        self.comm.bcast(array.data.ptr, array.size, self._dtype(array), root, self._stream())
        return array

    def reduce_scatter(self, array, out):
        if self._on_host(array):
            return self.mpi.reduce_scatter(array, out)
        self.comm.reduceScatter(array.data.ptr, out.data.ptr, out.size, self._dtype(array), self.nccl.NCCL_SUM,
                                self._stream())
        return out

    def all_gather(self, part, out=None):
        if self._on_host(part):
            return self.mpi.all_gather(part, out)
        if out is None:
            out = self.cupy.empty(part.size * self.size, dtype=part.dtype)
        self.comm.allGather(part.data.ptr, out.data.ptr, part.size, self._dtype(part), self._stream())
        return out

    def all_gather_in_place(self, buffer):
        if self._on_host(buffer):
            return self.mpi.all_gather_in_place(buffer)
        part = buffer.size // self.size          # NCCL's in-place form: send from this rank's own part
        self.comm.allGather(buffer.data.ptr + self.rank * part * buffer.itemsize, buffer.data.ptr, part,
                            self._dtype(buffer), self._stream())
        return buffer

    def barrier(self):
        self.cupy.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def abort(self, code=1):
        self.comm.abort()
        self.mpi.abort(code)

    def all_stopped_together(self, timeout):
        return self.mpi.all_stopped_together(timeout)


# ---------------------------------------------------------------------------- choosing one
_WORLD = {}


def world(device: str = "cpu") -> Communicator:
    """The communicator of this process: one process unless an MPI launcher started it; under
    MPI, NCCL for ``device="cuda"`` and MPI otherwise. Made once per device and kept."""
    if device not in _WORLD:
        if not launched_by_mpi():
            _WORLD[device] = Communicator()
        elif device == "cuda":
            _WORLD[device] = NCCLCommunicator(world("cpu"))
        else:
            _WORLD[device] = MPICommunicator()
    return _WORLD[device]


def made_world() -> Communicator | None:
    """The communicator :func:`world` has made for this process (None if none yet)."""
    return _WORLD.get("cuda", _WORLD.get("cpu"))


def rank_label() -> str:
    """" (rank r of N)" in a job of several ranks, else "" (for error messages)."""
    comm = made_world()
    return f" (rank {comm.rank} of {comm.size})" if comm is not None and comm.size > 1 else ""


def local_rank() -> int:
    """This rank's number among the ranks of its own machine (to pick its GPU)."""
    comm = world("cpu")
    if comm.size == 1:
        return 0
    local = comm.comm.Split_type(comm.MPI.COMM_TYPE_SHARED, key=comm.rank)
    rank = local.Get_rank()
    local.Free()
    return rank


def select_local_gpu() -> int:
    """Under MPI, make GPU (local rank mod GPUs on this machine) the current one; returns its number."""
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if count == 0:
        raise RuntimeError("--device cuda: this machine has no CUDA GPU")
    number = local_rank() % count
    cupy.cuda.Device(number).use()
    return number


# ---------------------------------------------------------------------------- agreement checks
def _digest(value) -> np.ndarray:
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return np.frombuffer(hashlib.sha256(data).digest(), dtype=np.uint8)


def check_same_everywhere(comm: Communicator, values: dict) -> None:
    """Raise ValueError on every rank unless all ranks hold the same ``values``
    (``{what: bytes or str}``, e.g. the configuration, the vocabulary, the data).

    Each value is hashed (SHA-256) and the hashes are all-gathered, so every rank sees the
    same comparison and fails at the same point (no rank is left waiting).
    """
    if comm.size == 1:
        return
    names = list(values)
    mine = np.concatenate([_digest(values[name]) for name in names])            # (K*32,)
    everyone = comm.all_gather(mine).reshape(comm.size, len(names), 32)         # (N, K, 32)
    differing = [(name, [r for r in range(comm.size) if (everyone[r, k] != everyone[0, k]).any()])
                 for k, name in enumerate(names)]
    differing = [(name, ranks) for name, ranks in differing if ranks]
    if differing:
        said = "; ".join(f"{name} on rank(s) {', '.join(map(str, ranks))}" for name, ranks in differing)
        raise ValueError(f"the ranks were not started alike: they differ from rank 0 in {said} (start every "
                         "rank with the same command, files and package versions)")


def weight_checksums(named_parameters) -> np.ndarray:
    """(P, 2) float64: each parameter's sum and sum of squares, a cheap fingerprint of the weights."""
    sums = []
    for _, p in named_parameters:
        xp = get_array_module(p.data)
        flat = p.data.reshape(-1).astype(xp.float64)
        sums.append(xp.stack([flat.sum(), xp.vdot(flat, flat)]))
    return np.asarray(to_numpy(get_array_module(sums[0]).stack(sums)))


def check_same_weights(comm: Communicator, named_parameters, step: int) -> None:
    """Raise RuntimeError on every rank unless every rank holds bit-identical weight checksums."""
    if comm.size == 1:
        return
    named = list(named_parameters)
    mine = weight_checksums(named)                                               # (P, 2)
    everyone = comm.all_gather(mine.reshape(-1)).reshape(comm.size, *mine.shape)
    bad = np.nonzero((everyone != everyone[0]).any(axis=(0, 2)))[0]
    if bad.size:
        ranks = [r for r in range(comm.size) if (everyone[r] != everyone[0]).any()]
        raise RuntimeError(f"step {step}: the weights differ between the ranks ({named[bad[0]][0]} and "
                           f"{bad.size - 1} more parameters, on rank(s) {', '.join(map(str, ranks))} against "
                           "rank 0): the ranks no longer train the same model")


def broadcast_parameters(comm: Communicator, named_parameters, root: int = 0) -> None:
    """Every rank takes rank ``root``'s weights (at the start: all ranks begin from the same model)."""
    for _, p in named_parameters:
        if not p.data.flags.c_contiguous:
            p.data = get_array_module(p.data).ascontiguousarray(p.data)
        comm.broadcast(p.data, root)


def shard_rows(batch: dict, rank: int, size: int, exact: bool = True) -> dict:
    """Rank ``rank``'s rows of a batch held by every rank (``{name: (B, ...)}``).

    ``exact``: B must be a multiple of ``size`` and every rank gets B / size rows (training,
    where the ranks must add up to the global batch); otherwise the rows are split as evenly
    as they go (evaluation, where sums are gathered).
    """
    if size == 1:
        return batch
    rows = len(batch["attention_mask"])
    if exact and rows % size:
        raise ValueError(f"a global batch of {rows} sequences does not divide among {size} processes: "
                         f"use a batch size that is a multiple of {size}")
    lo, hi = rank * rows // size, (rank + 1) * rows // size
    return {name: value[lo:hi] for name, value in batch.items()}


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A seed for rank ``rank``'s dropout at ``step``: independent streams per (seed, rank, step),
    reproducible for a fixed number of ranks and across a resume."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


# ---------------------------------------------------------------------------- gradient buckets
_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def backward_groups(names: list) -> list:
    """The parameter names in the order backward finishes their gradients: a list of
    ``(key, names)`` groups, ``key`` being "first", a layer number or "last".

    Backward runs the heads and the pooler first, then the encoder layers from the top down,
    then the embeddings. The word embedding is tied to the masked-LM decoder, so it gets its
    last contribution at the very end, with the embeddings::

        ("first", heads and pooler), (L-1, layer L-1), ..., (0, layer 0), ("last", embeddings)
    """
    layers = sorted({int(m.group(1)) for m in map(_LAYER.search, names) if m})
    groups = {"first": [], **{layer: [] for layer in reversed(layers)}, "last": []}
    for name in names:
        found = _LAYER.search(name)
        if found:
            groups[int(found.group(1))].append(name)
        elif name.startswith("embeddings.") or ".embeddings." in name:
            groups["last"].append(name)
        else:
            groups["first"].append(name)
    return [(key, group) for key, group in groups.items() if group]


class DataParallel:
    """The gradients of a model summed over the ranks, before every update.

    The gradients live in one flat array (``param.grad`` are views into it), laid out in the
    order backward finishes them (:func:`backward_groups`) and cut into buckets of about
    ``bucket_bytes``. Backward tells when a layer is finished (the encoder's
    ``on_layer_backward`` hook calls :meth:`layer_finished`); a bucket whose last group is
    finished starts its all-reduce at once (``overlap=True``), while backward goes on below.
    :meth:`synchronize` starts the rest and waits for all.

    ``zero=1`` (ZeRO stage 1): :meth:`synchronize` reduce-scatters the flat gradient instead;
    rank r then holds the summed gradient of elements [r*S, (r+1)*S) (``shard``) and
    :class:`ZeroAdamW` updates that slice. The flat array is padded to a multiple of N.

    In one process without ZeRO nothing is laid out and every call is a no-op.
    """

    def __init__(self, comm: Communicator, model, bucket_bytes: int = BUCKET_BYTES, overlap: bool = True,
                 zero: int = 0):
        if zero not in (0, 1):
            raise ValueError(f"zero must be 0 (plain data parallel) or 1 (sharded optimizer state), got {zero!r}")
        if not (isinstance(bucket_bytes, int) and bucket_bytes > 0):
            raise ValueError(f"bucket_bytes must be a positive integer, got {bucket_bytes!r}")
        self.comm, self.model, self.zero = comm, model, zero
        self.named = list(model.named_parameters())
        self.active = comm.size > 1 or zero == 1
        self.overlap = overlap and zero == 0
        self.pending = []             # handles of the bucket all-reduces in flight
        self.armed = False            # the backward now running is the step's last one
        self.finished_groups = 0      # groups of the running backward whose gradients are final
        self.encoders = []            # the modules whose hook reports finished layers
        if not self.active:
            return
        for _, p in self.named:            # the optimizer updates flat views of the parameters
            if not p.data.flags.c_contiguous:
                p.data = get_array_module(p.data).ascontiguousarray(p.data)
        by_name = dict(self.named)
        ordered = backward_groups([name for name, _ in self.named])
        self.groups = [[(name, by_name[name]) for name in group] for _, group in ordered]
        # encoder layer -> the number of groups final once its backward is done
        self.groups_final_after = {key: g + 1 for g, (key, _) in enumerate(ordered) if isinstance(key, int)}
        xp = get_array_module(self.named[0][1].data)
        dtype = self.named[0][1].grad.dtype
        total = sum(p.data.size for _, p in self.named)
        self.shard_size = -(-total // comm.size)                      # S = ceil(total / N)
        self.flat = xp.zeros(self.shard_size * comm.size, dtype=dtype)  # (N*S,) the flat gradient
        # ZeRO: this rank's slice [r*S, (r+1)*S) of the summed flat gradient, and a parameter
        # standing for it (for the loss scaler, which reads .grad)
        self.shard = xp.zeros(self.shard_size, dtype=dtype) if zero else None
        if zero:
            self.shard_parameter = Parameter(xp.zeros(0, dtype=dtype))
            self.shard_parameter.grad = self.shard
        self.ranges = {}              # name -> (lo, hi) in the flat layout
        self.views = {}               # name -> the view of the flat array that is param.grad
        self.buckets = []             # (lo, hi, index of the bucket's last group)
        offset, bucket_start = 0, 0
        for g, group in enumerate(self.groups):
            for name, p in group:
                view = self.flat[offset: offset + p.data.size].reshape(p.data.shape)
                view[...] = p.grad
                p.grad = self.views[name] = view
                self.ranges[name] = (offset, offset + p.data.size)
                offset += p.data.size
            if (offset - bucket_start) * self.flat.itemsize >= bucket_bytes or g == len(self.groups) - 1:
                self.buckets.append((bucket_start, offset, g))
                bucket_start = offset
        self.next_bucket = 0
        if self.overlap and comm.size > 1:
            # the encoders report each finished layer (a no-op hook unless set)
            self.encoders = [m for _, m in model.named_modules() if hasattr(m, "on_layer_backward")]
            for encoder in self.encoders:
                encoder.on_layer_backward = self.layer_finished

    # ------------------------------------------------------------------ backward
    def begin_backward(self, last: bool) -> None:
        """Called before each micro-batch's backward; ``last``: the step's final micro-batch,
        whose backward makes the gradients final (earlier ones only add to them)."""
        self.armed = last and self.overlap and self.comm.size > 1
        self.finished_groups = 0

    def layer_finished(self, layer: int) -> None:
        """The hook: encoder layer ``layer`` has its gradients (and so has everything above it)."""
        if not self.armed:
            return
        self.finished_groups = max(self.finished_groups, self.groups_final_after.get(layer, 0))
        self._start_ready_buckets(self.finished_groups)
        for handle in self.pending:
            handle.test()           # let MPI move the transfers on while this process computes

    def _start_ready_buckets(self, finished_groups: int) -> None:
        while self.next_bucket < len(self.buckets) and self.buckets[self.next_bucket][2] < finished_groups:
            lo, hi, last_group = self.buckets[self.next_bucket]
            self._rebind_group_views(last_group)
            self.pending.append(self.comm.all_reduce_async(self.flat[lo:hi]))
            self.next_bucket += 1

    def _rebind_group_views(self, up_to_group: int) -> None:
        """Make sure every ``param.grad`` is still its view of the flat array (code that
        replaced a ``.grad`` array loses nothing: its values are copied in)."""
        for group in self.groups[: up_to_group + 1]:
            for name, p in group:
                view = self.views[name]
                if p.grad is not view:
                    view[...] = p.grad
                    p.grad = view

    def synchronize(self) -> None:
        """After the step's backward: every rank's gradients summed (ZeRO: this rank's slice)."""
        if not self.active:
            return
        if self.zero:
            self._rebind_group_views(len(self.groups) - 1)
            self.comm.reduce_scatter(self.flat, self.shard)
        else:
            self._start_ready_buckets(len(self.groups))
            for handle in self.pending:
                handle.wait()
        self.pending, self.next_bucket, self.armed = [], 0, False

    # ------------------------------------------------------------------ after synchronizing
    def owned_gradients(self) -> list:
        """(name, Parameter) pairs whose ``.grad`` hold summed gradients on this rank: every
        parameter, or under ZeRO one parameter standing for this rank's slice."""
        if not self.zero:
            return self.named
        return [("gradient slice", self.shard_parameter)]

    def everywhere(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (ZeRO: each rank judged its own slice)."""
        if not self.zero or self.comm.size == 1:
            return flag
        return bool(self.comm.all_reduce(np.array([0.0 if flag else 1.0]), "max")[0] == 0.0)

    def clip_grad_norm(self, max_norm):
        """The global gradient norm; the gradients scaled down to ``max_norm`` when above it
        (None: only the norm). Under ZeRO the squares of the slices are summed over the ranks."""
        if not self.zero:
            if max_norm is not None:
                return clip_grad_norm(self.named, max_norm)
            return math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for _, p in self.named))
        xp = get_array_module(self.shard)
        squares = np.array([float(xp.vdot(self.shard, self.shard).astype(xp.float64))])
        total = math.sqrt(float(self.comm.all_reduce(squares)[0]))
        if max_norm is not None and math.isfinite(total) and total > max_norm:
            self.shard *= max_norm / (total + 1e-6)
        return total

    def zero_grad(self) -> None:
        if self.active:
            self.flat.fill(0)

    def close(self) -> None:
        """Take the hooks off the encoders (the model trains alone again)."""
        for encoder in self.encoders:
            encoder.on_layer_backward = None


# ---------------------------------------------------------------------------- ZeRO stage 1
class ZeroAdamW:
    """AdamW with its moments sharded over the ranks (ZeRO stage 1).

    Rank r keeps m and v for elements [r*S, (r+1)*S) of the flat parameter layout of
    :class:`DataParallel` only (1/N of the optimizer memory), updates those elements of the
    parameters from its slice of the summed gradient with the AdamW rule of
    ``minibert/ops/adamw.py`` (a parameter's weight decay applied to its own elements), then
    the ranks all-gather the updated slices so that every rank holds all the new weights.
    The update is element-wise, so this equals plain data parallel's.

    ``state_dict`` gathers the full moments (the layout of :class:`minibert.optim.AdamW`), so
    a checkpoint resumes with any number of ranks, with or without ZeRO.
    """

    buffer_names = ("m", "v")

    def __init__(self, data_parallel: DataParallel, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 bias_correction=True, no_decay=DEFAULT_NO_DECAY):
        if not data_parallel.zero:
            raise ValueError("ZeroAdamW needs a DataParallel made with zero=1")
        self.dp = data_parallel
        self.lr, self.betas, self.eps = float(lr), tuple(betas), float(eps)
        self.weight_decay, self.bias_correction = float(weight_decay), bool(bias_correction)
        self.no_decay = tuple(no_decay)
        self.step_count = 0
        comm, size = data_parallel.comm, data_parallel.shard_size
        lo, hi = comm.rank * size, (comm.rank + 1) * size               # this rank's elements
        # (name, param, first and last element in the parameter, first element in the slice)
        self.segments = []
        for name, p in data_parallel.named:
            a, b = data_parallel.ranges[name]
            start, stop = max(a, lo), min(b, hi)
            if start < stop:
                self.segments.append((name, p, start - a, stop - a, start - lo))
        xp = get_array_module(data_parallel.flat)
        dtype = data_parallel.named[0][1].data.dtype
        self.m = xp.zeros(size, dtype=dtype)                           # (S,) this rank's moments
        self.v = xp.zeros(size, dtype=dtype)
        largest = max((b - a for _, _, a, b, _ in self.segments), default=0)
        self.scratch = xp.empty(largest, dtype=dtype)                  # the update's one temporary

    def _decays(self, name: str) -> bool:
        return not any(pattern in name for pattern in self.no_decay)

    def memory_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (m and v; the update's temporary aside)."""
        return int(self.m.nbytes + self.v.nbytes)

    def zero_grad(self) -> None:
        self.dp.zero_grad()

    def step(self) -> None:
        """Update this rank's elements, then all-gather every rank's.

        The flat gradient array, no longer needed once the slice is summed, carries the new
        weights: rank r writes its part, the all-gather fills in the others', and every
        parameter is copied out (the gradients are zeroed after the step anyway).
        """
        self.step_count += 1
        grad, flat, lo = self.dp.shard, self.dp.flat, self.dp.comm.rank * self.dp.shard_size
        for name, p, a, b, s in self.segments:
            n = b - a
            update, _ = implementation("adamw_update", p.data)
            update(p.data.reshape(-1)[a:b], grad[s: s + n], self.m[s: s + n], self.v[s: s + n], lr=self.lr,
                   betas=self.betas, eps=self.eps, weight_decay=self.weight_decay if self._decays(name) else 0.0,
                   step=self.step_count, bias_correction=self.bias_correction, scratch=self.scratch[:n])
            flat[lo + s: lo + s + n] = p.data.reshape(-1)[a:b]
        self.dp.comm.all_gather_in_place(flat)
        for name, p in self.dp.named:
            first, last = self.dp.ranges[name]
            p.data.reshape(-1)[...] = flat[first:last]
        flat.fill(0)

    def _gather(self, part):
        return to_numpy(self.dp.comm.all_gather(part))

    def state_dict(self) -> dict:
        """The full state (every rank must call it: the moments are all-gathered)."""
        state = {"optimizer": "AdamW", "step": self.step_count, "lr": self.lr}
        for buffer_name, part in (("m", self.m), ("v", self.v)):
            full = self._gather(part)
            for name, p in self.dp.named:
                lo, hi = self.dp.ranges[name]
                state[f"{buffer_name}.{name}"] = np.array(full[lo:hi].reshape(p.data.shape), copy=True)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Take this rank's slice of a full AdamW state (saved with any number of ranks)."""
        kind = state.get("optimizer", "AdamW")
        if kind != "AdamW":
            raise ValueError(f"this is a {kind} state, not an AdamW state")
        missing = [f"{b}.{name}" for name, _ in self.dp.named for b in self.buffer_names
                   if f"{b}.{name}" not in state]
        if missing:
            raise KeyError(f"optimizer state is missing {len(missing)} buffers, e.g. {missing[:3]} "
                           "(was it saved for a different model?)")
        xp = get_array_module(self.m)
        for buffer_name, part in (("m", self.m), ("v", self.v)):
            for name, p, a, b, s in self.segments:
                saved = state[f"{buffer_name}.{name}"]
                if tuple(saved.shape) != tuple(p.data.shape):
                    raise ValueError(f"optimizer buffer {buffer_name}.{name} has shape {tuple(saved.shape)}, "
                                     f"expected {tuple(p.data.shape)}")
                part[s: s + b - a] = xp.asarray(np.asarray(saved).reshape(-1)[a:b], dtype=part.dtype)
        self.step_count = int(state["step"])
        if "lr" in state:
            self.lr = float(state["lr"])
