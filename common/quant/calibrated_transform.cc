#include "common/quant/calibrated_transform.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/io/process_memory.h"
#include "common/formats/quant_config.h"
#include "common/io/status_macros.h"
#include "common/quant/block_transform.h"
#include "common/tokenizer/tokenizer.h"

namespace wq {

absl::StatusOr<std::vector<std::string>> RunCalibratedTransform(
    const LlamaModel& model, const LayerWeightsFn& layers, const TransformedBlockFn& emit,
    const v1::WeightOnlyQuantConfig& resolved, const RootedPath& model_dir,
    const std::string& data_root, const std::atomic<bool>* cancelled,
    const CalibrationProgressFn& progress) {
  const LlamaConfig& config = model.config();
  const auto row = std::find_if(
      kBlockTransforms.begin(), kBlockTransforms.end(),
      [&](const BlockTransform* t) { return t->algorithm == resolved.algorithm(); });
  if (row == kBlockTransforms.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        v1::Algorithm_Name(resolved.algorithm()), " has no calibrated block transform"));
  }
  const BlockTransform& transform = **row;
  const int blocks = config.num_hidden_layers;
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::LoadModelDir(model_dir));
  ASSIGN_OR_RETURN(CalibrationSet calibration,
                   BuildCalibrationSet(resolved.calibration(), data_root, *tokenizer));
  // The first report of the phase: the job log keeps what was used.
  progress(CalibrationStage::kCapture, 0, blocks, calibration.message);
  std::vector<std::string> log = {calibration.message};

  // The searches use fp32 scales, as mse_range does: double quant ties the
  // scales of a whole layer together, which the per-batch clip search cannot
  // see, and bf16 rounding moves the optimum by far less than a grid step.
  QuantSpec spec = QuantSpecOf(resolved);
  spec.scale_encoding = ScaleEncoding::kF32;
  // Layers kept in fp32 are still scaled (AutoAWQ scales every layer of a
  // group) but not clipped.
  auto skipped = [&](int layer) {
    std::array<bool, kNumLinearRoles> skip{};
    for (const BlockLinearSpec& spec : BlockLinears(config)) {
      skip[spec.role] = IsSkippedModule(resolved, BlockModuleName(layer, spec.name()));
    }
    return skip;
  };
  RETURN_IF_ERROR(ForEachCalibratedBlock(
      model, calibration, cancelled,
      [&](int layer, BlockWeights& w, const BlockActivations& acts) -> absl::Status {
        BlockTransformInputs inputs;
        inputs.model = &model;
        inputs.acts = &acts;
        inputs.spec = spec;
        inputs.compute = ComputeDtypeOf(resolved.compute_dtype());
        inputs.skip = skipped(layer);
        inputs.cancelled = cancelled;
        inputs.on_stage = [&](CalibrationStage stage) {
          progress(stage, layer, blocks,
                   absl::StrFormat("%s block %d of %d",
                                   stage == CalibrationStage::kClipSearch
                                       ? std::string("clip search")
                                       : std::string(transform.search_stage),
                                   layer + 1, blocks));
        };
        ASSIGN_OR_RETURN(std::vector<std::string> groups, transform.transform(inputs, &w));
        log.push_back(absl::StrCat(std::string(transform.name), " block ", layer, ": ",
                                   absl::StrJoin(groups, "; ")));
        return emit(layer, w);
      },
      layers));
  log.push_back(absl::StrFormat("calibration peak memory (VmHWM) %.1f MiB",
                                PeakResidentBytes() / 1048576.0));
  return log;
}

}  // namespace wq
