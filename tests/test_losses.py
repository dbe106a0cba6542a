"""Golden-value tests of the loss terms (values computed by hand in each test)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cagnet import losses
from cagnet.errors import ConfigError


def test_resize_labels_nearest() -> None:
    labels = torch.arange(16).view(1, 4, 4)
    assert torch.equal(losses.resize_labels(labels, (2, 2)), torch.tensor([[[0, 2], [8, 10]]]))
    assert losses.resize_labels(labels, (4, 4)) is labels
    assert losses.resize_labels(labels, (2, 2)).dtype == torch.int64


def test_kl_divergence_golden() -> None:
    # One valid pixel with mean (1, 0), logvar (0, log 2); the other pixel is garbage.
    mean = torch.tensor([[[[1.0, 100.0]], [[0.0, 100.0]]]], requires_grad=True)
    logvar = torch.tensor([[[[0.0, 50.0]], [[math.log(2.0), 50.0]]]])
    valid = torch.tensor([[[True, False]]])
    # channel terms 1 + logvar - mean^2 - exp(logvar): -1 and log 2 - 1; mean over 2 elements.
    expected = -0.5 * ((-1.0) + (math.log(2.0) - 1.0)) / 2
    assert losses.kl_divergence(mean, logvar, valid).item() == pytest.approx(expected, rel=1e-6)
    none = losses.kl_divergence(mean, logvar, torch.zeros_like(valid))
    assert none.item() == 0.0
    none.backward()
    assert torch.equal(mean.grad, torch.zeros_like(mean))


def test_classification_loss_ignores_255() -> None:
    logits = torch.tensor([[[[2.0, 9.0]], [[0.0, -9.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    labels = torch.tensor([[[1, 255]]])
    expected = -math.log(math.exp(0.0) / (math.exp(2.0) + math.exp(0.0)))
    assert losses.classification_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    ignored = losses.classification_loss(logits, torch.full_like(labels, 255))
    assert ignored.item() == 0.0
    ignored.backward()
    assert torch.isfinite(logits.grad).all()


def test_classification_loss_class_weights() -> None:
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 255
    weights = torch.tensor([1.0, 2.0, 100.0])
    expected = F.cross_entropy(logits, labels, weight=weights, ignore_index=255)
    result = losses.classification_loss(logits, labels, class_weights=weights)
    assert result.item() == pytest.approx(expected.item(), rel=1e-5)


def test_multi_scale_classification_loss() -> None:
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, :2] = 255
    full, half = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    expected = (F.cross_entropy(full, labels, ignore_index=255)
                + F.cross_entropy(half, labels[:, ::2, ::2], ignore_index=255)) / 2
    result = losses.multi_scale_classification_loss([full, half], labels)
    assert result.item() == pytest.approx(expected.item(), rel=1e-5)


# Scores: real logits (log 3, 0) -> sigmoid (0.75, 0.5); fake (-log 3, 0) -> (0.25, 0.5). The
# third pixel is invalid and carries an extreme value that must not count.
REAL = torch.tensor([math.log(3.0), 0.0, 40.0]).view(1, 1, 1, 3)
FAKE = torch.tensor([-math.log(3.0), 0.0, -40.0]).view(1, 1, 1, 3)
VALID = torch.tensor([[[True, True, False]]])
ADVERSARIAL_GOLDEN = {
    "l1": ((0.25 + 0.5) / 2 + (0.25 + 0.5) / 2, (0.75 + 0.5) / 2),
    "lsgan": ((0.0625 + 0.25) / 2 + (0.0625 + 0.25) / 2, (0.5625 + 0.25) / 2),
    "gan": (-(math.log(0.75) + math.log(0.5)) / 2 * 2, -(math.log(0.25) + math.log(0.5)) / 2),
    "wgan_gp": (-math.log(3.0), math.log(3.0) / 2),
}


@pytest.mark.parametrize("kind", sorted(ADVERSARIAL_GOLDEN))
def test_adversarial_golden(kind: str) -> None:
    discriminator, generator = ADVERSARIAL_GOLDEN[kind]
    result = losses.adversarial_discriminator_loss(kind, REAL, FAKE, VALID)
    assert result.item() == pytest.approx(discriminator, rel=1e-5)
    assert losses.adversarial_generator_loss(kind, FAKE, VALID).item() == pytest.approx(
        generator, rel=1e-5)


def test_adversarial_unknown_kind_and_no_valid_pixel() -> None:
    with pytest.raises(ConfigError, match="gan, l1, lsgan, wgan_gp"):
        losses.adversarial_generator_loss("hinge", FAKE, VALID)
    fake = FAKE.clone().requires_grad_(True)
    empty = losses.adversarial_discriminator_loss("l1", REAL, fake, torch.zeros_like(VALID))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(fake.grad, torch.zeros_like(fake))


def test_gradient_penalty_of_linear_critic() -> None:
    direction = torch.tensor([[2.0], [1.0], [2.0]])  # norm 3 -> penalty (3 - 1)^2 = 4
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    penalty = losses.gradient_penalty(lambda rows: rows @ direction, real, fake)
    assert penalty.item() == pytest.approx(4.0, rel=1e-5)  # unweighted: the step applies 10


def test_mmd_golden() -> None:
    zero = torch.tensor([[0.0]])
    two = torch.tensor([[2.0]])
    # sigma 1: k(0, 2) = exp(-4 / 2); MMD^2 = 1 + 1 - 2 exp(-2).
    assert losses.mmd(zero, two, sigmas=(1.0,)).item() == pytest.approx(
        math.sqrt(2 - 2 * math.exp(-2)), rel=1e-6)
    # Two kernels are summed before the square root.
    both = 2 - 2 * math.exp(-2) + 2 - 2 * math.exp(-1)
    assert losses.mmd(zero, two, sigmas=(1.0, 2.0)).item() == pytest.approx(
        math.sqrt(both), rel=1e-6)
    # Unequal set sizes, sigma 2: x = {0, 1}, y = {3}.
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0]])
    within_x = (1 + 1 + 2 * math.exp(-1 / 4)) / 4
    across = (math.exp(-9 / 4) + math.exp(-4 / 4)) / 2
    expected = math.sqrt(within_x + 1 - 2 * across)
    assert losses.mmd(x, y, sigmas=(2.0,)).item() == pytest.approx(expected, rel=1e-6)


def test_mmd_identical_sets_zero_with_finite_gradient() -> None:
    points = torch.rand(6, 4)
    fake = points.clone().requires_grad_(True)
    value = losses.mmd(fake, points.clone())
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(fake.grad).all()


def test_class_mmd_matches_explicit_loop() -> None:
    torch.manual_seed(0)
    fake, real = torch.rand(12, 3), torch.rand(12, 3)
    labels = torch.tensor([0, 2, 2, 0, 5, 5, 5, 2, 0, 0, 5, 2])
    expected = sum(losses.mmd(fake[labels == c], real[labels == c]) for c in (0, 2, 5)) / 3
    assert losses.class_mmd_loss(fake, real, labels).item() == pytest.approx(
        expected.item(), rel=1e-6)
    unbounded = losses.class_mmd_loss(fake, real, labels, max_pixels_per_class=4)
    assert unbounded.item() == pytest.approx(expected.item(), rel=1e-6)
    generator = torch.Generator().manual_seed(1)
    subsampled = losses.class_mmd_loss(fake, real, labels, max_pixels_per_class=2,
                                       generator=generator)
    assert torch.isfinite(subsampled)


def test_raster_run_grouping() -> None:
    torch.manual_seed(0)
    fake, real = torch.rand(6, 2), torch.rand(6, 2)
    labels = torch.tensor([1, 1, 2, 2, 2, 1])  # three runs: [0:2], [2:5], [5:6]
    runs = [slice(0, 2), slice(2, 5), slice(5, 6)]
    expected = sum(losses.mmd(fake[run], real[run]) for run in runs) / 3
    result = losses.raster_run_mmd_loss(fake, real, labels)
    assert result.item() == pytest.approx(expected.item(), rel=1e-6)
    by_class = losses.class_mmd_loss(fake, real, labels)
    assert by_class.item() != pytest.approx(result.item())


def test_content_loss_kinds() -> None:
    fake = torch.tensor([[[[0.5, 1.0]], [[0.0, 9.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    real = torch.tensor([[[[0.25, 0.0]], [[1.0, 0.0]]]])
    labels = torch.tensor([[[3, 255]]])
    # Only pixel 0 counts: differences 0.25 and -1 over 2 channels.
    assert losses.content_loss("l1", fake, real, labels).item() == pytest.approx(0.625)
    assert losses.content_loss("mse", fake, real, labels).item() == pytest.approx(
        (0.0625 + 1.0) / 2)
    mmd = losses.content_loss("mmd", fake, real, labels, sigmas=(1.0,))
    single = losses.mmd(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.25, 1.0]]), (1.0,))
    assert mmd.item() == pytest.approx(single.item(), rel=1e-6)
    runs = losses.content_loss("mmd", fake, real, labels, sigmas=(1.0,), grouping="raster_runs")
    assert runs.item() == pytest.approx(single.item(), rel=1e-6)
    for kind in ("mmd", "l1", "mse"):
        empty = losses.content_loss(kind, fake, real, torch.full_like(labels, 255))
        assert empty.item() == 0.0
        empty.backward()
    with pytest.raises(ConfigError, match="l1, mmd, mse"):
        losses.content_loss("cosine", fake, real, labels)
    with pytest.raises(ConfigError, match="class, raster_runs"):
        losses.content_loss("mmd", fake, real, labels, grouping="rows")


GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "golden" / \
    "original_content_loss.npz"


@pytest.mark.skipif(not GOLDEN.is_file(), reason="../shared/data is absent")
@pytest.mark.parametrize("case", range(4))
def test_paper_recipe_content_loss_matches_the_original_release(case: int) -> None:
    """The paper recipes' content-loss settings reproduce the original's value to 1e-6."""
    import numpy as np

    from cagnet.config import load_config

    golden = np.load(GOLDEN)
    loss = load_config(Path(__file__).resolve().parents[1] / "experiments" / "voc12.yaml").loss
    value = losses.content_loss(
        loss.content, torch.from_numpy(golden[f"predict_{case}"]),
        torch.from_numpy(golden[f"target_{case}"]), torch.from_numpy(golden[f"labels_{case}"]),
        sigmas=loss.mmd_sigmas, grouping=loss.mmd_grouping, estimator=loss.mmd_estimator)
    assert value.item() == pytest.approx(float(golden[f"original_mmd_{case}"]), rel=1e-6)


def test_mmd_estimators_differ_by_half_the_squared_value() -> None:
    torch.manual_seed(0)
    fake, real = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    labels = torch.randint(0, 2, (1, 4, 4))
    for grouping in ("class", "raster_runs"):
        biased = losses.content_loss("mmd", fake, real, labels, grouping=grouping)
        original = losses.content_loss("mmd", fake, real, labels, grouping=grouping,
                                       estimator="original")
        assert original.item() == pytest.approx(biased.item() / 2 ** 0.5, rel=1e-5)
