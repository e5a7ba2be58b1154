"""The machine description names the CPU's family, model and SIMD flags: two EPYCs of
different generations share a model name but not the kernel paths leaflm runs on them."""

from __future__ import annotations

from leaflm.bench.machine import _cpu_identity

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16
processor\t: 1
cpu family\t: 25
model\t\t: 17
"""


def test_family_model_and_simd_flags_come_from_cpuinfo():
    assert _cpu_identity(ZEN4) == (
        "family 25 model 17",
        "avx2 fma f16c avx512f avx512_vnni avx512_bf16",
    )
    zen3 = ZEN4.replace("model\t\t: 17", "model\t\t: 1").replace(
        " avx512f avx512bw avx512_vnni avx512_bf16", ""
    )
    assert _cpu_identity(zen3) == ("family 25 model 1", "avx2 fma f16c")
    assert _cpu_identity("") == (None, None)
