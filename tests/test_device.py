"""Devices, precision and data sharding: what runs here on CPU, and the GPU path where one exists."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomise_batchnorm

from tridim.cli import main
from tridim.cost.macs import count_macs, measure_latency
from tridim.training import models
from tridim.training.data import make_loader
from tridim.training.device import Execution, model_device, resolve_device
from tridim.training.train import evaluate, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_device_strings_are_checked_with_the_way_out():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError, match=r"cuda:0 is not available here \(this machine has: cpu"
        ):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        Execution.of("cpu", "fp8")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32(tiny, precision):
    runs = {}
    for name in ("fp32", precision):
        torch.manual_seed(0)
        model = models.build("resnet20", 10, 1)
        history = train(model, tiny, 3, quiet=True, precision=name, evaluate_each_epoch=False)
        accuracy = evaluate(model, tiny.loader("val", 256), precision=name)
        runs[name] = (history.epochs[-1]["loss"], accuracy, model)
    (loss, accuracy, _), (mixed_loss, mixed_accuracy, mixed) = runs["fp32"], runs[precision]
    assert mixed_loss < history.epochs[0]["loss"]  # it learns
    assert abs(mixed_loss - loss) < 0.25 and abs(mixed_accuracy - accuracy) < 0.1
    # autocast never changes the stored weights' dtype
    assert all(p.dtype == torch.float32 for p in mixed.parameters())


def test_channels_last_trains_like_contiguous(tiny):
    torch.manual_seed(0)
    plain = models.build("resnet20", 10, 1)
    nhwc = copy.deepcopy(plain)
    first = train(plain, tiny, 1, max_steps=1, quiet=True, evaluate_each_epoch=False)
    second = train(
        nhwc, tiny, 1, max_steps=1, quiet=True, evaluate_each_epoch=False, channels_last=True
    )
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # the same first step: other kernels, the same loss to float precision
    assert first.epochs[0]["loss"] == pytest.approx(second.epochs[0]["loss"], rel=1e-5)


def test_latency_records_where_it_was_measured():
    model = models.build("resnet20", 10, 1)
    timing = measure_latency(model, (1, 16, 16), 2, repeats=3, warmup=1, device="cpu")
    assert timing["device"] == "cpu" and timing["precision"] == "fp32"
    assert timing["median_ms"] > 0


def test_shards_split_every_epoch_evenly():
    from torch.utils.data import TensorDataset

    dataset = TensorDataset(torch.zeros(101, 1, 2, 2), torch.arange(101))  # label = index
    world = 2
    shards = [
        [labels for _, labels in make_loader(dataset, 16, shuffle=True, seed=3, shard=(r, world))]
        for r in range(world)
    ]
    assert len(shards[0]) == len(shards[1])  # every rank takes as many steps
    taken = [set(torch.cat(shard).tolist()) for shard in shards]
    assert len(taken[0]) == len(taken[1]) == 50 and not taken[0] & taken[1]
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        make_loader(dataset, 16, shard=(2, 2))


def test_cli_refuses_an_unknown_device_before_any_work(tmp_path, capsys):
    status = main(["optimize", "--device", "gpu", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'" in err
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ GPU (skipped here)


@needs_cuda
def test_pruning_surgery_on_a_gpu_model_matches_cpu():
    from tridim.prune.width import prune_width_to_macs

    model = randomise_batchnorm(models.build("resnet18", 10, 3)).eval()
    on_cpu = prune_width_to_macs(model, 0.5, input_size=(3, 32, 32))
    on_gpu = prune_width_to_macs(copy.deepcopy(model).cuda(), 0.5, input_size=(3, 32, 32))
    assert model_device(on_gpu).type == "cuda"
    assert count_macs(on_gpu, (3, 32, 32)) == count_macs(on_cpu, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(on_gpu(x.cuda()).cpu(), on_cpu(x), atol=1e-3)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_optimize_runs_on_a_gpu(tiny, base_model, tmp_path, precision):
    import tridim

    result = tridim.optimize(
        base_model,
        tiny,
        0.5,
        workdir=tmp_path / precision,
        rounds=2,
        epochs_per_step=1,
        final_epochs=1,
        quiet=True,
        device="cuda",
        precision=precision,
        channels_last=precision != "fp32",
    )
    assert model_device(result.model).type == "cuda"
    assert model_device(base_model).type == "cpu"  # the caller's model stays put
    assert result.report["execution"]["device"].startswith("cuda")
    assert result.accuracy > 0.5


@needs_cuda
def test_onnx_export_of_a_model_left_on_a_gpu(tmp_path):
    from tridim.prune.resolution import ResolutionWrapper
    from tridim.run.io import export_onnx

    model = ResolutionWrapper(models.build("resnet20", 10, 1), (12, 12), (1, 16, 16)).cuda()
    path = export_onnx(model, tmp_path / "m.onnx", (1, 16, 16))
    assert path.stat().st_size > 10_000
    assert model_device(model).type == "cuda"


@needs_cuda
def test_latency_on_a_gpu_uses_cuda_events(monkeypatch):
    made = []
    real_event = torch.cuda.Event

    def counting_event(*args, **kwargs):
        made.append(kwargs)
        return real_event(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "Event", counting_event)
    model = models.build("resnet18", 10, 3)
    timing = measure_latency(model, (3, 64, 64), 8, repeats=5, device="cuda", precision="fp16")
    assert timing["device"].startswith("cuda")
    assert len(made) == 2 * 5 and all(k.get("enable_timing") for k in made)  # two per pass
