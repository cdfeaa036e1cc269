import torch

from online_denoise.loss import HDR_EPS, get_loss, hdr_loss, l1_loss, l2_loss


def test_hdr_loss_value():
    f = torch.tensor([1.0, 0.5])
    y = torch.tensor([0.0, 1.0])
    expected = ((1.0 / (1.0 + HDR_EPS)) ** 2 + (0.5 / (0.5 + HDR_EPS)) ** 2) / 2
    assert torch.isclose(hdr_loss(f, y), torch.tensor(expected))


def test_hdr_loss_gradient_has_no_denominator_term():
    # With the denominator detached: d/df mean((f - y)^2 / (sg(f) + eps)^2) = 2 (f - y) / (f + eps)^2 / n.
    # Differentiating through the denominator would add -2 (f - y)^2 / (f + eps)^3 / n.
    f = torch.tensor([0.3, 2.0, 0.05, 7.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.5, 0.0, 9.0], dtype=torch.float64)
    hdr_loss(f, y).backward()
    analytic = 2 * (f.detach() - y) / (f.detach() + HDR_EPS) ** 2 / f.numel()
    torch.testing.assert_close(f.grad, analytic)


def test_hdr_loss_guards_negative_predictions():
    # f = -eps would make an unguarded (f + eps)^2 vanish; the guard keeps it at eps^2.
    f = torch.tensor([-HDR_EPS, -5.0], requires_grad=True)
    y = torch.tensor([0.2, 0.2])
    loss = hdr_loss(f, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
    torch.testing.assert_close(f.grad, 2 * (f.detach() - y) / HDR_EPS ** 2 / 2)


def test_l1_l2():
    f, y = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    assert l1_loss(f, y).item() == 1.5
    assert l2_loss(f, y).item() == 2.5
    assert get_loss("l2") is l2_loss


def test_hdr_loss_clip_bounds_a_firefly_target_and_leaves_the_rest():
    # A target sample 3000x its prediction (a path that found the sun): bounded, it weighs at most clip^2.
    f = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([300.0, 0.2, 2.5], dtype=torch.float64)
    clip = 64.0
    loss = hdr_loss(f, y, clip=clip)
    loss.backward()
    bound = 0.1 + clip * (0.1 + HDR_EPS)
    clipped = torch.tensor([bound, 0.2, 2.5], dtype=torch.float64)
    torch.testing.assert_close(loss, hdr_loss(f.detach(), clipped))
    assert loss.item() * 3 <= clip ** 2 + 1  # the firefly pixel's loss is about clip^2, not (3000)^2
    torch.testing.assert_close(f.grad, 2 * (f.detach() - clipped) / (f.detach() + HDR_EPS) ** 2 / 3)
    # targets within the bound, above and below the prediction, are as they were
    torch.testing.assert_close(hdr_loss(f.detach()[1:], y[1:], clip=clip), hdr_loss(f.detach()[1:], y[1:]))


def test_target_clip_is_the_hdr_losss_only():
    assert get_loss("hdr", target_clip=8.0)(torch.tensor([1.0]), torch.tensor([100.0])).item() < 8.0 ** 2 + 1
    for name in ("l2", "l1", "l0"):
        try:
            get_loss(name, target_clip=8.0)
        except ValueError as e:
            assert "--target-clip" in str(e) and name in str(e)
        else:
            raise AssertionError(f"--loss {name} took a target clip it cannot apply")
