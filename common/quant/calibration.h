// What calibration-based quantizers (AWQ, TEQ) share: the calibration token
// blocks, an editable fp32 copy of one decoder block, the Llama scaling
// groups and how a per-channel scale is folded into them, and the block-wise
// driver that feeds every decoder block its fp32 input activations.
#ifndef WQ_COMMON_CALIBRATION_H_
#define WQ_COMMON_CALIBRATION_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model/llama.h"
#include "common/formats/quant_format.h"
#include "common/tokenizer/tokenizer.h"
#include "wq/v1/quant_config.pb.h"

namespace wq {

// n_samples sequences of seq_len tokens, back to back.
struct CalibrationSet {
  int n_samples = 0;
  int seq_len = 0;
  std::vector<int> tokens;
  std::string message;  // what was used, and why fewer blocks than asked
};

// AutoAWQ's loader (awq/utils/calib_data.py get_calib_dataset): every text
// (an inline text, or a non-empty line of data_file) is stripped and encoded
// as the Hugging Face Llama tokenizer's encode() does (add_bos_token: BOS
// first), texts longer than seq_len tokens are skipped, the rest are
// concatenated and cut into seq_len blocks; no BOS is added per block. Unlike
// AutoAWQ, n_samples counts blocks (as the proto documents), texts keep their
// order (no shuffle) and the set stops after n_samples blocks. Fewer blocks
// than asked are used, and said in `message`; none is INVALID_ARGUMENT.
// data_file is resolved under data_root (ResolveUnderRoot).
absl::StatusOr<CalibrationSet> BuildCalibrationSet(
    const v1::CalibrationConfig& config, const std::string& data_root,
    const Tokenizer& tokenizer);

// An owned fp32 copy of one decoder block that scales and clips are folded
// into; View() runs it through LlamaModel::RunBlock. Roles the family lacks
// stay empty.
struct BlockWeights {
  std::array<std::vector<float>, kNumNormRoles> norm;
  std::array<std::vector<float>, kNumLinearRoles> linear;  // [rows, cols]
  std::array<std::vector<float>, kNumLinearRoles> bias;    // [rows] or empty
  std::array<int64_t, kNumLinearRoles> rows{};
  std::array<int64_t, kNumLinearRoles> cols{};

  // The layer must hold dense weights (fp32, bf16 or f16).
  static BlockWeights Copy(const LlamaLayerWeights& layer, const LlamaConfig& config);
  LlamaLayerWeights View() const;
};

// Layers that share an input, and the op before them that can absorb 1/s
// (llm-awq auto_scale.py / AutoAWQ awq/models/llama.py): a norm, or the
// output rows [prev_first_row, prev_first_row + n) of a linear layer (v_proj;
// up_proj; the v rows of a fused qkv_proj, the up half of gate_up_proj).
struct ScalingGroup {
  enum class Prev { kNorm, kLinear };
  Prev prev;
  NormRole prev_norm = kInputNorm;   // kNorm
  LinearRole prev_linear = kV;       // kLinear
  int64_t prev_first_row = 0;
  std::vector<LinearRole> layers;
  BlockPoint input;    // where the layers' input is observed
  BlockPoint inspect;  // the output whose error AWQ minimises
};

// input_layernorm->q,k,v (or qkv); v->o_proj only when v and o are square and
// equal (with GQA a v channel feeds several o channels, so no exact fold);
// post_attention_layernorm->gate,up (or gate_up); up->down_proj.
std::vector<ScalingGroup> LlamaScalingGroups(const LlamaConfig& config);

// Divides the previous op's output channels (and their biases) by s and
// multiplies the input channels of the group's layers by s: the fp32 block
// function is unchanged.
void FoldScales(const ScalingGroup& group, absl::Span<const float> s,
                BlockWeights* w);
// FoldScales' first half: divides the previous op's output channels (and
// their biases) by s; w needs only that op.
void DivideIntoPrevious(const ScalingGroup& group, absl::Span<const float> s, BlockWeights* w);
// FoldScales' second half for one layer: W (rows x s.size(), row-major) times
// diag(s), in place.
void MultiplyColumns(absl::Span<const float> s, int64_t rows, float* w);

// Activations of one decoder block over the whole calibration set, from the
// fp32 model: the block input and every BlockPoint but kOutput, each
// [tokens, dim].
struct BlockActivations {
  int seqs = 0;
  int len = 0;
  std::vector<float> input;
  std::array<std::vector<float>, 6> at;
  std::array<int64_t, 6> dims{};

  int64_t tokens() const { return static_cast<int64_t>(seqs) * len; }
  const float* Get(BlockPoint p) const { return at[static_cast<int>(p)].data(); }
  int64_t Dim(BlockPoint p) const { return dims[static_cast<int>(p)]; }
};

// Runs every decoder block in order over the calibration set: captures its
// activations with the fp32 weights, calls fn with them, then moves on with
// the fp32 block output as the next input (AutoAWQ _get_input_feat sets
// self.inps to the block's output before the block is scaled or quantized),
// so fn may transform the block's weights in place. Only one block's weights
// and activations are alive at a time, and the block runs over a few
// sequences at a time, so its temporaries do not grow with the calibration
// set. The blocks' weights come from `layers` (e.g. read from the checkpoint
// one at a time), or are copied from the model's own when it is null; the
// model supplies the config and embedding. Stops with fn's error, or
// CANCELLED when *cancelled is set between blocks.
using CalibratedBlockFn = std::function<absl::Status(int layer, BlockWeights& weights,
                                                     const BlockActivations& acts)>;
using LayerWeightsFn = std::function<absl::StatusOr<BlockWeights>(int layer)>;
absl::Status ForEachCalibratedBlock(const LlamaModel& model,
                                    const CalibrationSet& calibration,
                                    const std::atomic<bool>* cancelled,
                                    const CalibratedBlockFn& fn,
                                    const LayerWeightsFn& layers = nullptr);

// Whether *cancelled is set (cancelled may be nullptr: never), and the
// same as OK or CANCELLED: the check the calibrated steps make between units
// of work.
inline bool IsCancelled(const std::atomic<bool>* cancelled) {
  return cancelled != nullptr && cancelled->load();
}
absl::Status CheckCancelled(const std::atomic<bool>* cancelled);

// Progress inside one block, for the job's phases.
enum class CalibrationStage { kCapture, kGridSearch, kClipSearch };
using CalibrationStageFn = std::function<void(CalibrationStage stage)>;

// Q(w) dequantized again: w [rows, cols] quantized with `spec`.
absl::StatusOr<std::vector<float>> FakeQuantize(const float* w, int64_t rows,
                                                int64_t cols,
                                                const QuantSpec& spec);

// Per input channel: mean |x| over the rows of x [rows, cols], accumulated in
// double (llm-awq get_act_scale).
std::vector<float> MeanAbsPerChannel(const float* x, int64_t rows, int64_t cols);

}  // namespace wq

#endif  // WQ_COMMON_CALIBRATION_H_
