import copy
import json

import pytest
import torch

from tridim.training import models
from tridim.training.train import (
    TrainingDiverged,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
)


def test_resnet20_learns_digits(digits):
    torch.manual_seed(0)
    model = models.build("resnet20", 10, 1)
    history = train(model, digits, 15, quiet=True)
    accuracy = evaluate(model, digits.loader("test"))
    assert accuracy >= 0.95, history.epochs
    assert len(history.epochs) == 15 and "val_accuracy" in history.epochs[-1]


def test_training_is_deterministic(digits):
    small = digits.subset(train=256, val=64)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = models.build("resnet20", 10, 1)
        train(model, small, 1, quiet=True, seed=5)
        results.append(model.state_dict())
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_extra_loss_term_and_reduced_resolution(digits):
    small = digits.subset(train=128, val=32)
    model = models.build("resnet20", 10, 1)
    calls = []

    def penalty(m):
        calls.append(1)
        return (
            sum(b.weight.abs().sum() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
            * 1e-4
        )

    train(model, small, 1, quiet=True, extra_loss=penalty, resolution=12)
    assert len(calls) == 1  # 128 images, batch 128: one step


def test_distillation_pulls_the_student_towards_its_teacher(digits):
    """Two students from the same start, one distilled: it must end nearer the teacher's
    outputs (a teacher the loss ignored would leave the two alike)."""
    from conftest import randomise_batchnorm

    from tridim.training.train import distillation_loss

    small = digits.subset(train=256, val=64)
    torch.manual_seed(1)
    teacher = randomise_batchnorm(models.build("resnet20", 10, 1), seed=1).eval()
    with torch.no_grad():
        teacher.fc.weight.mul_(30.0)  # confident, and unrelated to the labels
    torch.manual_seed(0)
    start = models.build("resnet20", 10, 1, width=0.5)
    plain, distilled = copy.deepcopy(start), copy.deepcopy(start)
    train(plain, small, 2, quiet=True, seed=0)
    train(distilled, small, 2, quiet=True, seed=0, teacher=teacher)
    x = small.val.tensors[0]
    with torch.no_grad():
        target = teacher(x)
        far = distillation_loss(plain.eval()(x), target).item()
        near = distillation_loss(distilled.eval()(x), target).item()
    assert near < 0.8 * far, (near, far)


def test_precomputed_teacher_outputs_train_exactly_as_the_teacher_does(digits):
    """Distilling from the teacher's outputs computed once gives the very weights that
    running the teacher at every step gives (and works from a sample subset)."""
    from conftest import randomise_batchnorm

    from tridim.training.train import teacher_outputs

    small = digits.subset(train=200, val=32)
    teacher = randomise_batchnorm(models.build("resnet20", 10, 1), seed=1).eval()
    torch.manual_seed(0)
    start = models.build("resnet20", 10, 1, width=0.5)
    stepwise, cached = copy.deepcopy(start), copy.deepcopy(start)
    train(stepwise, small, 2, quiet=True, seed=3, teacher=teacher, evaluate_each_epoch=False)
    outputs = teacher_outputs(teacher, small.train)
    train(cached, small, 2, quiet=True, seed=3, teacher_outputs=outputs, evaluate_each_epoch=False)
    for (name, a), b in zip(stepwise.state_dict().items(), cached.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="teacher_outputs has 199 rows for 200"):
        train(cached, small, 1, quiet=True, teacher_outputs=outputs[:-1])


def test_non_finite_loss_stops_and_keeps_last_good_weights(digits):
    small = digits.subset(train=256, val=32)
    model = models.build("resnet20", 10, 1)
    steps = []

    def explode(m):
        steps.append(1)
        return torch.tensor(float("nan")) if len(steps) == 2 else torch.tensor(0.0)

    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TrainingDiverged, match="at step 1"):
        train(model, small, 1, batch_size=64, quiet=True, extra_loss=explode)
    after = model.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    # one good step was taken, so the weights moved away from the start
    assert any(
        not torch.equal(before[k], after[k]) for k in before if before[k].dtype.is_floating_point
    )


def _after_one_step(model, data, **options):
    """State of a copy of ``model`` after exactly one training step with ``options``."""
    reference = copy.deepcopy(model)
    train(reference, data, 1, max_steps=1, **options)
    return reference.state_dict()


def test_non_finite_gradient_stops_before_the_step(digits):
    small = digits.subset(train=256, val=32)
    model = models.build("resnet20", 10, 1)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    calls = []

    def infinite_gradient(m):
        calls.append(1)
        if len(calls) < 2:
            return torch.tensor(0.0)
        # the value is sqrt(0) = 0, the gradient 1 / (2 sqrt(0)) = inf
        return torch.sqrt(first_conv.weight - first_conv.weight.detach()).sum()

    options = dict(batch_size=64, schedule="constant", quiet=True, evaluate_each_epoch=False)
    expected = _after_one_step(model, small, extra_loss=lambda m: torch.tensor(0.0), **options)
    with pytest.raises(TrainingDiverged, match="gradient became NaN or infinite at step 1"):
        train(model, small, 1, extra_loss=infinite_gradient, **options)
    assert len(calls) == 2
    after = model.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    # the weights (and BN statistics) are those of the one good step: the bad one was not taken
    for key, value in expected.items():
        assert torch.equal(value, after[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_nan_inside_forward_leaves_batchnorm_statistics_finite(digits):
    small = digits.subset(train=256, val=32)
    model = models.build("resnet20", 10, 1)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    options = dict(batch_size=64, schedule="constant", quiet=True, evaluate_each_epoch=False)
    expected = _after_one_step(model, small, **options)
    forwards = []

    def poison(module, inputs, output):
        forwards.append(1)
        return output * float("nan") if len(forwards) == 2 else None

    first_conv.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="at step 1"):
        train(model, small, 1, **options)
    after = model.state_dict()
    statistics = [k for k in after if "running_" in k or "num_batches_tracked" in k]
    assert statistics and all(torch.isfinite(after[k].float()).all() for k in statistics)
    for key, value in expected.items():
        assert torch.equal(value, after[key]), key


def test_checkpoint_round_trip_and_resume(digits, tmp_path):
    small = digits.subset(train=128, val=32)
    model = models.build("resnet20", 10, 1)
    path = tmp_path / "ckpt.pt"
    train(model, small, 1, quiet=True, checkpoint_path=path)
    restored = models.build("resnet20", 10, 1)
    meta = load_checkpoint(path, restored)
    assert meta["epoch"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key])
    # training to 2 epochs resumes from epoch 1 rather than starting again
    history = train(restored, small, 2, quiet=True, checkpoint_path=path)
    assert [e["epoch"] for e in history.epochs] == [1, 2]


def test_checkpoint_rejects_wrong_architecture_and_garbage(tmp_path):
    model = models.build("resnet20", 10, 1)
    save_checkpoint(tmp_path / "a.pt", model)
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(tmp_path / "a.pt", models.build("resnet32", 10, 1))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a valid"):
        load_checkpoint(tmp_path / "bad.pt", model)


def test_mismatched_data_is_clear(digits):
    with pytest.raises(ValueError, match="in_channels=1"):
        train(models.build("resnet20", 10, 3), digits, 1, quiet=True)
    with pytest.raises(ValueError, match="num_classes=10"):
        train(models.build("resnet20", 4, 1), digits, 1, quiet=True)
    with pytest.raises(ValueError, match="schedule"):
        train(models.build("resnet20", 10, 1), digits, 1, schedule="step")


def test_cli_info_and_train(tmp_path, capsys):
    from tridim.cli import main

    assert main(["info", "--model", "resnet20", "--data", "digits", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_shape"] == [1, 16, 16] and info["macs"] > 0
    out = tmp_path / "m.pt"
    assert main(["train", "--epochs", "1", "--out", str(out), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["test_accuracy"] <= 1
    state = torch.load(out, weights_only=True)
    model = models.ModelSpec.from_dict(result["model"]).build()
    model.load_state_dict(state)


def test_cli_reports_bad_input_without_traceback(capsys):
    from tridim.cli import main

    assert main(["info", "--model", "resnet21"]) == 2
    assert "unknown model" in capsys.readouterr().err
