// Trainable equivalent transformation (TEQ, arXiv 2310.10944) after Intel
// neural-compressor (adaptor/torch_utils/teq.py): every scaling group gets a
// per-input-channel scale a (init 1), its layers compute Q(W·diag(a)) ·
// (x / a) with a straight-through estimator through Q, a is trained with
// Adam and clipped at >= 1e-5, then 1/a is folded into the previous op and a
// into the weights, which the caller quantizes with RTN.
//
// Loss (differs from INC, which trains the whole model on the causal-LM
// loss): block by block, the sum over the group's layers of
// ||Q(W·diag(a))·(x/a) - W·x||^2 / tokens, the layers' local output error
// against fp32 on the fp32 block input. Its gradient is exact (up to the
// STE) and computed analytically, which keeps training cheap and free of
// the attention/MLP nonlinearities.
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
  // INC trains 1000 steps over the whole model; per block and on a local
  // loss, 100 steps of a few thousand tokens converge well enough.
  int steps = 100;
  // INC: Adam lr 1e-3, betas (0.9, 0.9), weight decay 0. A rate of 1e-2
  // lowers the local loss further but raised stories260K's perplexity.
  float lr = 1e-3f;
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
