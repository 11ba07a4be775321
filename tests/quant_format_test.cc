#include "common/formats/quant_format.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace wq {
namespace {

using ::testing::TestWithParam;

// Unpacks row `r` of the packed codes bit by bit (low bits first), so codes
// straddling bytes need no special case here.
std::vector<int> Codes(const QuantizedMatrix& m, int64_t r) {
  const int bits = GetQuantFormat(m.spec.type).bits;
  const uint8_t* row = m.codes.data() + r * m.row_bytes;
  std::vector<int> out;
  for (int64_t k = 0; k < m.cols; ++k) {
    int code = 0;
    for (int b = 0; b < bits; ++b) {
      const int64_t bit = k * bits + b;
      code |= ((row[bit / 8] >> (bit % 8)) & 1) << b;
    }
    out.push_back(code);
  }
  return out;
}

QuantizedMatrix Quantize(const std::vector<float>& w, int64_t rows,
                         QuantSpec spec) {
  auto m = QuantizeMatrix(w.data(), rows, w.size() / rows, spec);
  EXPECT_TRUE(m.ok()) << m.status();
  return *std::move(m);
}

QuantizedMatrix QuantizeRow(const std::vector<float>& w, QuantType type,
                            QuantScheme scheme = QuantScheme::kSym,
                            int group_size = -1, float quantile = 1.0f) {
  return Quantize(w, 1, {type, scheme, group_size, quantile});
}

void ExpectDequant(const QuantizedMatrix& m, const std::vector<float>& want) {
  const std::vector<float> got = DequantizeMatrix(m.view());
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << i;
}

// ---------------------------------------------------------------- table

TEST(QuantFormatTable, RowsIndexedByTypeWithConsistentFacts) {
  ASSERT_EQ(AllQuantFormats().size(), 7u);
  for (size_t i = 0; i < AllQuantFormats().size(); ++i) {
    const QuantFormat& f = AllQuantFormats()[i];
    EXPECT_EQ(static_cast<size_t>(f.type), i);
    EXPECT_EQ(&GetQuantFormat(f.type), &f);
    EXPECT_NE(f.quantize_group, nullptr);
    EXPECT_LE(f.sym_levels.size(), size_t{1} << f.bits);
    if (f.codebook.empty()) {
      ASSERT_EQ(f.sym_levels.size(), size_t{1} << f.bits);
      ASSERT_EQ(f.asym_levels.size(), size_t{1} << f.bits);
      for (int c = 0; c < (1 << f.bits); ++c) {
        EXPECT_EQ(f.sym_levels[c], c - (1 << (f.bits - 1)));
        EXPECT_EQ(f.asym_levels[c], c);
      }
      EXPECT_TRUE(f.supports_asym);
    } else {
      EXPECT_FALSE(f.supports_asym);
      EXPECT_TRUE(f.asym_levels.empty());
      EXPECT_EQ(f.sym_levels.data(), f.codebook.data());
    }
  }
  EXPECT_EQ(GetQuantFormat(QuantType::kInt8).bits, 8);
  EXPECT_EQ(GetQuantFormat(QuantType::kInt3).bits, 3);
  EXPECT_EQ(GetQuantFormat(QuantType::kInt2).bits, 2);
  EXPECT_EQ(GetQuantFormat(QuantType::kNf4).codebook.size(), 16u);
  EXPECT_EQ(GetQuantFormat(QuantType::kFp4E2M1).codebook.size(), 15u);
}

TEST(QuantFormatTable, CodebooksAreInc) {
  const std::vector<float> nf4 = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f,
      -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
      -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f,
      0.5626170039176941f, 0.7229568362236023f, 1.0f};
  const std::vector<float> fp4 = {-6, -4, -3, -2, -1.5, -1, -0.0625, 0,
                                  0.0625, 1, 1.5, 2, 3, 4, 6};
  auto nf = GetQuantFormat(QuantType::kNf4).codebook;
  auto fp = GetQuantFormat(QuantType::kFp4E2M1).codebook;
  EXPECT_EQ(std::vector<float>(nf.begin(), nf.end()), nf4);
  EXPECT_EQ(std::vector<float>(fp.begin(), fp.end()), fp4);
}

TEST(QuantFormatTable, ParseQuantType) {
  for (const QuantFormat& f : AllQuantFormats()) {
    auto t = ParseQuantType(f.name);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t, f.type);
  }
  EXPECT_EQ(*ParseQuantType("int4_fullrange"), QuantType::kInt4FullRange);
  EXPECT_EQ(*ParseQuantType("fp4_e2m1"), QuantType::kFp4E2M1);
  EXPECT_EQ(*ParseQuantType("int3"), QuantType::kInt3);
  EXPECT_EQ(*ParseQuantType("int2"), QuantType::kInt2);
  auto bad = ParseQuantType("int5");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("nf4"), std::string::npos);
}

// ---------------------------------------------------------------- spec

TEST(QuantSpec, Validation) {
  EXPECT_TRUE(ValidateQuantSpec({QuantType::kInt4Clip}).ok());
  EXPECT_TRUE(
      ValidateQuantSpec({QuantType::kInt8, QuantScheme::kAsym, -1}).ok());
  EXPECT_TRUE(ValidateQuantSpec({QuantType::kNf4, QuantScheme::kSym, 1}).ok());
  for (int g : {0, -2, -32}) {
    absl::Status s =
        ValidateQuantSpec({QuantType::kInt4Clip, QuantScheme::kSym, g});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), "group_size must be -1 (per channel) or >= 1");
  }
  for (QuantType t : {QuantType::kNf4, QuantType::kFp4E2M1}) {
    EXPECT_EQ(ValidateQuantSpec({t, QuantScheme::kAsym}).code(),
              absl::StatusCode::kInvalidArgument);
  }
  for (float q : {0.0f, -0.5f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
    EXPECT_EQ(
        ValidateQuantSpec({QuantType::kInt8, QuantScheme::kSym, 32, q}).code(),
        absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(ValidateQuantSpec({static_cast<QuantType>(9)}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(QuantSpec, EffectiveGroupSize) {
  EXPECT_EQ(EffectiveGroupSize({QuantType::kInt4Clip, QuantScheme::kSym, 32},
                               100), 32);
  EXPECT_EQ(EffectiveGroupSize({QuantType::kInt4Clip, QuantScheme::kSym, -1},
                               100), 100);
  EXPECT_EQ(EffectiveGroupSize({QuantType::kInt4Clip, QuantScheme::kSym, 128},
                               100), 100);
  EXPECT_EQ(EffectiveGroupSize({QuantType::kInt4Clip, QuantScheme::kSym, 100},
                               100), 100);
}

// ---------------------------------------------------- hand-computed: int sym

TEST(IntSym, Int4ClipRoundsHalfToEvenAndPacksLowNibbleFirst) {
  // amax 3.5 -> scale 3.5/7 = 0.5. w/scale = 3.5, -7, 1.75, 2.5, -1, 0, 7, 0.5
  // -> q = 4, -7, 2, 2 (tie), -1, 0, 7, 0 (tie); code = q + 8.
  const auto m = QuantizeRow({1.75f, -3.5f, 0.875f, 1.25f, -0.5f, 0, 3.5f,
                              0.25f},
                             QuantType::kInt4Clip);
  EXPECT_EQ(m.scales, std::vector<float>({0.5f}));
  EXPECT_TRUE(m.zeros.empty());
  EXPECT_EQ(Codes(m, 0), std::vector<int>({12, 1, 10, 10, 7, 8, 15, 8}));
  // Element 2i in the low nibble of byte i: 12|1<<4, 10|10<<4, 7|8<<4, ...
  EXPECT_EQ(m.codes, std::vector<uint8_t>({0x1C, 0xAA, 0x87, 0x8F}));
  ExpectDequant(m, {2, -3.5f, 1, 1, -0.5f, 0, 3.5f, 0});
}

TEST(IntSym, Int4FullRangeFlipsScaleForPositiveExtreme) {
  // |max| 4 > |min| 2: scale = -(4/8) = -0.5. w/scale = -8, 4, -2, -6, 0.5,
  // -1.5, -5, 3 -> q = -8, 4, -2, -6, 0 (tie), -2 (tie), -5, 3.
  const auto m = QuantizeRow({4, -2, 1, 3, -0.25f, 0.75f, 2.5f, -1.5f},
                             QuantType::kInt4FullRange);
  EXPECT_EQ(m.scales, std::vector<float>({-0.5f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({0, 12, 6, 2, 8, 6, 3, 11}));
  ExpectDequant(m, {4, -2, 1, 3, 0, 1, 2.5f, -1.5f});
}

TEST(IntSym, Int4FullRangeNegativeExtremeAndEqualMagnitudes) {
  // |min| 4 > |max| 2: scale +0.5, -4 -> -8.
  auto m = QuantizeRow({-4, 2, 1}, QuantType::kInt4FullRange);
  EXPECT_EQ(m.scales, std::vector<float>({0.5f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({0, 12, 10}));
  // |max| == |min|: no flip; 4/0.5 = 8 clamps to 7 (dequant 3.5).
  m = QuantizeRow({-4, 4}, QuantType::kInt4FullRange);
  EXPECT_EQ(m.scales, std::vector<float>({0.5f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({0, 15}));
  ExpectDequant(m, {-4, 3.5f});
}

TEST(IntSym, Int8) {
  // amax 254 -> scale 2. w/2 = 63.5, -31.75, 0.25, 0.75, -127, 2.5, 1.5
  // -> q = 64 (tie), -32, 0, 1, -127, 2 (tie), 2 (tie); code = q + 128.
  const auto m = QuantizeRow({127, -63.5f, 0.5f, 1.5f, -254, 5, 3},
                             QuantType::kInt8);
  EXPECT_EQ(m.scales, std::vector<float>({2.0f}));
  EXPECT_EQ(m.row_bytes, 7);
  EXPECT_EQ(Codes(m, 0), std::vector<int>({192, 96, 128, 129, 1, 130, 130}));
  EXPECT_EQ(m.codes, std::vector<uint8_t>({192, 96, 128, 129, 1, 130, 130}));
  ExpectDequant(m, {128, -64, 0, 2, -254, 4, 4});
}

TEST(IntSym, AllZeroGroupUsesWmaxOne) {
  // INC: wmax 0 -> 1, so scale = 1/7 (clip), 1/8 (fullrange), 1/127 (int8).
  auto m = QuantizeRow({0, 0, 0}, QuantType::kInt4Clip);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f / 7.0f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({8, 8, 8}));
  ExpectDequant(m, {0, 0, 0});
  m = QuantizeRow({0, 0, 0}, QuantType::kInt4FullRange);
  EXPECT_EQ(m.scales, std::vector<float>({0.125f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({8, 8, 8}));
  m = QuantizeRow({0, 0}, QuantType::kInt8);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f / 127.0f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({128, 128}));
}

TEST(IntSym, QuantileClampsTheRange) {
  // quantile 0.875: wmax = 8*0.875 = 7 -> scale 1; 8 clamps to 7.
  const auto m = QuantizeRow({8, -2, 1}, QuantType::kInt4Clip,
                             QuantScheme::kSym, -1, 0.875f);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({15, 6, 9}));
  ExpectDequant(m, {7, -2, 1});
}

TEST(Grouping, RaggedTailIsItsOwnGroup) {
  // cols 10, group 4 -> groups of 4, 4, 2 with amax 7, 14, 0.875
  // -> scales 1, 2, 0.125. Row 1 is row 0 doubled -> scales 2, 4, 0.25.
  // Row 0: q = 7, 1, -4 (-3.5 tie), 2 | 7, -7, 4 (3.5 tie), 0 | -7, 4.
  std::vector<float> w = {7, 1, -3.5f, 2, 14, -14, 7, 0, -0.875f, 0.5f};
  for (int k = 0; k < 10; ++k) w.push_back(2 * w[k]);
  const auto m = Quantize(w, 2, {QuantType::kInt4Clip, QuantScheme::kSym, 4});
  EXPECT_EQ(m.group_size, 4);
  EXPECT_EQ(m.groups_per_row, 3);
  EXPECT_EQ(m.row_bytes, 5);
  EXPECT_EQ(m.codes.size(), 10u);
  EXPECT_EQ(m.scales, std::vector<float>({1, 2, 0.125f, 2, 4, 0.25f}));
  const std::vector<int> codes = {15, 9, 4, 10, 15, 1, 12, 8, 1, 12};
  EXPECT_EQ(Codes(m, 0), codes);
  EXPECT_EQ(Codes(m, 1), codes);
  std::vector<float> want = {7, 1, -4, 2, 14, -14, 8, 0, -0.875f, 0.5f};
  for (int k = 0; k < 10; ++k) want.push_back(2 * want[k]);
  ExpectDequant(m, want);
}

TEST(Grouping, PerChannelForMinusOneAndOversizedGroups) {
  const std::vector<float> w = {7, 1, -3.5f, 2, 14, -14, 7, 0, -0.875f, 0.5f};
  for (int g : {-1, 10, 11, 1000}) {
    const auto m = Quantize(w, 1, {QuantType::kInt4Clip, QuantScheme::kSym, g});
    EXPECT_EQ(m.group_size, 10);
    EXPECT_EQ(m.groups_per_row, 1);
    // amax 14 -> scale 2; w/2 = 3.5, 0.5, -1.75, 1, 7, -7, 3.5, 0, -0.4375,
    // 0.25 -> q = 4, 0, -2, 1, 7, -7, 4, 0, 0, 0.
    EXPECT_EQ(m.scales, std::vector<float>({2.0f}));
    EXPECT_EQ(Codes(m, 0),
              std::vector<int>({12, 8, 6, 9, 15, 1, 12, 8, 8, 8}));
  }
}

TEST(Grouping, OddColumnsLeaveTheLastHighNibbleZero) {
  const auto m = QuantizeRow({-7, 7, 1}, QuantType::kInt4Clip);
  EXPECT_EQ(m.row_bytes, 2);
  // codes 1, 15, 9 -> bytes 1|15<<4, 9.
  EXPECT_EQ(m.codes, std::vector<uint8_t>({0xF1, 0x09}));
}

// --------------------------------------------------- hand-computed: int asym

TEST(IntAsym, Int4ZeroPointAndClamp) {
  // wmin -3.75, wmax 3.75 -> scale 7.5/15 = 0.5, zp = round(7.5) = 8.
  // w/0.5 = -7.5, 7.5, 2.5, -0.5, 0, 4 -> round -8, 8, 2, 0, 0, 4; + 8 ->
  // 0, 16 (clamped to 15), 10, 8, 8, 12.
  for (QuantType t : {QuantType::kInt4Clip, QuantType::kInt4FullRange}) {
    const auto m = QuantizeRow({-3.75f, 3.75f, 1.25f, -0.25f, 0, 2},
                               t, QuantScheme::kAsym);
    EXPECT_EQ(m.scales, std::vector<float>({0.5f}));
    EXPECT_EQ(m.zeros, std::vector<uint8_t>({8}));
    EXPECT_EQ(Codes(m, 0), std::vector<int>({0, 15, 10, 8, 8, 12}));
    ExpectDequant(m, {-4, 3.5f, 1, 0, 0, 2});
  }
}

TEST(IntAsym, RangeAlwaysIncludesZero) {
  // All positive: wmin = min(0.5, 0) = 0 -> scale 7.5/15 = 0.5, zp 0.
  // w/0.5 = 15, 2.5, 1 -> 15, 2 (tie), 1.
  const auto m =
      QuantizeRow({7.5f, 1.25f, 0.5f}, QuantType::kInt4Clip, QuantScheme::kAsym);
  EXPECT_EQ(m.scales, std::vector<float>({0.5f}));
  EXPECT_EQ(m.zeros, std::vector<uint8_t>({0}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({15, 2, 1}));
}

TEST(IntAsym, Int8) {
  // wmin -25.5, wmax 102 -> scale 127.5/255 = 0.5, zp = round(51) = 51.
  // w/0.5 = -51, 204, 1.5, 102 -> -51, 204, 2 (tie), 102; + 51.
  const auto m = QuantizeRow({-25.5f, 102, 0.75f, 51}, QuantType::kInt8,
                             QuantScheme::kAsym);
  EXPECT_EQ(m.scales, std::vector<float>({0.5f}));
  EXPECT_EQ(m.zeros, std::vector<uint8_t>({51}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({0, 255, 53, 153}));
  ExpectDequant(m, {-25.5f, 102, 1, 51});
}

TEST(IntAsym, AllZeroGroupUsesMinusOneToOne) {
  // scale = 2/15 = 0x1.11111p-3f (rounded up), so -wmin/scale = 1/scale =
  // 7.4999995f and zp = 7, not 8. Int8: 2/255 -> 127.49999f -> zp 127.
  auto m = QuantizeRow({0, 0}, QuantType::kInt4Clip, QuantScheme::kAsym);
  EXPECT_EQ(m.scales, std::vector<float>({0x1.111112p-3f}));
  EXPECT_EQ(m.scales[0], 2.0f / 15.0f);
  EXPECT_EQ(m.zeros, std::vector<uint8_t>({7}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({7, 7}));
  ExpectDequant(m, {0, 0});
  m = QuantizeRow({0, 0}, QuantType::kInt8, QuantScheme::kAsym);
  EXPECT_EQ(m.scales[0], 2.0f / 255.0f);
  EXPECT_EQ(m.zeros, std::vector<uint8_t>({127}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({127, 127}));
}

TEST(IntAsym, Quantile) {
  // quantile 15/16: wmin -7.5, wmax 7.5 -> scale 1, zp = round(7.5) = 8;
  // -8 + 8 = 0, 8 + 8 = 16 -> 15.
  const auto m = QuantizeRow({-8, 8, 1}, QuantType::kInt4Clip,
                             QuantScheme::kAsym, -1, 0.9375f);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_EQ(m.zeros, std::vector<uint8_t>({8}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({0, 15, 9}));
}

// ------------------------------------------------ hand-computed: codebooks

TEST(Codebook, Nf4MidpointsWithTiesToLower) {
  // amax 1 -> scale 1/1 = 1, t = w. mid(0, 0.0795803) = 0.03979015 exactly,
  // so t == mid goes to entry 7 (0.0) and the next float up to entry 8.
  // 0.5 <= mid(0.4407, 0.5626) = 0.5017 -> 12; -0.75 in (-0.848, -0.611] -> 1.
  const float mid = 0.07958029955625534f / 2;
  const auto m = QuantizeRow(
      {1, -1, 0, 0.5f, mid, std::nextafter(mid, 1.0f), -0.75f},
      QuantType::kNf4);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_TRUE(m.zeros.empty());
  EXPECT_EQ(Codes(m, 0), std::vector<int>({15, 0, 7, 12, 7, 8, 1}));
  ExpectDequant(m, {1, -1, 0, 0.44070982933044434f, 0, 0.07958029955625534f,
                    -0.6961928009986877f});
}

TEST(Codebook, Fp4E2M1UsesIncSubnormalAndTiesToLower) {
  // amax 6 -> scale 1. Midpoints: +-0.03125, 0.53125, -1.25, 2.5, 5.
  // 0.5 -> 0.0625 (ITREX subnormal; OCP E2M1 would give 0.5).
  const auto m = QuantizeRow({6, -6, 0.03125f, 2.5f, -1.25f, 5, 0.5f,
                              -0.03125f, 0.6f},
                             QuantType::kFp4E2M1);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({14, 0, 7, 11, 4, 13, 8, 6, 9}));
  ExpectDequant(m, {6, -6, 0, 2, -1.5f, 4, 0.0625f, -0.0625f, 1});
}

TEST(Codebook, ScaleAndQuantile) {
  // amax 3 -> scale 3/6 = 0.5: t = 6, -1.5 -> 14, 4 (tie -1.25 not hit).
  auto m = QuantizeRow({3, -0.75f}, QuantType::kFp4E2M1);
  EXPECT_EQ(m.scales, std::vector<float>({0.5f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({14, 4}));
  // quantile 0.5: scale = 12*0.5/6 = 1; t = 12 -> last entry (6), -3, 1.
  m = QuantizeRow({12, -3, 1}, QuantType::kFp4E2M1, QuantScheme::kSym, -1,
                  0.5f);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({14, 2, 9}));
  ExpectDequant(m, {6, -3, 1});
}

TEST(Codebook, AllZeroGroupHasZeroScale) {
  for (QuantType t : {QuantType::kNf4, QuantType::kFp4E2M1}) {
    const auto m = QuantizeRow({0, 0, 0}, t);
    EXPECT_EQ(m.scales, std::vector<float>({0.0f}));
    EXPECT_EQ(Codes(m, 0), std::vector<int>({7, 7, 7}));  // Both: 0.0 at 7.
    ExpectDequant(m, {0, 0, 0});
  }
}

TEST(Codebook, AsymIsRejected) {
  const std::vector<float> w = {1, 2};
  for (QuantType t : {QuantType::kNf4, QuantType::kFp4E2M1}) {
    auto m = QuantizeMatrix(w.data(), 1, 2, {t, QuantScheme::kAsym});
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// ------------------------------------------------------------ QuantizeMatrix

TEST(QuantizeMatrix, RejectsBadInput) {
  std::vector<float> w = {1, 2, 3, 4};
  const QuantSpec spec{QuantType::kInt4Clip};
  EXPECT_FALSE(QuantizeMatrix(w.data(), 0, 4, spec).ok());
  EXPECT_FALSE(QuantizeMatrix(w.data(), 1, 0, spec).ok());
  EXPECT_FALSE(QuantizeMatrix(nullptr, 1, 4, spec).ok());
  EXPECT_FALSE(
      QuantizeMatrix(w.data(), 1, 4, {QuantType::kInt4Clip, QuantScheme::kSym,
                                      0})
          .ok());
  w[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(QuantizeMatrix(w.data(), 2, 2, spec).status().code(),
            absl::StatusCode::kInvalidArgument);
  w[2] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(QuantizeMatrix(w.data(), 2, 2, spec).ok());
}

TEST(QuantizeMatrix, BitsPerWeight) {
  std::vector<float> w(2 * 64, 1.0f);
  auto bpw = [&](QuantType t, QuantScheme s, int g) {
    return BitsPerWeight(Quantize(w, 2, {t, s, g}).view());
  };
  // 4-bit, group 32: 4 + 32/32 (+ 8/32 zeros).
  EXPECT_DOUBLE_EQ(bpw(QuantType::kInt4Clip, QuantScheme::kSym, 32), 5.0);
  EXPECT_DOUBLE_EQ(bpw(QuantType::kInt4Clip, QuantScheme::kAsym, 32), 5.25);
  EXPECT_DOUBLE_EQ(bpw(QuantType::kNf4, QuantScheme::kSym, 32), 5.0);
  EXPECT_DOUBLE_EQ(bpw(QuantType::kInt8, QuantScheme::kSym, -1), 8.5);
  EXPECT_DOUBLE_EQ(bpw(QuantType::kInt8, QuantScheme::kAsym, 64), 8.625);
}

// ------------------------------------------------------- random properties

class RandomProperties : public TestWithParam<test::FormatCase> {};

// N(0, 1) weights in rows of very different magnitudes, one all-zero row.
std::vector<float> RandomWeights(int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> w = test::RandomVector(rows * cols, seed);
  for (int64_t r = 0; r < rows; ++r) {
    const float mag = r == 3 ? 0.0f : std::ldexp(1.0f, static_cast<int>(r % 7) - 3);
    for (int64_t k = 0; k < cols; ++k) w[r * cols + k] *= mag;
  }
  return w;
}

TEST_P(RandomProperties, ErrorBoundsAndDecodeConsistency) {
  const test::FormatCase c = GetParam();
  const QuantFormat& f = GetQuantFormat(c.type);
  constexpr int64_t kRows = 17, kCols = 150;
  const std::vector<float> w = RandomWeights(kRows, kCols, 42);
  for (int g : {32, 7, -1, 1}) {
    SCOPED_TRACE(testing::Message() << f.name << " group " << g);
    const QuantSpec spec{c.type, c.scheme, g};
    const auto m = Quantize(w, kRows, spec);
    const QuantizedMatrixView v = m.view();
    ASSERT_TRUE(ValidateQuantizedMatrixView(v, m.codes.size(), m.scales.size(),
                                            m.zeros.size())
                    .ok());
    const std::vector<float> deq = DequantizeMatrix(v);
    std::vector<float> row(kCols);
    for (int64_t r = 0; r < kRows; ++r) {
      DequantizeRow(v, r, row.data());
      const std::vector<int> codes = Codes(m, r);
      for (int64_t k = 0; k < kCols; ++k) {
        ASSERT_EQ(row[k], deq[r * kCols + k]);
        const int64_t gi = r * m.groups_per_row + k / m.group_size;
        const float scale = m.scales[gi];
        const float x = w[r * kCols + k];
        if (!f.codebook.empty()) {
          // Brute-force nearest entry to w/scale, ties to the lower entry.
          int best = 7;  // 0.0 for an all-zero group.
          if (scale != 0.0f) {
            const double t = x / scale;
            best = 0;
            for (size_t i = 1; i < f.codebook.size(); ++i) {
              if (std::fabs(t - f.codebook[i]) <
                  std::fabs(t - f.codebook[best])) {
                best = static_cast<int>(i);
              }
            }
          }
          ASSERT_EQ(codes[k], best) << r << "," << k;
          ASSERT_EQ(row[k], f.codebook[best] * scale);
        } else if (c.scheme == QuantScheme::kSym) {
          // Fullrange's opposite extreme can reach w/scale = 8 > maxq; it
          // clamps to maxq. Everything inside the range is within half a step.
          const int maxq = (1 << (f.bits - 1)) - 1;
          if (x / scale > maxq + 0.5f) {
            ASSERT_EQ(codes[k], 2 * maxq + 1);
          } else {
            ASSERT_LE(std::fabs(row[k] - x),
                      std::fabs(scale) * 0.5f * (1 + 1e-5f))
                << r << "," << k;
          }
        } else {
          // The rounded zero point can push an extreme one step into the
          // clamp, so asym's bound is a full step.
          ASSERT_LE(std::fabs(row[k] - x), scale * (1 + 1e-5f));
          ASSERT_EQ(row[k], (codes[k] - static_cast<float>(m.zeros[gi])) * scale);
        }
      }
    }
    // Partial-row decode agrees with the full row.
    std::vector<float> part(kCols);
    DequantizeRowRange(v, 5, 13, 101, part.data());
    for (int64_t k = 13; k < 101; ++k) {
      EXPECT_EQ(part[k - 13], deq[5 * kCols + k]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllFormats, RandomProperties, testing::ValuesIn(test::AllFormatCases()),
    [](const auto& info) { return test::FormatCaseName(info.param); });

TEST(RandomProperties, FullRangeExtremeMapsToMinusEight) {
  const std::vector<float> w = RandomWeights(9, 40, 7);
  const auto m =
      Quantize(w, 9, {QuantType::kInt4FullRange, QuantScheme::kSym, 8});
  for (int64_t r = 0; r < 9; ++r) {
    if (r == 3) continue;  // All-zero row.
    const std::vector<int> codes = Codes(m, r);
    for (int64_t g = 0; g < m.groups_per_row; ++g) {
      float amax = 0;
      int64_t at = 0;
      for (int64_t k = g * 8; k < g * 8 + 8; ++k) {
        if (std::fabs(w[r * 40 + k]) > amax) {
          amax = std::fabs(w[r * 40 + k]);
          at = k;
        }
      }
      EXPECT_EQ(codes[at], 0);
      EXPECT_EQ(std::fabs(m.scales[r * 5 + g]), amax / 8);
      EXPECT_EQ(m.scales[r * 5 + g] < 0, w[r * 40 + at] > 0);
    }
  }
}

// ------------------------------------------------------------ view checks

TEST(ValidateView, RejectsInconsistentViews) {
  const std::vector<float> w = RandomWeights(4, 20, 3);
  const auto sym = Quantize(w, 4, {QuantType::kInt4Clip, QuantScheme::kSym, 8});
  const auto asym =
      Quantize(w, 4, {QuantType::kInt4Clip, QuantScheme::kAsym, 8});
  auto check = [](const QuantizedMatrixView& v, size_t c, size_t s, size_t z) {
    return ValidateQuantizedMatrixView(v, c, s, z).code();
  };
  constexpr auto kOk = absl::StatusCode::kOk;
  constexpr auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(check(sym.view(), 40, 12, 0), kOk);
  EXPECT_EQ(check(asym.view(), 40, 12, 12), kOk);
  EXPECT_EQ(check(sym.view(), 39, 12, 0), kBad);   // Short codes.
  EXPECT_EQ(check(sym.view(), 41, 12, 0), kBad);   // Long codes.
  EXPECT_EQ(check(sym.view(), 40, 11, 0), kBad);   // Scales.
  EXPECT_EQ(check(asym.view(), 40, 12, 11), kBad);  // Zeros.
  QuantizedMatrixView v = sym.view();
  v.zeros = asym.zeros.data();
  EXPECT_EQ(check(v, 40, 12, 12), kBad);  // Zero points on a sym matrix.
  v = asym.view();
  v.zeros = nullptr;
  EXPECT_EQ(check(v, 40, 12, 12), kBad);
  v = sym.view();
  v.group_size = 4;
  EXPECT_EQ(check(v, 40, 12, 0), kBad);
  v = sym.view();
  v.row_bytes = 11;
  EXPECT_EQ(check(v, 40, 12, 0), kBad);
  v = sym.view();
  v.groups_per_row = 2;
  EXPECT_EQ(check(v, 40, 8, 0), kBad);
  v = sym.view();
  v.codes = nullptr;
  EXPECT_EQ(check(v, 40, 12, 0), kBad);
  v = sym.view();
  v.rows = 0;
  EXPECT_EQ(check(v, 0, 0, 0), kBad);
  v = sym.view();
  v.spec.scheme = QuantScheme::kAsym;  // Claims asym without zeros.
  EXPECT_EQ(check(v, 40, 12, 0), kBad);
  v = sym.view();
  v.spec.type = QuantType::kInt8;  // Layout then needs 80 code bytes.
  EXPECT_EQ(check(v, 40, 12, 0), kBad);

  std::vector<uint8_t> zeros = asym.zeros;
  zeros[5] = 16;  // Beyond maxq 15.
  v = asym.view();
  v.zeros = zeros.data();
  EXPECT_EQ(check(v, 40, 12, 12), kBad);

  // fp4_e2m1 has 15 entries: code 15 would read past the table.
  auto fp4 = Quantize(w, 4, {QuantType::kFp4E2M1, QuantScheme::kSym, 8});
  EXPECT_EQ(check(fp4.view(), 40, 12, 0), kOk);
  fp4.codes[13] |= 0xF0;
  EXPECT_EQ(check(fp4.view(), 40, 12, 0), kBad);
}

// ------------------------------------------------------------ int3 / int2

TEST(LowBit, Int3SymCodesAndPackingAcrossBytes) {
  // amax 3 -> scale 3/3 = 1; halves round to even; codes are q + 4.
  const auto m = QuantizeRow({3, -1.5f, 0.5f, 2.5f, -3, 1, 0, 2, -0.4f},
                             QuantType::kInt3);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({7, 2, 4, 6, 1, 5, 4, 6, 4}));
  // 27 bits in 4 bytes; element 2 (bits 6..8) and 5 (bits 15..17) straddle.
  EXPECT_EQ(m.row_bytes, 4);
  EXPECT_EQ(m.codes, std::vector<uint8_t>({0x17, 0x9D, 0xD2, 0x04}));
  ExpectDequant(m, {3, -2, 0, 2, -3, 1, 0, 2, 0});
}

TEST(LowBit, Int2SymUsesMaxqOne) {
  // maxq 1: scale = amax / 1; codes q + 2 with q in [-1, 1].
  const auto m = QuantizeRow({2, -1, 0.5f, -2, 1.5f, 0.4f}, QuantType::kInt2);
  EXPECT_EQ(m.scales, std::vector<float>({2.0f}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({3, 2, 2, 1, 3, 2}));
  EXPECT_EQ(m.codes, std::vector<uint8_t>({0x6B, 0x0B}));
  ExpectDequant(m, {2, 0, 0, -2, 2, 0});
}

TEST(LowBit, Int3AsymZeroPointAndStraddlingCode) {
  // [-1, 6]: scale 7/7 = 1, zp 1, codes round(w) + 1 in [0, 7].
  const auto m =
      QuantizeRow({-1, 0, 2.5f, 6}, QuantType::kInt3, QuantScheme::kAsym);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_EQ(m.zeros, std::vector<uint8_t>({1}));
  EXPECT_EQ(Codes(m, 0), std::vector<int>({0, 1, 3, 7}));
  EXPECT_EQ(m.codes, std::vector<uint8_t>({0xC8, 0x0E}));
  ExpectDequant(m, {-1, 0, 2, 6});
}

TEST(LowBit, Int2Asym) {
  // [-1, 2]: scale 3/3 = 1, zp 1.
  const auto m = QuantizeRow({-1, 0.4f, 2}, QuantType::kInt2, QuantScheme::kAsym);
  EXPECT_EQ(m.scales, std::vector<float>({1.0f}));
  EXPECT_EQ(m.zeros, std::vector<uint8_t>({1}));
  EXPECT_EQ(m.codes, std::vector<uint8_t>({0x34}));
  ExpectDequant(m, {-1, 0, 2});
}

TEST(LowBit, Int3RowsArePaddedAndRangesDecodeAcrossStraddles) {
  // 11 columns: 33 bits -> 5 bytes per row, each row starting on a byte.
  std::vector<float> w(3 * 11);
  for (int i = 0; i < 33; ++i) w[i] = static_cast<float>(i % 7 - 3);
  const auto m = Quantize(w, 3, {QuantType::kInt3, QuantScheme::kSym, -1});
  EXPECT_EQ(m.row_bytes, 5);
  const std::vector<float> full = DequantizeMatrix(m.view());
  EXPECT_EQ(full, w);  // Every value is an exact level (scale 1).
  for (int64_t begin = 0; begin < 11; ++begin) {
    std::vector<float> part(11);
    DequantizeRowRange(m.view(), 2, begin, 11, part.data());
    for (int64_t k = begin; k < 11; ++k) EXPECT_EQ(part[k - begin], w[22 + k]);
  }
}

TEST(LowBit, BitsPerWeight) {
  const std::vector<float> w = RandomWeights(4, 256, 5);
  auto bits = [&](QuantType t, QuantScheme s) {
    return BitsPerWeight(Quantize(w, 4, {t, s, 32}).view());
  };
  EXPECT_DOUBLE_EQ(bits(QuantType::kInt3, QuantScheme::kSym), 3.0 + 1.0);
  EXPECT_DOUBLE_EQ(bits(QuantType::kInt3, QuantScheme::kAsym), 3.0 + 1.25);
  EXPECT_DOUBLE_EQ(bits(QuantType::kInt2, QuantScheme::kSym), 2.0 + 1.0);
  // 3-bit rows pad to bytes: 10 columns take 30 bits -> 4 bytes.
  const auto odd = Quantize(RandomWeights(2, 10, 1), 2,
                            {QuantType::kInt3, QuantScheme::kSym, -1});
  EXPECT_DOUBLE_EQ(BitsPerWeight(odd.view()), (2 * 32 + 2 * 32) / 20.0);
}

// ---------------------------------------------------------- clip search

TEST(ClipSearch, DefaultRatiosAreIncs) {
  const std::vector<float> r = DefaultClipRatios();
  ASSERT_EQ(r.size(), 40u);
  EXPECT_EQ(r.front(), 1.0f);
  EXPECT_EQ(r[1], 0.995f);
  EXPECT_EQ(r.back(), 0.805f);
}

TEST(ClipSearch, OutlierIsClippedToTheBestRatio) {
  // One 1.0 and 127 values of 0.9 per row: at ratio 0.9 every 0.9 is the
  // top level (7 * 0.9/7) and only the outlier errs by 0.1; at 1.0 the 0.9s
  // land on 6/7 (error 0.043 each). Ratios near 0.9 misplace all 127 values.
  std::vector<float> w(4 * 128, 0.9f);
  // Positive: a negative outlier could still reach code -8 (-8 * 0.9/7).
  for (int r = 0; r < 4; ++r) w[r * 128 + 17 * r] = 1.0f;
  const QuantSpec spec{QuantType::kInt4Clip, QuantScheme::kSym, -1};
  auto ratio = SearchClipRatio(w.data(), 4, 128, spec, DefaultClipRatios());
  ASSERT_TRUE(ratio.ok()) << ratio.status();
  EXPECT_EQ(*ratio, 0.9f);
  auto clipped = FakeQuantMse(w.data(), 4, 128, {QuantType::kInt4Clip, QuantScheme::kSym, -1, 0.9f});
  auto plain = FakeQuantMse(w.data(), 4, 128, spec);
  ASSERT_TRUE(clipped.ok() && plain.ok());
  EXPECT_NEAR(*clipped, 4 * 0.01 / 512, 1e-9);
  EXPECT_LT(*clipped, *plain);
}

TEST(ClipSearch, UniformGridKeepsFullRangeAndTiesKeepTheFirst) {
  // k/7 for k = -7..7: exact at ratio 1, so clipping only adds error.
  std::vector<float> w;
  for (int k = -7; k <= 7; ++k) w.push_back(static_cast<float>(k) / 7.0f);
  const QuantSpec spec{QuantType::kInt4Clip, QuantScheme::kSym, -1};
  EXPECT_EQ(*SearchClipRatio(w.data(), 1, 15, spec, DefaultClipRatios()), 1.0f);
  // All-zero weights: every ratio gives 0, the first (largest) wins.
  const std::vector<float> zeros(64, 0.0f);
  const std::vector<float> ratios = {0.95f, 0.9f, 1.0f};
  EXPECT_EQ(*SearchClipRatio(zeros.data(), 2, 32, spec, ratios), 0.95f);
}

TEST(ClipSearch, MatchesBruteForceOverQuantizeAndDequantize) {
  const std::vector<float> w = RandomWeights(9, 96, 11);
  for (const QuantSpec& spec :
       {QuantSpec{QuantType::kInt4Clip, QuantScheme::kSym, 32},
        QuantSpec{QuantType::kInt3, QuantScheme::kAsym, 32},
        QuantSpec{QuantType::kNf4, QuantScheme::kSym, 32}}) {
    const std::vector<float> ratios = DefaultClipRatios();
    size_t best = 0;
    double best_mse = 0;
    for (size_t i = 0; i < ratios.size(); ++i) {
      QuantSpec s = spec;
      s.quantile = ratios[i];
      const std::vector<float> deq = DequantizeMatrix(Quantize(w, 9, s).view());
      double sse = 0;
      for (int64_t r = 0; r < 9; ++r) {
        double row = 0;
        for (int64_t k = 0; k < 96; ++k) {
          const double d = static_cast<double>(w[r * 96 + k]) - deq[r * 96 + k];
          row += d * d;
        }
        sse += row;
      }
      const double mse = sse / (9 * 96);
      auto fast = FakeQuantMse(w.data(), 9, 96, s);
      ASSERT_TRUE(fast.ok());
      EXPECT_DOUBLE_EQ(*fast, mse) << i;
      if (i == 0 || mse < best_mse) {
        best = i;
        best_mse = mse;
      }
    }
    EXPECT_EQ(*SearchClipRatio(w.data(), 9, 96, spec, ratios), ratios[best]);
  }
}

TEST(ClipSearch, RejectsBadInput) {
  const std::vector<float> w = {1, std::numeric_limits<float>::infinity()};
  const QuantSpec spec;
  EXPECT_EQ(SearchClipRatio(w.data(), 1, 2, spec, DefaultClipRatios()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SearchClipRatio(w.data(), 1, 1, spec, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------- scale encodings

TEST(DoubleQuant, RoundTripWithinHalfAStep) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(0.001f, 0.05f);
  std::vector<float> scales(300);  // Two blocks: 256 + a 44 tail.
  for (float& s : scales) s = dist(rng);
  for (bool subtract_mean : {false, true}) {
    const DoubleQuantizedScales dq = DoubleQuantizeScales(scales, subtract_mean);
    ASSERT_EQ(dq.codes.size(), 300u);
    ASSERT_EQ(dq.block_scales.size(), 2u);
    double mean = 0;
    for (float s : scales) mean += s;
    mean /= 300;
    EXPECT_NEAR(dq.mean, subtract_mean ? mean : 0.0, 1e-7);
    std::vector<float> back(300);
    ASSERT_TRUE(DequantizeDoubleQuantizedScales(dq.codes, dq.block_scales, dq.mean,
                                                absl::MakeSpan(back))
                    .ok());
    for (size_t b = 0; b < 2; ++b) {
      // Block scale = amax of the (centred) block / 127.
      float amax = 0;
      for (size_t i = b * 256; i < std::min<size_t>(300, (b + 1) * 256); ++i) {
        amax = std::max(amax, std::fabs(scales[i] - dq.mean));
      }
      EXPECT_FLOAT_EQ(dq.block_scales[b], amax / 127);
    }
    for (size_t i = 0; i < 300; ++i) {
      EXPECT_LE(std::fabs(back[i] - scales[i]), dq.block_scales[i / 256] * 0.5f * (1 + 1e-5f));
      EXPECT_GE(dq.codes[i], 1);  // Sym int8 without full range: [-127, 127].
    }
  }
  std::vector<float> back(300);
  EXPECT_FALSE(DequantizeDoubleQuantizedScales(
                   DoubleQuantizeScales(scales, false).codes, {1.0f}, 0, absl::MakeSpan(back))
                   .ok());
}

TEST(DoubleQuant, WeightCodesUseTheOriginalScales) {
  const std::vector<float> w = RandomWeights(7, 96, 9);
  for (QuantScheme scheme : {QuantScheme::kSym, QuantScheme::kAsym}) {
    QuantSpec spec{QuantType::kInt4Clip, scheme, 32};
    const auto plain = Quantize(w, 7, spec);
    spec.scale_encoding = ScaleEncoding::kDoubleQuant;
    const auto dq = Quantize(w, 7, spec);
    EXPECT_EQ(dq.codes, plain.codes);
    EXPECT_EQ(dq.zeros, plain.zeros);
    ASSERT_TRUE(dq.double_quant.has_value());
    const DoubleQuantizedScales expect =
        DoubleQuantizeScales(plain.scales, scheme == QuantScheme::kAsym);
    EXPECT_EQ(dq.double_quant->codes, expect.codes);
    EXPECT_EQ(dq.double_quant->mean, expect.mean);
    std::vector<float> decoded(plain.scales.size());
    ASSERT_TRUE(DequantizeDoubleQuantizedScales(expect.codes, expect.block_scales, expect.mean,
                                                absl::MakeSpan(decoded))
                    .ok());
    EXPECT_EQ(dq.scales, decoded);
  }
}

TEST(DoubleQuant, BitsPerWeight) {
  const std::vector<float> w = RandomWeights(4, 256, 5);  // 32 groups
  QuantSpec spec{QuantType::kInt4Clip, QuantScheme::kSym, 32};
  EXPECT_DOUBLE_EQ(BitsPerWeight(Quantize(w, 4, spec).view()), 5.0);
  spec.scale_encoding = ScaleEncoding::kDoubleQuant;
  // 8-bit codes (0.25) + one fp32 block scale over 1024 weights.
  EXPECT_DOUBLE_EQ(BitsPerWeight(Quantize(w, 4, spec).view()), 4.0 + 0.25 + 32.0 / 1024);
  spec.scheme = QuantScheme::kAsym;  // + zeros and the fp32 mean
  EXPECT_DOUBLE_EQ(BitsPerWeight(Quantize(w, 4, spec).view()),
                   4.0 + 0.25 + 0.25 + 64.0 / 1024);
  spec = {QuantType::kInt4Clip, QuantScheme::kSym, 32};
  spec.scale_encoding = ScaleEncoding::kBf16;
  EXPECT_DOUBLE_EQ(BitsPerWeight(Quantize(w, 4, spec).view()), 4.5);
}

TEST(Bf16Scales, RoundToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(1.0f + 0x1p-8f), 0x3F80);                // tie -> even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);            // tie -> even
  EXPECT_EQ(FloatToBf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);     // above half
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // -> inf
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
  EXPECT_EQ(Bf16ToFloat(0x3F81), 1.0f + 0x1p-7f);
}

TEST(Bf16Scales, ScalesRoundedAfterQuantizing) {
  const std::vector<float> w = RandomWeights(5, 64, 4);
  QuantSpec spec{QuantType::kNf4, QuantScheme::kSym, 32};
  const auto plain = Quantize(w, 5, spec);
  spec.scale_encoding = ScaleEncoding::kBf16;
  const auto bf16 = Quantize(w, 5, spec);
  EXPECT_EQ(bf16.codes, plain.codes);
  for (size_t i = 0; i < plain.scales.size(); ++i) {
    EXPECT_EQ(bf16.scales[i], Bf16ToFloat(FloatToBf16(plain.scales[i])));
    EXPECT_LE(std::fabs(bf16.scales[i] - plain.scales[i]), std::fabs(plain.scales[i]) * 0x1p-8f);
  }
}

}  // namespace
}  // namespace wq
