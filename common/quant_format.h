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
//  - scales: float [rows, groups_per_row]; zeros: uint8 [rows, groups_per_row]
//    for asym, absent for sym.
#ifndef WQ_COMMON_QUANT_FORMAT_H_
#define WQ_COMMON_QUANT_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace wq {

enum class QuantType { kInt8, kInt4FullRange, kInt4Clip, kNf4, kFp4E2M1 };
enum class QuantScheme { kSym, kAsym };

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

struct QuantSpec {
  QuantType type = QuantType::kInt4Clip;
  QuantScheme scheme = QuantScheme::kSym;
  int group_size = 32;  // -1: one group per row (per output channel).
  float quantile = 1.0f;  // Clip ratio applied to the group's range.
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

// Storage bits per weight: (codes + 32-bit scales + 8-bit zeros) / (rows*cols).
double BitsPerWeight(const QuantizedMatrixView& m);

}  // namespace wq

#endif  // WQ_COMMON_QUANT_FORMAT_H_
