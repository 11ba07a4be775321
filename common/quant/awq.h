// Activation-aware weight quantization (AWQ, arXiv 2306.00978) as AutoAWQ
// (awq/quantize/quantizer.py) and llm-awq (awq/quantize/auto_scale.py,
// auto_clip.py) do it, for any QuantSpec: per scaling group a grid search of
// s = x_mean^a / w_mean^(1-a) minimising the error of the group's output,
// folded into the block, then a per-group weight clip search. The caller
// quantizes the transformed weights with RTN afterwards.
#ifndef WQ_COMMON_AWQ_H_
#define WQ_COMMON_AWQ_H_

#include <array>
#include <atomic>
#include <vector>

#include "absl/status/statusor.h"
#include "common/quant/calibration.h"
#include "common/model/llama.h"
#include "common/formats/compute_dtype.h"
#include "common/formats/quant_format.h"

namespace wq {

struct AwqOptions {
  QuantSpec spec;
  // The arithmetic of the scale search's forward passes: the job's compute
  // dtype, so that the search runs on the fast kernels and scores each
  // candidate as the quantized model will compute it.
  ComputeDtype compute = ComputeDtype::kFp32;
  // AutoAWQ's default: s = x_mean^a / (w_mean^(1-a) + 1e-4); off: x_mean^a
  // as llm-awq.
  bool duo_scaling = true;
  int n_grid = 20;  // a = i / n_grid, i = 0..n_grid-1
  bool clip = true;
  // Clip candidates: max |w| * (1 - i / clip_grid), i < max_shrink * clip_grid.
  int clip_grid = 20;
  float max_shrink = 0.5f;
  int clip_tokens = 512;  // token rows sampled with stride n / clip_tokens
  // Layers kept in fp32 (llm_int8_skip_modules): scaled, but not clipped.
  std::array<bool, kNumLinearRoles> skip{};
  const std::atomic<bool>* cancelled = nullptr;
  CalibrationStageFn on_stage;
};

// Per input channel: the mean over the rows of all `layers` of |w| / max|w|
// of its quantization group (AutoAWQ _search_best_scale step 1, w_mean).
std::vector<float> AwqWeightMean(const BlockWeights& w, const std::vector<LinearRole>& layers,
                                 const QuantSpec& spec);

// AutoAWQ _compute_best_scale for grid ratio a: s = x_mean^a /
// (w_mean^(1-a) + 1e-4) (duo scaling) or x_mean^a, clamped at 1e-4 and
// normalised by sqrt(max(s)·min(s)).
std::vector<float> AwqGridScales(const std::vector<float>& x_mean,
                                 const std::vector<float>& w_mean, float ratio,
                                 bool duo_scaling);

struct AwqScaleSearch {
  std::vector<double> losses;  // per grid point
  int best = 0;                // index into losses
  double ratio = 0;            // best / n_grid
  std::vector<float> scales;   // s at the best grid point
};

// The grid search of one group against the block's weights `w` (not
// modified): every grid point quantizes the group's layers as Q(W·s), folds
// 1/s into their input and runs the block up to group.inspect in
// options.compute (the fake-quantized Q(W·s)/s up to that arithmetic); the
// loss is the MSE against the fp32 output there. Grid points run in parallel; ties keep the
// smaller ratio (AutoAWQ's strict `loss < best_error`).
absl::StatusOr<AwqScaleSearch> AwqSearchScales(const LlamaModel& model,
                                               const BlockActivations& acts,
                                               const ScalingGroup& group,
                                               const BlockWeights& w,
                                               const AwqOptions& options);

// A clip range per (row, group) of a matrix, rows * groups_per_row values
// each: every group is clamped to [lo, hi].
struct AwqClip {
  std::vector<float> lo;
  std::vector<float> hi;
};

// The best clip per (row, group) of w [rows, cols] (row-major) over token
// rows x [tokens, cols]: minimises the mean over tokens of
// (x_g · (Q(clamp(w_g)) - w_g))^2 for each group g, ties keeping the wider
// range. Sym schemes search [-max, max] with max = max|w| * shrink (AutoAWQ).
// Asym schemes search both ends of INC's range [min(wmin, 0), max(wmax, 0)]
// with a shrink each, on the full grid of both (ties: the lower end first):
// a symmetric clamp cannot trim the long side of a skewed group without
// cutting into the short one. Output rows are searched in batches in
// parallel.
absl::StatusOr<AwqClip> AwqSearchClip(const float* w, int64_t rows, int64_t cols, const float* x,
                                      int64_t tokens, const AwqOptions& options);

// Clamps every group of w to its [lo, hi] (AutoAWQ apply_clip).
void ApplyClip(const AwqClip& clip, int64_t rows, int64_t cols, int group_size, float* w);

struct AwqBlockReport {
  std::vector<AwqScaleSearch> groups;  // as LlamaScalingGroups
};

// AWQ on one decoder block: searches every group on the unscaled weights,
// folds all scales, then (options.clip) clips every layer except q_proj and
// k_proj on its input divided by its scales (AutoAWQ quantize() steps 2-3).
absl::StatusOr<AwqBlockReport> AwqTransformBlock(const LlamaModel& model,
                                                 const BlockActivations& acts,
                                                 const AwqOptions& options, BlockWeights* w);

}  // namespace wq

#endif  // WQ_COMMON_AWQ_H_
