"""Hardware-aware reduced precision: ISA detection, the timed probe that decides dtype='auto' on every
CPU with native bf16 (forced each way here by a fake probe), the bf16 warning on CPUs where bf16
was not measured faster, and E-LPIPS' bias rule."""
import math
import warnings

import pytest
import torch

import fastlpips
from fastlpips import precision as P


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(P, "_WARNED", set())
    monkeypatch.setattr(P, "_CHOICES", {})
    yield


def _cpu(monkeypatch, isa):
    flags = {"AVX2": dict(avx2=True), "AVX512": dict(avx2=True, avx512=True),
             "AVX512-BF16": dict(avx2=True, avx512=True, avx512_bf16=True),
             "AMX": dict(avx2=True, avx512=True, avx512_bf16=True, amx=True, amx_fp16=False)}[isa]
    info = dict(dict(avx2=False, avx512=False, avx512_bf16=False, amx=False, amx_fp16=False), **flags)
    info.update(capability=isa, model=f"test CPU ({isa})", isa=isa)
    monkeypatch.setattr(P, "_flags", lambda: info)


def _fake_probe(monkeypatch, ratio, calls=None):
    """A probe that 'measures' ``ratio`` (bf16 time / fp32 time) without timing anything."""
    def probe(net, dtype, grad):
        if calls is not None:
            calls.append((net, dtype, grad))
        fp32 = [1e-3 * (1 + 0.01 * k) for k in range(5)]
        red = [t * ratio for t in fp32]
        return P.ProbeResult(str(dtype), net, grad, fp32, red, ratio,
                             ratio < P.FASTER_RATIO and max(red) < min(fp32), 0.01)
    monkeypatch.setattr(P, "_probe_layer", probe)


def test_cpu_info_is_consistent_with_torch():
    info = P.cpu_info()
    assert info["isa"] in ("AMX", "AVX512-BF16", "AVX512", "AVX2", "other")
    assert info["amx"] == torch.cpu._is_amx_tile_supported()
    assert info["avx512_bf16"] == torch.cpu._is_avx512_bf16_supported()
    if info["isa"] == "AVX2":
        assert not (info["avx512"] or info["avx512_bf16"] or info["amx"])
    assert P.native_bf16("cpu") == (info["avx512_bf16"] or info["amx"])
    assert isinstance(info["auto"], list)


@pytest.mark.parametrize("isa,ratio,expected", [
    ("AVX2", 0.5, None), ("AVX512", 0.5, None),                          # emulated: no probe, fp32
    ("AVX512-BF16", 0.52, torch.bfloat16), ("AVX512-BF16", 0.7, torch.bfloat16),  # native: the probe decides
    ("AVX512-BF16", 1.3, None), ("AVX512-BF16", 0.85, None),             # slower, or not clearly faster
    ("AMX", 0.4, torch.bfloat16), ("AMX", 1.1, None),
])
def test_auto_picks_bf16_only_where_the_probe_measured_it_faster(monkeypatch, fresh, isa, ratio, expected):
    _cpu(monkeypatch, isa)
    calls = []
    _fake_probe(monkeypatch, ratio, calls)
    assert P.resolve_dtype("auto", "cpu", net="alex") == expected
    m = fastlpips.LPIPS(net="alex", pnet_rand=True, dtype="auto", verbose=False)
    assert m.compute_dtype == expected
    assert m.net.slice1[0].weight.dtype == (expected or torch.float32)
    assert calls == ([] if isa in ("AVX2", "AVX512") else [("alex", torch.bfloat16, False)])  # once, cached
    choices = P.cpu_info()["auto"]
    assert len(choices) == (0 if not calls else 1)
    if choices:
        assert choices[0]["net"] == "alex" and choices[0]["ratio"] == pytest.approx(ratio)


def test_probe_per_trunk_and_gradient_mode(monkeypatch, fresh):
    _cpu(monkeypatch, "AVX512-BF16")
    calls = []
    _fake_probe(monkeypatch, 0.5, calls)
    fastlpips.LPIPS(net="vgg", pnet_rand=True, dtype="auto", verbose=False)
    fastlpips.LPIPS(net="vgg", pnet_rand=True, dtype="auto", verbose=False)
    fastlpips.losses.LPIPSLoss(net="alex", pnet_rand=True, dtype="auto")  # a loss: gradients wanted
    assert calls == [("vgg", torch.bfloat16, False), ("alex", torch.bfloat16, True)]


def test_noise_cannot_flip_the_verdict(fresh):
    """Overlapping timings are 'not faster' even with a good median ratio."""
    res = P.ProbeResult("bfloat16", "vgg", False, [1.0, 1.0, 1.0, 1.0, 0.5], [0.7, 0.7, 0.7, 0.7, 0.7])
    res.ratio = 0.7
    assert not (res.ratio < P.FASTER_RATIO and max(res.reduced_s) < min(res.fp32_s))


def test_the_real_probe_times_and_records(monkeypatch, fresh):
    """The probe itself (forced to run here, where bf16 may be emulated): times both precisions
    interleaved, records them and decides by the rule."""
    import statistics

    r = P._time_layer("alex", torch.bfloat16, False)
    assert 1 <= len(r.fp32_s) == len(r.reduced_s) <= P._RUNS and r.seconds > 0
    assert r.ratio == pytest.approx(statistics.median(r.reduced_s) / statistics.median(r.fp32_s))
    assert r.faster == (r.ratio < P.FASTER_RATIO and max(r.reduced_s) < min(r.fp32_s))
    if len(r.fp32_s) < P._RUNS:  # stopped early: only once "not faster" was settled
        assert max(r.reduced_s) >= min(r.fp32_s) and not r.faster
    g = P._time_layer("vgg", torch.bfloat16, True)
    assert g.grad and math.isfinite(g.ratio)


def test_auto_on_this_machine(fresh):
    """The real decision here: fp32 without native bf16 (no probe); else the probe's verdict."""
    got = P.resolve_dtype("auto")
    if not P.native_bf16("cpu"):
        assert got is None and P.auto_choices() == []
    else:
        assert got == (torch.bfloat16 if P.auto_choices()[0]["faster"] else None)


def test_dtype_spellings():
    assert P.resolve_dtype(None) is None and P.resolve_dtype(torch.float32) is None and P.resolve_dtype("fp32") is None
    assert P.resolve_dtype("bf16") == P.resolve_dtype("BFloat16") == P.resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert P.resolve_dtype("fp16") == torch.float16
    with pytest.raises(ValueError, match="expected 'auto', 'bf16'"):
        P.resolve_dtype("bf17")
    with pytest.raises(ValueError, match="reduced-precision mode"):
        fastlpips.ELPIPS(pnet_rand=True, dtype=torch.float64)


@pytest.mark.parametrize("isa,ratio,match", [("AVX2", 0.5, "emulated"), ("AVX512-BF16", 1.3, "timed 1.30x")])
def test_explicit_bf16_on_slow_cpu_warns_once(monkeypatch, fresh, isa, ratio, match):
    _cpu(monkeypatch, isa)
    _fake_probe(monkeypatch, ratio)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    m = fastlpips.LPIPS(net="alex", pnet_rand=True, dtype=torch.bfloat16, verbose=False)
    with pytest.warns(P.PrecisionWarning, match=f"{match}.*dtype='auto'"):
        m(x, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x, x)  # once per process
        fastlpips.LPIPS(net="alex", pnet_rand=True, dtype="bf16", verbose=False)(x, x)


def test_elpips_bf16_warns_on_slow_cpu(monkeypatch, fresh):
    _cpu(monkeypatch, "AVX2")
    m = fastlpips.ELPIPS(pnet_rand=True, dtype="bf16", max_scale=1)
    x = torch.rand(1, 3, 32, 32)
    with pytest.warns(P.PrecisionWarning, match="emulated"):
        m(x, x)


def test_no_warning_where_bf16_is_fast(monkeypatch, fresh):
    _cpu(monkeypatch, "AVX512-BF16")
    _fake_probe(monkeypatch, 0.5)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastlpips.LPIPS(net="alex", pnet_rand=True, dtype=torch.bfloat16, verbose=False)(x, x)


@pytest.mark.parametrize("bias,faster,expected", [
    (0.001, True, torch.bfloat16),   # bias below a quarter of the interval: bf16 where faster
    (0.001, False, None),            # not faster: fp32
    (0.01, True, None),              # bias above a quarter of the 2.5% interval: fp32 even where faster
])
def test_elpips_auto_applies_the_bias_rule(monkeypatch, fresh, bias, faster, expected):
    from fastlpips import elpips as E

    _cpu(monkeypatch, "AVX512-BF16")
    _fake_probe(monkeypatch, 0.5 if faster else 1.2)
    monkeypatch.setattr(E, "BF16_RELATIVE_BIAS", bias)
    m = fastlpips.ELPIPS(pnet_rand=True, dtype="auto", max_scale=1)
    assert m.compute_dtype == expected
    assert E.bf16_bias_allowed() == (bias < 0.25 * E.DEFAULT_RTOL)


def test_the_estimate_reports_its_dtype():
    m = fastlpips.ELPIPS(pnet_rand=True, max_scale=1)
    x = torch.rand(1, 3, 32, 32)
    est = fastlpips.elpips_estimate(x, x.flip(3), metric=m, max_samples=4, min_samples=2, seed=0)
    assert est.dtype == "float32"
