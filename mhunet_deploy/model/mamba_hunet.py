"""Mamba-HUNet: a VMamba (SS2D v0) U-Net with a light HUNet-style convolutional upsampling head.

No public Mamba-HUNet code exists; the paper's text is the spec. Choices it leaves open, made here:

- Encoder/decoder follow Mamba-UNet: 4x4 patch embedding (Conv2d stride 4 + LayerNorm), four stages of
  VSS blocks at C, 2C, 4C, 8C channels with patch merging (2x2 concat, LayerNorm, Linear 4C->2C) between
  them; the decoder mirrors stages 3..1 with patch expanding (Linear C->2C, pixel shuffle to 2x,
  LayerNorm), concatenates the encoder skip, fuses it with a Linear back to the stage width, and runs the
  same number of VSS blocks as the encoder stage. The bottleneck is encoder stage 4.
- VSS block: x + DropPath(SS2D(LayerNorm(x))), channels-last, SS2D "v0" (ARCHITECTURE.md, The model):
  d_state N = 16, ssm_ratio 2 (Di = 2C), dt_rank R = ceil(C/16), depthwise 3x3 conv + SiLU, K = 4 scan
  orders (row-major, column-major, both reversed), one selective-scan call over K*Di channels with
  grouped B/C (G = K), out LayerNorm, SiLU(z) gate, out projection. No MLP inside the block (v0).
- Initialisation of A_logs (log 1..N), D (ones), dt_proj (uniform +-R^-0.5 weights, bias =
  softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1]) follows Mamba's defaults.
- HUNet-style head in place of Mamba-UNet's "final patch expand x4": two stages of
  ConvTranspose2d(2x2, stride 2) -> concat a full-/half-resolution conv stem feature -> Conv3x3 ->
  BatchNorm -> ReLU -> Dropout2d, then a 1x1 conv to one lesion logit. The conv stem (two 3x3 conv+BN+
  ReLU layers at 256 and 128 px) is our addition: MS lesions can be a few voxels wide, finer than the
  4x4 patch grid, and a cheap full-resolution path keeps their edges.
- Output: one logit channel per entry of ``ModelConfig.outputs``, sigmoid at inference: channel 0 is
  the lesion logit (Dice + BCE), channel 1, when present, the brain logit, so brain extraction costs no
  second network, engine or pass (issue #12: skull-on clinical scans put lesions on the scalp otherwise).
- Stochastic depth rises linearly over the encoder blocks (as in Swin/VMamba), decoder blocks reuse it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.selective_scan.torch_scan import active_scan_impl, selective_scan

K_DIRECTIONS = 4
LESION_PRIOR_LOGIT = -4.0


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the architecture; stored verbatim in every checkpoint's JSON."""

    name: str = "light"
    embed_dim: int = 32
    depths: tuple[int, ...] = (2, 2, 2, 2)
    d_state: int = 16
    ssm_ratio: float = 2.0
    drop_path: float = 0.05
    head_dropout: float = 0.1
    stem_channels: int = 16
    img_size: int = 256
    patch_size: int = 4
    in_chans: int = 1
    #: One logit channel each, in this order; "lesion" is always first. ("lesion", "brain") adds the
    #: brain-extraction output. Checkpoints that predate the field load as lesion-only.
    outputs: tuple[str, ...] = ("lesion",)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["depths"] = tuple(d["depths"])
        d["outputs"] = tuple(d.get("outputs", ("lesion",)))
        return cls(**d)

    def __post_init__(self) -> None:
        if not self.outputs or self.outputs[0] != "lesion" or len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs must start with 'lesion' and not repeat, got {self.outputs}")


CONFIGS: dict[str, ModelConfig] = {
    "light": ModelConfig(outputs=("lesion", "brain")),
    "paper": ModelConfig(
        name="paper", embed_dim=96, drop_path=0.2, stem_channels=32, outputs=("lesion", "brain")
    ),
}


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``; the very tensor when it already is (a traced no-op ``to`` would be a Cast)."""
    return t if t.dtype == dtype else t.to(dtype)


def _fp32_island(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for an FP32 island, only where autocast is on (fp32 runs and exports unchanged)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@functools.cache
def fused_cpu_scan_available() -> bool:
    """Whether numba, which compiles the fused CPU scan (``ss2d_cpu``), is installed."""
    return importlib.util.find_spec("numba") is not None


def fused_cpu_scan(x: torch.Tensor) -> bool:
    """Whether SS2D runs its scan and merge as the fused CPU kernel (``ss2d_cpu``) for input x: CPU
    inference in float32 (no autograd, autocast or tracing) with the default scan ("auto"), numba
    installed. Everything else, the FP32 reference path included, runs ``selective_scan``."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and active_scan_impl() == "auto"
        and fused_cpu_scan_available()
    )


class DropPath(nn.Module):
    """Per-sample stochastic depth; identity at inference so exports never see it."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class SS2D(nn.Module):
    """2D selective scan, VMamba "v0" (ARCHITECTURE.md, The model). Channels-last in and out."""

    def __init__(self, dim: int, d_state: int = 16, ssm_ratio: float = 2.0) -> None:
        super().__init__()
        self.d_inner = di = int(ssm_ratio * dim)
        self.d_state = n = d_state
        self.dt_rank = r = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * di, bias=False)
        self.conv2d = nn.Conv2d(di, di, 3, padding=1, groups=di, bias=True)
        k = K_DIRECTIONS
        bound = di**-0.5
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, di).uniform_(-bound, bound))
        dt_std = r**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r).uniform_(-dt_std, dt_std))
        dt = torch.exp(torch.empty(k, di).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, n + 1, dtype=torch.float32).repeat(k * di, 1)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(k * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)
        xi, z = xz.chunk(2, dim=-1)
        fused = fused_cpu_scan(xi)
        if fused:  # the depthwise conv is ~4x faster on a contiguous channels-last input on the CPU
            xi = xi.contiguous()
        xi = F.silu(self.conv2d(xi.permute(0, 3, 1, 2)))  # (B, Di, H, W)
        y = self._fused_cpu_scan(xi) if fused else self._scan(xi)
        y = y * F.silu(z)
        return self.out_proj(y)

    def _fused_cpu_scan(self, xi: torch.Tensor) -> torch.Tensor:
        """The four orders' scans, merged, then out_norm: channels-last (B, H, W, Di), from ``ss2d_cpu``.

        x_proj runs on the pixels in their channels-last order; the kernel visits them in each scan
        order and computes dt_proj, its bias and softplus itself, so no reordered copy and no
        (B, L, K, Di) tensor is made.
        """
        from . import ss2d_cpu

        b, di, h, w = xi.shape
        u = xi.permute(0, 2, 3, 1).reshape(b, h * w, di)  # free: conv2d wrote channels-last
        x_dbl = (u @ self.x_proj_weight.permute(2, 0, 1).reshape(di, -1)).view(b, h * w, K_DIRECTIONS, -1)
        A = -torch.exp(self.A_logs.float())
        y = ss2d_cpu.ss2d_scan(u, x_dbl, self.dt_projs_weight, self.dt_projs_bias, A, self.Ds, h, w)
        return self.out_norm(y.view(b, h, w, di))

    def _scan(self, xi: torch.Tensor) -> torch.Tensor:
        """The four orders' scans through ``selective_scan``, merged, then out_norm: (B, H, W, Di)."""
        b, _, h, w = xi.shape
        length = h * w
        rows = xi.reshape(b, -1, length)
        cols = xi.transpose(2, 3).reshape(b, -1, length)
        x_hwwh = torch.stack([rows, cols], dim=1)
        xs = torch.cat([x_hwwh, torch.flip(x_hwwh, dims=[-1])], dim=1)  # (B, K, Di, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        # FP32 island (ARCHITECTURE.md, Precision): the scan's y reaches ~3.5e5 with the trained weights
        # (fp16 max 65504), so the scan gives fp32 y whatever its data type (contract v2) and the merge of
        # the four orders and out_norm run in fp32; out_norm's output is O(1) and the SiLU(z) gate /
        # out_proj return to the autocast dtype. u, delta, B, C go in as the conv and x_proj / dt_proj
        # made them (fp16 under autocast), in u's one dtype: an einsum that autocast leaves alone (dt_proj
        # with dt_rank 1 is a Mul) promotes to fp32. Autocast is off inside, so the torch scans' matmuls
        # keep their fp32 state. A no-op in fp32 (no casts are recorded, no autocast context is entered).
        data = xs.dtype
        with _fp32_island(xi.device.type):
            y = selective_scan(
                xs.reshape(b, -1, length),
                _as_dtype(dts, data).reshape(b, -1, length),
                -torch.exp(self.A_logs.float()),
                _as_dtype(bs, data).contiguous(),
                _as_dtype(cs, data).contiguous(),
                self.Ds.float(),
                self.dt_projs_bias.float().reshape(-1),
                True,
            ).reshape(b, K_DIRECTIONS, -1, length)
            inv = torch.flip(y[:, 2:4], dims=[-1])
            wh = y[:, 1].reshape(b, -1, w, h).transpose(2, 3).reshape(b, -1, length)
            invwh = inv[:, 1].reshape(b, -1, w, h).transpose(2, 3).reshape(b, -1, length)
            y = (y[:, 0] + inv[:, 0] + wh + invwh).transpose(1, 2).reshape(b, h, w, -1)
            return self.out_norm(y)


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LayerNorm(x))), channels-last."""

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ssm = SS2D(dim, d_state, ssm_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ssm(self.norm(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> Linear(4C, 2C): halves H and W."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Linear(C, 2C) -> pixel shuffle to (2H, 2W, C/2) -> LayerNorm: doubles H and W."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = self.expand(x).reshape(b, h, w, 2, 2, c // 2)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c // 2)
        return self.norm(x)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HUNetHead(nn.Module):
    """Two transposed-conv x2 stages fused with the conv stem: 64x64 tokens -> 256x256 logits."""

    def __init__(self, dim: int, stem: int, dropout: float, out_channels: int = 1) -> None:
        super().__init__()
        c1, c2 = max(dim // 2, stem), max(dim // 4, stem)
        self.up1 = nn.ConvTranspose2d(dim, c1, 2, stride=2)
        self.fuse1 = nn.Sequential(conv_bn_relu(c1 + stem, c1), nn.Dropout2d(dropout))
        self.up2 = nn.ConvTranspose2d(c1, c2, 2, stride=2)
        self.fuse2 = nn.Sequential(conv_bn_relu(c2 + stem, c2), nn.Dropout2d(dropout))
        self.out = nn.Conv2d(c2, out_channels, 1)
        # Lesions are ~0.1-1 % of voxels: start at that prior instead of p = 0.5, so early steps
        # learn lesions rather than spend themselves pushing every pixel to background. The brain
        # fills a large part of a slice: its channel starts at p = 0.5.
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.out.bias[0] = LESION_PRIOR_LOGIT

    def forward(self, x: torch.Tensor, s_half: torch.Tensor, s_full: torch.Tensor) -> torch.Tensor:
        x = self.fuse1(torch.cat([self.up1(x), s_half], dim=1))
        x = self.fuse2(torch.cat([self.up2(x), s_full], dim=1))
        return self.out(x)


class MambaHUNet(nn.Module):
    """Slices (B, 1, 256, 256) -> logits (B, len(config.outputs), 256, 256): lesion, then brain."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ModelConfig()
        dims = [cfg.embed_dim * 2**i for i in range(len(cfg.depths))]
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]

        def blocks(i: int) -> nn.Sequential:
            return nn.Sequential(
                *[
                    VSSBlock(dims[i], cfg.d_state, cfg.ssm_ratio, rates[starts[i] + j])
                    for j in range(cfg.depths[i])
                ]
            )

        self.stem_full = conv_bn_relu(cfg.in_chans, cfg.stem_channels)
        self.stem_half = conv_bn_relu(cfg.stem_channels, cfg.stem_channels, stride=2)
        self.patch_embed = nn.Conv2d(cfg.in_chans, dims[0], cfg.patch_size, stride=cfg.patch_size)
        self.embed_norm = nn.LayerNorm(dims[0])
        n = len(dims)
        self.encoder = nn.ModuleList(blocks(i) for i in range(n))
        self.merges = nn.ModuleList(PatchMerging(dims[i]) for i in range(n - 1))
        self.expands = nn.ModuleList(PatchExpand(dims[i + 1]) for i in range(n - 1))
        self.fuses = nn.ModuleList(nn.Linear(2 * dims[i], dims[i], bias=False) for i in range(n - 1))
        self.decoder = nn.ModuleList(blocks(i) for i in range(n - 1))
        self.dec_norm = nn.LayerNorm(dims[0])
        self.head = HUNetHead(dims[0], cfg.stem_channels, cfg.head_dropout, len(cfg.outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_full = self.stem_full(x)
        s_half = self.stem_half(s_full)
        t = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        skips = []
        for i, stage in enumerate(self.encoder):
            t = stage(t)
            if i < len(self.merges):
                skips.append(t)
                t = self.merges[i](t)
        for i in reversed(range(len(self.decoder))):
            t = self.fuses[i](torch.cat([self.expands[i](t), skips[i]], dim=-1))
            t = self.decoder[i](t)
        t = self.dec_norm(t).permute(0, 3, 1, 2)
        return self.head(t, s_half, s_full)


def build_model(config: ModelConfig | str = "light") -> MambaHUNet:
    """Build a model from a config or a named config ("light", "paper")."""
    if isinstance(config, str):
        config = CONFIGS[config]
    return MambaHUNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: MambaHUNet, batch: int = 1) -> dict[str, int]:
    """FLOPs of one forward pass at (batch, 1, 256, 256), counted on the real graph.

    torch's FlopCounterMode counts the matrix and convolution ops; the selective scan is elementwise
    work it does not see, so forward hooks count it from the actual (B, D, L, N) of every SS2D call:
    per element and state, exp(dA), dA, dB*u, the state update (2) and the C contraction (2) = 7 FLOPs,
    plus softplus and the D skip per (B, D, L) element.
    """
    from torch.utils.flop_counter import FlopCounterMode

    scan = 0

    def hook(mod: SS2D, inp: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        nonlocal scan
        b, h, w, _ = inp[0].shape
        d = K_DIRECTIONS * mod.d_inner
        scan += b * d * h * w * (7 * mod.d_state + 4)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SS2D)]
    cfg = model.config
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for hnd in handles:
            hnd.remove()
        model.train(was_training)
    dense = counter.get_total_flops()
    return {"dense": dense, "scan": scan, "total": dense + scan}
