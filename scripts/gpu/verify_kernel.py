# ruff: noqa: E501, E741, B023, SIM115  (GPU script: short shape names l/d/b, long report lines)
"""Correctness and speed of our selective-scan CUDA kernel on a GPU (run by scripts/gpu/verify_kernel.sh).

(a) correctness vs an fp64 reference: the four stage shapes of both configs, odd lengths, G=4 and G=1,
    fp32 (rel L2 <= 1e-5) and fp16 I/O (<= 1e-2), outputs poisoned with NaN, fresh inputs per check;
    plus every kernel configuration (items x cpw) on odd lengths.
(b) speed with CUDA events (median), input sets rotated beyond L2: ours vs the pure-PyTorch chunked scan
    (mhunet_deploy.model.scan.selective_scan_chunked, when present) vs mamba-ssm's selective_scan_fn
    (built from .whl/mamba_ssm-*.tar.gz in the background while (a) runs; skipped with a message if it
    fails or is not ready in time); achieved GB/s vs the measured device-to-device copy bandwidth.
Writes results.json and results.md into --out; prints the table last. --quick: (a) only.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
T0 = time.time()
BUDGET_S = float(os.environ.get("VERIFY_BUDGET_S", "420"))
STAGES = {
    "light": [(256, 4096), (512, 1024), (1024, 256), (2048, 64)],
    "paper": [(768, 4096), (1536, 1024), (3072, 256), (6144, 64)],
}
N = 16
CONFIGS = [(2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2), (16, 1), (16, 2)]


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def left():
    return BUDGET_S - (time.time() - T0)


# ---------------------------------------------------------------- mamba-ssm (background build)
def start_mamba_build(site: str):
    try:
        import selective_scan_cuda  # noqa: F401

        return None, "already importable"
    except Exception:
        pass
    sdists = sorted(glob.glob(str(REPO / ".whl" / "mamba_ssm-*.tar.gz")))
    if not sdists:
        return None, "no .whl/mamba_ssm-*.tar.gz carried"
    env = dict(
        os.environ,
        TORCH_CUDA_ARCH_LIST="9.0",
        MAMBA_FORCE_BUILD="TRUE",
        MAX_JOBS="16",
        CAUSAL_CONV1D_FORCE_BUILD="FALSE",
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        "--no-cache-dir",
        "--target",
        site,
        sdists[-1],
    ]
    logf = open(os.path.join(ARGS.out, "mamba_build.log"), "w")
    proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
    return proc, f"building {Path(sdists[-1]).name} in the background"


def get_mamba(proc, site: str, wait_s: float):
    if proc is not None:
        try:
            rc = proc.wait(timeout=max(1.0, wait_s))
        except subprocess.TimeoutExpired:
            proc.kill()
            return None, f"mamba-ssm build not done within {wait_s:.0f}s (killed); comparison skipped"
        if rc != 0:
            return None, f"mamba-ssm build failed (rc={rc}; see mamba_build.log); comparison skipped"
        sys.path.insert(0, site)
    try:
        import selective_scan_cuda as ssc  # the compiled extension itself, no package imports needed

        def fwd(u, delta, A, B, C, D, bias, softplus=True):
            return ssc.fwd(u, delta, A, B, C, D, None, bias, softplus)[0]

        return fwd, "mamba-ssm selective_scan_cuda.fwd"
    except Exception as e:  # noqa: BLE001
        return None, f"import selective_scan_cuda failed: {e!r}; comparison skipped"


# ---------------------------------------------------------------- reference and inputs
def make_inputs(b, d, l, g, dtype, dev="cuda", gen=None):
    u = torch.randn(b, d, l, device=dev, generator=gen).to(dtype)
    delta = (torch.rand(b, d, l, device=dev, generator=gen) * 2 - 1.5).to(dtype)  # softplus -> (0.2, 1.0)
    A = -torch.exp(torch.rand(d, N, device=dev, generator=gen) * 2.5 - 0.5)  # what A = -exp(A_log) gives
    Bm = torch.randn(b, g, N, l, device=dev, generator=gen).to(dtype)
    Cm = torch.randn(b, g, N, l, device=dev, generator=gen).to(dtype)
    D = torch.randn(d, device=dev, generator=gen)
    bias = torch.rand(d, device=dev, generator=gen) * 0.5 - 1.0
    return u, delta, A, Bm, Cm, D, bias


@torch.no_grad()
def ref_fp64(u, delta, A, Bm, Cm, D, bias, softplus=True):
    b, d, l = u.shape
    g = Bm.shape[1]
    u64, dl = u.double(), delta.double() + bias.double()[None, :, None]
    if softplus:
        dl = torch.where(dl <= 20, torch.log1p(torch.exp(dl)), dl)
    Bx = Bm.double().repeat_interleave(d // g, dim=1)  # (b, d, N, l)
    Cx = Cm.double().repeat_interleave(d // g, dim=1)
    dA = torch.exp(dl[:, :, None, :] * A.double()[None, :, :, None])  # (b, d, N, l)
    dBu = dl[:, :, None, :] * Bx * u64[:, :, None, :]
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64, device=u.device)
    ys = torch.empty(b, d, l, dtype=torch.float64, device=u.device)
    for t in range(l):
        h = dA[..., t] * h + dBu[..., t]
        ys[:, :, t] = (h * Cx[..., t]).sum(-1)
    return ys + D.double()[None, :, None] * u64


def rel_l2(y, ref):
    y = y.double()
    if not torch.isfinite(y).all():
        return float("inf")
    return (torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300)).item()


# ---------------------------------------------------------------- timing
def bench(fn, sets, reps):
    for i in range(3):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    ts = []
    for r in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        args = sets[r % len(sets)]
        s.record()
        fn(*args)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)
    ts.sort()
    return ts[len(ts) // 2], ts[0], ts[-1]


def copy_bandwidth():
    n = 1 << 30  # 1 GiB
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    med, _, _ = bench(lambda: b.copy_(a), [()], 30)
    return 2 * n / (med * 1e-6) / 1e9  # GB/s, read + write


def scan_bytes(b, d, l, g, esz):
    return esz * (3 * b * d * l + 2 * b * g * N * l) + 4 * (d * N + 2 * d)


def main():
    dev_name = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 60 << 20)
    log(f"device {dev_name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB, torch {torch.__version__}")
    site = "/tmp/mamba_site"
    mproc, mmsg = (None, "skipped (--quick)") if ARGS.quick else start_mamba_build(site)
    log("mamba-ssm:", mmsg)

    from mhunet_deploy.cuda_scan import load_extension, selective_scan_cuda

    t = time.time()
    load_extension()
    build_s = time.time() - t
    log(f"our extension built/loaded in {build_s:.1f}s")
    results = {
        "device": dev_name,
        "sms": props.multi_processor_count,
        "l2_bytes": l2,
        "ext_build_s": build_s,
        "mamba": mmsg,
        "correctness": [],
        "speed": [],
        "tuning": [],
    }

    def ours(*a, **k):
        return selective_scan_cuda(*a, **k)

    # ------------------------------------------------ (a) correctness
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    cases = []
    for cfg, stages in STAGES.items():
        for d, l in stages:
            for g in (4, 1):
                cases.append((f"{cfg} D={d} L={l}", 2, d, l, g, 0, 0))
    for l in (1, 7, 63, 65, 1000, 4097):
        for g in (4, 1):
            cases.append((f"odd L={l}", 2, 96, l, g, 0, 0))
    for it, cpw in CONFIGS:
        for l in (65, 1000, 4097):
            cases.append((f"cfg items={it} cpw={cpw} L={l}", 2, 72, l, 4, it, cpw))
    n_fail = 0
    for name, b, d, l, g, it, cpw in cases:
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
            inp = make_inputs(b, d, l, g, dtype, gen=gen)
            ref = ref_fp64(*inp)
            torch.cuda.synchronize()
            y = torch.full_like(inp[0], float("nan"))  # poison: every element must be written
            ours(*inp, items=it, cpw=cpw, out=y)
            torch.cuda.synchronize()
            err = rel_l2(y, ref)
            ok = err <= tol and y.dtype == dtype and y.shape == inp[0].shape
            n_fail += not ok
            results["correctness"].append(
                {
                    "case": name,
                    "B": b,
                    "D": d,
                    "L": l,
                    "G": g,
                    "items": it,
                    "cpw": cpw,
                    "dtype": str(dtype).split(".")[-1],
                    "rel_l2": err,
                    "tol": tol,
                    "ok": ok,
                }
            )
            if not ok:
                log(f"FAIL {name} G={g} {dtype}: rel_l2={err:.3g} > {tol}")
    # no-softplus and no-bias paths. Without softplus delta is the step itself and the contract requires
    # delta + delta_bias >= 0 (selective_scan.h, as in mamba-ssm): draw |N(0,1)| steps and a non-negative
    # bias. (The first GPU run used the softplus inputs here, delta in (-1.5, 0.5): exp(delta * A) > 1 and
    # the fp32 state overflowed to inf over L = 300; an invalid input, not a kernel error.)
    for dtype, tol, with_bias in (
        (torch.float32, 1e-5, False),
        (torch.float32, 1e-5, True),
        (torch.float16, 1e-2, True),
    ):
        inp = make_inputs(2, 64, 300, 4, dtype, gen=gen)
        delta = torch.randn(inp[1].shape, device="cuda", generator=gen).abs().to(dtype)
        bias = torch.rand(64, device="cuda", generator=gen) * 0.1 if with_bias else None
        inp = (inp[0], delta, *inp[2:6], bias)
        ref = ref_fp64(*inp[:6], bias if with_bias else torch.zeros(64, device="cuda"), softplus=False)
        y = torch.full_like(inp[0], float("nan"))
        ours(*inp, delta_softplus=False, out=y)
        err = rel_l2(y, ref)
        ok = err <= tol
        n_fail += not ok
        name = f"softplus=0, delta>=0, delta_bias={'U(0,0.1)' if with_bias else 'None'}, {str(dtype).split('.')[-1]}"
        results["correctness"].append({"case": name, "rel_l2": err, "tol": tol, "ok": ok})
        if not ok:
            log(f"FAIL {name}: rel_l2={err:.3g} > {tol}")
    try:
        from mhunet_deploy.model.scan import selective_scan_loop

        inp = make_inputs(2, 64, 129, 4, torch.float32, gen=gen)
        err = rel_l2(ours(*inp), selective_scan_loop(*inp, delta_softplus=True).double())
        results["correctness"].append(
            {"case": "vs selective_scan_loop", "rel_l2": err, "tol": 1e-5, "ok": err <= 1e-5}
        )
        n_fail += err > 1e-5
    except Exception as e:  # noqa: BLE001
        results["correctness"].append({"case": "vs selective_scan_loop", "skipped": repr(e)})
    ncases = len(results["correctness"])
    log(f"correctness: {ncases - n_fail}/{ncases} passed")
    results["correctness_failures"] = n_fail

    if ARGS.quick:
        (Path(ARGS.out) / "results.json").write_text(json.dumps(results, indent=1))
        md = (
            f"# selective scan on {dev_name} (QUICK: correctness only)\n\nextension build {build_s:.0f}s; "
            f"correctness {ncases - n_fail}/{ncases} passed\n"
        )
        (Path(ARGS.out) / "results.md").write_text(md)
        print(md, flush=True)
        log("FAIL" if n_fail else "ALL CORRECTNESS CHECKS PASSED")
        return 1 if n_fail else 0

    # ------------------------------------------------ (b) speed
    bw = copy_bandwidth()
    results["copy_GBps"] = bw
    log(f"device-to-device copy: {bw:.0f} GB/s (read + write)")
    try:
        from mhunet_deploy.model.scan import selective_scan_chunked
    except Exception as e:  # noqa: BLE001
        selective_scan_chunked = None
        results["torch_chunked"] = f"unavailable: {e!r}"
        log("torch chunked scan unavailable:", repr(e))
    mamba_fn, mmsg2 = get_mamba(mproc, site, wait_s=min(240.0, max(5.0, left() - 200)))
    results["mamba"] = mmsg2
    log("mamba-ssm:", mmsg2)

    torch.cuda.empty_cache()
    for cfg, stages in STAGES.items():
        for d, l in stages:
            for b in (8, 32):
                for dtype in (torch.float16, torch.float32):
                    esz = 2 if dtype == torch.float16 else 4
                    nbytes = scan_bytes(b, d, l, 4, esz)
                    nsets = max(1, min(8, math.ceil(3 * l2 / nbytes)))
                    sets = [make_inputs(b, d, l, 4, dtype, gen=gen) for _ in range(nsets)]
                    row = {
                        "config": cfg,
                        "B": b,
                        "D": d,
                        "L": l,
                        "dtype": "fp16" if esz == 2 else "fp32",
                        "bytes": nbytes,
                        "floor_us": nbytes / (bw * 1e3),
                    }
                    with torch.no_grad():
                        med, lo, hi = bench(lambda *a: ours(*a), sets, 50)
                        row.update(
                            ours_us=med,
                            ours_min_us=lo,
                            ours_GBps=nbytes / (med * 1e3),
                            ours_frac_copy=nbytes / (med * 1e3) / bw,
                        )
                        if mamba_fn is not None:
                            try:
                                med_m, _, _ = bench(lambda *a: mamba_fn(*a), sets, 30)
                                row.update(mamba_us=med_m, speedup_vs_mamba=med_m / med)
                            except Exception as e:  # noqa: BLE001
                                row["mamba_error"] = repr(e)[:200]
                        if selective_scan_chunked is not None and b == 8 and left() > 90:
                            try:
                                med_t, _, _ = bench(lambda *a: selective_scan_chunked(*a, True), sets[:1], 5)
                                row.update(torch_us=med_t, speedup_vs_torch=med_t / med)
                            except Exception as e:  # noqa: BLE001
                                row["torch_error"] = repr(e)[:200]
                                torch.cuda.empty_cache()
                    results["speed"].append(row)
                    log(
                        f"{cfg:5s} B={b:2d} D={d:4d} L={l:4d} {row['dtype']}: ours {med:8.1f} us "
                        f"({row['ours_frac_copy'] * 100:4.1f}% of copy bw)"
                        + (f", mamba {row['mamba_us']:8.1f} us" if "mamba_us" in row else "")
                        + (f", torch {row['torch_us']:9.1f} us" if "torch_us" in row else "")
                    )
                    del sets
                    torch.cuda.empty_cache()

    # ------------------------------------------------ tuning sweep of kernel configurations
    for cfg, d, l in (
        ("paper", 768, 4096),
        ("light", 256, 4096),
        ("paper", 1536, 1024),
        ("paper", 3072, 256),
        ("paper", 6144, 64),
    ):
        if left() < 30:
            log("time budget: tuning sweep cut short")
            break
        sets = [make_inputs(8, d, l, 4, torch.float16, gen=gen) for _ in range(2)]
        nbytes = scan_bytes(8, d, l, 4, 2)
        for it, cpw in CONFIGS:
            if 32 * it > 2 * max(l, 64) and it > 2:
                continue
            med, _, _ = bench(lambda *a, it=it, cpw=cpw: ours(*a, items=it, cpw=cpw), sets, 30)
            results["tuning"].append(
                {
                    "config": cfg,
                    "B": 8,
                    "D": d,
                    "L": l,
                    "items": it,
                    "cpw": cpw,
                    "us": med,
                    "frac_copy": nbytes / (med * 1e3) / bw,
                }
            )
        del sets
        torch.cuda.empty_cache()

    # ------------------------------------------------ report
    out = Path(ARGS.out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"# selective scan on {dev_name}",
        "",
        f"copy bandwidth {bw:.0f} GB/s; extension build {build_s:.0f}s; mamba-ssm: {results['mamba']}; "
        f"correctness {ncases - n_fail}/{ncases} passed",
        "",
        "| cfg | B | D | L | dtype | floor us | ours us | % copy bw | mamba us | x mamba | torch us | x torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["speed"]:
        f = lambda k, fmt: (fmt % r[k]) if k in r else "-"  # noqa: E731
        lines.append(
            f"| {r['config']} | {r['B']} | {r['D']} | {r['L']} | {r['dtype']} | {r['floor_us']:.1f} | "
            f"{r['ours_us']:.1f} | {100 * r['ours_frac_copy']:.1f} | {f('mamba_us', '%.1f')} | "
            f"{f('speedup_vs_mamba', '%.2f')} | {f('torch_us', '%.0f')} | {f('speedup_vs_torch', '%.1f')} |"
        )
    lines += ["", "tuning (B=8 fp16): best items/cpw per shape", ""]
    by = {}
    for t in results["tuning"]:
        by.setdefault((t["config"], t["D"], t["L"]), []).append(t)
    for k, ts in by.items():
        ts.sort(key=lambda t: t["us"])
        lines.append(
            f"- {k[0]} D={k[1]} L={k[2]}: "
            + ", ".join(f"{t['items']}x{t['cpw']}={t['us']:.1f}us" for t in ts)
        )
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    print(md, flush=True)
    log("FAIL" if n_fail else "ALL CORRECTNESS CHECKS PASSED")
    return 1 if n_fail else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/verify_out"))
    ap.add_argument("--quick", action="store_true", help="correctness only: no speed table, no tuning sweep")
    ARGS = ap.parse_args()
    os.makedirs(ARGS.out, exist_ok=True)
    sys.exit(main())
