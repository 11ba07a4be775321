// Weight-only quantization formats with Intel neural-compressor's numerics
// (adaptor/torch_utils/weight_only.py: qdq_weight_sym, qdq_weight_asym,
// quantize_4bit), reproduced bit for bit in fp32 arithmetic.
//
// Every per-dtype fact lives in one row of a table (as in ggml's type traits),
// so the rest of the code never switches on the dtype.
//
// Storage layout (artifacts and kernels depend on it):
//  - Codes are unsigned `bits`-bit integers. Sym integer: code = q + 2^(b-1);
//    asym integer: code = q with a per-group uint8 zero point; codebook: code =
//    index into the codebook. Every format dequantizes as
//    value = (level[code] - zero) * scale, level[] taken from the format row.
//  - Packing: element k of a row sits at bit offset k*bits of that row, low
//    bits first (4-bit: byte k/2, low nibble for even k). Each row occupies
//    row_bytes = ceil(cols*bits/8) bytes.
//    A code may straddle two bytes (3-bit: elements 2, 5, 7 of every 8).
//  - scales: float [rows, groups_per_row]; zeros: uint8 [rows, groups_per_row]
//    for asym, absent for sym. Kernels always read fp32 scales; how they are
//    stored (ScaleEncoding) is decoded once when a matrix is loaded.
#ifndef WQ_COMMON_QUANT_FORMAT_H_
#define WQ_COMMON_QUANT_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/formats/bf16.h"

namespace wq {

// Appended only: the value indexes the format table.
enum class QuantType {
  kInt8,
  kInt4FullRange,
  kInt4Clip,
  kNf4,
  kFp4E2M1,
  kInt3,
  kInt2,
};
enum class QuantScheme { kSym, kAsym };

// Code k of a packed row (see Packing above). A code straddles into the next
// byte only when bits does not divide 8 (3-bit); that byte is then part of the
// row, since the code ends there.
inline uint32_t CodeAt(const uint8_t* row, int64_t k, int bits) {
  const int64_t bit = k * bits;
  const int shift = static_cast<int>(bit % 8);
  uint32_t v = row[bit / 8];
  if (shift + bits > 8) v |= static_cast<uint32_t>(row[bit / 8 + 1]) << 8;
  return (v >> shift) & ((1u << bits) - 1);
}

// Ors `code` in as code k of a zeroed packed row.
inline void PutCode(uint8_t* row, int64_t k, int bits, uint32_t code) {
  const int64_t bit = k * bits;
  const int shift = static_cast<int>(bit % 8);
  row[bit / 8] |= static_cast<uint8_t>(code << shift);
  if (shift + bits > 8) row[bit / 8 + 1] |= static_cast<uint8_t>(code >> (8 - shift));
}

// Quantizes one group of n weights into unpacked codes (one per uint8), its
// scale and, for asym, its zero point (`zero` is untouched for sym).
// Preconditions: n >= 1, finite weights, scheme supported by the format.
using QuantizeGroupFn = void (*)(const float* w, int n, QuantScheme scheme,
                                 float quantile, uint8_t* codes, float* scale,
                                 uint8_t* zero);

struct QuantFormat {
  QuantType type;
  std::string_view name;  // "int8", "int4_fullrange", "int4_clip", "nf4", ...
  int bits;
  bool supports_asym;
  absl::Span<const float> codebook;  // Empty for integer formats.
  QuantizeGroupFn quantize_group;
  // level[code] per scheme; a code is valid iff it indexes the table.
  absl::Span<const float> sym_levels;
  absl::Span<const float> asym_levels;  // Empty when !supports_asym.

  absl::Span<const float> levels(QuantScheme scheme) const {
    return scheme == QuantScheme::kSym ? sym_levels : asym_levels;
  }
};

// `type` must be a declared enumerator.
const QuantFormat& GetQuantFormat(QuantType type);
absl::StatusOr<QuantType> ParseQuantType(std::string_view name);
absl::Span<const QuantFormat> AllQuantFormats();

// How the per-group scales are stored. The weight codes are always computed
// with the fp32 scales first (INC quant_tensor, ITREX repack); the stored
// scales are then a lossy encoding of them, and the kernels multiply by the
// decoded fp32 values.
enum class ScaleEncoding {
  kF32,
  // Rounded to bfloat16 (round to nearest even).
  kBf16,
  // INC double_quant: the layer's scales, flattened row-major, quantized
  // with the int8 sym row in blocks of kDoubleQuantBlock; asym weights first
  // subtract the mean of all the layer's scales (see DoubleQuantizeScales).
  kDoubleQuant,
};

struct QuantSpec {
  QuantType type = QuantType::kInt4Clip;
  QuantScheme scheme = QuantScheme::kSym;
  int group_size = 32;  // -1: one group per row (per output channel).
  float quantile = 1.0f;  // Clip ratio applied to the group's range.
  ScaleEncoding scale_encoding = ScaleEncoding::kF32;
};

absl::Status ValidateQuantSpec(const QuantSpec& spec);
// group_size -1 or >= cols means one group per row.
int EffectiveGroupSize(const QuantSpec& spec, int64_t cols);

// Non-owning view: the engine points these into mmap'ed artifact files.
struct QuantizedMatrixView {
  QuantSpec spec;
  int64_t rows = 0;
  int64_t cols = 0;
  int group_size = 0;  // Effective group size.
  int64_t groups_per_row = 0;
  int64_t row_bytes = 0;
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  const uint8_t* zeros = nullptr;  // nullptr for sym.
};

// Checks an untrusted view (e.g. read from an artifact) so that decoding it
// never reads out of bounds: shape/layout consistency, buffer sizes (in
// elements), zero points in range and codes inside the level table.
absl::Status ValidateQuantizedMatrixView(const QuantizedMatrixView& m,
                                         size_t codes_bytes,
                                         size_t scales_count,
                                         size_t zeros_count);

// Second-level quantization of scales (INC quant_tensor with double_quant,
// double_quant_bits 8, double_quant_group_size 256).
inline constexpr int kDoubleQuantBlock = 256;

struct DoubleQuantizedScales {
  // One code per first-level scale, in the int8 sym format row's encoding
  // (level = code - 128).
  std::vector<uint8_t> codes;
  // One per block of kDoubleQuantBlock codes; the last block may be short.
  std::vector<float> block_scales;
  // Subtracted from every scale before quantizing (0 when not used).
  float mean = 0.0f;
};

// Quantizes `scales` (finite). subtract_mean mirrors INC's
// double_quant_scheme "asym": centre the scales on their mean first.
DoubleQuantizedScales DoubleQuantizeScales(absl::Span<const float> scales,
                                           bool subtract_mean);
// Decodes into out (codes.size() floats) after checking that the block
// count matches: level * block_scale + mean, as INC's fake quant computes it.
absl::Status DequantizeDoubleQuantizedScales(
    absl::Span<const uint8_t> codes, absl::Span<const float> block_scales,
    float mean, absl::Span<float> out);

struct QuantizedMatrix {
  QuantSpec spec;
  int64_t rows = 0;
  int64_t cols = 0;
  int group_size = 0;
  int64_t groups_per_row = 0;
  int64_t row_bytes = 0;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<uint8_t> zeros;  // Empty for sym.
  // Set for ScaleEncoding::kDoubleQuant; `scales` then holds its decoding.
  std::optional<DoubleQuantizedScales> double_quant;

  QuantizedMatrixView view() const;
};

// w is [rows, cols] row-major. Rejects invalid specs, empty or oversized
// shapes and non-finite weights.
absl::StatusOr<QuantizedMatrix> QuantizeMatrix(const float* w, int64_t rows,
                                               int64_t cols,
                                               const QuantSpec& spec);

// Writes elements [col_begin, col_end) of `row` dequantized to out[0..).
void DequantizeRowRange(const QuantizedMatrixView& m, int64_t row,
                        int64_t col_begin, int64_t col_end, float* out);
// Writes the cols floats of `row`.
void DequantizeRow(const QuantizedMatrixView& m, int64_t row, float* out);
std::vector<float> DequantizeMatrix(const QuantizedMatrixView& m);

// Storage bits per weight: (codes + scales as spec.scale_encoding stores
// them + 8-bit zeros) / (rows*cols). Double quant counts its 8-bit codes,
// one fp32 scale per block and, for asym, the fp32 mean.
double BitsPerWeight(const QuantizedMatrixView& m);

// Mean squared error of fake-quantizing w [rows, cols] with `spec`
// (quantile included, scale encoding ignored), accumulated in double.
// Preconditions as for QuantizeMatrix, which it mirrors group by group
// without materialising the codes.
absl::StatusOr<double> FakeQuantMse(const float* w, int64_t rows, int64_t cols,
                                    const QuantSpec& spec);

// INC's RTN clip search (adaptor/torch_utils/weight_only.py search_clip):
// 1 - i/200 for i in [0, 40).
std::vector<float> DefaultClipRatios();

// The ratio in `ratios` whose fake quantization (spec.quantile replaced by
// it) gives the lowest weight MSE; on ties the earlier one, as INC's strict
// `loss < best_error` does. Candidates are evaluated in parallel.
absl::StatusOr<float> SearchClipRatio(const float* w, int64_t rows,
                                      int64_t cols, const QuantSpec& spec,
                                      absl::Span<const float> ratios);

}  // namespace wq

#endif  // WQ_COMMON_QUANT_FORMAT_H_
