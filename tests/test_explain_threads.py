"""Issue 20: Grad-CAM from several threads on one model, beside a concurrent classify on the torch backend."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import multihead
from multihead.inference.config import InferenceConfig


def test_explain_from_two_threads_beside_classify(tiny_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (72, 80, 3), dtype=np.uint8) for _ in range(4)]
    expected = [multihead.explain(image, tiny_model) for image in images]
    config = InferenceConfig(backend="torch", batch_size=4)

    def explain_all(_: int) -> list:
        return [multihead.explain(image, tiny_model) for image in images * 2]

    def classify_all(_: int) -> list:
        return [p for _ in range(6) for p in multihead.classify(images, tiny_model, config=config)]

    with ThreadPoolExecutor(3) as pool:
        explaining = [pool.submit(explain_all, i) for i in range(2)]
        classifying = pool.submit(classify_all, 0)
        results = [future.result() for future in explaining]  # raised "... not used in the graph" before
        predictions = classifying.result()
    for run in results:
        for got, want in zip(run, expected * 2):
            assert got.prediction.subtype == want.prediction.subtype
            np.testing.assert_allclose(got.organ_map, want.organ_map, atol=1e-5)
            np.testing.assert_allclose(got.subtype_map, want.subtype_map, atol=1e-5)
    assert [p.subtype for p in predictions[:4]] == [e.prediction.subtype for e in expected]

