"""bf16 vs fp32 on this machine's CPU, and the dtype='auto' choice.

Same run, same inputs: LPIPS-VGG forward and one batched E-LPIPS call, each in fp32, in bf16 and
with dtype='auto'. The CPU's ISA (AVX2 / AVX512 / AVX512-BF16 / AMX, from fastlpips.precision) is
in every group name and in the machine info, because the answer depends on it: bf16 is emulated
without AVX512-BF16 and measured slower than fp32 without AMX. Goal (benchmarks/report.py):
'auto' is never slower than fp32 (ratio >= 0.95, the run-to-run noise of this VM).
"""
import pytest
import torch
from conftest import images, models

PROVIDERS = ["fp32", "bf16", "auto"]


def _dtype(provider):
    return {"fp32": None, "bf16": torch.bfloat16, "auto": "auto"}[provider]


@pytest.mark.filterwarnings("ignore::fastlpips.precision.PrecisionWarning")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_lpips_vgg_precision(benchmark, provider):
    import fastlpips
    from fastlpips import precision

    ours, _ = models("vgg")
    m = fastlpips.LPIPS(net="vgg", verbose=False, dtype=_dtype(provider))
    x, y = images(8, 64, 0), images(8, 64, 1)

    def run():
        with torch.no_grad():
            return m(x, y)

    isa = precision.isa()
    benchmark.group = f"precision lpips vgg 64x64 B=8 [{isa}]"
    benchmark.extra_info.update(provider=provider, isa=isa, chosen=str(m.compute_dtype or torch.float32),
                                cpu=precision.cpu_info())
    benchmark.pedantic(run, rounds=3 if provider == "bf16" else 11, iterations=1, warmup_rounds=1)


@pytest.mark.filterwarnings("ignore::fastlpips.precision.PrecisionWarning")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_elpips_precision(benchmark, provider):
    import fastlpips
    from fastlpips import precision

    metric = fastlpips.ELPIPS(dtype=_dtype(provider), max_scale=1)
    x = (images(2, 64, 0) + 1) / 2
    y = (images(2, 64, 1) + 1) / 2

    def run():
        with torch.no_grad():
            return metric.sample_distances((x,), y, 8, generator=torch.Generator().manual_seed(0))

    isa = precision.isa()
    benchmark.group = f"precision elpips 64x64 2 pairs x 8 samples [{isa}]"
    benchmark.extra_info.update(provider=provider, isa=isa, chosen=str(metric.compute_dtype or torch.float32),
                                cpu=precision.cpu_info())
    benchmark.pedantic(run, rounds=3 if provider == "bf16" else 11, iterations=1, warmup_rounds=2)
