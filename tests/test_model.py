"""Mamba-HUNet: shapes, the named configs' budgets, SS2D scan orders, counted FLOPs."""

from __future__ import annotations

import pytest
import torch

from mhunet_deploy.model.mamba_hunet import (
    CONFIGS,
    K_DIRECTIONS,
    SS2D,
    ModelConfig,
    build_model,
    count_flops,
    count_parameters,
)
from mhunet_deploy.ops.selective_scan import torch_scan as scan

TINY = ModelConfig(embed_dim=8, depths=(1, 1, 1, 1), stem_channels=4, img_size=64)


def test_forward_shape_any_batch() -> None:
    model = build_model(TINY).eval()
    with torch.no_grad():
        for b in (1, 3):
            assert model(torch.randn(b, 1, 96, 64)).shape == (b, 1, 96, 64)


def test_brain_output_is_a_second_channel_and_old_configs_load_lesion_only() -> None:
    two = build_model(ModelConfig(**{**TINY.to_dict(), "outputs": ("lesion", "brain")})).eval()
    with torch.no_grad():
        out = two(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64)
    # lesion starts at its rare-class prior, brain at p = 0.5
    assert two.head.out.bias[0] < -3 and two.head.out.bias[1] == 0
    legacy = {k: v for k, v in TINY.to_dict().items() if k != "outputs"}
    assert ModelConfig.from_dict(legacy).outputs == ("lesion",)
    with pytest.raises(ValueError, match="must start with 'lesion'"):
        ModelConfig(outputs=("brain", "lesion"))


def test_light_within_budget_and_paper_is_mamba_unet_sized() -> None:
    light = count_parameters(build_model("light"))
    paper = count_parameters(build_model("paper"))
    assert light <= 8_000_000
    assert CONFIGS["paper"].embed_dim == 96 and CONFIGS["paper"].depths == (2, 2, 2, 2)
    assert paper > 3 * light


def test_ss2d_dimensions_follow_design() -> None:
    m = SS2D(dim=96)
    assert m.d_inner == 192 and m.dt_rank == 6 and m.d_state == 16
    assert m.x_proj_weight.shape == (K_DIRECTIONS, 6 + 32, 192)
    assert m.A_logs.shape == (K_DIRECTIONS * 192, 16)
    assert torch.all(-torch.exp(m.A_logs) < 0)


def test_ss2d_scans_four_orders_in_one_grouped_call() -> None:
    """One scan call with K*Di channels and G = K; the identity scan (y = D*u) must give back
    each order's input merged, i.e. 4x the conv output, which proves the flips/transposes invert."""
    m = SS2D(dim=8).eval()
    calls = []

    def identity(u, delta, A, B, C, D, delta_bias, softplus):
        calls.append((u.shape, B.shape))
        return u

    scan.register_scan_impl("identity-test", identity)
    x = torch.randn(2, 5, 7, 8)
    with torch.no_grad(), scan.use_scan_impl("identity-test"):
        xi = torch.nn.functional.silu(m.conv2d(m.in_proj(x).chunk(2, -1)[0].permute(0, 3, 1, 2)))
        captured = {}
        m.out_norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("y", inp[0]))
        m(x)
    assert calls == [(torch.Size([2, 4 * 16, 35]), torch.Size([2, 4, 16, 35]))]
    torch.testing.assert_close(captured["y"], 4 * xi.permute(0, 2, 3, 1))


def test_flops_are_counted_and_scale_with_batch() -> None:
    model = build_model(TINY)
    one, two = count_flops(model, 1), count_flops(model, 2)
    assert one["dense"] > 0 and one["scan"] > 0
    assert two["total"] == pytest.approx(2 * one["total"], rel=1e-6)


def test_drop_path_only_in_training() -> None:
    """Stochastic depth changes training passes and nothing else: eval passes agree, training passes
    with drop_path differ, and without drop_path (head dropout off too) training passes agree, so the
    difference is drop path's, not BatchNorm's or dropout's."""
    tiny = {"embed_dim": 8, "depths": (1, 1, 1, 1), "stem_channels": 4, "head_dropout": 0.0}
    torch.manual_seed(0)
    model = build_model(ModelConfig(**tiny, drop_path=0.5))
    x = torch.randn(4, 1, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))
        plain = build_model(ModelConfig(**tiny, drop_path=0.0)).train()
        torch.testing.assert_close(plain(x), plain(x))


@pytest.mark.parametrize("dim", [8, 32], ids=["dt_rank-1", "dt_rank-2"])  # dt_proj a Mul, a matmul
def test_ss2d_under_fp16_autocast_feeds_the_scan_fp16_data_and_merges_its_fp32_y(dim: int) -> None:
    """Contract v2 in the torch model (ARCHITECTURE.md, Precision): under fp16 autocast the scan gets
    x_proj / dt_proj's fp16 u, delta, B, C as they are, fp32 A, D, delta_bias, and gives fp32 y, which
    the merge keeps fp32 into out_norm. CPU autocast stands in for CUDA's (the same SS2D code path)."""
    m = SS2D(dim=dim).eval()
    seen = []

    def recording(*args):
        y = scan.selective_scan_chunked(*args)
        seen.append(([a.dtype for a in args[:7]], y.dtype))
        return y

    scan.register_scan_impl("recording-test", recording)
    x = torch.randn(2, 5, 7, dim)
    captured = {}
    m.out_norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("y", inp[0]))
    with torch.no_grad(), scan.use_scan_impl("recording-test"):
        ref = m(x)
        captured.clear()
        with torch.autocast("cpu", dtype=torch.float16):
            half = m(x)
    f16, f32 = torch.float16, torch.float32
    assert seen[0] == ([f32] * 7, f32)
    assert seen[1] == ([f16, f16, f32, f16, f16, f32, f32], f32)
    assert captured["y"].dtype == f32 and half.dtype == f16
    torch.testing.assert_close(half.float(), ref, atol=2e-2, rtol=2e-2)
