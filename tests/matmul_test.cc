#include "common/kernels/matmul.h"

#include <cmath>
#include <vector>

#include "common/kernels/cpu_features.h"
#include "common/formats/quant_format.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace wq {
namespace {

// Inputs in [-1, 1).
std::vector<float> Random(int64_t size, uint32_t seed) {
  return test::RandomVector(size, seed, test::Distribution::kUniform);
}

// y[i, r] = sum_k x[i, k] * w[r, k] in double, plus sum_k |x[i, k] * w[r, k]|
// as the scale of fp32 rounding error (robust to cancellation).
void Naive(const std::vector<float>& w, int64_t rows, int64_t cols,
           const std::vector<float>& x, int64_t n, std::vector<double>* y,
           std::vector<double>* abs) {
  y->assign(n * rows, 0.0);
  abs->assign(n * rows, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < cols; ++k) {
        const double p = double{x[i * cols + k]} * w[r * cols + k];
        (*y)[i * rows + r] += p;
        (*abs)[i * rows + r] += std::fabs(p);
      }
    }
  }
}

TEST(MatMulF32, MatchesNaiveTripleLoop) {
  // rows 150 spans several 64-row blocks, the last one partial.
  for (int64_t n : {1, 3, 7}) {
    for (int64_t cols : {1, 64, 172}) {
      constexpr int64_t kRows = 150;
      const auto w = Random(kRows * cols, 1);
      const auto x = Random(n * cols, 2);
      std::vector<float> y(n * kRows, -123.0f);
      MatMulF32(w.data(), kRows, cols, x.data(), n, y.data());
      std::vector<double> want, abs;
      Naive(w, kRows, cols, x, n, &want, &abs);
      for (int64_t i = 0; i < n * kRows; ++i) {
        ASSERT_NEAR(y[i], want[i], 1e-5 * abs[i] + 1e-30)
            << "n " << n << " cols " << cols << " at " << i;
      }
    }
  }
}

class MatMulQuantizedTest : public testing::TestWithParam<test::FormatCase> {};

TEST_P(MatMulQuantizedTest, MatchesF32OverDequantizedMatrix) {
  const test::FormatCase c = GetParam();
  for (int group : {32, -1}) {
    for (int64_t cols : {64, 172, 600}) {  // 172 % 32 = 12: ragged tail.
      for (int64_t n : {1, 7}) {
        SCOPED_TRACE(testing::Message()
                     << GetQuantFormat(c.type).name << " group " << group
                     << " cols " << cols << " n " << n);
        constexpr int64_t kRows = 70;
        const auto w = Random(kRows * cols, 3);
        const auto x = Random(n * cols, 4);
        auto q = QuantizeMatrix(w.data(), kRows, cols, {c.type, c.scheme, group});
        ASSERT_TRUE(q.ok()) << q.status();
        const std::vector<float> deq = DequantizeMatrix(q->view());
        std::vector<float> got(n * kRows, -123.0f), ref(n * kRows);
        MatMulQuantized(q->view(), x.data(), n, got.data());
        MatMulF32(deq.data(), kRows, cols, x.data(), n, ref.data());
        std::vector<double> exact, abs;
        Naive(deq, kRows, cols, x, n, &exact, &abs);
        for (int64_t i = 0; i < n * kRows; ++i) {
          // 1e-5 relative to the magnitude of the summed terms.
          ASSERT_NEAR(got[i], ref[i], 1e-5 * abs[i] + 1e-30) << i;
          ASSERT_NEAR(got[i], exact[i], 1e-5 * abs[i] + 1e-30) << i;
        }
      }
    }
  }
}

TEST_P(MatMulQuantizedTest, SharedPassEqualsSeparateProducts) {
  // Weights of one input with different row counts (a tile pair, a part
  // tile), one with its packed layout and two without, on every ISA.
  const test::FormatCase c = GetParam();
  constexpr int64_t kCols = 96;
  const int64_t rows[] = {70, 16, 33};
  std::vector<QuantizedMatrix> weights;
  for (int i = 0; i < 3; ++i) {
    const auto w = Random(rows[i] * kCols, 10 + i);
    auto q = QuantizeMatrix(w.data(), rows[i], kCols, {c.type, c.scheme, 32});
    ASSERT_TRUE(q.ok()) << q.status();
    weights.push_back(*std::move(q));
  }
  for (int isa = 0; isa < kNumIsas; ++isa) {
    if (!CpuSupports(static_cast<Isa>(isa))) continue;
    ScopedIsaOverride forced(static_cast<Isa>(isa));
    for (ComputeDtype compute :
         {ComputeDtype::kFp32, ComputeDtype::kBf16, ComputeDtype::kInt8}) {
      for (int64_t n : {1, 7}) {
        SCOPED_TRACE(testing::Message() << GetQuantFormat(c.type).name << " isa " << isa
                                        << " compute " << static_cast<int>(compute)
                                        << " n " << n);
        const auto x = Random(n * kCols, 20);
        const auto packed = PackWeights(weights[0].view(), compute);
        std::vector<std::vector<float>> shared(3), separate(3);
        std::vector<QuantizedMatrixView> views;
        for (const QuantizedMatrix& q : weights) views.push_back(q.view());
        std::vector<QuantizedProduct> products;
        for (int i = 0; i < 3; ++i) {
          shared[i].assign(n * rows[i], -123.0f);
          separate[i].assign(n * rows[i], -456.0f);
          products.push_back({&views[i], shared[i].data(), i == 0 ? packed.get() : nullptr});
          ASSERT_TRUE(SharesActivations(views[i], views[0]));
        }
        MatMulQuantizedShared(products, x.data(), n, compute);
        for (int i = 0; i < 3; ++i) {
          MatMulQuantized(views[i], x.data(), n, separate[i].data(), compute,
                          i == 0 ? packed.get() : nullptr);
          EXPECT_EQ(shared[i], separate[i]) << "weight " << i;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, MatMulQuantizedTest,
                         testing::ValuesIn(test::AllFormatCases()),
                         [](const auto& info) { return test::FormatCaseName(info.param); });

}  // namespace
}  // namespace wq
