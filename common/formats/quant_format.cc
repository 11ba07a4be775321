#include "common/formats/quant_format.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/parallel.h"
#include "common/io/status_macros.h"
#include "tbb/blocked_range.h"

namespace wq {
namespace {

// torch.round(x).clamp(lo, hi): std::nearbyint rounds half to even under the
// default rounding mode. fmax/fmin also map a NaN quotient (0/0 when a scale
// underflows to zero) to `lo` instead of an undefined integer conversion.
inline float RoundClamp(float x, float lo, float hi) {
  return std::fmin(std::fmax(std::nearbyint(x), lo), hi);
}

void MinMax(const float* w, int n, float* min_val, float* max_val) {
  float lo = w[0], hi = w[0];
  for (int i = 1; i < n; ++i) {
    lo = std::fmin(lo, w[i]);
    hi = std::fmax(hi, w[i]);
  }
  *min_val = lo;
  *max_val = hi;
}

// INC qdq_weight_sym; codes are q + 2^(b-1).
template <int kBits, bool kFullRange>
void QuantizeIntSym(const float* w, int n, float quantile, uint8_t* codes,
                    float* scale) {
  constexpr float kMaxQ = (1 << (kBits - 1)) - 1;
  constexpr float kMinQ = -(1 << (kBits - 1));
  float min_val, max_val;
  MinMax(w, n, &min_val, &max_val);
  float wmax = std::fmax(std::fabs(max_val), std::fabs(min_val)) * quantile;
  if (wmax == 0.0f) wmax = 1.0f;
  float s;
  if (kFullRange) {
    s = wmax / -kMinQ;
    // flip_flag: the extreme of larger magnitude always maps to minq.
    if (std::fabs(max_val) > std::fabs(min_val)) s = -s;
  } else {
    s = wmax / kMaxQ;
  }
  for (int i = 0; i < n; ++i) {
    codes[i] = static_cast<uint8_t>(RoundClamp(w[i] / s, kMinQ, kMaxQ) - kMinQ);
  }
  *scale = s;
}

// INC qdq_weight_asym: the range always includes 0.
template <int kBits>
void QuantizeIntAsym(const float* w, int n, float quantile, uint8_t* codes,
                     float* scale, uint8_t* zero) {
  constexpr float kMaxQ = (1 << kBits) - 1;
  float min_val, max_val;
  MinMax(w, n, &min_val, &max_val);
  float wmin = std::fmin(min_val, 0.0f) * quantile;
  float wmax = std::fmax(max_val, 0.0f) * quantile;
  if (wmin == 0.0f && wmax == 0.0f) {
    wmin = -1.0f;
    wmax = 1.0f;
  }
  const float s = (wmax - wmin) / kMaxQ;
  // Mathematically in [0, maxq]; the clamp only guards the uint8 conversion.
  const float zp = RoundClamp(-wmin / s, 0.0f, kMaxQ);
  for (int i = 0; i < n; ++i) {
    codes[i] = static_cast<uint8_t>(
        std::fmin(std::fmax(std::nearbyint(w[i] / s) + zp, 0.0f), kMaxQ));
  }
  *scale = s;
  *zero = static_cast<uint8_t>(zp);
}

template <int kBits, bool kFullRange>
void QuantizeIntGroup(const float* w, int n, QuantScheme scheme,
                      float quantile, uint8_t* codes, float* scale,
                      uint8_t* zero) {
  if (scheme == QuantScheme::kSym) {
    QuantizeIntSym<kBits, kFullRange>(w, n, quantile, codes, scale);
  } else {
    QuantizeIntAsym<kBits>(w, n, quantile, codes, scale, zero);
  }
}

template <size_t N>
struct Codebook {
  std::array<float, N> values;     // Sorted ascending.
  std::array<float, N - 1> mids;   // Decision thresholds.
  float max_value;
  uint8_t zero_code;               // Index of 0.0.
};

// INC computes the midpoints of the (Python double) entries in double; the
// comparison with the fp32 tensor then casts them to float.
template <size_t N>
constexpr Codebook<N> MakeCodebook(const std::array<float, N>& values) {
  Codebook<N> cb{};
  cb.values = values;
  cb.max_value = values[N - 1];
  for (size_t i = 0; i + 1 < N; ++i) {
    cb.mids[i] = static_cast<float>(
        (static_cast<double>(values[i]) + static_cast<double>(values[i + 1])) /
        2.0);
  }
  for (size_t i = 0; i < N; ++i) {
    if (values[i] == 0.0f) cb.zero_code = static_cast<uint8_t>(i);
  }
  return cb;
}

// bitsandbytes / INC NF4 (all entries are exact float32 values).
constexpr Codebook<16> kNf4 = MakeCodebook<16>(
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
     0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
     0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
     0.7229568362236023f, 1.0f});

// INC/ITREX FP4_E2M1: 15 entries, subnormal 0.0625 (not OCP's 0.5), no -0.
constexpr Codebook<15> kFp4E2M1 = MakeCodebook<15>(
    {-6.0f, -4.0f, -3.0f, -2.0f, -1.5f, -1.0f, -0.0625f, 0.0f, 0.0625f, 1.0f,
     1.5f, 2.0f, 3.0f, 4.0f, 6.0f});

// INC quantize_4bit. Asym never reaches here (ValidateQuantSpec rejects it).
template <const auto& kCb>
void QuantizeCodebookGroup(const float* w, int n, QuantScheme /*scheme*/,
                           float quantile, uint8_t* codes, float* scale,
                           uint8_t* /*zero*/) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(w[i]));
  const float s = amax * quantile / kCb.max_value;
  *scale = s;
  if (s == 0.0f) {
    // INC divides by zero here and ends up with 0 for every element.
    for (int i = 0; i < n; ++i) codes[i] = kCb.zero_code;
    return;
  }
  constexpr size_t kLast = kCb.mids.size();
  for (int i = 0; i < n; ++i) {
    const float t = w[i] / s;
    // First entry whose upper threshold is >= t; ties go to the lower entry.
    size_t c = 0;
    while (c < kLast && t > kCb.mids[c]) ++c;
    codes[i] = static_cast<uint8_t>(c);
  }
}

template <int kBits, int kOffset>
constexpr std::array<float, (1 << kBits)> IntLevels() {
  std::array<float, (1 << kBits)> levels{};
  for (int c = 0; c < (1 << kBits); ++c) {
    levels[c] = static_cast<float>(c - kOffset);
  }
  return levels;
}

constexpr auto kInt8SymLevels = IntLevels<8, 128>();
constexpr auto kInt8AsymLevels = IntLevels<8, 0>();
constexpr auto kInt4SymLevels = IntLevels<4, 8>();
constexpr auto kInt4AsymLevels = IntLevels<4, 0>();
constexpr auto kInt3SymLevels = IntLevels<3, 4>();
constexpr auto kInt3AsymLevels = IntLevels<3, 0>();
constexpr auto kInt2SymLevels = IntLevels<2, 2>();
constexpr auto kInt2AsymLevels = IntLevels<2, 0>();

// Indexed by QuantType.
const QuantFormat kFormats[] = {
    {QuantType::kInt8, "int8", 8, true, {}, &QuantizeIntGroup<8, false>,
     kInt8SymLevels, kInt8AsymLevels},
    {QuantType::kInt4FullRange, "int4_fullrange", 4, true, {},
     &QuantizeIntGroup<4, true>, kInt4SymLevels, kInt4AsymLevels},
    {QuantType::kInt4Clip, "int4_clip", 4, true, {},
     &QuantizeIntGroup<4, false>, kInt4SymLevels, kInt4AsymLevels},
    {QuantType::kNf4, "nf4", 4, false, kNf4.values,
     &QuantizeCodebookGroup<kNf4>, kNf4.values, {}},
    {QuantType::kFp4E2M1, "fp4_e2m1", 4, false, kFp4E2M1.values,
     &QuantizeCodebookGroup<kFp4E2M1>, kFp4E2M1.values, {}},
    // INC bits=3/2 without full_range: scale = amax/maxq (3 and 1), so the
    // sym codes used are [-3, 3] and [-1, 1].
    {QuantType::kInt3, "int3", 3, true, {}, &QuantizeIntGroup<3, false>,
     kInt3SymLevels, kInt3AsymLevels},
    {QuantType::kInt2, "int2", 2, true, {}, &QuantizeIntGroup<2, false>,
     kInt2SymLevels, kInt2AsymLevels},
};
static_assert(std::size(kFormats) == static_cast<size_t>(QuantType::kInt2) + 1,
              "one row per QuantType, in enum order");

// This system Abseil's string_view is not std::string_view, so StrCat needs
// an explicit conversion.
absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

constexpr int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

const QuantFormat& GetQuantFormat(QuantType type) {
  return kFormats[static_cast<int>(type)];
}

absl::Span<const QuantFormat> AllQuantFormats() { return kFormats; }

absl::StatusOr<QuantType> ParseQuantType(std::string_view name) {
  for (const QuantFormat& f : kFormats) {
    if (f.name == name) return f.type;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown weight dtype \"", AbslView(name), "\"; expected one of: ",
      absl::StrJoin(kFormats, ", ", [](std::string* out, const QuantFormat& f) {
        absl::StrAppend(out, AbslView(f.name));
      })));
}

absl::Status ValidateQuantSpec(const QuantSpec& spec) {
  const int type = static_cast<int>(spec.type);
  if (type < 0 || type >= static_cast<int>(std::size(kFormats))) {
    return absl::InvalidArgumentError(absl::StrCat("unknown QuantType ", type));
  }
  if (spec.scheme != QuantScheme::kSym && spec.scheme != QuantScheme::kAsym) {
    return absl::InvalidArgumentError("unknown QuantScheme");
  }
  const QuantFormat& f = GetQuantFormat(spec.type);
  if (spec.scheme == QuantScheme::kAsym && !f.supports_asym) {
    return absl::InvalidArgumentError(
        absl::StrCat("asym scheme is not supported for ", AbslView(f.name)));
  }
  if (spec.group_size == 0 || spec.group_size < -1) {
    return absl::InvalidArgumentError(
        "group_size must be -1 (per channel) or >= 1");
  }
  if (!(spec.quantile > 0.0f && spec.quantile <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantile must be in (0, 1], got ", spec.quantile));
  }
  if (spec.scale_encoding != ScaleEncoding::kF32 &&
      spec.scale_encoding != ScaleEncoding::kBf16 &&
      spec.scale_encoding != ScaleEncoding::kDoubleQuant) {
    return absl::InvalidArgumentError("unknown ScaleEncoding");
  }
  return absl::OkStatus();
}

int EffectiveGroupSize(const QuantSpec& spec, int64_t cols) {
  if (spec.group_size == -1 || spec.group_size >= cols) {
    return static_cast<int>(cols);
  }
  return spec.group_size;
}

namespace {

absl::Status ValidateShape(int64_t rows, int64_t cols) {
  if (rows < 1 || cols < 1 || cols > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "matrix shape [", rows, ", ", cols, "] must have rows >= 1 and ",
        "1 <= cols <= ", std::numeric_limits<int>::max()));
  }
  return absl::OkStatus();
}

// Fills the shape and layout fields shared by the view and the owner.
template <typename M>
void SetLayout(const QuantSpec& spec, int64_t rows, int64_t cols, M* m) {
  m->spec = spec;
  m->rows = rows;
  m->cols = cols;
  m->group_size = EffectiveGroupSize(spec, cols);
  m->groups_per_row = CeilDiv(cols, m->group_size);
  m->row_bytes = CeilDiv(cols * GetQuantFormat(spec.type).bits, 8);
}

}  // namespace

absl::Status ValidateQuantizedMatrixView(const QuantizedMatrixView& m,
                                         size_t codes_bytes,
                                         size_t scales_count,
                                         size_t zeros_count) {
  RETURN_IF_ERROR(ValidateQuantSpec(m.spec));
  RETURN_IF_ERROR(ValidateShape(m.rows, m.cols));
  QuantizedMatrixView expected;
  SetLayout(m.spec, m.rows, m.cols, &expected);
  if (m.group_size != expected.group_size ||
      m.groups_per_row != expected.groups_per_row ||
      m.row_bytes != expected.row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inconsistent layout: group_size/groups_per_row/row_bytes ",
        m.group_size, "/", m.groups_per_row, "/", m.row_bytes, ", expected ",
        expected.group_size, "/", expected.groups_per_row, "/",
        expected.row_bytes));
  }
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (m.rows > kMax / m.row_bytes || m.rows > kMax / m.groups_per_row) {
    return absl::InvalidArgumentError("matrix too large");
  }
  const uint64_t want_codes = static_cast<uint64_t>(m.rows * m.row_bytes);
  const uint64_t groups = static_cast<uint64_t>(m.rows * m.groups_per_row);
  if (codes_bytes != want_codes || m.codes == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "codes: ", codes_bytes, " bytes, expected ", want_codes));
  }
  if (scales_count != groups || m.scales == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("scales: ", scales_count, ", expected ", groups));
  }
  const QuantFormat& f = GetQuantFormat(m.spec.type);
  if (m.spec.scheme == QuantScheme::kAsym) {
    if (zeros_count != groups || m.zeros == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("zeros: ", zeros_count, ", expected ", groups));
    }
    const int max_zero = (1 << f.bits) - 1;
    for (uint64_t i = 0; i < groups; ++i) {
      if (m.zeros[i] > max_zero) {
        return absl::InvalidArgumentError(
            absl::StrCat("zero point ", m.zeros[i], " exceeds ", max_zero));
      }
    }
  } else if (zeros_count != 0 || m.zeros != nullptr) {
    return absl::InvalidArgumentError("sym matrix must not have zero points");
  }
  // Only a level table shorter than 2^bits (fp4_e2m1: 15) has invalid codes,
  // and decoding one would read past the table.
  const size_t num_levels = f.levels(m.spec.scheme).size();
  if (num_levels < (size_t{1} << f.bits)) {
    for (int64_t r = 0; r < m.rows; ++r) {
      const uint8_t* row = m.codes + r * m.row_bytes;
      for (int64_t k = 0; k < m.cols; ++k) {
        if (CodeAt(row, k, f.bits) >= num_levels) {
          return absl::InvalidArgumentError(absl::StrCat(
              "code ", CodeAt(row, k, f.bits), " at [", r, ", ", k,
              "] is outside the ", AbslView(f.name), " table"));
        }
      }
    }
  }
  return absl::OkStatus();
}

QuantizedMatrixView QuantizedMatrix::view() const {
  QuantizedMatrixView v;
  v.spec = spec;
  v.rows = rows;
  v.cols = cols;
  v.group_size = group_size;
  v.groups_per_row = groups_per_row;
  v.row_bytes = row_bytes;
  v.codes = codes.data();
  v.scales = scales.data();
  v.zeros = zeros.empty() ? nullptr : zeros.data();
  return v;
}

absl::StatusOr<QuantizedMatrix> QuantizeMatrix(const float* w, int64_t rows,
                                               int64_t cols,
                                               const QuantSpec& spec) {
  RETURN_IF_ERROR(ValidateQuantSpec(spec));
  RETURN_IF_ERROR(ValidateShape(rows, cols));
  if (w == nullptr) return absl::InvalidArgumentError("null weights");
  QuantizedMatrix m;
  SetLayout(spec, rows, cols, &m);
  const QuantFormat& f = GetQuantFormat(spec.type);
  const bool asym = spec.scheme == QuantScheme::kAsym;
  m.codes.assign(rows * m.row_bytes, 0);
  m.scales.resize(rows * m.groups_per_row);
  if (asym) m.zeros.resize(rows * m.groups_per_row);

  std::atomic<bool> non_finite{false};
  ParallelFor(
      tbb::blocked_range<int64_t>(0, rows),
      [&](const tbb::blocked_range<int64_t>& range) {
        std::vector<uint8_t> codes(cols);
        for (int64_t r = range.begin(); r != range.end(); ++r) {
          const float* wr = w + r * cols;
          for (int64_t k = 0; k < cols; ++k) {
            if (!std::isfinite(wr[k])) {
              non_finite.store(true, std::memory_order_relaxed);
              return;
            }
          }
          for (int64_t g = 0; g < m.groups_per_row; ++g) {
            const int64_t begin = g * m.group_size;
            const int n = static_cast<int>(
                std::min<int64_t>(m.group_size, cols - begin));
            const int64_t gi = r * m.groups_per_row + g;
            f.quantize_group(wr + begin, n, spec.scheme, spec.quantile,
                             codes.data() + begin, &m.scales[gi],
                             asym ? &m.zeros[gi] : nullptr);
          }
          uint8_t* packed = m.codes.data() + r * m.row_bytes;
          for (int64_t k = 0; k < cols; ++k) {
            PutCode(packed, k, f.bits, codes[k]);
          }
        }
      });
  if (non_finite.load()) {
    return absl::InvalidArgumentError("weights contain NaN or Inf");
  }
  // The codes stay those of the fp32 scales (INC quant_tensor quantizes the
  // weights before double-quantizing the scales; ITREX converts scales to
  // bf16 when repacking already-quantized weights); only the scales the
  // kernels multiply by change.
  switch (spec.scale_encoding) {
    case ScaleEncoding::kF32:
      break;
    case ScaleEncoding::kBf16:
      for (float& s : m.scales) s = Bf16ToFloat(FloatToBf16(s));
      break;
    case ScaleEncoding::kDoubleQuant: {
      m.double_quant = DoubleQuantizeScales(m.scales, asym);
      RETURN_IF_ERROR(DequantizeDoubleQuantizedScales(
          m.double_quant->codes, m.double_quant->block_scales,
          m.double_quant->mean, absl::MakeSpan(m.scales)));
      break;
    }
  }
  return m;
}

void DequantizeRowRange(const QuantizedMatrixView& m, int64_t row,
                        int64_t col_begin, int64_t col_end, float* out) {
  const QuantFormat& f = GetQuantFormat(m.spec.type);
  const float* levels = f.levels(m.spec.scheme).data();
  const uint8_t* codes = m.codes + row * m.row_bytes;
  const float* scales = m.scales + row * m.groups_per_row;
  const uint8_t* zeros =
      m.zeros != nullptr ? m.zeros + row * m.groups_per_row : nullptr;
  int64_t k = col_begin;
  while (k < col_end) {
    const int64_t g = k / m.group_size;
    const int64_t group_end = std::min(col_end, (g + 1) * m.group_size);
    const float scale = scales[g];
    const float zero = zeros != nullptr ? static_cast<float>(zeros[g]) : 0.0f;
    for (; k < group_end; ++k) {
      *out++ = (levels[CodeAt(codes, k, f.bits)] - zero) * scale;
    }
  }
}

void DequantizeRow(const QuantizedMatrixView& m, int64_t row, float* out) {
  DequantizeRowRange(m, row, 0, m.cols, out);
}

std::vector<float> DequantizeMatrix(const QuantizedMatrixView& m) {
  std::vector<float> out(m.rows * m.cols);
  ParallelFor(tbb::blocked_range<int64_t>(0, m.rows),
              [&](const tbb::blocked_range<int64_t>& range) {
                for (int64_t r = range.begin(); r != range.end(); ++r) {
                  DequantizeRow(m, r, out.data() + r * m.cols);
                }
              });
  return out;
}

double BitsPerWeight(const QuantizedMatrixView& m) {
  const int64_t groups = m.rows * m.groups_per_row;
  double scale_bits = 0.0;
  switch (m.spec.scale_encoding) {
    case ScaleEncoding::kF32:
      scale_bits = 32.0 * groups;
      break;
    case ScaleEncoding::kBf16:
      scale_bits = 16.0 * groups;
      break;
    case ScaleEncoding::kDoubleQuant:
      scale_bits = 8.0 * groups + 32.0 * CeilDiv(groups, kDoubleQuantBlock) +
                   (m.spec.scheme == QuantScheme::kAsym ? 32.0 : 0.0);
      break;
  }
  const double bits = static_cast<double>(m.rows * m.row_bytes) * 8.0 +
                      scale_bits +
                      (m.zeros != nullptr ? 8.0 * groups : 0.0);
  return bits / static_cast<double>(m.rows * m.cols);
}

DoubleQuantizedScales DoubleQuantizeScales(absl::Span<const float> scales,
                                           bool subtract_mean) {
  DoubleQuantizedScales dq;
  const int64_t n = static_cast<int64_t>(scales.size());
  if (subtract_mean && n > 0) {
    // torch's fp32 mean, accumulated in double here for stability.
    double sum = 0.0;
    for (float s : scales) sum += s;
    dq.mean = static_cast<float>(sum / static_cast<double>(n));
  }
  std::vector<float> centred(scales.begin(), scales.end());
  for (float& s : centred) s -= dq.mean;
  dq.codes.resize(n);
  dq.block_scales.resize(CeilDiv(n, kDoubleQuantBlock));
  // INC re-enters quant_tensor with bits 8, sym, full_range off, quantile 1:
  // exactly the int8 sym row.
  const QuantFormat& int8 = GetQuantFormat(QuantType::kInt8);
  for (size_t b = 0; b < dq.block_scales.size(); ++b) {
    const int64_t begin = static_cast<int64_t>(b) * kDoubleQuantBlock;
    const int len = static_cast<int>(std::min<int64_t>(kDoubleQuantBlock, n - begin));
    int8.quantize_group(centred.data() + begin, len, QuantScheme::kSym, 1.0f,
                        dq.codes.data() + begin, &dq.block_scales[b], nullptr);
  }
  return dq;
}

absl::Status DequantizeDoubleQuantizedScales(
    absl::Span<const uint8_t> codes, absl::Span<const float> block_scales,
    float mean, absl::Span<float> out) {
  const int64_t n = static_cast<int64_t>(codes.size());
  if (static_cast<int64_t>(block_scales.size()) != CeilDiv(n, kDoubleQuantBlock) ||
      out.size() != codes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "double-quantized scales: ", n, " codes need ",
        CeilDiv(n, kDoubleQuantBlock), " block scales and as many outputs, got ",
        block_scales.size(), " and ", out.size()));
  }
  const float* levels = GetQuantFormat(QuantType::kInt8).sym_levels.data();
  for (int64_t i = 0; i < n; ++i) {
    out[i] = levels[codes[i]] * block_scales[i / kDoubleQuantBlock] + mean;
  }
  return absl::OkStatus();
}

absl::StatusOr<double> FakeQuantMse(const float* w, int64_t rows, int64_t cols,
                                    const QuantSpec& spec) {
  RETURN_IF_ERROR(ValidateQuantSpec(spec));
  RETURN_IF_ERROR(ValidateShape(rows, cols));
  if (w == nullptr) return absl::InvalidArgumentError("null weights");
  const QuantFormat& f = GetQuantFormat(spec.type);
  const float* levels = f.levels(spec.scheme).data();
  const int group_size = EffectiveGroupSize(spec, cols);
  // Per-row sums added in row order keep the result deterministic however
  // TBB splits the rows.
  std::vector<double> row_sse(rows);
  std::atomic<bool> non_finite{false};
  ParallelFor(
      tbb::blocked_range<int64_t>(0, rows),
      [&](const tbb::blocked_range<int64_t>& range) {
        std::vector<uint8_t> codes(group_size);
        for (int64_t r = range.begin(); r != range.end(); ++r) {
          const float* wr = w + r * cols;
          double sse = 0.0;
          for (int64_t begin = 0; begin < cols; begin += group_size) {
            const int n = static_cast<int>(std::min<int64_t>(group_size, cols - begin));
            for (int i = 0; i < n; ++i) {
              if (!std::isfinite(wr[begin + i])) {
                non_finite.store(true, std::memory_order_relaxed);
                return;
              }
            }
            float scale;
            uint8_t zero = 0;
            f.quantize_group(wr + begin, n, spec.scheme, spec.quantile,
                             codes.data(), &scale, &zero);
            for (int i = 0; i < n; ++i) {
              const float deq = (levels[codes[i]] - static_cast<float>(zero)) * scale;
              const double d = static_cast<double>(wr[begin + i]) - deq;
              sse += d * d;
            }
          }
          row_sse[r] = sse;
        }
      });
  if (non_finite.load()) {
    return absl::InvalidArgumentError("weights contain NaN or Inf");
  }
  double sse = 0.0;
  for (double v : row_sse) sse += v;
  return sse / (static_cast<double>(rows) * static_cast<double>(cols));
}

std::vector<float> DefaultClipRatios() {
  constexpr int kGrid = 200;
  constexpr int kCandidates = 40;  // max_shrink 0.2 of the grid
  std::vector<float> ratios(kCandidates);
  // Computed in double as Python does, then used as an fp32 quantile.
  for (int i = 0; i < kCandidates; ++i) {
    ratios[i] = static_cast<float>(1.0 - static_cast<double>(i) / kGrid);
  }
  return ratios;
}

absl::StatusOr<float> SearchClipRatio(const float* w, int64_t rows,
                                      int64_t cols, const QuantSpec& spec,
                                      absl::Span<const float> ratios) {
  if (ratios.empty()) return absl::InvalidArgumentError("no clip ratios");
  std::vector<absl::StatusOr<double>> mse(ratios.size(), 0.0);
  ParallelFor(size_t{0}, ratios.size(), [&](size_t i) {
    QuantSpec candidate = spec;
    candidate.quantile = ratios[i];
    mse[i] = FakeQuantMse(w, rows, cols, candidate);
  });
  size_t best = 0;
  for (size_t i = 0; i < ratios.size(); ++i) {
    if (!mse[i].ok()) return mse[i].status();
    if (*mse[i] < *mse[best]) best = i;
  }
  return ratios[best];
}

}  // namespace wq
