"""DINOv2's and DINOv3's loss pieces against the official formulas rewritten plainly: the Sinkhorn-Knopp teachers of
the class-token and masked-patch terms (dinov2 `sinkhorn_knopp_teacher`) and the Gram loss (dinov3 GramLoss)."""

from __future__ import annotations

import pytest
import torch

from ssl_train.losses import DINOLoss, GramLoss, IBOTPatchLoss


def dinov2_sinkhorn(teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """dinov2/loss/dino_clstoken_loss.py `sinkhorn_knopp_teacher`, one process, rewritten with explicit loops over rows."""
    q = torch.exp(teacher_output.double() / teacher_temp).t()  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        for row in range(k):  # each prototype's total weight: 1 / K
            q[row] = q[row] / q[row].sum() / k
        for col in range(b):  # each sample's total weight: 1 / B
            q[:, col] = q[:, col] / q[:, col].sum() / b
    return (q * b).t().float()


def test_sinkhorn_centring_equals_the_dinov2_teacher_and_leaves_the_centre_alone() -> None:
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(6, 16, generator=g) for _ in range(4)]  # 2 global views, then 2 local crops
    teacher = [torch.randn(6, 16, generator=g) * 0.5 for _ in range(2)]
    loss_fn = DINOLoss(out_dim=16, student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10, centering="sinkhorn_knopp")
    loss_fn.set_step(5)  # halfway through the warm-up: 0.055
    codes = dinov2_sinkhorn(torch.cat(teacher), 0.055).split(6)  # both global views together, as dinov2 does
    torch.testing.assert_close(codes[0].sum(1), torch.ones(6))  # each row a distribution
    expected, terms = 0.0, 0
    for i, q in enumerate(codes):  # dinov2: global crop A's student vs B's teacher and back, every local crop vs both
        for j, s in enumerate(student):
            if i != j:
                expected += -(q * torch.log_softmax(s / 0.1, dim=-1)).sum(-1).mean()
                terms += 1
    torch.testing.assert_close(loss_fn(student, teacher), torch.as_tensor(expected / terms))
    assert terms == 6 and torch.equal(loss_fn.center, torch.zeros(1, 16))  # dinov2 does not update the centre with Sinkhorn
    centred = DINOLoss(out_dim=16, teacher_temp=0.055)
    assert not torch.allclose(centred(student, teacher), loss_fn(student, teacher))  # a different teacher, not centring
    with pytest.raises(ValueError, match="loss.centering must be one of centering, sinkhorn_knopp"):
        DINOLoss(out_dim=16, centering="sinkhorn")


def test_patch_sinkhorn_spans_the_masked_patches_of_all_global_views() -> None:
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(3, 5, 8, generator=g) for _ in range(2)]
    teacher = [torch.randn(3, 5, 8, generator=g) for _ in range(2)]
    masks = [torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool(), torch.tensor([[0, 1, 0, 0, 1]] * 3).bool()]
    loss_fn = IBOTPatchLoss(out_dim=8, student_temp=0.1, teacher_temp=0.07, centering="sinkhorn_knopp")
    # dinov2: the teacher's masked patch tokens of the 2 x 3 images, gathered in order, get codes together (B = 13 here)
    masked_teacher = torch.cat([t[m] for t, m in zip(teacher, masks, strict=True)])
    codes = dinov2_sinkhorn(masked_teacher, 0.07)
    # dinov2 forward_masked: each masked patch weighted 1 / (its image's masked count), summed, / the number of images
    total, row = 0.0, 0
    for s, m in zip(student, masks, strict=True):
        for i in range(3):
            count = int(m[i].sum())
            for p in range(5):
                if m[i, p]:
                    total += -(codes[row] * torch.log_softmax(s[i, p] / 0.1, dim=-1)).sum() / count
                    row += 1
    torch.testing.assert_close(loss_fn(student, teacher, masks), torch.as_tensor(total / 6))
    assert row == 13 and torch.equal(loss_fn.center, torch.zeros(1, 8))
    nothing = [torch.zeros(3, 5, dtype=torch.bool)] * 2  # no masked patch in the batch: 0, no NaN
    assert float(loss_fn(student, teacher, nothing)) == 0.0


def gram_reference(student: torch.Tensor, teacher: torch.Tensor, img_level: bool, remove_neg: bool, only_teacher: bool) -> torch.Tensor:
    """dinov3/loss/gram_loss.py with normalisation, the similarities written as loops of dot products."""
    s = torch.nn.functional.normalize(student, dim=-1)
    t = torch.nn.functional.normalize(teacher, dim=-1)
    groups = [(s[b], t[b]) for b in range(len(s))] if img_level else [(s.flatten(0, 1), t.flatten(0, 1))]
    errors = []
    for xs, xt in groups:
        for i in range(len(xs)):
            for j in range(len(xs)):
                cs, ct = float(xs[i] @ xs[j]), float(xt[i] @ xt[j])
                if remove_neg:
                    cs, ct = max(cs, 0.0), max(ct, 0.0)
                elif only_teacher:
                    cs = 0.0 if (cs < 0 and ct < 0) else cs
                    ct = max(ct, 0.0)
                errors.append((cs - ct) ** 2)
    return torch.tensor(sum(errors) / len(errors))


@pytest.mark.parametrize(("img_level", "remove_neg", "only_teacher"), [(True, False, False), (False, False, False), (True, True, False), (False, False, True)])
def test_gram_loss_equals_the_dinov3_formula(img_level: bool, remove_neg: bool, only_teacher: bool) -> None:
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    loss_fn = GramLoss(normalized=True, img_level=img_level, remove_neg=remove_neg, remove_only_teacher_neg=only_teacher)
    torch.testing.assert_close(loss_fn(student, teacher), gram_reference(student, teacher, img_level, remove_neg, only_teacher))
    assert float(loss_fn(teacher * 3.0, teacher)) < 1e-10  # the same directions at another scale: 0


def test_gram_loss_pulls_the_student_only_and_refuses_bad_input() -> None:
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 4, 6, generator=g, requires_grad=True), torch.randn(2, 4, 6, generator=g, requires_grad=True)
    loss_fn = GramLoss()
    before = float(loss_fn(student, teacher).detach())
    loss_fn(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None
    with torch.no_grad():
        student -= 2.0 * student.grad
    assert float(loss_fn(student, teacher)) < before
    with pytest.raises(ValueError, match="at most one of remove_neg and remove_only_teacher_neg"):
        GramLoss(remove_neg=True, remove_only_teacher_neg=True)
    with pytest.raises(ValueError, match="one \\(B, P, D\\) shape"):
        loss_fn(student[0], teacher[0])


def _dino_call(loss: DINOLoss, *crops: torch.Tensor) -> torch.Tensor:
    return loss(list(crops), list(crops[:2]))


def _patch_call(loss: IBOTPatchLoss, *student: torch.Tensor) -> torch.Tensor:
    """Teacher outputs and masks made row by row from the student's (each rank sees its rows' own), some rows unmasked."""
    return loss(list(student), [s.detach().flip(-1) * 2 for s in student], [s.detach()[..., 0] > 0.3 for s in student])


@pytest.mark.slow
@pytest.mark.ddp
def test_sinkhorn_teachers_in_two_processes_equal_one() -> None:
    from ssl_train.verify_dist import EQUAL, Case, verify

    g = torch.Generator().manual_seed(4)
    crops = [torch.randn(8, 5, generator=g) * 0.5 for _ in range(3)]
    patches = [torch.randn(8, 4, 5, generator=g) for _ in range(2)]
    verdicts = verify(
        {
            "dino_sinkhorn": Case(DINOLoss(out_dim=5, teacher_temp=0.07, centering="sinkhorn_knopp"), crops, call=_dino_call),
            "patch_sinkhorn": Case(IBOTPatchLoss(out_dim=5, teacher_temp=0.07, centering="sinkhorn_knopp"), patches, call=_patch_call),
        }
    )
    assert all(v.verdict == EQUAL for v in verdicts.values()), [v.line() for v in verdicts.values()]
