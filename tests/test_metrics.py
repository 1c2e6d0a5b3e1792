import math

import numpy as np
import pytest
import torch

from dsaml_utils import metrics as M

# A small pair worked out by hand:
# p = [0, 1, 2, 3], t = [0, 2, 2, 4]; means 1.5 and 2; var_p = 1.25, var_t = 2, cov = 1.5.
P = np.array([0.0, 1.0, 2.0, 3.0])
T = np.array([0.0, 2.0, 2.0, 4.0])
CCC = 2 * 1.5 / (1.25 + 2.0 + 0.5**2)  # 6/7
PCC = 1.5 / math.sqrt(1.25 * 2.0)
RMSE = math.sqrt((0 + 1 + 0 + 1) / 4)
R2 = 1 - 2.0 / 8.0
# 6 pairs: 5 concordant, 0 discordant, 1 tied in t only -> tau_b = 5 / sqrt(6 * 5)
TAU = 5 / math.sqrt(30)


def test_numpy_metrics_match_hand_values():
    assert M.ccc(P, T) == pytest.approx(CCC)
    assert M.pcc(P, T) == pytest.approx(PCC)
    assert M.rmse(P, T) == pytest.approx(RMSE)
    assert M.r2(P, T) == pytest.approx(R2)
    assert M.kendall_tau(P, T) == pytest.approx(TAU)


def test_constant_sequences_follow_the_documented_conventions():
    c = np.full(5, 0.3)
    x = np.array([0.1, 0.5, -0.2, 0.4, 0.0])
    assert M.pcc(c, x) == 0.0 and M.pcc(x, c) == 0.0
    assert M.kendall_tau(x, c) == 0.0
    assert M.ccc(c, c) == 1.0
    assert M.ccc(c, c + 0.2) == pytest.approx(0.0)  # both constant, different means: defined, 0
    assert M.ccc(x, c) == pytest.approx(0.0)  # cov = 0
    assert M.r2(c, c) == 1.0 and M.r2(x, c) == 0.0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError):
        M.ccc(P, T[:3])
    with pytest.raises(ValueError):
        M.rmse(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        M.pcc(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        M.score_song(np.zeros((4, 3)), np.zeros((4, 3)))


def test_score_song_reports_every_metric_per_dimension():
    pred = np.stack([P, T], axis=1)
    target = np.stack([T, P], axis=1)
    s = M.score_song(pred, target)
    assert set(s) == {f"{d}_{m}" for d in M.DIMENSIONS for m in M.METRICS}
    assert s["arousal_ccc"] == pytest.approx(CCC)
    assert s["valence_ccc"] == pytest.approx(CCC)  # CCC is symmetric
    assert s["arousal_r2"] == pytest.approx(R2)
    # valence: prediction T for target P: ss_res = 2, ss_tot(P) = 5
    assert s["valence_r2"] == pytest.approx(1 - 2 / 5)


def test_t_interval_and_bootstrap():
    v = [1.0, 2.0, 3.0, 4.0]
    got = M.interval(v)
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t_{0.975, 3} * sd / sqrt(n)
    assert got["mean"] == pytest.approx(2.5)
    assert got["lo"] == pytest.approx(2.5 - half) and got["hi"] == pytest.approx(2.5 + half)
    assert got["n"] == 4
    b1 = M.interval(v, method="bootstrap", seed=3)
    b2 = M.interval(v, method="bootstrap", seed=3)
    assert b1 == b2
    assert 1.0 <= b1["lo"] < 2.5 < b1["hi"] <= 4.0
    one = M.interval([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["lo"]) and math.isnan(one["hi"])
    with pytest.raises(ValueError):
        M.interval(v, method="jackknife")


def test_aggregate_songs_and_seeds():
    scores = [{"a": 1.0, "b": 0.0}, {"a": 3.0, "b": 1.0}]
    agg = M.aggregate_songs(scores)
    assert agg["a"]["mean"] == pytest.approx(2.0) and agg["b"]["mean"] == pytest.approx(0.5)
    assert agg["a"]["lo"] < 2.0 < agg["a"]["hi"]
    seeds = M.aggregate_seeds([{"ccc": 0.1}, {"ccc": 0.3}])
    assert seeds["ccc"]["mean"] == pytest.approx(0.2)
    assert seeds["ccc"]["std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(M.aggregate_seeds([{"ccc": 0.1}])["ccc"]["std"])
    with pytest.raises(ValueError):
        M.aggregate_songs([])


def _pair_batch():
    """Batch of 2 songs: song 0 = (P, T) on both dims, song 1 = 3 real steps then garbage padding."""
    pred = torch.zeros(2, 4, 2, dtype=torch.float64)
    target = torch.zeros(2, 4, 2, dtype=torch.float64)
    pred[0, :, 0], target[0, :, 0] = torch.tensor(P), torch.tensor(T)
    pred[0, :, 1], target[0, :, 1] = torch.tensor(T), torch.tensor(P)
    pred[1, :3, 0], target[1, :3, 0] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 5.0])
    pred[1, :3, 1], target[1, :3, 1] = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    pred[1, 3], target[1, 3] = 50.0, -50.0  # padding: must be ignored
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    return pred, target, mask


def test_torch_metrics_match_hand_values_and_ignore_padding():
    pred, target, mask = _pair_batch()
    c = M.ccc_torch(pred, target, mask)
    r = M.pcc_torch(pred, target, mask)
    e = M.rmse_torch(pred, target, mask)
    assert c[0, 0].item() == pytest.approx(CCC) and c[0, 1].item() == pytest.approx(CCC)
    assert r[0, 0].item() == pytest.approx(PCC) and e[0, 0].item() == pytest.approx(RMSE)
    # song 1, arousal: p = [1,2,3], t = [2,2,5]: means 2, 3; var_p = 2/3, var_t = 2, cov = 1
    assert c[1, 0].item() == pytest.approx(2 * 1 / (2 / 3 + 2 + 1))
    assert r[1, 0].item() == pytest.approx(1 / math.sqrt(2 / 3 * 2))
    assert e[1, 0].item() == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    # song 1, valence: constant target -> PCC 0; p mean 1/3, var 2/9; CCC = 0 (cov 0)
    assert r[1, 1].item() == 0.0 and c[1, 1].item() == pytest.approx(0.0)
    assert e[1, 1].item() == pytest.approx(math.sqrt(2 / 3))


def test_dsaml_loss_value_and_mask():
    pred, target, mask = _pair_batch()
    per = []
    for cc, pc, rm in [(CCC, PCC, RMSE), (CCC, PCC, RMSE),
                       (2 / (2 / 3 + 3), 1 / math.sqrt(4 / 3), math.sqrt(5 / 3)),
                       (0.0, 0.0, math.sqrt(2 / 3))]:
        per.append((cc + pc + 1 - rm) / 3)
    assert M.dsaml_loss(pred, target, mask).item() == pytest.approx(1 - sum(per) / 4)
    # without the mask the padding step counts and the loss changes
    assert M.dsaml_loss(pred, target).item() != pytest.approx(1 - sum(per) / 4)
    with pytest.raises(ValueError):
        M.dsaml_loss(pred, target, mask[:, :3])


def test_torch_and_numpy_agree_on_random_songs():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 20, 2, generator=g, dtype=torch.float64)
    target = torch.randn(3, 20, 2, generator=g, dtype=torch.float64)
    for fn_t, fn_n in [(M.ccc_torch, M.ccc), (M.pcc_torch, M.pcc), (M.rmse_torch, M.rmse)]:
        got = fn_t(pred, target)
        for b in range(3):
            for d in range(2):
                assert got[b, d].item() == pytest.approx(fn_n(pred[b, :, d].numpy(), target[b, :, d].numpy()))


def test_loss_gradient_is_finite_for_constant_targets():
    target = torch.full((2, 6, 2), 0.25, dtype=torch.float64)
    pred = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    M.dsaml_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # fully degenerate: constant prediction equal to a constant target
    pred2 = target.clone().requires_grad_(True)
    loss = M.dsaml_loss(pred2, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred2.grad).all()
