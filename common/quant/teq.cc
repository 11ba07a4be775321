#include "common/quant/teq.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "Eigen/Core"
#include "absl/strings/str_format.h"
#include "common/io/parallel.h"
#include "common/kernels/matmul.h"
#include "common/quant/block_transform.h"
#include "common/quant/awq.h"
#include "common/model/llama.h"
#include "common/io/status_macros.h"

namespace wq {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;

// The straight-through estimator of Q(v) = s(v)·R(v/s(v)) (R: rounding to
// the code grid) takes dR/dz = 1 only: the group's scale s stays a function of
// v (as in LSQ / OmniQuant), so dQ/ds = (Q - v)/s, and s depends on the
// group's extreme elements. g holds dL/dQ [rows, cols] and gets the part
// through s added. Symmetric formats (s ∝ max|v|): to the argmax k,
// sum_i g_i (Q_i - v_i) / v_k. Asymmetric (s = (max(v, 0) - min(v, 0)) / L):
// ± sum_i g_i (Q_i - v_i) / (max - min) to the argmax / argmin. Without this
// term the STE sees no scale change, and a uniform increase of a within a
// quantization group (an exact no-op for Q) always lowers the loss.
void AddScaleGradient(const RowMatrix& v, const RowMatrix& q, const QuantSpec& spec,
                      RowMatrix* g) {
  const int64_t rows = v.rows();
  const int64_t cols = v.cols();
  const int64_t gs = EffectiveGroupSize(spec, cols);
  const bool asym = spec.scheme == QuantScheme::kAsym;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t begin = 0; begin < cols; begin += gs) {
      const int64_t end = std::min(cols, begin + gs);
      double dot = 0;
      int64_t amax = begin, hi = begin, lo = begin;
      for (int64_t k = begin; k < end; ++k) {
        dot += static_cast<double>((*g)(r, k)) * (q(r, k) - v(r, k));
        if (std::abs(v(r, k)) > std::abs(v(r, amax))) amax = k;
        if (v(r, k) > v(r, hi)) hi = k;
        if (v(r, k) < v(r, lo)) lo = k;
      }
      if (!asym) {
        if (v(r, amax) != 0) (*g)(r, amax) += static_cast<float>(dot / v(r, amax));
        continue;
      }
      const float vmax = std::max(v(r, hi), 0.0f);
      const float vmin = std::min(v(r, lo), 0.0f);
      if (vmax - vmin <= 0) continue;
      const float d = static_cast<float>(dot / (vmax - vmin));
      if (vmax > 0) (*g)(r, hi) += d;
      if (vmin < 0) (*g)(r, lo) -= d;
    }
  }
}

// op(a) · op(b) by GemmF32: Eigen built for the CPU's kernel ISA, where this
// unit's own (baseline) Eigen would run SSE2 without FMA. a and b are
// row-major matrices, maps or blocks of them.
template <class A, class B>
RowMatrix Product(const A& a, bool trans_a, const B& b, bool trans_b) {
  const int64_t m = trans_a ? a.cols() : a.rows();
  const int64_t k = trans_a ? a.rows() : a.cols();
  const int64_t n = trans_b ? b.rows() : b.cols();
  RowMatrix c(m, n);
  GemmF32(trans_a, trans_b, m, n, k, a.data(), a.outerStride(), b.data(), b.outerStride(),
          c.data(), n);
  return c;
}

// Whether the group is trained on the MLP output (gate/up) rather than on
// its layers' own outputs.
bool TrainsOnMlpOutput(const ScalingGroup& group, const TeqOptions& options) {
  return options.mlp_output_loss && group.layers == std::vector<LinearRole>{kGate, kUp};
}

// Whether the group (q/k/v) is trained on the attention output (o_proj's).
bool TrainsOnAttentionOutput(const ScalingGroup& group, const TeqOptions& options) {
  return options.attention_output_loss && group.layers == std::vector<LinearRole>{kQ, kK, kV};
}

// The group's loss on token rows x [T, cols] for scales a and, when grad is
// set, its gradient with respect to a. Every layer l computes
// y_l = u·Q_l^T with u = x/a and Q_l = Q(W_l·diag(a)). With dy_l = dL/dy_l
// (STE: dQ/d(W·a) = I):
//   through W·a: dL/da_j = sum_i (dy^T·u)_ij · W_ij
//   through x/a: dL/da_j = sum_t (dy·Q)_tj · (-x_tj / a_j^2)
// Local loss: sum_l ||y_l - x·W_l^T||^2 / (T · e_l), e_l = the layer's fp32
// output energy per token (weights[l] = 1/e_l). MLP loss (gate/up):
// ||down(silu(y_gate)·y_up) - down(silu(x·Wg^T)·(x·Wu^T))||^2 / T with the
// fp32 down_proj. Attention loss (q/k/v): ||attn(y_q, y_k, y_v)·Wo^T -
// attn(x·Wq^T, x·Wk^T, x·Wv^T)·Wo^T||^2 / T with the fp32 o_proj.
class GroupObjective {
 public:
  GroupObjective(const LlamaConfig& config, int len, const ScalingGroup& group,
                 const BlockWeights& w, const TeqOptions& options, std::vector<double> weights)
      : attention_(config, len),
        group_(group),
        w_(w),
        options_(options),
        weights_(std::move(weights)) {}

  absl::StatusOr<double> Loss(const ConstRowMap& x, const Eigen::VectorXf& alpha,
                              Eigen::VectorXf* grad) const {
    const size_t n = group_.layers.size();
    const int64_t cols = alpha.size();
    // Q(W·diag(a)) and y per layer, in parallel.
    std::vector<RowMatrix> q(n), y(n), ref(n), scaled(n);
    std::vector<absl::Status> statuses(n);
    const RowMatrix u = x * alpha.cwiseInverse().asDiagonal();
    ParallelFor(size_t{0}, n, [&](size_t i) {
      const LinearRole l = group_.layers[i];
      const ConstRowMap weight(w_.linear[l].data(), w_.rows[l], cols);
      scaled[i] = weight * alpha.asDiagonal();
      absl::StatusOr<std::vector<float>> qd = FakeQuantize(scaled[i].data(), w_.rows[l], cols,
                                                           options_.spec);
      if (!qd.ok()) {
        statuses[i] = qd.status();
        return;
      }
      q[i] = ConstRowMap(qd->data(), w_.rows[l], cols);
      y[i] = Product(u, false, q[i], true);
      ref[i] = Product(x, false, weight, true);
    });
    for (const absl::Status& s : statuses) RETURN_IF_ERROR(s);
    const double tokens = static_cast<double>(x.rows());
    std::vector<RowMatrix> dy(n);
    double loss = 0;
    if (TrainsOnMlpOutput(group_, options_)) {
      // layers are {gate, up}.
      const ConstRowMap down(w_.linear[kDown].data(), w_.rows[kDown], w_.cols[kDown]);
      const RowMatrix sg = y[0].unaryExpr([](float v) { return Silu(v); });
      const RowMatrix h = sg.cwiseProduct(y[1]);
      const RowMatrix h_ref =
          ref[0].unaryExpr([](float v) { return Silu(v); }).cwiseProduct(ref[1]);
      const RowMatrix r = Product(RowMatrix(h - h_ref), false, down, true);
      loss = r.cast<double>().squaredNorm() / tokens;
      if (grad != nullptr) {
        const RowMatrix dh =
            Product(RowMatrix(r * static_cast<float>(2.0 / tokens)), false, down, false);
        // silu'(g) = s(g)·(1 + g·(1 - s(g))), s the logistic function.
        const RowMatrix dsilu = y[0].unaryExpr([](float g) {
          const float s = 1.0f / (1.0f + std::exp(-g));
          return s * (1.0f + g * (1.0f - s));
        });
        dy[0] = dh.cwiseProduct(y[1]).cwiseProduct(dsilu);
        dy[1] = dh.cwiseProduct(sg);
      }
    } else if (TrainsOnAttentionOutput(group_, options_)) {
      // layers are {q, k, v}.
      const ConstRowMap o(w_.linear[kO].data(), w_.rows[kO], w_.cols[kO]);
      CausalAttention::Saved saved;
      const RowMatrix att = attention_.Forward(y[0], y[1], y[2], grad ? &saved : nullptr);
      const RowMatrix att_ref = attention_.Forward(ref[0], ref[1], ref[2], nullptr);
      const RowMatrix r = Product(RowMatrix(att - att_ref), false, o, true);
      loss = r.cast<double>().squaredNorm() / tokens;
      if (grad != nullptr) {
        const RowMatrix datt =
            Product(RowMatrix(r * static_cast<float>(2.0 / tokens)), false, o, false);
        attention_.Backward(y[2], saved, datt, &dy[0], &dy[1], &dy[2]);
      }
    } else {
      for (size_t i = 0; i < n; ++i) {
        const RowMatrix r = y[i] - ref[i];
        loss += r.cast<double>().squaredNorm() / tokens * weights_[i];
        if (grad != nullptr) dy[i] = r * static_cast<float>(2.0 * weights_[i] / tokens);
      }
    }
    if (grad != nullptr) {
      std::vector<Eigen::VectorXf> grads(n);
      ParallelFor(size_t{0}, n, [&](size_t i) {
        const LinearRole l = group_.layers[i];
        const ConstRowMap weight(w_.linear[l].data(), w_.rows[l], cols);
        RowMatrix dq = Product(dy[i], true, u, false);
        AddScaleGradient(scaled[i], q[i], options_.spec, &dq);
        const RowMatrix through_w = dq.cwiseProduct(weight);
        const RowMatrix through_x = Product(dy[i], false, q[i], false).cwiseProduct(x);
        grads[i] = through_w.colwise().sum().transpose() -
                   through_x.colwise().sum().transpose().cwiseQuotient(alpha.cwiseAbs2());
      });
      grad->setZero(cols);
      for (size_t i = 0; i < n; ++i) *grad += grads[i];  // fixed order
    }
    return loss;
  }

 private:
  const CausalAttention attention_;
  const ScalingGroup& group_;
  const BlockWeights& w_;
  const TeqOptions& options_;
  std::vector<double> weights_;
};

// The calibration tokens x [seqs·len, cols] in step batches of
// consecutive whole sequences (at least one per batch; the last may be
// shorter).
class TokenBatches {
 public:
  TokenBatches(const float* x, int seqs, int len, int64_t cols, int tokens_per_step)
      : x_(x),
        seqs_(seqs),
        len_(len),
        cols_(cols),
        batch_seqs_(std::max(1, tokens_per_step / len)),
        count_((seqs + batch_seqs_ - 1) / batch_seqs_) {}

  int count() const { return count_; }
  // Tokens in a whole batch.
  int batch_tokens() const { return batch_seqs_ * len_; }
  int seqs() const { return seqs_; }
  int len() const { return len_; }
  int64_t cols() const { return cols_; }
  const float* x() const { return x_; }

  ConstRowMap Get(int b) const {
    const int64_t first = static_cast<int64_t>(b) * batch_seqs_ * len_;
    const int64_t last = static_cast<int64_t>(std::min(seqs_, (b + 1) * batch_seqs_)) * len_;
    return ConstRowMap(x_ + first * cols_, last - first, cols_);
  }

 private:
  const float* x_;
  int seqs_, len_;
  int64_t cols_;
  int batch_seqs_, count_;
};

// Per-layer weights of the local loss: 1 / (fp32 output energy per token);
// 1 for a group of one layer.
std::vector<double> LocalLossWeights(const ScalingGroup& group, const BlockWeights& w,
                                     const TokenBatches& batches) {
  std::vector<double> weights(group.layers.size(), 1.0);
  if (group.layers.size() == 1) return weights;
  for (size_t i = 0; i < group.layers.size(); ++i) {
    const LinearRole l = group.layers[i];
    const ConstRowMap weight(w.linear[l].data(), w.rows[l], batches.cols());
    double energy = 0;
    for (int b = 0; b < batches.count(); ++b) {
      energy += Product(batches.Get(b), false, weight, true).cast<double>().squaredNorm();
    }
    energy /= static_cast<double>(batches.seqs()) * batches.len();
    weights[i] = energy > 0 ? 1.0 / energy : 1.0;
  }
  return weights;
}

// The loss per token over the first n batches (all when n < 0), batch by
// batch so the temporaries stay small.
absl::StatusOr<double> MeanLoss(const GroupObjective& objective, const TokenBatches& batches,
                                const Eigen::VectorXf& alpha, int n = -1) {
  if (n < 0) n = batches.count();
  double sum = 0;
  int64_t rows = 0;
  for (int b = 0; b < n; ++b) {
    const ConstRowMap xb = batches.Get(b);
    ASSIGN_OR_RETURN(double loss, objective.Loss(xb, alpha, nullptr));
    sum += loss * static_cast<double>(xb.rows());
    rows += xb.rows();
  }
  return sum / static_cast<double>(rows);
}

// The best of a = 1 (index 0) and AWQ's activation-statistics scales
// s = x_mean^r / (w_mean^(1-r) + 1e-4), r = (index - 1) / init_grid
// (indices 1..init_grid+1), on the loss over the first init_tokens
// calibration tokens (a = 1 wins ties).
struct InitCandidate {
  int index = 0;
  Eigen::VectorXf alpha;
};
absl::StatusOr<InitCandidate> BestOfInitGrid(const GroupObjective& objective,
                                             const TokenBatches& batches, const ScalingGroup& group,
                                             const BlockWeights& w, const TeqOptions& options) {
  const int64_t cols = batches.cols();
  const int init_batches =
      std::clamp((options.init_tokens + batches.batch_tokens() - 1) / batches.batch_tokens(), 1,
                 batches.count());
  const std::vector<float> x_mean =
      MeanAbsPerChannel(batches.x(), static_cast<int64_t>(batches.seqs()) * batches.len(), cols);
  const std::vector<float> w_mean = AwqWeightMean(w, group.layers, options.spec);
  std::vector<Eigen::VectorXf> candidates(options.init_grid + 1, Eigen::VectorXf::Ones(cols));
  std::vector<absl::StatusOr<double>> losses(options.init_grid + 1, 0.0);
  ParallelFor(0, options.init_grid + 1, [&](int i) {
    if (IsCancelled(options.cancelled)) return;
    if (i > 0) {
      const std::vector<float> s = AwqGridScales(
          x_mean, w_mean, static_cast<float>(i - 1) / options.init_grid, /*duo_scaling=*/true);
      candidates[i] = Eigen::Map<const Eigen::VectorXf>(s.data(), cols);
    }
    losses[i] = MeanLoss(objective, batches, candidates[i], init_batches);
  });
  RETURN_IF_ERROR(CheckCancelled(options.cancelled));
  int best = 0;
  for (int i = 0; i <= options.init_grid; ++i) {
    RETURN_IF_ERROR(losses[i].status());
    if (*losses[i] < *losses[best]) best = i;
  }
  return InitCandidate{best, std::move(candidates[best])};
}

// The starting point of training: a = 1, or with init_grid the best of the
// init grid if it is also better than a = 1 on all tokens (it was chosen on
// a subset). Sets the report's initial_loss, init_loss and init_ratio.
absl::StatusOr<Eigen::VectorXf> ChooseStartingScales(
    const GroupObjective& objective, const TokenBatches& batches, const ScalingGroup& group,
    const BlockWeights& w, const TeqOptions& options, TeqGroupReport* report) {
  const Eigen::VectorXf ones = Eigen::VectorXf::Ones(batches.cols());
  ASSIGN_OR_RETURN(report->initial_loss, MeanLoss(objective, batches, ones));
  report->init_loss = report->initial_loss;
  if (options.init_grid <= 0) return ones;
  ASSIGN_OR_RETURN(InitCandidate best, BestOfInitGrid(objective, batches, group, w, options));
  if (best.index == 0) return ones;
  ASSIGN_OR_RETURN(const double loss, MeanLoss(objective, batches, best.alpha));
  if (loss < report->initial_loss) {
    report->init_ratio = static_cast<double>(best.index - 1) / options.init_grid;
    report->init_loss = loss;
    return std::move(best.alpha);
  }
  return ones;
}

// Adam (torch.optim.Adam with bias correction) on theta = log a, so its
// steps are multiplicative and a stays positive, under transformers'
// get_linear_schedule_with_warmup.
class LogScaleAdam {
 public:
  LogScaleAdam(const Eigen::VectorXf& alpha, const TeqOptions& options)
      : options_(options),
        warmup_(static_cast<int>(options.warmup_fraction * options.steps)),
        theta_(alpha.array().log().matrix()),
        m_(Eigen::VectorXf::Zero(alpha.size())),
        v_(Eigen::VectorXf::Zero(alpha.size())) {}

  // One step from grad = dL/da at a = *alpha; updates *alpha.
  void Step(int step, const Eigen::VectorXf& grad, Eigen::VectorXf* alpha) {
    const Eigen::VectorXf grad_theta = grad.cwiseProduct(*alpha);  // dL/dtheta
    const float lr = LearningRate(step);
    m_ = options_.beta1 * m_ + (1 - options_.beta1) * grad_theta;
    v_ = options_.beta2 * v_ + (1 - options_.beta2) * grad_theta.cwiseAbs2();
    const float c1 = 1 - std::pow(options_.beta1, static_cast<float>(step + 1));
    const float c2 = 1 - std::pow(options_.beta2, static_cast<float>(step + 1));
    theta_ -= (lr / c1) * m_.cwiseQuotient(((v_ / c2).cwiseSqrt().array() + options_.eps).matrix());
    *alpha = theta_.array().exp().matrix();
  }

 private:
  // The linear schedule with warmup, read at the step's start.
  float LearningRate(int step) const {
    return options_.lr * (step < warmup_ ? static_cast<float>(step) / std::max(1, warmup_)
                                         : static_cast<float>(options_.steps - step) /
                                               std::max(1, options_.steps - warmup_));
  }

  const TeqOptions& options_;
  const int warmup_;
  Eigen::VectorXf theta_, m_, v_;
};

// options.steps Adam steps from `start`, one batch each (in order, wrapping
// around); appends each step's batch loss to step_losses.
absl::StatusOr<Eigen::VectorXf> TrainScales(const GroupObjective& objective,
                                            const TokenBatches& batches, const TeqOptions& options,
                                            const Eigen::VectorXf& start,
                                            std::vector<double>* step_losses) {
  Eigen::VectorXf alpha = start;
  LogScaleAdam adam(alpha, options);
  Eigen::VectorXf grad(alpha.size());
  for (int step = 0; step < options.steps; ++step) {
    RETURN_IF_ERROR(CheckCancelled(options.cancelled));
    ASSIGN_OR_RETURN(double loss,
                     objective.Loss(batches.Get(step % batches.count()), alpha, &grad));
    step_losses->push_back(loss);
    adam.Step(step, grad, &alpha);
  }
  return alpha;
}

// Training sees one batch per step and the STE gradient; should the
// trained a be worse than its start on the whole set (same objective), the
// start is kept. Sets the report's final_loss and kept_init.
absl::Status KeepTheBetterOfStartAndTrained(const GroupObjective& objective,
                                            const TokenBatches& batches,
                                            const Eigen::VectorXf& start, Eigen::VectorXf* alpha,
                                            TeqGroupReport* report) {
  ASSIGN_OR_RETURN(report->final_loss, MeanLoss(objective, batches, *alpha));
  if (report->final_loss > report->init_loss) {
    *alpha = start;
    report->final_loss = report->init_loss;
    report->kept_init = true;
  }
  return absl::OkStatus();
}

}  // namespace

CausalAttention::CausalAttention(const LlamaConfig& c, int len)
    : heads_(c.num_attention_heads),
      kv_heads_(c.num_key_value_heads),
      d_(c.head_dim),
      len_(len),
      scale_(1.0f / std::sqrt(static_cast<float>(c.head_dim))),
      rope_(c, len) {}

CausalAttention::Matrix CausalAttention::Forward(const Matrix& yq, const Matrix& yk,
                                                 const Matrix& yv, Saved* saved) const {
  const int64_t rows = yq.rows();
  const int seqs = static_cast<int>(rows / len_);
  Matrix q = yq, k = yk;
  Rotate(&q, heads_, /*inverse=*/false);
  Rotate(&k, kv_heads_, /*inverse=*/false);
  Matrix att(rows, yq.cols());
  if (saved != nullptr) saved->probs.resize(static_cast<size_t>(seqs) * heads_);
  const int group = heads_ / kv_heads_;
  ParallelFor(0, seqs, [&](int s) {
    const int64_t r0 = static_cast<int64_t>(s) * len_;
    Matrix p;
    for (int h = 0; h < heads_; ++h) {
      const int g = h / group;
      p = Product(q.block(r0, h * d_, len_, d_), false, k.block(r0, g * d_, len_, d_), true) *
          scale_;
      for (int i = 0; i < len_; ++i) {
        const float m = p.row(i).head(i + 1).maxCoeff();
        p.row(i).head(i + 1) = (p.row(i).head(i + 1).array() - m).exp();
        p.row(i).head(i + 1) /= p.row(i).head(i + 1).sum();
        p.row(i).tail(len_ - i - 1).setZero();
      }
      att.block(r0, h * d_, len_, d_) = Product(p, false, yv.block(r0, g * d_, len_, d_), false);
      if (saved != nullptr) saved->probs[static_cast<size_t>(s) * heads_ + h] = p;
    }
  });
  if (saved != nullptr) {
    saved->q = std::move(q);
    saved->k = std::move(k);
  }
  return att;
}

void CausalAttention::Backward(const Matrix& yv, const Saved& saved, const Matrix& datt,
                               Matrix* dq, Matrix* dk, Matrix* dv) const {
  const int64_t rows = datt.rows();
  const int seqs = static_cast<int>(rows / len_);
  dq->setZero(rows, saved.q.cols());
  dk->setZero(rows, saved.k.cols());
  dv->setZero(rows, yv.cols());
  const int group = heads_ / kv_heads_;
  ParallelFor(0, seqs, [&](int s) {
    const int64_t r0 = static_cast<int64_t>(s) * len_;
    Matrix dp, ds;
    for (int h = 0; h < heads_; ++h) {  // fixed order: the heads of a kv head add up
      const int g = h / group;
      const Matrix& p = saved.probs[static_cast<size_t>(s) * heads_ + h];
      const auto d_out = datt.block(r0, h * d_, len_, d_);
      dp = Product(d_out, false, yv.block(r0, g * d_, len_, d_), true);
      dv->block(r0, g * d_, len_, d_) += Product(p, true, d_out, false);
      // Softmax: dS_ij = P_ij (dP_ij - sum_k dP_ik P_ik); masked P_ij = 0.
      const Eigen::VectorXf rowdot = dp.cwiseProduct(p).rowwise().sum();
      ds = p.cwiseProduct(dp - rowdot.replicate(1, len_)) * scale_;
      dq->block(r0, h * d_, len_, d_) = Product(ds, false, saved.k.block(r0, g * d_, len_, d_), false);
      dk->block(r0, g * d_, len_, d_) += Product(ds, true, saved.q.block(r0, h * d_, len_, d_), false);
    }
  });
  Rotate(dq, heads_, /*inverse=*/true);
  Rotate(dk, kv_heads_, /*inverse=*/true);
}

void CausalAttention::Rotate(Matrix* x, int heads, bool inverse) const {
  for (int64_t r = 0; r < x->rows(); ++r) {
    rope_.Apply(x->row(r).data(), heads, static_cast<int>(r % len_), inverse);
  }
}

absl::StatusOr<TeqGroupReport> TeqTrainGroup(const LlamaConfig& config, const float* x,
                                             int seqs, int len, const ScalingGroup& group,
                                             const BlockWeights& w, const TeqOptions& options) {
  const TokenBatches batches(x, seqs, len, w.cols[group.layers.front()], options.tokens_per_step);
  const GroupObjective objective(config, len, group, w, options,
                                 LocalLossWeights(group, w, batches));
  TeqGroupReport report;
  ASSIGN_OR_RETURN(const Eigen::VectorXf start,
                   ChooseStartingScales(objective, batches, group, w, options, &report));
  ASSIGN_OR_RETURN(Eigen::VectorXf alpha,
                   TrainScales(objective, batches, options, start, &report.step_losses));
  RETURN_IF_ERROR(KeepTheBetterOfStartAndTrained(objective, batches, start, &alpha, &report));
  report.alpha.assign(alpha.data(), alpha.data() + alpha.size());
  return report;
}

absl::StatusOr<std::vector<TeqGroupReport>> TeqTransformBlock(const LlamaConfig& config,
                                                              const BlockActivations& acts,
                                                              const TeqOptions& options,
                                                              BlockWeights* w) {
  const std::vector<ScalingGroup> groups = LlamaScalingGroups(config);
  if (options.on_stage) options.on_stage(CalibrationStage::kGridSearch);
  // The output losses model a plain Llama block; other blocks (biases, q/k
  // norms, windows, fused or scaled RoPE) train on each layer's own output.
  TeqOptions block_options = options;
  const ArchitectureSpec& spec = config.spec();
  const bool plain_attention = !spec.qkv_bias && !config.attention_bias && !spec.qk_norm &&
                               config.sliding_window == 0 &&
                               config.rope_scaling.type == RopeScaling::Type::kNone;
  block_options.attention_output_loss &= plain_attention;
  block_options.mlp_output_loss &= !config.mlp_bias;
  std::vector<absl::StatusOr<TeqGroupReport>> results(groups.size());
  ParallelFor(size_t{0}, groups.size(), [&](size_t g) {
    results[g] = TeqTrainGroup(config, acts.Get(groups[g].input), acts.seqs, acts.len,
                               groups[g], *w, block_options);
  });
  std::vector<TeqGroupReport> reports;
  for (size_t g = 0; g < groups.size(); ++g) {
    RETURN_IF_ERROR(results[g].status());
    FoldScales(groups[g], results[g]->alpha, w);
    reports.push_back(*std::move(results[g]));
  }
  return reports;
}

namespace {

// TEQ scales every layer of a group, skipped ones included, and has no clip
// stage, so inputs.skip does not apply.
absl::StatusOr<std::vector<std::string>> TeqBlock(const BlockTransformInputs& inputs,
                                                  BlockWeights* w) {
  TeqOptions options;
  options.spec = inputs.spec;
  options.cancelled = inputs.cancelled;
  options.on_stage = inputs.on_stage;
  ASSIGN_OR_RETURN(std::vector<TeqGroupReport> reports,
                   TeqTransformBlock(inputs.model->config(), *inputs.acts, options, w));
  std::vector<std::string> groups;
  for (const TeqGroupReport& g : reports) {
    const auto [lo, hi] = std::minmax_element(g.alpha.begin(), g.alpha.end());
    const std::string init =
        g.init_ratio < 0
            ? ""
            : absl::StrFormat(" -> %.3g (init r=%.2f)", g.init_loss, g.init_ratio);
    groups.push_back(absl::StrFormat("loss %.3g%s -> %.3g%s, a in [%.3g, %.3g]", g.initial_loss,
                                     init, g.final_loss, g.kept_init ? " (kept the start)" : "",
                                     *lo, *hi));
  }
  return groups;
}

}  // namespace

const BlockTransform kTeqBlockTransform = {v1::TEQ, "teq", "training", &TeqBlock};

}  // namespace wq
