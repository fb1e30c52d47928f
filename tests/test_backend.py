"""The CPU side of the backend: elementwise work split over the cores gives the same numbers."""

import threading

import numpy as np
import pytest
from scipy.special import erf as scipy_erf

from minibert import backend
from minibert.embeddings import gelu_inplace


def test_erf_split_over_the_cores_equals_one_call(rng):
    x = rng.standard_normal(((1 << 16) + 3, 5)).astype(np.float32) * 3   # above the split size
    y = backend.erf(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, scipy_erf(x))


def test_threaded_gelu_equals_the_one_thread_gelu(rng):
    x = rng.standard_normal((300, 1000)).astype(np.float32) * 4      # several GELU chunks
    threaded, single = x.copy(), x.copy()
    gelu_inplace(threaded, threaded=True)
    gelu_inplace(single, threaded=False)
    np.testing.assert_array_equal(threaded, single)


def test_cpu_pool_is_made_once_when_first_asked_for_from_many_threads(monkeypatch):
    monkeypatch.setattr(backend, "_cpu_pool", None)
    start = threading.Barrier(8)
    pools = []

    def ask():
        start.wait()
        pools.append(backend.cpu_pool())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = backend._cpu_pool
    try:
        assert len(pools) == 8 and all(p is made for p in pools)
        assert made._max_workers == backend.available_cores() >= 1
    finally:
        made.shutdown()


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_default_embedding_workers_follow_the_available_cores(monkeypatch, cores):
    from minibert import embeddings

    monkeypatch.setattr(embeddings, "available_cores", lambda: cores)
    assert embeddings.default_workers() == min(4, cores)
    assert embeddings.default_workers("cuda") == 1
