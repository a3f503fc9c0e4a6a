"""Float32 products on CPU in MKL or oneDNN (imseg.cpu_gemm): the rule, the override, and the same numbers."""

from __future__ import annotations

import pytest
import torch

from imseg import cpu_gemm as G
from imseg.errors import ConfigError

pytestmark = pytest.mark.skipif(not G._onednn_linear_available(), reason="torch built without oneDNN")


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU's vendor and flags the rule sees."""
    monkeypatch.delenv(G.ENV, raising=False)

    def set_cpu(vendor, *flags):
        monkeypatch.setattr(G, "cpu_vendor", lambda: vendor)
        monkeypatch.setattr(G, "cpu_flags", lambda: frozenset(flags))

    return set_cpu


@pytest.mark.parametrize(("vendor", "flags", "expected"), [
    ("AuthenticAMD", ("avx2", "avx512f", "avx512_bf16"), "onednn"),  # Zen 4/5: MKL would run its AVX2 code
    ("AuthenticAMD", ("avx2", "fma"), "mkl"),  # Zen 1-3: both libraries have AVX2 kernels
    ("GenuineIntel", ("avx2", "avx512f", "amx_bf16"), "mkl"),  # MKL runs its AVX-512 kernels on Intel
    ("GenuineIntel", ("avx2",), "mkl"),
    ("", (), "mkl"),  # unreadable /proc/cpuinfo: torch's own choice
])
def test_rule_follows_vendor_and_avx512(cpu, monkeypatch, vendor, flags, expected):
    cpu(vendor, *flags)
    assert G.fp32_gemm_library() == expected
    other = "mkl" if expected == "onednn" else "onednn"
    monkeypatch.setenv(G.ENV, other.upper())
    assert G.fp32_gemm_library() == other


def test_bad_override_is_refused(monkeypatch):
    monkeypatch.setenv(G.ENV, "openblas")
    with pytest.raises(ConfigError, match="IMSEG_FP32_GEMM must be one of mkl, onednn"):
        G.fp32_gemm_library()


def _ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("library", ["mkl", "onednn"])
def test_linear_matches_float64_in_either_library(monkeypatch, library):
    monkeypatch.setenv(G.ENV, library)
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=gen) for shape in ((300, 96), (64, 96), (64,)))
    ref = x.double() @ w.double().t() + b.double()
    out = torch.empty(300, 64)
    with torch.inference_mode():
        got = G.linear(x, w, b, out=out)
        no_bias = G.linear(x.t().contiguous().t(), w)  # a strided input
        ops = _ops(lambda: G.linear(x, w, b))
    tol = 2e-6 * ref.abs().max()  # float32 rounding of sums of 96 products
    assert (got.double() - ref).abs().max() < tol
    assert (no_bias.double() - (ref - b.double())).abs().max() < tol
    assert ("mkldnn::_linear_pointwise" in ops) is (library == "onednn")
    assert (got is out) is (library == "mkl")  # oneDNN writes a new tensor
    # autograd keeps torch's own product, which has a backward
    xg = x.clone().requires_grad_()
    G.linear(xg, w, b).sum().backward()
    assert torch.allclose(xg.grad, w.sum(0).expand_as(x), atol=1e-5)


def test_apply_linear_takes_onednn_only_for_plain_unhooked_layers(monkeypatch):
    monkeypatch.setenv(G.ENV, "onednn")
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(2, 5, 32)
    with torch.inference_mode():
        ref = layer(x)
        got = G.apply_linear(layer, x)
        assert got.shape == (2, 5, 16) and (got - ref).abs().max() < 1e-5
        assert "mkldnn::_linear_pointwise" in _ops(lambda: G.apply_linear(layer, x))
        seen = []
        handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
        G.apply_linear(layer, x)  # a hooked layer is called as a module: its hook runs
        handle.remove()
        assert seen == [(2, 5, 16)]

        class Wrapped(torch.nn.Linear):  # e.g. a LoRA or quantised subclass with its own forward
            def forward(self, inp):
                return super().forward(inp) * 0

        wrapped = Wrapped(32, 16)
        assert G.apply_linear(wrapped, x).abs().max() == 0
    monkeypatch.setenv(G.ENV, "mkl")
    with torch.inference_mode():
        assert "mkldnn::_linear_pointwise" not in _ops(lambda: G.apply_linear(layer, x))


def test_autocast_keeps_torchs_own_product(monkeypatch):
    """Under CPU autocast the product stays torch's (in bfloat16), never a float32 oneDNN product."""
    monkeypatch.setenv(G.ENV, "onednn")
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(4, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert G.apply_linear(layer, x).dtype == torch.bfloat16
        assert G.linear(x, layer.weight, layer.bias).dtype == torch.bfloat16


def test_export_and_tracing_see_torchs_own_product(monkeypatch, tmp_path):
    """ONNX export and TorchScript tracing record aten ops, never the oneDNN product (no ONNX for it)."""
    monkeypatch.setenv(G.ENV, "onednn")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return G.apply_linear(self.fc, x) + G.linear(x, self.fc.weight)

    net, x = Net().eval(), torch.randn(3, 8)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        torch.onnx.export(net, (x,), str(tmp_path / "net.onnx"), dynamo=False)
    assert "mkldnn" not in str(traced.graph)
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - net(x).numpy()).max() < 1e-5


def _attention64(q, k, v, bias=None, scale=None):
    scores = (q.double() @ k.double().transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if bias is not None:
        scores = scores + bias.double()
    return scores.softmax(-1) @ v.double()


@pytest.mark.parametrize("library", ["mkl", "onednn"])
def test_attention_matches_float64_with_and_without_a_bias(monkeypatch, library):
    monkeypatch.setenv(G.ENV, library)
    monkeypatch.setattr(G, "QUERY_BLOCK", 50)  # several query blocks, the last one short
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 170, 16, generator=gen) * 2
    k, v = torch.randn(2, 3, 1300, 16, generator=gen) * 2, torch.randn(2, 3, 1300, 24, generator=gen)
    bias = torch.randn(2, 1, 170, 1300, generator=gen)  # broadcast over heads
    with torch.inference_mode():
        plain, biased = G.attention(q, k, v), G.attention(q, k, v, bias, scale=0.3)
        ops = _ops(lambda: G.attention(q, k, v, bias))
    for got, ref in ((plain, _attention64(q, k, v)), (biased, _attention64(q, k, v, bias, 0.3))):
        assert got.shape == (2, 3, 170, 24) and got.dtype == torch.float32
        assert (got.double() - ref).abs().max() < 2e-5 * ref.abs().max()
    assert ("mkldnn::_linear_pointwise" in ops) is (library == "onednn")
    assert (not any("scaled_dot_product" in op for op in ops)) is (library == "onednn")


def test_attention_keeps_torchs_kernel_for_few_keys_autograd_and_other_dtypes(monkeypatch):
    monkeypatch.setenv(G.ENV, "onednn")
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=gen) for _ in range(3))
    with torch.inference_mode():
        assert "mkldnn::_linear_pointwise" not in _ops(lambda: G.attention(q, k, v))  # 40 keys: one fused call
    long_k, long_v = torch.randn(1, 2, 1100, 8, generator=gen), torch.randn(1, 2, 1100, 8, generator=gen)
    allowed = torch.rand(1, 1, 40, 1100, generator=gen) > 0.3  # a boolean mask means "attend", not "add"
    with torch.inference_mode():
        torch.testing.assert_close(G.attention(q, long_k, long_v, allowed),
                                   torch.nn.functional.scaled_dot_product_attention(q, long_k, long_v, attn_mask=allowed))
    qg = q.clone().requires_grad_()
    out = G.attention(qg, long_k, long_v)
    out.sum().backward()  # torch's kernel, which has a backward
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
    with torch.inference_mode():
        half = G.attention(q.bfloat16(), long_k.bfloat16(), long_v.bfloat16())
        assert half.dtype == torch.bfloat16
        assert "mkldnn::_linear_pointwise" not in _ops(lambda: G.attention(q.bfloat16(), long_k.bfloat16(),
                                                                            long_v.bfloat16()))
