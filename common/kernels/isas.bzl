"""The kernel ISA levels of common/kernels (see KERNEL_ISAS)."""

# The kernel ISA levels, least to most capable: one row each, and the only
# place an ISA is described. A row gives the level's name (WQ_ISA=<name>),
# the compiler flags of its kernels, the CPU features it needs (CpuFeature in
# cpu_features.cc: cpuid bits and the register state the OS must save), and
# either the vector and int8-dot traits (kernels_simd.h) its generic kernels
# (kernels_isa.cc) are built from, or a kernel source of its own (compiled
# once per row that names it). Everything else — the Isa enum, names,
# feature tests, dispatch table — iterates the rows through isa_rows.inc,
# which common/kernels/BUILD generates from them.
_AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]

_AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"] + _AVX2_FLAGS

_AVX2_CPU = ["OsYmm", "Avx", "Fma", "F16c", "Avx2"]

_AVX512_CPU = _AVX2_CPU + ["OsZmm", "Avx512F", "Avx512Dq", "Avx512Bw", "Avx512Vl"]

_AMX_FLAGS = _AVX512_FLAGS + ["-mavx512vnni", "-mavx512bf16", "-mamx-tile", "-mamx-int8"]

_AMX_CPU = _AVX512_CPU + ["Avx512Vnni", "Avx512Bf16", "OsTiles", "AmxTile", "AmxInt8"]

KERNEL_ISAS = [
    {
        "name": "avx2",
        "flags": _AVX2_FLAGS,
        "cpu": _AVX2_CPU,
        "vec": "VecYmm",
        "dot": "DotAvx2",
    },
    {
        "name": "avx_vnni",
        "flags": _AVX2_FLAGS + ["-mavxvnni"],
        "cpu": _AVX2_CPU + ["AvxVnni"],
        "vec": "VecYmm",
        "dot": "DotAvxVnni",
    },
    {
        "name": "avx512",
        "flags": _AVX512_FLAGS,
        "cpu": _AVX512_CPU,
        "vec": "VecZmm",
        "dot": "DotAvx2",
    },
    {
        "name": "avx512_vnni",
        "flags": _AVX512_FLAGS + ["-mavx512vnni"],
        "cpu": _AVX512_CPU + ["Avx512Vnni"],
        "vec": "VecZmm",
        "dot": "DotAvx512Vnni",
    },
    {
        "name": "avx512_bf16",
        "flags": _AVX512_FLAGS + ["-mavx512vnni", "-mavx512bf16"],
        "cpu": _AVX512_CPU + ["Avx512Vnni", "Avx512Bf16"],
        "vec": "VecZmm",
        "dot": "DotAvx512Vnni",
    },
    {
        "name": "amx_int8",
        "flags": _AMX_FLAGS,
        "cpu": _AMX_CPU,
        "source": "kernels_amx.cc",
    },
    {
        "name": "amx_bf16",
        "flags": _AMX_FLAGS + ["-mamx-bf16"],
        "cpu": _AMX_CPU + ["AmxBf16"],
        "source": "kernels_amx.cc",
    },
]

def isa_camel_name(name):
    """avx512_bf16 -> Avx512Bf16 (Isa::kAvx512Bf16, Avx512Bf16Kernels)."""
    return "".join([part.capitalize() for part in name.split("_")])


def isa_rows_inc():
    """isa_rows.inc: WQ_KERNEL_ISA(enum, "name", table function, CpuFeature bits) per row."""
    return "".join([
        "WQ_KERNEL_ISA(k%s, \"%s\", %sKernels, %s)\n" % (
            isa_camel_name(isa["name"]),
            isa["name"],
            isa_camel_name(isa["name"]),
            " | ".join(["kCpu" + feature for feature in isa["cpu"]]),
        )
        for isa in KERNEL_ISAS
    ])
