"""Resolution: the resizing wrapper and its counted cost."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from tridim import with_resolution
from tridim.cost.macs import count_macs
from tridim.prune.resolution import ResolutionWrapper, reduced_size
from tridim.training.data import resize_batch
from tridim.training.models import build


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return build("resnet20", 10, 1).eval()


def test_reduced_size_rounds_to_whole_pixels():
    assert reduced_size(0.75, (1, 28, 28)) == (21, 21)
    assert reduced_size(0.5, (3, 15, 20)) == (8, 10)  # 7.5 rounds up
    assert reduced_size(1.0, (1, 28, 28)) == (28, 28)
    assert reduced_size(0.01, (1, 28, 28)) == (1, 1)


@pytest.mark.parametrize("r", [0.5, 0.75, 0.875])
def test_macs_scale_with_r_squared(resnet20, r):
    size = (1, 32, 32)
    wrapped = with_resolution(resnet20, r, size)
    ratio = count_macs(wrapped, size) / count_macs(resnet20, size)
    assert ratio == pytest.approx(r * r, rel=0.01)


def test_output_matches_data_side_resize(resnet20):
    x = torch.randn(4, 1, 32, 32)
    wrapped = with_resolution(resnet20, 0.75, (1, 32, 32))
    assert wrapped.size == (24, 24) and wrapped.r == pytest.approx(0.75)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), resnet20(resize_batch(x, 24)), atol=1e-6)


def test_full_resolution_and_small_inputs_pass_through(resnet20):
    x = torch.randn(2, 1, 16, 16)
    full = with_resolution(resnet20, 1.0, (1, 16, 16))
    small = with_resolution(resnet20, 0.5, (1, 32, 32), expect_small_inputs=True)
    assert not full.resizes and not small.resizes
    with torch.no_grad():
        assert torch.equal(full(x), resnet20(x))
        assert torch.equal(small(x), resnet20(x))


def test_rewrapping_replaces_the_resolution(resnet20):
    once = with_resolution(resnet20, 0.5, (1, 32, 32))
    twice = with_resolution(once, 0.75, (1, 32, 32))
    assert isinstance(twice, ResolutionWrapper) and twice.model is resnet20
    assert twice.size == (24, 24)


def test_gradients_flow_through_the_resize(resnet20):
    wrapped = with_resolution(build("resnet20", 10, 1), 0.5, (1, 16, 16))
    wrapped(torch.randn(3, 1, 16, 16)).sum().backward()
    assert wrapped.model.conv1.weight.grad is not None


def test_onnx_export_without_antialias(resnet20):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    wrapped = with_resolution(resnet20, 0.5, (1, 16, 16), antialias=False)
    assert not wrapped.training
    x = torch.randn(1, 1, 16, 16)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapped, (x,), buffer, dynamo=False, input_names=["x"])
    session = onnxruntime.InferenceSession(buffer.getvalue())
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnx_out), wrapped.eval()(x), atol=1e-4)


@pytest.mark.parametrize("r", [0, -0.5, 1.01, "half", None])
def test_bad_ratio(resnet20, r):
    with pytest.raises(ValueError, match="r must"):
        with_resolution(resnet20, r, (1, 16, 16))


def test_bad_input_size(resnet20):
    with pytest.raises(ValueError, match="input_size"):
        with_resolution(resnet20, 0.5, (16, 16))
    with pytest.raises(TypeError):
        ResolutionWrapper("not a model", (8, 8), (1, 16, 16))
