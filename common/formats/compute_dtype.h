// Arithmetic used by quantized matmuls (the weights' storage dtype is
// separate: see quant_format.h).
#ifndef WQ_COMMON_COMPUTE_DTYPE_H_
#define WQ_COMMON_COMPUTE_DTYPE_H_

#include <string_view>

namespace wq {

enum class ComputeDtype {
  kFp32,  // Dequantize to fp32; matches the reference up to reassociation.
  kBf16,  // Activations and levels rounded to bf16, fp32 accumulation.
  kInt8,  // Activations quantized per 32-block to int8, integer dots.
};
inline constexpr int kNumComputeDtypes = 3;

constexpr std::string_view ComputeDtypeName(ComputeDtype c) {
  return c == ComputeDtype::kFp32   ? "fp32"
         : c == ComputeDtype::kBf16 ? "bf16"
                                    : "int8";
}

}  // namespace wq

#endif  // WQ_COMMON_COMPUTE_DTYPE_H_
