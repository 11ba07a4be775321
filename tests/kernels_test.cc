// Every ISA kernel path this CPU supports against the scalar reference of the
// same compute dtype, over all weight formats, schemes, group sizes, ragged
// shapes and batch sizes; plus the compute dtypes' error bounds against fp32.
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/formats/bf16.h"
#include "common/formats/compute_dtype.h"
#include "common/kernels/cpu_features.h"
#include "common/kernels/matmul.h"
#include "common/formats/quant_format.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/test_util.h"

namespace wq {
namespace {

using test::FormatCase;
using test::RandomVector;

std::vector<Isa> SimdIsas() {
  std::vector<Isa> out;
  for (int i = 1; i < kNumIsas; ++i) {
    if (CpuSupports(static_cast<Isa>(i))) out.push_back(static_cast<Isa>(i));
  }
  return out;
}

// Per-output magnitudes that bound the rounding error of each path.
struct Bounds {
  std::vector<double> abs_xw;      // sum_k |x_k * w_k| (w dequantized).
  std::vector<double> int8_terms;  // sum_k |x_k| * |s| * (max u + max off).
  std::vector<double> int8_vs_fp32;  // Worst-case int8 error vs exact fp32.
};

Bounds ComputeBounds(const QuantizedMatrixView& q, const std::vector<float>& x,
                     int64_t n) {
  const QuantFormat& f = GetQuantFormat(q.spec.type);
  const auto levels = f.levels(q.spec.scheme);
  bool affine = true;
  float amax = 0.0f;
  for (size_t c = 0; c < levels.size(); ++c) {
    affine = affine && levels[c] == levels[0] + c;
    amax = std::fmax(amax, std::fabs(levels[c]));
  }
  // Magnitudes of the integer levels u and offsets (matmul.h, kernels.h).
  const double wscale = affine ? 1.0 : amax / 127.0;
  const double u_plus_off =
      affine ? (levels.size() - 1) * 2.0 + std::fabs(levels[0]) : 255 + 128;
  const double level_err = affine ? 0.0 : wscale / 2.0;
  const std::vector<float> w = DequantizeMatrix(q);
  Bounds b;
  b.abs_xw.assign(n * q.rows, 0.0);
  b.int8_terms.assign(n * q.rows, 0.0);
  b.int8_vs_fp32.assign(n * q.rows, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x.data() + i * q.cols;
    for (int64_t r = 0; r < q.rows; ++r) {
      const double idx = i * q.rows + r;
      for (int64_t g = 0; g < q.groups_per_row; ++g) {
        const double s = std::fabs(q.scales[r * q.groups_per_row + g]);
        const int64_t ge = std::min((g + 1) * q.group_size, q.cols);
        for (int64_t bs = g * q.group_size; bs < ge; bs += 32) {
          const int64_t be = std::min(bs + 32, ge);
          double xmax = 0.0;
          for (int64_t k = bs; k < be; ++k) xmax = std::fmax(xmax, std::fabs(xi[k]));
          for (int64_t k = bs; k < be; ++k) {
            const double wk = std::fabs(w[r * q.cols + k]);
            b.abs_xw[idx] += std::fabs(xi[k]) * wk;
            b.int8_terms[idx] += std::fabs(xi[k]) * s * wscale * u_plus_off;
            // |x - d q| <= d / 2 with d = xmax / 127; codebook levels move
            // by at most wscale / 2 (times the scale).
            b.int8_vs_fp32[idx] += wk * xmax / 254.0 +
                                   (std::fabs(xi[k]) + xmax / 254.0) * s * level_err;
          }
        }
      }
    }
  }
  return b;
}

struct Shape {
  int group;
  int64_t cols;
};

class KernelsTest : public testing::TestWithParam<Isa> {};

TEST_P(KernelsTest, QuantizedMatchesScalarReference) {
  const Isa isa = GetParam();
  constexpr int64_t kRows = 13;  // Three row blocks of 4 and a ragged one.
  const Shape shapes[] = {{32, 64},   {32, 96},  {32, 172},  {32, 4128},
                          {64, 64},   {64, 96},  {64, 172},  {64, 4128},
                          {128, 64},  {128, 96}, {128, 172}, {128, 4128},
                          {-1, 64},   {-1, 96},  {-1, 172},  {-1, 4128}};
  int checked = 0;
  for (const FormatCase& c : test::AllFormatCases()) {
    for (const Shape& shape : shapes) {
      const auto w = RandomVector(kRows * shape.cols, 7);
      auto q = QuantizeMatrix(w.data(), kRows, shape.cols,
                              {c.type, c.scheme, shape.group});
      ASSERT_TRUE(q.ok()) << q.status();
      // 37: two full chunks of 16 x rows and a ragged one (AMX tiles).
      for (int64_t n : {1, 3, 16, 37}) {
        const auto x = RandomVector(n * shape.cols, 11 + n);
        const Bounds bounds = ComputeBounds(q->view(), x, n);
        std::vector<float> fp32_ref(n * kRows);
        {
          ScopedIsaOverride scalar(Isa::kScalar);
          MatMulQuantized(q->view(), x.data(), n, fp32_ref.data());
        }
        for (ComputeDtype compute :
             {ComputeDtype::kFp32, ComputeDtype::kBf16, ComputeDtype::kInt8}) {
          SCOPED_TRACE(testing::Message()
                       << IsaName(isa) << " " << GetQuantFormat(c.type).name
                       << (c.scheme == QuantScheme::kAsym ? " asym" : " sym")
                       << " group " << shape.group << " cols " << shape.cols
                       << " n " << n << " compute " << ComputeDtypeName(compute));
          std::vector<float> ref(n * kRows);
          {
            ScopedIsaOverride scalar(Isa::kScalar);
            MatMulQuantized(q->view(), x.data(), n, ref.data(), compute);
          }
          // The kernels on tiles packed per call and on the weight packed
          // once (PackWeights): every kernel reads the int8 tiles, n 16 and
          // 37 as prefill does.
          for (bool pack : {false, true}) {
            SCOPED_TRACE(pack ? "packed once" : "packed per call");
            std::vector<float> got(n * kRows, -123.0f);
            {
              ScopedIsaOverride forced(isa);
              const auto packed = pack ? PackWeights(q->view(), compute) : nullptr;
              MatMulQuantized(q->view(), x.data(), n, got.data(), compute, packed.get());
            }
            for (int64_t i = 0; i < n * kRows; ++i) {
              switch (compute) {
                case ComputeDtype::kFp32:
                  // Reassociation only (the packed kernels take the zero
                  // point and level0 off once per group: zero * sum x).
                  ASSERT_NEAR(got[i], ref[i], 1e-5 * bounds.abs_xw[i] + 1e-30) << i;
                  break;
                case ComputeDtype::kBf16:
                  // Same bf16-rounded products, reassociated; bf16 rounding
                  // of x and levels moves |x w| by < 2^-8 relative to fp32.
                  ASSERT_NEAR(got[i], ref[i], 1.01e-5 * bounds.abs_xw[i] + 1e-30) << i;
                  ASSERT_NEAR(ref[i], fp32_ref[i],
                              (std::ldexp(1.0, -8) + 1e-5) * bounds.abs_xw[i] + 1e-30)
                      << i;
                  break;
                case ComputeDtype::kInt8:
                  // Exact integer dots; only the float epilogue reassociates.
                  ASSERT_NEAR(got[i], ref[i], 1e-5 * bounds.int8_terms[i] + 1e-30) << i;
                  ASSERT_NEAR(ref[i], fp32_ref[i],
                              bounds.int8_vs_fp32[i] + 1e-5 * bounds.int8_terms[i])
                      << i;
                  break;
              }
            }
          }
          ++checked;
        }
      }
    }
  }
  RecordProperty("cases", checked);
  EXPECT_GT(checked, 0);
}

TEST_P(KernelsTest, DenseF32MatchesReference) {
  const Isa isa = GetParam();
  constexpr int64_t kRows = 13;
  for (int64_t cols : {1, 15, 64, 172, 4128}) {
    for (int64_t n : {1, 3, 16}) {
      SCOPED_TRACE(testing::Message() << IsaName(isa) << " cols " << cols << " n " << n);
      const auto w = RandomVector(kRows * cols, 1);
      const auto x = RandomVector(n * cols, 2);
      std::vector<float> got(n * kRows, -123.0f);
      {
        ScopedIsaOverride forced(isa);
        MatMulF32(w.data(), kRows, cols, x.data(), n, got.data());
      }
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t r = 0; r < kRows; ++r) {
          double want = 0.0, abs = 0.0;
          for (int64_t k = 0; k < cols; ++k) {
            const double p = double{x[i * cols + k]} * w[r * cols + k];
            want += p;
            abs += std::fabs(p);
          }
          ASSERT_NEAR(got[i * kRows + r], want, 1e-5 * abs + 1e-30);
        }
      }
    }
  }
}

// GemmF32 on `isa` for every transpose combination, with leading dimensions
// wider than the rows, shapes across several column blocks and a ragged last
// one, against a float64 triple loop; and the same bits on one thread as on
// all.
void CheckGemmF32(Isa isa) {
  constexpr int64_t kPad = 3;
  for (const std::array<int64_t, 3>& shape : {std::array<int64_t, 3>{1, 1, 1}, {5, 300, 37},
                                              {70, 513, 129}, {33, 17, 1000}}) {
    // Not a structured binding: lambdas below capture these (C++17).
    const int64_t m = shape[0], n = shape[1], k = shape[2];
    for (const bool trans_a : {false, true}) {
      for (const bool trans_b : {false, true}) {
        SCOPED_TRACE(testing::Message() << IsaName(isa) << " m " << m << " n " << n << " k "
                                        << k << " trans_a " << trans_a << " trans_b "
                                        << trans_b);
        const int64_t lda = (trans_a ? m : k) + kPad, ldb = (trans_b ? k : n) + kPad;
        const int64_t ldc = n + kPad;
        const auto a = RandomVector((trans_a ? k : m) * lda, 1);
        const auto b = RandomVector((trans_b ? n : k) * ldb, 2);
        const auto a_at = [&](int64_t i, int64_t l) {
          return trans_a ? a[l * lda + i] : a[i * lda + l];
        };
        const auto b_at = [&](int64_t l, int64_t j) {
          return trans_b ? b[j * ldb + l] : b[l * ldb + j];
        };
        std::vector<float> got(m * ldc, -123.0f), one_thread(m * ldc, -123.0f);
        {
          ScopedIsaOverride forced(isa);
          GemmF32(trans_a, trans_b, m, n, k, a.data(), lda, b.data(), ldb, got.data(), ldc);
          tbb::task_arena(1).execute([&] {
            GemmF32(trans_a, trans_b, m, n, k, a.data(), lda, b.data(), ldb,
                    one_thread.data(), ldc);
          });
        }
        EXPECT_EQ(got, one_thread);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double want = 0.0, abs = 0.0;
            for (int64_t l = 0; l < k; ++l) {
              const double p = double{a_at(i, l)} * b_at(l, j);
              want += p;
              abs += std::fabs(p);
            }
            ASSERT_NEAR(got[i * ldc + j], want, 1e-5 * abs + 1e-30) << i << ", " << j;
          }
          // The padding past column n is not written.
          for (int64_t j = n; j < ldc; ++j) ASSERT_EQ(got[i * ldc + j], -123.0f);
        }
      }
    }
  }
}

TEST_P(KernelsTest, GemmF32MatchesReference) { CheckGemmF32(GetParam()); }
TEST(GemmF32, ScalarReferenceMatches) { CheckGemmF32(Isa::kScalar); }

// A dense 16-bit float format as the kernels take it.
struct Dense16Format {
  uint16_t (*encode)(float);
  float (*decode)(uint16_t);
  void (*matmul)(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n,
                 float* y);
  // What the kernels multiply W by: x rounded to bf16, or x itself.
  float (*x_as_multiplied)(float);
};

// Every ISA against the scalar reference (the multiplied x, exact products
// summed in fp32: within 1e-5 of their sum of magnitudes), and the reference
// against the exact product of the unrounded x and W's values, which differs
// by x's rounding only: at most `x_rounding` (bf16: half an ulp, 2^-8) of
// sum |x w|, plus fp32 summation.
void ExpectDense16MatchesReference(Isa isa, const Dense16Format& format, double x_rounding) {
  constexpr int64_t kRows = 37;  // 2 row blocks and a ragged one
  for (int64_t cols : {1, 15, 64, 172, 4128}) {
    for (int64_t n : {1, 3, 5, 16}) {
      SCOPED_TRACE(testing::Message() << IsaName(isa) << " cols " << cols << " n " << n);
      const auto values = RandomVector(kRows * cols, 3);
      std::vector<uint16_t> w(values.size());
      for (size_t i = 0; i < w.size(); ++i) w[i] = format.encode(values[i]);
      const auto x = RandomVector(n * cols, 4);
      std::vector<float> got(n * kRows, -123.0f), ref(n * kRows, -123.0f);
      {
        ScopedIsaOverride forced(isa);
        format.matmul(w.data(), kRows, cols, x.data(), n, got.data());
      }
      {
        ScopedIsaOverride scalar(Isa::kScalar);
        format.matmul(w.data(), kRows, cols, x.data(), n, ref.data());
      }
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t r = 0; r < kRows; ++r) {
          double exact = 0.0, multiplied_abs = 0.0, abs = 0.0;
          for (int64_t k = 0; k < cols; ++k) {
            const double wv = format.decode(w[r * cols + k]);
            const float xv = x[i * cols + k];
            exact += xv * wv;
            multiplied_abs += std::fabs(format.x_as_multiplied(xv) * wv);
            abs += std::fabs(xv * wv);
          }
          ASSERT_NEAR(got[i * kRows + r], ref[i * kRows + r], 1e-5 * multiplied_abs + 1e-30)
              << "row " << r;
          ASSERT_NEAR(ref[i * kRows + r], exact, x_rounding * abs + 1e-5 * abs + 1e-30)
              << "row " << r;
        }
      }
    }
  }
}

// Dense bf16 W (an unquantized bf16 checkpoint), x rounded to bf16.
TEST_P(KernelsTest, DenseBf16MatchesReference) {
  ExpectDense16MatchesReference(
      GetParam(),
      {&FloatToBf16, &Bf16ToFloat, &MatMulBf16, [](float v) { return Bf16ToFloat(FloatToBf16(v)); }},
      std::ldexp(1.0, -8));
}

// Dense f16 W widened exactly, x as it is.
TEST_P(KernelsTest, DenseF16MatchesReference) {
  ExpectDense16MatchesReference(GetParam(),
                                {&FloatToF16, &F16ToFloat, &MatMulF16, [](float v) { return v; }},
                                0.0);
}

// Weights packed once at load (PackWeights) give exactly what a per-call
// packing gives, for every format and compute dtype the packed kernels take
// (fp32 and bf16 scales, whose tiles store them in 2 bytes). So do the same
// tiles stored as
// bytes (Int8Tiles) and read in place (MapInt8Tiles), and FromInt8Tiles
// gives the matrix back.
TEST_P(KernelsTest, PackedOnceEqualsPackedPerCall) {
  ScopedIsaOverride forced(GetParam());
  // Five row tiles (two pairs and a ragged single one), so three row
  // blocks of matmul.cc run separately.
  constexpr int64_t kRows = 37, kCols = 320;
  int packed_cases = 0, tiled_cases = 0;
  for (const FormatCase& c : test::AllFormatCases()) {
    for (int group : {32, 64, 96, -1}) {
      for (ScaleEncoding scales : {ScaleEncoding::kF32, ScaleEncoding::kBf16}) {
        const auto w = RandomVector(kRows * kCols, 3);
        QuantSpec spec{c.type, c.scheme, group};
        spec.scale_encoding = scales;
        auto q = QuantizeMatrix(w.data(), kRows, kCols, spec);
        ASSERT_TRUE(q.ok()) << q.status();
        for (ComputeDtype compute :
             {ComputeDtype::kFp32, ComputeDtype::kBf16, ComputeDtype::kInt8}) {
          const auto packed = PackWeights(q->view(), compute);
          if (packed == nullptr) continue;
          ++packed_cases;
          // The artifact form of the layout: stored, converted back exactly,
          // and read in place with a view that has the shape only.
          const auto geometry = Int8TileGeometryOf(q->view());
          const int64_t tile_bytes = geometry.has_value() ? geometry->bytes() : 0;
          EXPECT_EQ(tile_bytes > 0, kCols % q->group_size == 0) << "group " << group;
          std::string tiles;
          std::shared_ptr<const PackedWeights> mapped;
          QuantizedMatrixView shape_only = q->view();
          shape_only.codes = nullptr;
          shape_only.scales = nullptr;
          shape_only.zeros = nullptr;
          if (tile_bytes > 0) {
            ++tiled_cases;
            tiles = Int8Tiles(q->view());
            ASSERT_EQ(static_cast<int64_t>(tiles.size()), tile_bytes);
            const auto* tile_data = reinterpret_cast<const uint8_t*>(tiles.data());
            const QuantizedMatrix back = FromInt8Tiles(shape_only, tile_data);
            EXPECT_EQ(back.codes, q->codes);
            EXPECT_EQ(back.scales, q->scales);
            EXPECT_EQ(back.zeros, q->zeros);
            // Every compute dtype runs on the tiles alone.
            mapped = MapInt8Tiles(shape_only, compute, tile_data);
            ASSERT_NE(mapped, nullptr);
          }
          // 12 and 33: AMX tiles (from 10 rows), one short chunk and three.
          for (int64_t n : {1, 9, 12, 33}) {
            SCOPED_TRACE(testing::Message() << GetQuantFormat(c.type).name << " group "
                                            << group << " n " << n << " bf16 scales "
                                            << (scales == ScaleEncoding::kBf16));
            const auto x = RandomVector(n * kCols, 5);
            std::vector<float> once(n * kRows), per_call(n * kRows);
            MatMulQuantized(q->view(), x.data(), n, once.data(), compute, packed.get());
            MatMulQuantized(q->view(), x.data(), n, per_call.data(), compute);
            // Per call the same tiles are packed.
            EXPECT_EQ(once, per_call);
            {
              // And the tiles hold the same weights: the scalar reference
              // of the row-major view agrees up to the float epilogue.
              ScopedIsaOverride scalar(Isa::kScalar);
              std::vector<float> ref(n * kRows);
              MatMulQuantized(q->view(), x.data(), n, ref.data(), compute);
              for (size_t i = 0; i < ref.size(); ++i) {
                ASSERT_NEAR(once[i], ref[i], 1e-3f * (1.0f + std::fabs(ref[i])));
              }
            }
            if (mapped != nullptr) {
              std::vector<float> in_place(n * kRows);
              MatMulQuantized(shape_only, x.data(), n, in_place.data(), compute, mapped.get());
              EXPECT_EQ(in_place, once);
              // Forced to the scalar reference after loading, tiles without
              // row-major codes still run, on the best SIMD kernels (whose
              // float epilogue may round differently from this ISA's).
              ScopedIsaOverride scalar(Isa::kScalar);
              std::vector<float> forced(n * kRows);
              MatMulQuantized(shape_only, x.data(), n, forced.data(), compute, mapped.get());
              for (size_t i = 0; i < forced.size(); ++i) {
                ASSERT_NEAR(forced[i], once[i], 1e-3f * (1.0f + std::fabs(once[i])));
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(packed_cases, 0);
  EXPECT_GT(tiled_cases, 0);
}

// Kernels keep no state of the thread between calls: the same product
// again gives the same result, also after the thread's AMX tile state was
// released (as other code on the thread may do) in between.
TEST_P(KernelsTest, NoStateBetweenCalls) {
  const Isa isa = GetParam();
  ScopedIsaOverride forced(isa);
  constexpr int64_t kRows = 48, kCols = 256, kN = 16;
  const auto w = RandomVector(kRows * kCols, 8);
  auto q = QuantizeMatrix(w.data(), kRows, kCols, {QuantType::kInt4Clip, QuantScheme::kSym, 32});
  ASSERT_TRUE(q.ok()) << q.status();
  const auto x = RandomVector(kN * kCols, 9);
  const bool amx = IsaName(isa).substr(0, 3) == "amx";
  for (ComputeDtype compute : {ComputeDtype::kInt8, ComputeDtype::kBf16}) {
    std::vector<float> first(kN * kRows), again(kN * kRows);
    MatMulQuantized(q->view(), x.data(), kN, first.data(), compute);
    if (amx) __asm__ volatile("tilerelease" ::);
    MatMulQuantized(q->view(), x.data(), kN, again.data(), compute);
    EXPECT_EQ(first, again) << ComputeDtypeName(compute);
  }
}

INSTANTIATE_TEST_SUITE_P(SupportedIsas, KernelsTest,
                         testing::ValuesIn(SimdIsas()),
                         [](const testing::TestParamInfo<Isa>& info) {
                           return std::string(IsaName(info.param));
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(KernelsTest);

TEST(Dispatch, NeverPicksUnsupportedIsa) {
  EXPECT_TRUE(CpuSupports(ActiveIsa()));
  EXPECT_TRUE(CpuSupports(BestSupportedIsa()));
  EXPECT_FALSE(KernelIsaName().empty());
  for (int i = 0; i < kNumIsas; ++i) {
    const Isa isa = static_cast<Isa>(i);
    EXPECT_EQ(ParseIsa(IsaName(isa)), isa);
    const Isa before = ActiveIsa();
    ScopedIsaOverride forced(isa);
    EXPECT_TRUE(CpuSupports(ActiveIsa()));
    EXPECT_EQ(ActiveIsa(), CpuSupports(isa) ? isa : before);
    EXPECT_EQ(ResolveIsaRequest(IsaName(isa)),
              CpuSupports(isa) ? isa : BestSupportedIsa());
  }
  EXPECT_EQ(ResolveIsaRequest("no_such_isa"), BestSupportedIsa());
  EXPECT_EQ(ResolveIsaRequest(""), BestSupportedIsa());
  EXPECT_EQ(ResolveIsaRequest("scalar"), Isa::kScalar);
}

}  // namespace
}  // namespace wq
