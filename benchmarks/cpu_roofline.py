"""This CPU's fp32 multiply-add peak next to what the SAM ViT-B encoder's products reach on it.

Three measurements, printed as GMAC/s (10^9 multiply-adds per second) and as a share of the peak:

* peak: a register-only loop of independent AVX2 FMAs (compiled with the system C compiler; skipped
  when there is none or the CPU lacks AVX2/FMA), on 1 and on ``--threads`` OpenMP threads;
* the encoder's matrix products alone (``torch.addmm`` = MKL on x86 torch wheels): qkv, attention
  projection and the two MLP layers of one ViT-B block at 4096 tokens, and one head of global attention
  (``scaled_dot_product_attention`` with a float bias) against its two products q k^T and p v;
* with ``--encoder``: imseg's random ViT-B encoder on a 1024x1024 input with every ``addmm`` timed in
  place, i.e. the rate the products reach inside the real forward pass.

    .venv/bin/python benchmarks/cpu_roofline.py --threads 2 --encoder
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

_FMA_LOOP = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
int main(void) {
    const long iters = 100000000;
    double best = 0.0;
    float sink = 0.0f;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = omp_get_wtime();
        int threads = 1;
        #pragma omp parallel reduction(+ : sink)
        {
            #pragma omp single
            threads = omp_get_num_threads();
            __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0;
            __m256 a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
            const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
            for (long i = 0; i < iters; i++) {  /* 10 independent chains cover 2 pipes x 4-5 cycles latency */
                a0 = _mm256_fmadd_ps(a0, m, c); a1 = _mm256_fmadd_ps(a1, m, c); a2 = _mm256_fmadd_ps(a2, m, c);
                a3 = _mm256_fmadd_ps(a3, m, c); a4 = _mm256_fmadd_ps(a4, m, c); a5 = _mm256_fmadd_ps(a5, m, c);
                a6 = _mm256_fmadd_ps(a6, m, c); a7 = _mm256_fmadd_ps(a7, m, c); a8 = _mm256_fmadd_ps(a8, m, c);
                a9 = _mm256_fmadd_ps(a9, m, c);
            }
            __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                     _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
            s = _mm256_add_ps(s, _mm256_add_ps(a8, a9));
            float lanes[8];
            _mm256_storeu_ps(lanes, s);
            sink += lanes[0];
        }
        double macs = (double)iters * 10 * 8 * threads;
        double rate = macs / (omp_get_wtime() - t0) / 1e9;
        if (rate > best) best = rate;
    }
    printf("%.3f %f\n", best, sink);
    return 0;
}
"""


def fma_peak(threads: int) -> float | None:
    """GMAC/s of the FMA loop on ``threads`` OpenMP threads, or None when it cannot be built here."""
    cc = shutil.which("cc") or shutil.which("gcc")
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    if cc is None or " avx2" not in flags or " fma" not in flags:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(_FMA_LOOP)
        built = subprocess.run(
            [cc, "-O2", "-mavx2", "-mfma", "-fopenmp", str(src), "-o", str(exe)], capture_output=True, text=True
        )
        if built.returncode != 0:
            return None
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="spread")
        out = subprocess.run([str(exe)], capture_output=True, text=True, env=env, check=True).stdout
    return float(out.split()[0])


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def line(name: str, macs: float, seconds: float, peak: float | None) -> str:
    rate = macs / seconds / 1e9
    share = f"{100 * rate / peak:5.1f}% of peak" if peak else ""
    return f"  {name:<44s} {seconds * 1e3:8.1f} ms  {rate:6.1f} GMAC/s  {share}"


def products(threads: int, repeats: int, peak: float | None) -> None:
    torch.set_num_threads(threads)
    n, c = 4096, 768
    print(f"ViT-B block products, {n} tokens, {threads} torch thread(s):")
    for name, k, m in (
        ("qkv (768 -> 2304)", c, 3 * c),
        ("attention proj (768 -> 768)", c, c),
        ("MLP lin1 (768 -> 3072)", c, 4 * c),
        ("MLP lin2 (3072 -> 768)", 4 * c, c),
    ):
        x, w, b = torch.randn(n, k), torch.randn(m, k), torch.randn(m)
        out = torch.empty(n, m)
        t = best_time(lambda: torch.addmm(b, x, w.t(), out=out), repeats)  # noqa: B023
        print(line(name, n * k * m, t, peak))
    d = 64
    q, k_, v = (torch.randn(1, 1, n, d) for _ in range(3))
    bias = torch.randn(1, 1, n, n)
    scores, o = torch.empty(n, n), torch.empty(n, d)
    t_sdpa = best_time(lambda: F.scaled_dot_product_attention(q, k_, v, attn_mask=bias), repeats)
    t_qk = best_time(lambda: torch.mm(q[0, 0], k_[0, 0].t(), out=scores), repeats)
    t_pv = best_time(lambda: torch.mm(scores, v[0, 0], out=o), repeats)
    print(line("one global-attention head: SDPA + bias", 2 * n * n * d, t_sdpa, peak))
    print(line("  its q k^T alone", n * n * d, t_qk, peak))
    print(line("  its p v alone", n * n * d, t_pv, peak))


def encoder_in_place(threads: int, peak: float | None) -> None:
    """imseg's ViT-B encoder forward with every addmm / addmm_ timed where it runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from imseg.sam import sam_model_registry

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = sam_model_registry["vit_b"]().image_encoder.eval()
    x = torch.randn(1, 3, 1024, 1024)
    totals: dict[str, list[float]] = {}
    plain, inplace = torch.addmm, torch.Tensor.addmm_

    def record(a: torch.Tensor, b: torch.Tensor, seconds: float) -> None:
        entry = totals.setdefault(f"{a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}", [0.0, 0.0])
        entry[0] += seconds
        entry[1] += a.shape[0] * a.shape[1] * b.shape[1]

    def timed_addmm(bias, a, b, **kw):
        t0 = time.perf_counter()
        out = plain(bias, a, b, **kw)
        record(a, b, time.perf_counter() - t0)
        return out

    def timed_addmm_(self, a, b, **kw):
        t0 = time.perf_counter()
        out = inplace(self, a, b, **kw)
        record(a, b, time.perf_counter() - t0)
        return out

    with torch.inference_mode():
        encoder(x)  # warm-up
        torch.addmm, torch.Tensor.addmm_ = timed_addmm, timed_addmm_
        try:
            t0 = time.perf_counter()
            encoder(x)
            total = time.perf_counter() - t0
        finally:
            torch.addmm, torch.Tensor.addmm_ = plain, inplace
    gemm = sum(s for s, _ in totals.values())
    print(f"imseg ViT-B encoder, 1024x1024, {threads} thread(s): {total:.2f} s, of which addmm {gemm:.2f} s")
    for name, (seconds, macs) in sorted(totals.items()):
        print(line(name, macs, seconds, peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encoder", action="store_true", help="also time the products inside imseg's encoder")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} logical CPUs")
    peaks = {}
    for threads in sorted({1, args.threads}):
        peaks[threads] = fma_peak(threads)
        shown = f"{peaks[threads]:.1f} GMAC/s" if peaks[threads] else "not measured (no C compiler or no AVX2/FMA)"
        print(f"FMA peak, {threads} thread(s): {shown}")
    for threads in sorted({1, args.threads}):
        products(threads, args.repeats, peaks[threads])
    if args.encoder:
        encoder_in_place(args.threads, peaks[args.threads])


if __name__ == "__main__":
    main()
