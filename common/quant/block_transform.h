// The interface every calibration algorithm implements: transform one decoder
// block's fp32 weights, given that block's calibration activations, before
// RTN quantizes them. RunCalibratedTransform iterates the table below; a new
// algorithm (GPTQ) is one file defining its BlockTransform and one row.
#ifndef WQ_COMMON_QUANT_BLOCK_TRANSFORM_H_
#define WQ_COMMON_QUANT_BLOCK_TRANSFORM_H_

#include <array>
#include <atomic>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/formats/compute_dtype.h"
#include "common/formats/quant_format.h"
#include "common/model/llama.h"
#include "common/quant/calibration.h"
#include "wq/v1/quant_config.pb.h"

namespace wq {

struct BlockTransformInputs {
  const LlamaModel* model;
  const BlockActivations* acts;
  QuantSpec spec;  // the job's quantization, with fp32 scales
  ComputeDtype compute = ComputeDtype::kFp32;  // the job's compute dtype
  // Layers kept in fp32 (llm_int8_skip_modules), by role.
  std::array<bool, kNumLinearRoles> skip{};
  const std::atomic<bool>* cancelled = nullptr;
  CalibrationStageFn on_stage;
};

struct BlockTransform {
  v1::Algorithm algorithm;
  std::string_view name;          // in the job log: "awq"
  std::string_view search_stage;  // the progress message of its search stage
  // Transforms *w in place; returns one job-log entry per scaling group.
  absl::StatusOr<std::vector<std::string>> (*transform)(const BlockTransformInputs& inputs,
                                                        BlockWeights* w);
};

// Defined beside each algorithm (awq.cc, teq.cc).
extern const BlockTransform kAwqBlockTransform;
extern const BlockTransform kTeqBlockTransform;

// Every calibration algorithm, one row each.
inline constexpr std::array<const BlockTransform*, 2> kBlockTransforms = {
    &kAwqBlockTransform, &kTeqBlockTransform};

}  // namespace wq

#endif  // WQ_COMMON_QUANT_BLOCK_TRANSFORM_H_
