"""The query text tower: ONNX Runtime and eager give the same float32 embeddings, and say what they cut."""

from __future__ import annotations

import numpy as np

from autotune.models.text import TextEncoder


def test_onnx_and_eager_agree_and_flag_long_queries(tiny_model: str) -> None:
    texts = ["a photo of Felis catus", "a red rocket", " ".join(["a small striped cat"] * 30)]
    onnx, eager = TextEncoder(tiny_model), TextEncoder(tiny_model, runtime="eager")
    assert onnx.runtime == "onnx" and eager.runtime == "eager"
    a, cut_a = onnx.encode(texts)
    b, cut_b = eager.encode(texts)
    assert a.dtype == np.float32 and a.shape == (3, onnx.embed_dim)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert cut_a == cut_b == [False, False, True]
    # One text alone embeds as it does in a batch (padding is masked out).
    np.testing.assert_allclose(onnx.encode(texts[:1])[0][0], a[0], rtol=0, atol=1e-5)
    assert onnx.encode([])[0].shape == (0, onnx.embed_dim)
