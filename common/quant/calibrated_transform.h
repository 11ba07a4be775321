// The AWQ / TEQ stage of a quantization job: loads the calibration set and
// transforms the fp32 model block by block, handing each transformed block
// on (to be quantized and written) before the next one is read.
#ifndef WQ_COMMON_CALIBRATED_TRANSFORM_H_
#define WQ_COMMON_CALIBRATED_TRANSFORM_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/quant/calibration.h"
#include "common/model/llama.h"
#include "wq/v1/quant_config.pb.h"

namespace wq {

// Progress: the stage of decoder block `block` (0-based) of `blocks`.
using CalibrationProgressFn =
    std::function<void(CalibrationStage stage, int block, int blocks, const std::string& message)>;

// Receives decoder block `layer` transformed.
using TransformedBlockFn = std::function<absl::Status(int layer, BlockWeights& block)>;

// `resolved` must have algorithm AWQ or TEQ. `model` supplies the config and
// embedding, `layers` each block's fp32 weights, which are transformed in
// place (see ForEachCalibratedBlock).
// The tokenizer is the model's (Tokenizer::LoadModelDir(model_dir));
// calibration data_file is read under data_root. Returns the log: the calibration set,
// per-block results, peak memory. CANCELLED as soon as *cancelled is seen,
// also inside a block.
absl::StatusOr<std::vector<std::string>> RunCalibratedTransform(
    const LlamaModel& model, const LayerWeightsFn& layers, const TransformedBlockFn& emit,
    const v1::WeightOnlyQuantConfig& resolved, const RootedPath& model_dir,
    const std::string& data_root, const std::atomic<bool>* cancelled,
    const CalibrationProgressFn& progress);

}  // namespace wq

#endif  // WQ_COMMON_CALIBRATED_TRANSFORM_H_
