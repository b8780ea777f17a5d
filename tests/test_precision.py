"""Hardware-aware reduced precision (issue 9, item 9): ISA detection, the bf16 warning on CPUs
without native bf16, and dtype='auto' never choosing a precision slower than fp32."""
import warnings

import pytest
import torch

import fastlpips
from fastlpips import precision as P


@pytest.fixture
def fresh(monkeypatch):
    timed = P._conv_faster_on_cpu
    monkeypatch.setattr(P, "_WARNED", set())
    timed.cache_clear()
    yield
    timed.cache_clear()


def _cpu(monkeypatch, isa):
    flags = {"AVX2": dict(avx2=True), "AVX512": dict(avx2=True, avx512=True),
             "AVX512-BF16": dict(avx2=True, avx512=True, avx512_bf16=True),
             "AMX": dict(avx2=True, avx512=True, avx512_bf16=True, amx=True, amx_fp16=False)}[isa]
    info = dict(dict(avx2=False, avx512=False, avx512_bf16=False, amx=False, amx_fp16=False), **flags)
    info.update(capability=isa, model=f"test CPU ({isa})", isa=isa)
    monkeypatch.setattr(P, "cpu_info", lambda: info)


def test_cpu_info_is_consistent_with_torch():
    info = P.cpu_info()
    assert info["isa"] in ("AMX", "AVX512-BF16", "AVX512", "AVX2", "other")
    assert info["amx"] == torch.cpu._is_amx_tile_supported()
    assert info["avx512_bf16"] == torch.cpu._is_avx512_bf16_supported()
    if info["isa"] == "AVX2":
        assert not (info["avx512"] or info["avx512_bf16"] or info["amx"])
    assert P.native_bf16("cpu") == (info["avx512_bf16"] or info["amx"])


@pytest.mark.parametrize("isa,timed_faster,expected", [
    ("AVX2", True, None), ("AVX512", True, None), ("AVX512-BF16", True, None),  # no tiles: never bf16
    ("AMX", True, torch.bfloat16), ("AMX", False, None),                          # tiles: the timing decides
])
def test_auto_picks_bf16_only_where_faster(monkeypatch, fresh, isa, timed_faster, expected):
    _cpu(monkeypatch, isa)
    monkeypatch.setattr(P, "_conv_faster_on_cpu", lambda dtype: timed_faster)
    assert P.resolve_dtype("auto", "cpu") == expected
    m = fastlpips.LPIPS(net="alex", pnet_rand=True, dtype="auto", verbose=False)
    assert m.compute_dtype == expected
    assert m.net.slice1[0].weight.dtype == (expected or torch.float32)


def test_auto_on_this_machine_matches_the_measurement(fresh):
    """The real decision here: bf16 only with AMX and a faster timed convolution."""
    expected = torch.bfloat16 if (P.cpu_info()["amx"] and P._conv_faster_on_cpu(torch.bfloat16)) else None
    assert P.resolve_dtype("auto") == expected


def test_dtype_spellings():
    assert P.resolve_dtype(None) is None and P.resolve_dtype(torch.float32) is None and P.resolve_dtype("fp32") is None
    assert P.resolve_dtype("bf16") == P.resolve_dtype("BFloat16") == P.resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert P.resolve_dtype("fp16") == torch.float16
    with pytest.raises(ValueError, match="expected 'auto', 'bf16'"):
        P.resolve_dtype("bf17")
    with pytest.raises(ValueError, match="reduced-precision mode"):
        fastlpips.ELPIPS(pnet_rand=True, dtype=torch.float64)


@pytest.mark.parametrize("isa,match", [("AVX2", "emulated"), ("AVX512-BF16", "without AMX tiles")])
def test_explicit_bf16_on_slow_cpu_warns_once(monkeypatch, fresh, isa, match):
    _cpu(monkeypatch, isa)
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
    _cpu(monkeypatch, "AMX")
    monkeypatch.setattr(P, "_conv_faster_on_cpu", lambda dtype: True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastlpips.LPIPS(net="alex", pnet_rand=True, dtype=torch.bfloat16, verbose=False)(x, x)
