// Trainable equivalent transformation (TEQ, arXiv 2310.10944) after Intel
// neural-compressor (adaptor/torch_utils/teq.py): every scaling group gets a
// per-input-channel scale a (INC: init 1), its layers compute Q(W·diag(a)) ·
// (x / a) with a straight-through estimator through Q, a is trained with
// Adam and clipped at >= 1e-5, then 1/a is folded into the previous op and a
// into the weights, which the caller quantizes with RTN.
//
// Differences from INC, which trains the whole model on the causal-LM loss
// (the measurements behind each are in bench/results/teq_design.md):
// * The loss is local, block by block on the fp32 block input, at the points
//   AWQ inspects: the attention output for q/k/v (through RoPE, causal
//   attention, GQA and the fp32 o_proj), the MLP output for gate/up and
//   up->down, o_proj's output for v->o. Gradients are analytic (Eigen).
// * The straight-through estimator keeps the quantization group's scale
//   differentiable (LSQ-style, AddScaleGradient in teq.cc).
// * a = exp(theta): Adam's steps are multiplicative (lr 5e-2, 100 steps).
// * a starts at the best of a = 1 and AWQ's activation-statistics scales.
// * If training does not lower the loss over the whole calibration set, a
//   stays at its starting point.
#ifndef WQ_COMMON_TEQ_H_
#define WQ_COMMON_TEQ_H_

#include <atomic>
#include <vector>

#include "Eigen/Core"
#include "absl/status/statusor.h"
#include "common/quant/calibration.h"
#include "common/formats/quant_format.h"

namespace wq {

struct TeqOptions {
  QuantSpec spec;
  // INC trains 1000 steps over the whole model; per block, 100 steps of
  // 1,024 tokens suffice.
  int steps = 100;
  // On theta = log a (INC: Adam lr 1e-3 on a, betas (0.9, 0.9), weight
  // decay 0).
  float lr = 5e-2f;
  float beta1 = 0.9f;
  float beta2 = 0.9f;
  float eps = 1e-8f;
  float warmup_fraction = 0.05f;  // INC: linear schedule, 5 % warmup
  // gate/up: train on the MLP output through SwiGLU and the fp32 down_proj.
  bool mlp_output_loss = true;
  // q/k/v: train on the attention output (o_proj's, fp32 o_proj) through
  // RoPE, causal softmax attention and GQA, AWQ's inspect point.
  bool attention_output_loss = true;
  // Start from the best of a = 1 and AWQ's activation-statistics scales
  // x_mean^r / (w_mean^(1-r) + 1e-4), r = i / init_grid (0: a = 1, as INC).
  int init_grid = 20;
  // Calibration tokens (whole step batches, at least one) the init grid is
  // compared on; the chosen scale replaces a = 1 only if it is also better
  // on all tokens.
  int init_tokens = 8192;
  // Token rows per step: consecutive calibration sequences, taken in order
  // and wrapping around (whole sequences, at least one).
  int tokens_per_step = 1024;
  const std::atomic<bool>* cancelled = nullptr;
  CalibrationStageFn on_stage;
};

struct TeqGroupReport {
  double initial_loss = 0;  // over all calibration tokens, a = 1
  double init_loss = 0;     // at the starting point of training
  double init_ratio = -1;   // the init grid's ratio r, or -1 for a = 1
  double final_loss = 0;    // with the returned a
  bool kept_init = false;   // training did not lower the loss: a = the start
  std::vector<double> step_losses;
  std::vector<float> alpha;
};

// Causal self-attention of `seqs` sequences of `len` tokens each (positions
// 0..len-1) from the q/k/v projections [T, q_dim], [T, kv_dim], [T, kv_dim]
// (T = seqs·len), as LlamaModel::Attention computes it (Hugging Face
// rotate_half RoPE, GQA, softmax(q·k^T / sqrt(head_dim))·v), and its
// backward pass: TEQ's q/k/v loss on the attention output. Sequences run in
// parallel and each writes only its own rows, so results do not depend on
// the thread count.
class CausalAttention {
 public:
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  CausalAttention(const LlamaConfig& config, int len);

  // What the backward pass needs: q and k after RoPE, and the softmax
  // probabilities [len, len] of every (sequence, head).
  struct Saved {
    Matrix q, k;
    std::vector<Matrix> probs;
  };
  // The attention output [T, q_dim] (the input of o_proj).
  Matrix Forward(const Matrix& yq, const Matrix& yk, const Matrix& yv, Saved* saved) const;
  // d(output) -> d(yq), d(yk), d(yv).
  void Backward(const Matrix& yv, const Saved& saved, const Matrix& d_out, Matrix* dq,
                Matrix* dk, Matrix* dv) const;

 private:
  // RoPE on every row (position = row % len), or its inverse rotation (its
  // transpose, for the backward pass).
  void Rotate(Matrix* x, int heads, bool inverse) const;

  int heads_, kv_heads_, d_, len_;
  float scale_;
  RotaryEmbedding rope_;
};

// Trains a for one group whose layers all read x [tokens, cols] (seqs
// sequences of len tokens); w is not modified. Deterministic: fixed batch
// order, per-layer gradients summed in a fixed order.
absl::StatusOr<TeqGroupReport> TeqTrainGroup(const LlamaConfig& config, const float* x,
                                             int seqs, int len, const ScalingGroup& group,
                                             const BlockWeights& w, const TeqOptions& options);

// TEQ on one decoder block: trains every group (in parallel) and folds a.
absl::StatusOr<std::vector<TeqGroupReport>> TeqTransformBlock(const LlamaConfig& config,
                                                              const BlockActivations& acts,
                                                              const TeqOptions& options,
                                                              BlockWeights* w);

}  // namespace wq

#endif  // WQ_COMMON_TEQ_H_
