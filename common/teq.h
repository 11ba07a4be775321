// Trainable equivalent transformation (TEQ, arXiv 2310.10944) after Intel
// neural-compressor (adaptor/torch_utils/teq.py): every scaling group gets a
// per-input-channel scale a (init 1), its layers compute Q(W·diag(a)) ·
// (x / a) with a straight-through estimator through Q, a is trained with
// Adam and clipped at >= 1e-5, then 1/a is folded into the previous op and a
// into the weights, which the caller quantizes with RTN.
//
// Differences from INC, which trains the whole model on the causal-LM loss
// (wq has no backward pass through attention):
// * Loss, block by block on the fp32 block input: gate/up are trained on the
//   MLP output down(silu(gate)·up) against fp32 (the point AWQ inspects),
//   backpropagated through SwiGLU and the fp32 down_proj; up->down on the
//   down_proj output (also the MLP output); q/k/v on their own outputs
//   ||Q(W·diag(a))·(x/a) - W·x||^2, each layer divided by its fp32 output
//   energy so that q, k and v weigh alike. Gradients are analytic.
// * The STE keeps the quantization group's scale differentiable (LSQ-style,
//   see AddScaleGradient in teq.cc). With the plain STE the gradient mostly
//   pushed every a up uniformly (a no-op for Q), the scales ended in
//   [1.04, 1.05] and the result equalled RTN.
// * a = exp(theta), so Adam's steps are multiplicative, with lr 5e-2 for 100
//   steps (INC: lr 1e-3 on a directly, 1000 steps). On stories260K int4_clip
//   sym g32 (32 x 256 calibration) the PPL change went +14.5 % (RTN) ->
//   +12.6 % (lr 1e-3) -> +12.0 % (3e-2) -> +9.8 % (5e-2) -> +10.8 % (1e-1).
// * If training does not lower the same loss over the whole calibration set,
//   a stays 1.
// The MLP-output loss and the q/k/v normalisation were within noise of the
// plain local loss on int4_clip (+12.0 vs +11.7 / +12.0 % at lr 3e-2). At
// 3 bits the local q/k/v loss remains a poor proxy: int3 sym stays at RTN's
// level (bench/results/quality.md).
#ifndef WQ_COMMON_TEQ_H_
#define WQ_COMMON_TEQ_H_

#include <atomic>
#include <vector>

#include "absl/status/statusor.h"
#include "common/calibration.h"
#include "common/quant_format.h"

namespace wq {

struct TeqOptions {
  QuantSpec spec;
  // INC trains 1000 steps over the whole model; per block, 100 steps of
  // 1,024 tokens suffice (200 gave +9.6 % instead of +9.8 % above).
  int steps = 100;
  // On theta = log a (INC: Adam lr 1e-3 on a, betas (0.9, 0.9), weight
  // decay 0); see the comment at the top for the sweep.
  float lr = 5e-2f;
  float beta1 = 0.9f;
  float beta2 = 0.9f;
  float eps = 1e-8f;
  float warmup_fraction = 0.05f;
  // Train a = exp(theta) (theta init 0): multiplicative Adam steps.
  bool log_scale = true;
  // Differentiate through the quantization group's scale (see teq.cc).
  bool scale_gradient = true;
  // gate/up: train on the MLP output through SwiGLU and the fp32 down_proj.
  bool mlp_output_loss = true;
  // Local loss of a group of several layers (q, k, v): weight each layer by
  // 1 / its fp32 output energy per token.
  bool normalize_layer_loss = true;  // INC: linear schedule, 5 % warmup
  // Token rows per step: consecutive calibration sequences, taken in order
  // and wrapping around (whole sequences, at least one).
  int tokens_per_step = 1024;
  const std::atomic<bool>* cancelled = nullptr;
  CalibrationStageFn on_stage;
};

struct TeqGroupReport {
  double initial_loss = 0;  // over all calibration tokens, a = 1
  double final_loss = 0;    // with the returned a (1 if training did not help)
  std::vector<double> step_losses;
  std::vector<float> alpha;
};

// Trains a for one group whose layers all read x [tokens, cols] (seqs
// sequences of len tokens); w is not modified. Deterministic: fixed batch
// order, per-layer gradients summed in a fixed order.
absl::StatusOr<TeqGroupReport> TeqTrainGroup(const float* x, int seqs, int len,
                                             const ScalingGroup& group, const BlockWeights& w,
                                             const TeqOptions& options);

// TEQ on one decoder block: trains every group (in parallel) and folds a.
absl::StatusOr<std::vector<TeqGroupReport>> TeqTransformBlock(const LlamaConfig& config,
                                                              const BlockActivations& acts,
                                                              const TeqOptions& options,
                                                              BlockWeights* w);

}  // namespace wq

#endif  // WQ_COMMON_TEQ_H_
