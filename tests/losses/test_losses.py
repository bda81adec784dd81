"""Every loss against an independent reference computation (loops / paper pseudo-code), invariances, and descent under
gradient steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_train.losses import (
    BarlowTwinsLoss,
    ContrastiveMarginLoss,
    DINOLoss,
    InfoNCELoss,
    NCELoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    SupConLoss,
    SwAVLoss,
    TripletLoss,
    VICRegLoss,
)
from ssl_train.losses.swav import sinkhorn

TOL = 1e-5


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm())


# --- InfoNCE -----------------------------------------------------------------------------------------


def test_infonce_in_batch_matches_loop() -> None:
    q, k, t = torch.randn(5, 4).double(), torch.randn(5, 4).double(), 0.3
    expected = 0.0
    for i in range(5):
        scores = [float(unit(q[i]) @ unit(k[j])) / t for j in range(5)]
        expected += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    assert InfoNCELoss(t)(q, k).item() == pytest.approx(expected / 5, abs=TOL)
    # MoCo v3's contrastive_loss: nn.CrossEntropyLoss()(logits, labels) * (2 * T)
    assert InfoNCELoss(t, scale_by_two_temperature=True)(q, k).item() == pytest.approx(2 * t * expected / 5, abs=TOL)


def test_infonce_with_explicit_negatives_matches_loop() -> None:
    q, k, neg, t = torch.randn(4, 3).double(), torch.randn(4, 3).double(), torch.randn(7, 3).double(), 0.2
    expected = 0.0
    for i in range(4):
        pos = float(unit(q[i]) @ unit(k[i])) / t
        negs = [float(unit(q[i]) @ unit(n)) / t for n in neg]
        expected += -pos + math.log(math.exp(pos) + sum(math.exp(s) for s in negs))
    assert InfoNCELoss(t)(q, k, neg).item() == pytest.approx(expected / 4, abs=TOL)


# --- NT-Xent variants ---------------------------------------------------------------------------------


def _ntxent_variant_loop(z_a: torch.Tensor, z_b: torch.Tensor, t: float, decoupled: bool, tau_plus: float) -> float:
    z = [unit(v) for v in torch.cat([z_a, z_b]).double()]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        pos = math.exp(float(z[i] @ z[p]) / t)
        negs = [math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k not in (i, p)]
        ng = sum(negs)
        if tau_plus > 0:
            ng = max((-tau_plus * len(negs) * pos + ng) / (1 - tau_plus), len(negs) * math.exp(-1 / t))
        total += -math.log(pos / (ng if decoupled else pos + ng))
    return total / n2


@pytest.mark.parametrize(("decoupled", "tau_plus"), [(True, 0.0), (False, 0.1), (True, 0.1)])
def test_ntxent_dcl_and_debiased_match_loop(decoupled: bool, tau_plus: float) -> None:
    z_a, z_b = torch.randn(5, 4), torch.randn(5, 4)
    loss = NTXentLoss(0.5, decoupled=decoupled, debiased_tau_plus=tau_plus)(z_a, z_b)
    assert loss.item() == pytest.approx(_ntxent_variant_loop(z_a, z_b, 0.5, decoupled, tau_plus), abs=1e-4)


# --- SupCon --------------------------------------------------------------------------------------------


def test_supcon_matches_loop() -> None:
    z_a, z_b, labels, t = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 0, 2, 1, 0]), 0.2
    z = [unit(v) for v in torch.cat([z_a, z_b]).double()]
    y = torch.cat([labels, labels]).tolist()
    total = 0.0
    for i in range(12):
        denominator = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(12) if a != i)
        positives = [p for p in range(12) if p != i and y[p] == y[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denominator) for p in positives) / len(positives)
    assert SupConLoss(t)(z_a, z_b, labels).item() == pytest.approx(total / 12, abs=TOL)


def test_supcon_with_unique_labels_equals_ntxent() -> None:
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    assert SupConLoss(0.3)(z_a, z_b, torch.arange(6)).item() == pytest.approx(NTXentLoss(0.3)(z_a, z_b).item(), abs=TOL)


def test_supcon_requires_labels() -> None:
    with pytest.raises(ValueError, match="needs class labels"):
        SupConLoss()(torch.randn(3, 2), torch.randn(3, 2), None)


# --- Barlow Twins, VICReg -----------------------------------------------------------------------------


def test_barlow_twins_matches_paper_pseudocode() -> None:
    z_a, z_b, lam = torch.randn(16, 5).double(), torch.randn(16, 5).double(), 0.0051
    n, d = z_a.shape
    a = [(z_a[:, j] - z_a[:, j].mean()) / z_a[:, j].std(unbiased=False) for j in range(d)]
    b = [(z_b[:, j] - z_b[:, j].mean()) / z_b[:, j].std(unbiased=False) for j in range(d)]
    expected = 0.0
    for i in range(d):
        for j in range(d):
            c = float((a[i] * b[j]).sum()) / n
            expected += (1 - c) ** 2 if i == j else lam * c**2
    assert BarlowTwinsLoss(lam, eps=0.0)(z_a, z_b).item() == pytest.approx(expected, abs=1e-4)


def test_barlow_twins_minimum_at_identical_decorrelated_views() -> None:
    z = torch.linalg.qr(torch.randn(32, 4))[0] * 10  # orthogonal columns: decorrelated features
    z = z - z.mean(0)
    loss = BarlowTwinsLoss()
    assert loss(z, z).item() < 0.05 < loss(z, torch.randn(32, 4)).item()


def test_vicreg_matches_loop() -> None:
    z_a, z_b = torch.randn(10, 3).double(), torch.randn(10, 3).double()
    n, d = z_a.shape
    invariance = sum(float((z_a[i, j] - z_b[i, j]) ** 2) for i in range(n) for j in range(d)) / (n * d)

    def var_cov(z: torch.Tensor) -> tuple[float, float]:
        mean = [float(z[:, j].mean()) for j in range(d)]
        cov = [[sum((float(z[k, i]) - mean[i]) * (float(z[k, j]) - mean[j]) for k in range(n)) / (n - 1) for j in range(d)] for i in range(d)]
        var_term = sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        cov_term = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return var_term, cov_term

    (va, ca), (vb, cb) = var_cov(z_a), var_cov(z_b)
    official = 25 * invariance + 25 * (va + vb) / 2 + 1 * (ca + cb)  # facebookresearch/vicreg: std_loss halved
    assert VICRegLoss()(z_a, z_b).item() == pytest.approx(official, abs=1e-4)
    paper_sum = 25 * invariance + 25 * (va + vb) + 1 * (ca + cb)
    assert VICRegLoss(variance_mean=False)(z_a, z_b).item() == pytest.approx(paper_sum, abs=1e-4)


# --- DINO ---------------------------------------------------------------------------------------------


def test_dino_loss_matches_loop_and_updates_center() -> None:
    student = [torch.randn(4, 6) for _ in range(3)]
    teacher = [torch.randn(4, 6) for _ in range(2)]
    loss_fn = DINOLoss(out_dim=6, student_temp=0.1, teacher_temp=0.05, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, 6) * 0.1)
    center = loss_fn.center.clone()
    expected, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i == j:
                continue
            for r in range(4):
                q = [math.exp((float(t[r, c]) - float(center[0, c])) / 0.05) for c in range(6)]
                q = [v / sum(q) for v in q]
                logz = math.log(sum(math.exp(float(s[r, c]) / 0.1) for c in range(6)))
                expected += -sum(q[c] * (float(s[r, c]) / 0.1 - logz) for c in range(6)) / 4
            pairs += 1
    assert loss_fn(student, teacher).item() == pytest.approx(expected / pairs, abs=1e-4)
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * torch.cat(teacher).mean(0, keepdim=True))


def test_dino_teacher_temperature_warmup() -> None:
    loss_fn = DINOLoss(out_dim=4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10)
    assert loss_fn.current_teacher_temp == pytest.approx(0.04)
    loss_fn.set_step(5)
    assert loss_fn.current_teacher_temp == pytest.approx(0.055)
    loss_fn.set_step(50)
    assert loss_fn.current_teacher_temp == pytest.approx(0.07)
    resumed = DINOLoss(out_dim=4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10)
    loss_fn.set_step(5)
    resumed.load_state_dict(loss_fn.state_dict())  # the step is in the checkpoint: a resumed run continues the warm-up
    assert resumed.current_teacher_temp == pytest.approx(0.055)


# --- SwAV ---------------------------------------------------------------------------------------------


def test_sinkhorn_gives_equipartitioned_codes() -> None:
    scores = F.normalize(torch.randn(64, 8), dim=1) @ F.normalize(torch.randn(8, 8), dim=1).T
    codes = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(codes.sum(1), torch.ones(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(codes.sum(0), torch.full((8,), 64 / 8), atol=1e-2, rtol=0)


def test_swav_loss_matches_loop() -> None:
    scores = [torch.randn(8, 5) * 0.5 for _ in range(3)]
    loss = SwAVLoss(temperature=0.1, epsilon=0.05, sinkhorn_iterations=3)(scores, num_global=2)
    expected, pairs = 0.0, 0
    for i in range(2):
        q = sinkhorn(scores[i], 0.05, 3)
        for j in range(3):
            if j == i:
                continue
            log_p = torch.log_softmax(scores[j].double() / 0.1, dim=1)
            expected += float(-(q.double() * log_p).sum(1).mean())
            pairs += 1
    assert loss.item() == pytest.approx(expected / pairs, abs=1e-4)


# --- Margin contrastive, triplet, NCE -----------------------------------------------------------------


def test_margin_contrastive_matches_loop() -> None:
    z_a, z_b, m = torch.randn(4, 3), torch.randn(4, 3), 1.0
    x = [unit(v) for v in torch.cat([z_a, z_b]).double()]
    ids = [0, 1, 2, 3, 0, 1, 2, 3]
    sim = [dist(x[i], x[j]) ** 2 / 2 for i in range(8) for j in range(8) if i != j and ids[i] == ids[j]]
    dis = [max(0.0, m - dist(x[i], x[j])) ** 2 / 2 for i in range(8) for j in range(8) if ids[i] != ids[j]]
    expected = sum(sim) / len(sim) + sum(dis) / len(dis)
    assert ContrastiveMarginLoss(m)(z_a, z_b).item() == pytest.approx(expected, abs=TOL)


def test_margin_contrastive_minimum_for_separated_pairs() -> None:
    eye = torch.eye(4) * 5
    assert ContrastiveMarginLoss(margin=1.0)(eye, eye).item() == pytest.approx(0.0, abs=1e-6)


def _triplet_loop(z_a: torch.Tensor, z_b: torch.Tensor, labels: list[int], margin: float, mining: str) -> float:
    x = [unit(v) for v in torch.cat([z_a, z_b]).double()]
    ids = labels + labels
    m = len(x)
    losses = []
    for a in range(m):
        pos = [p for p in range(m) if p != a and ids[p] == ids[a]]
        neg = [n for n in range(m) if ids[n] != ids[a]]
        if mining == "batch_hard":
            if pos:
                losses.append(max(0.0, max(dist(x[a], x[p]) for p in pos) - min(dist(x[a], x[n]) for n in neg) + margin))
            continue
        for p in pos:
            d_ap = dist(x[a], x[p])
            if mining == "all":
                losses += [max(0.0, d_ap - dist(x[a], x[n]) + margin) for n in neg]
                continue
            farther = [dist(x[a], x[n]) for n in neg if dist(x[a], x[n]) > d_ap]
            d_an = min(farther) if farther else max(dist(x[a], x[n]) for n in neg)
            losses.append(max(0.0, d_ap - d_an + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "all"])
@pytest.mark.parametrize("use_labels", [False, True])
def test_triplet_matches_loop(mining: str, use_labels: bool) -> None:
    z_a, z_b = torch.randn(6, 3), torch.randn(6, 3)
    labels = [0, 1, 0, 2, 1, 2] if use_labels else list(range(6))
    loss = TripletLoss(0.3, mining, uses_labels=use_labels)(z_a, z_b, torch.tensor(labels))
    assert loss.item() == pytest.approx(_triplet_loop(z_a, z_b, labels, 0.3, mining), abs=TOL)


def test_nce_matches_loop() -> None:
    q, k, t, c = torch.randn(4, 3).double(), torch.randn(4, 3).double(), 0.5, 0.7
    sigmoid = lambda v: 1 / (1 + math.exp(-v))
    expected = 0.0
    for i in range(4):
        expected -= math.log(sigmoid(float(unit(q[i]) @ unit(k[i])) / t - c))
        expected -= sum(math.log(sigmoid(-(float(unit(q[i]) @ unit(k[j])) / t - c))) for j in range(4) if j != i)
    assert NCELoss(t, log_noise_ratio=c)(q, k).item() == pytest.approx(expected / 4, abs=TOL)


# --- NT-Xent and negative cosine similarity against loops; descent -------------------------------------------------


def ntxent_naive(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> float:
    """SimCLR eq. (1) written as a loop over the 2N anchors with explicit sums (no matrix tricks)."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z_a, z_b]).double()]
    n = z_a.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[positive]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_ntxent_matches_naive_loop(temperature: float) -> None:
    z_a, z_b = torch.randn(6, 5), torch.randn(6, 5)
    assert NTXentLoss(temperature)(z_a, z_b).item() == pytest.approx(ntxent_naive(z_a, z_b, temperature), abs=1e-5)


def test_ntxent_is_symmetric_in_views_and_scale_invariant() -> None:
    z_a, z_b = torch.randn(8, 4), torch.randn(8, 4)
    loss = NTXentLoss(0.3)
    assert loss(z_a, z_b).item() == pytest.approx(loss(z_b, z_a).item(), abs=1e-6)
    assert loss(3 * z_a, 0.5 * z_b).item() == pytest.approx(loss(z_a, z_b).item(), abs=1e-5)


def test_ntxent_aligned_orthogonal_views_beat_random_views() -> None:
    eye = torch.eye(8)
    loss = NTXentLoss(0.1)
    assert loss(eye, eye).item() < loss(eye, torch.randn(8, 8)).item()
    assert loss(eye, eye).item() < 0.01  # near the minimum: positives at cos 1, negatives at cos 0


def test_ntxent_decreases_under_gradient_steps() -> None:
    z_a, z_b = torch.randn(16, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True)
    loss, optimizer = NTXentLoss(0.5), torch.optim.SGD([z_a, z_b], lr=0.5)
    first = loss(z_a, z_b).item()
    for _ in range(20):
        optimizer.zero_grad()
        loss(z_a, z_b).backward()
        optimizer.step()
    assert loss(z_a, z_b).item() < first - 0.1


def test_ntxent_validates_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="equal shape"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))


def test_negative_cosine_matches_reference_and_minimum() -> None:
    p, z = torch.randn(7, 5), torch.randn(7, 5)
    expected = -sum(float(p[i] @ z[i] / (p[i].norm() * z[i].norm())) for i in range(7)) / 7
    loss = NegativeCosineSimilarity()
    assert loss(p, z).item() == pytest.approx(expected, abs=1e-6)
    assert loss(z, 2 * z).item() == pytest.approx(-1.0, abs=1e-6)
