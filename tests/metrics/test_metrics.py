"""KID/FID by torchmetrics on our feature networks, against the formulas of the papers."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

import difftune.metrics.features as features
from difftune.data import SyntheticStyleDataset
from difftune.errors import DifftuneError
from difftune.metrics.distance import distribution_distance, resolve_subset_size
from difftune.metrics.features import SmallFeatures


def unit_images(style: str, seed: int, n: int = 48, size: int = 32) -> torch.Tensor:
    data = SyntheticStyleDataset(n, size, style, seed)
    return torch.stack([data[i] for i in range(n)]) / 2 + 0.5


def reference_kid(real: np.ndarray, fake: np.ndarray, size: int, subsets: int, seed: int):
    """Bińkowski et al. 2018, eq. 4: the unbiased MMD² with k(x, y) = (x·y/d + 1)³, averaged
    over `subsets` random subsets of `size` (drawn as torch.randperm after manual_seed(seed))."""
    torch.manual_seed(seed)
    d, values = real.shape[1], []
    for _ in range(subsets):
        x = real[torch.randperm(len(real))[:size].numpy()]
        y = fake[torch.randperm(len(fake))[:size].numpy()]
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = size * (size - 1)
        values.append((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / off
                      - 2 * k_xy.mean())  # fmt: skip
    return float(np.mean(values)), float(np.std(values))  # the spread, ddof=0


def reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Heusel et al. 2017: |μ_r − μ_f|² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½)."""
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(s_r @ s_f).real
    return float(((real.mean(0) - fake.mean(0)) ** 2).sum() + np.trace(s_r + s_f - 2 * root))


def test_kid_is_near_zero_for_one_distribution_and_large_for_a_shifted_one():
    vintage_a, vintage_b = unit_images("vintage", 0), unit_images("vintage", 1)
    photo = unit_images("photo", 1)
    same = distribution_distance(vintage_a, vintage_b, fid=True)
    shifted = distribution_distance(vintage_a, photo, fid=True)
    assert set(same) == {"kid_small", "kid_small_std", "fid_small"}
    assert abs(same["kid_small"]) < 0.01 < 0.04 < shifted["kid_small"]
    assert shifted["kid_small"] > 10 * max(abs(same["kid_small"]), 1e-3)
    assert shifted["fid_small"] > 10 * same["fid_small"]
    # reproducible, and training's global random stream is left alone
    state = torch.random.get_rng_state()
    assert distribution_distance(vintage_a, photo) == distribution_distance(vintage_a, photo)
    assert torch.equal(state, torch.random.get_rng_state())


def test_torchmetrics_kid_and_fid_on_our_features_equal_the_papers_formulas():
    """The values the old hand-fed implementation gave: the formulas on the same features."""
    real, fake = unit_images("vintage", 0, n=24), unit_images("photo", 1, n=20)
    out = distribution_distance(real, fake, fid=True, subset_size=10, subsets=7, batch_size=5,
                                seed=3)  # fmt: skip
    net = SmallFeatures()
    real_f, fake_f = (net(x).double().numpy() for x in (real, fake))
    kid, kid_std = reference_kid(real_f, fake_f, size=10, subsets=7, seed=3)
    assert out["kid_small"] == pytest.approx(kid, rel=1e-5, abs=1e-7)
    assert out["kid_small_std"] == pytest.approx(kid_std, rel=1e-5, abs=1e-7)
    assert out["fid_small"] == pytest.approx(reference_fid(real_f, fake_f), rel=1e-5)
    assert distribution_distance(real, fake, kid=False, fid=True) == {"fid_small": out["fid_small"]}


def test_small_features_are_fixed_by_the_seed_and_accept_uint8():
    x = unit_images("photo", 0, n=4)
    a, b, c = SmallFeatures(seed=0), SmallFeatures(seed=0), SmallFeatures(seed=1)
    assert a(x).shape == (4, a.num_features)
    assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), c(x))
    uint8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(a(uint8), a(uint8.float() / 255))


def test_clip_features_with_random_weights(tmp_path):
    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                       "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    path = tmp_path / "difftune-kid-tiny-clip.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        extractor = features.build_feature_extractor("clip", model_name="difftune-kid-tiny-clip",
                                                    pretrained=None)  # fmt: skip
    real, fake = unit_images("vintage", 0, 8), unit_images("photo", 0, 8)
    out = distribution_distance(real, fake, features=extractor, subset_size=4, subsets=5, seed=2)
    assert set(out) == {"kid_clip", "kid_clip_std"}
    with torch.no_grad():  # the formula on the extractor's own features
        real_f, fake_f = (extractor(x).double().numpy() for x in (real, fake))
    kid, kid_std = reference_kid(real_f, fake_f, size=4, subsets=5, seed=2)
    assert out["kid_clip"] == pytest.approx(kid, rel=1e-4, abs=1e-7)
    assert out["kid_clip_std"] == pytest.approx(kid_std, rel=1e-4, abs=1e-7)
    assert extractor.num_features == 16  # torchmetrics' FID sizes its state by it


def test_subset_size_larger_than_the_samples_is_clamped_with_a_warning():
    assert resolve_subset_size(None, 32, 64) == 16
    assert resolve_subset_size(10, 32, 64) == 10
    with pytest.warns(UserWarning, match="subset_size=1000 is larger"):
        assert resolve_subset_size(1000, 32, 64) == 32
    x, y = unit_images("vintage", 0, 8), unit_images("photo", 0, 8)
    with pytest.warns(UserWarning, match="using subset_size=8"):
        out = distribution_distance(x, y, subset_size=1000)
    assert out == distribution_distance(x, y, subset_size=8)  # clamped: the same metric


def test_unknown_features_name_lists_the_valid_ones():
    with pytest.raises(DifftuneError, match="features='vgg' is not one of small, clip, inception"):
        features.build_feature_extractor("vgg")


def test_inception_without_torch_fidelity_is_one_line_with_the_offline_options(monkeypatch):
    monkeypatch.setattr(features, "_TORCH_FIDELITY_AVAILABLE", False)
    with pytest.raises(DifftuneError) as err:
        features.build_feature_extractor("inception")
    message = str(err.value)
    assert "\n" not in message and "torch-fidelity" in message
    assert "features=small" in message and "features=clip" in message
