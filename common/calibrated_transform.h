// The AWQ / TEQ stage of a quantization job: loads the calibration set,
// transforms the fp32 model block by block, and hands back the transformed
// model for RTN to quantize.
#ifndef WQ_COMMON_CALIBRATED_TRANSFORM_H_
#define WQ_COMMON_CALIBRATED_TRANSFORM_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/calibration.h"
#include "common/llama.h"
#include "proto/wq/v1/quant_config.pb.h"

namespace wq {

struct CalibratedTransformResult {
  std::shared_ptr<const LlamaWeights> weights;
  std::vector<std::string> log;  // calibration set, per-block results, peak memory
};

// Progress: the stage of decoder block `block` (0-based) of `blocks`.
using CalibrationProgressFn =
    std::function<void(CalibrationStage stage, int block, int blocks, const std::string& message)>;

// `resolved` must have algorithm AWQ or TEQ. The tokenizer is the model's
// (model_dir/tokenizer.model); calibration data_file is read under
// data_root. CANCELLED as soon as *cancelled is seen, also inside a block.
absl::StatusOr<CalibratedTransformResult> RunCalibratedTransform(
    std::shared_ptr<const LlamaWeights> weights, const v1::WeightOnlyQuantConfig& resolved,
    const RootedPath& model_dir, const std::string& data_root,
    const std::atomic<bool>* cancelled, const CalibrationProgressFn& progress);

}  // namespace wq

#endif  // WQ_COMMON_CALIBRATED_TRANSFORM_H_
