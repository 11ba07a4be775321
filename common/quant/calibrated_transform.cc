#include "common/quant/calibrated_transform.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/quant/awq.h"
#include "common/io/process_memory.h"
#include "common/formats/quant_config.h"
#include "common/io/status_macros.h"
#include "common/quant/teq.h"
#include "common/tokenizer/tokenizer.h"

namespace wq {

absl::StatusOr<std::vector<std::string>> RunCalibratedTransform(
    const LlamaModel& model, const LayerWeightsFn& layers, const TransformedBlockFn& emit,
    const v1::WeightOnlyQuantConfig& resolved, const RootedPath& model_dir,
    const std::string& data_root, const std::atomic<bool>* cancelled,
    const CalibrationProgressFn& progress) {
  const LlamaConfig& config = model.config();
  const bool awq = resolved.algorithm() == v1::AWQ;
  if (!awq && resolved.algorithm() != v1::TEQ) {
    return absl::InvalidArgumentError("the calibrated transform is for AWQ and TEQ only");
  }
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
      [&](int layer, const LlamaLayerWeights& weights,
          const BlockActivations& acts) -> absl::Status {
        const CalibrationStageFn on_stage = [&](CalibrationStage stage) {
          progress(stage, layer, blocks,
                   absl::StrFormat("%s block %d of %d",
                                   stage == CalibrationStage::kClipSearch ? "clip search"
                                                                          : (awq ? "scale search"
                                                                                 : "training"),
                                   layer + 1, blocks));
        };
        BlockWeights w = BlockWeights::Copy(weights, config);
        std::vector<std::string> groups;
        if (awq) {
          AwqOptions options;
          options.spec = spec;
          options.skip = skipped(layer);
          options.cancelled = cancelled;
          options.on_stage = on_stage;
          ASSIGN_OR_RETURN(AwqBlockReport report, AwqTransformBlock(model, acts, options, &w));
          for (const AwqScaleSearch& g : report.groups) {
            groups.push_back(absl::StrFormat("a=%.2f loss %.3g (a=0: %.3g)", g.ratio,
                                             g.losses[g.best], g.losses[0]));
          }
        } else {
          TeqOptions options;
          options.spec = spec;
          options.cancelled = cancelled;
          options.on_stage = on_stage;
          ASSIGN_OR_RETURN(std::vector<TeqGroupReport> reports,
                           TeqTransformBlock(config, acts, options, &w));
          for (const TeqGroupReport& g : reports) {
            const auto [lo, hi] = std::minmax_element(g.alpha.begin(), g.alpha.end());
            const std::string init =
                g.init_ratio < 0 ? ""
                                 : absl::StrFormat(" -> %.3g (init r=%.2f)", g.init_loss,
                                                   g.init_ratio);
            groups.push_back(absl::StrFormat("loss %.3g%s -> %.3g%s, a in [%.3g, %.3g]",
                                             g.initial_loss, init, g.final_loss,
                                             g.kept_init ? " (kept the start)" : "", *lo, *hi));
          }
        }
        log.push_back(absl::StrCat(awq ? "awq" : "teq", " block ", layer, ": ",
                                   absl::StrJoin(groups, "; ")));
        return emit(layer, w);
      },
      layers));
  log.push_back(absl::StrFormat("calibration peak memory (VmHWM) %.1f MiB",
                                PeakResidentBytes() / 1048576.0));
  return log;
}

}  // namespace wq
