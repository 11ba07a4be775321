#include "common/teq.h"

#include <algorithm>
#include <cmath>

#include "Eigen/Core"
#include "common/status_macros.h"
#include "tbb/parallel_for.h"

namespace wq {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;

// One layer's loss ||Q(W·diag(a))·(x/a) - W·x||^2 / T on token rows x [T,
// cols] and, when grad is set, its gradient with respect to a. With
// u = x/a, y = u·Q^T, r = y - x·W^T and dy = 2r/T (STE: dQ/d(W·a) = I):
//   through W·a: dL/da_j = sum_i (dy^T·u)_ij · W_ij
//   through x/a: dL/da_j = sum_t (dy·Q)_tj · (-x_tj / a_j^2)
absl::StatusOr<double> LayerLoss(const ConstRowMap& x, const float* w, int64_t rows,
                                 int64_t cols, const Eigen::VectorXf& alpha,
                                 const QuantSpec& spec, Eigen::VectorXf* grad) {
  const ConstRowMap weight(w, rows, cols);
  const RowMatrix scaled = weight * alpha.asDiagonal();
  ASSIGN_OR_RETURN(std::vector<float> q_data, FakeQuantize(scaled.data(), rows, cols, spec));
  const ConstRowMap q(q_data.data(), rows, cols);
  const RowMatrix u = x * alpha.cwiseInverse().asDiagonal();
  const RowMatrix r = u * q.transpose() - x * weight.transpose();
  const double tokens = static_cast<double>(x.rows());
  const double loss = r.cast<double>().squaredNorm() / tokens;
  if (grad != nullptr) {
    const RowMatrix dy = r * static_cast<float>(2.0 / tokens);
    const RowMatrix through_w = (dy.transpose() * u).cwiseProduct(weight);
    const RowMatrix through_x = (dy * q).cwiseProduct(x);
    *grad = through_w.colwise().sum().transpose() -
            through_x.colwise().sum().transpose().cwiseQuotient(alpha.cwiseAbs2());
  }
  return loss;
}

// The group's loss (sum over its layers) on token rows x; layers run in
// parallel, their gradients are summed in layer order.
absl::StatusOr<double> GroupLoss(const ConstRowMap& x, const ScalingGroup& group,
                                 const BlockWeights& w, const Eigen::VectorXf& alpha,
                                 const QuantSpec& spec, Eigen::VectorXf* grad) {
  const size_t n = group.layers.size();
  std::vector<absl::StatusOr<double>> losses(n, 0.0);
  std::vector<Eigen::VectorXf> grads(n);
  tbb::parallel_for(size_t{0}, n, [&](size_t i) {
    const BlockLinear l = group.layers[i];
    losses[i] = LayerLoss(x, w.linear[l].data(), w.rows[l], w.cols[l], alpha, spec,
                          grad != nullptr ? &grads[i] : nullptr);
  });
  double loss = 0;
  if (grad != nullptr) grad->setZero(alpha.size());
  for (size_t i = 0; i < n; ++i) {
    RETURN_IF_ERROR(losses[i].status());
    loss += *losses[i];
    if (grad != nullptr) *grad += grads[i];
  }
  return loss;
}

bool Cancelled(const TeqOptions& options) {
  return options.cancelled != nullptr && options.cancelled->load();
}

}  // namespace

absl::StatusOr<TeqGroupReport> TeqTrainGroup(const float* x, int seqs, int len,
                                             const ScalingGroup& group, const BlockWeights& w,
                                             const TeqOptions& options) {
  const int64_t cols = w.cols[group.layers.front()];
  const int batch_seqs = std::max(1, options.tokens_per_step / len);
  const int batches = (seqs + batch_seqs - 1) / batch_seqs;
  auto batch = [&](int b) {
    const int64_t first = static_cast<int64_t>(b) * batch_seqs * len;
    const int64_t last = static_cast<int64_t>(std::min(seqs, (b + 1) * batch_seqs)) * len;
    return ConstRowMap(x + first * cols, last - first, cols);
  };
  // Over all tokens, batch by batch so the temporaries stay small.
  auto full_loss = [&](const Eigen::VectorXf& alpha) -> absl::StatusOr<double> {
    double sum = 0;
    for (int b = 0; b < batches; ++b) {
      const ConstRowMap xb = batch(b);
      ASSIGN_OR_RETURN(double loss, GroupLoss(xb, group, w, alpha, options.spec, nullptr));
      sum += loss * static_cast<double>(xb.rows());
    }
    return sum / (static_cast<double>(seqs) * len);
  };

  TeqGroupReport report;
  Eigen::VectorXf alpha = Eigen::VectorXf::Ones(cols);
  Eigen::VectorXf m = Eigen::VectorXf::Zero(cols);
  Eigen::VectorXf v = Eigen::VectorXf::Zero(cols);
  Eigen::VectorXf grad(cols);
  ASSIGN_OR_RETURN(report.initial_loss, full_loss(alpha));
  const int warmup = static_cast<int>(options.warmup_fraction * options.steps);
  for (int step = 0; step < options.steps; ++step) {
    if (Cancelled(options)) return absl::CancelledError("quantization cancelled");
    ASSIGN_OR_RETURN(double loss,
                     GroupLoss(batch(step % batches), group, w, alpha, options.spec, &grad));
    report.step_losses.push_back(loss);
    // transformers' get_linear_schedule_with_warmup, read at the step's start.
    const float lr =
        options.lr * (step < warmup ? static_cast<float>(step) / std::max(1, warmup)
                                    : static_cast<float>(options.steps - step) /
                                          std::max(1, options.steps - warmup));
    // torch.optim.Adam with bias correction.
    m = options.beta1 * m + (1 - options.beta1) * grad;
    v = options.beta2 * v + (1 - options.beta2) * grad.cwiseAbs2();
    const float c1 = 1 - std::pow(options.beta1, static_cast<float>(step + 1));
    const float c2 = 1 - std::pow(options.beta2, static_cast<float>(step + 1));
    alpha -= (lr / c1) * m.cwiseQuotient(((v / c2).cwiseSqrt().array() + options.eps).matrix());
    alpha = alpha.cwiseMax(1e-5f);
  }
  ASSIGN_OR_RETURN(report.final_loss, full_loss(alpha));
  // Training sees one batch per step and the STE gradient; should the result
  // be worse than no scaling on the whole set, keep a = 1.
  if (report.final_loss > report.initial_loss) {
    alpha.setOnes();
    report.final_loss = report.initial_loss;
  }
  report.alpha.assign(alpha.data(), alpha.data() + cols);
  return report;
}

absl::StatusOr<std::vector<TeqGroupReport>> TeqTransformBlock(const LlamaConfig& config,
                                                              const BlockActivations& acts,
                                                              const TeqOptions& options,
                                                              BlockWeights* w) {
  const std::vector<ScalingGroup> groups = LlamaScalingGroups(config);
  if (options.on_stage) options.on_stage(CalibrationStage::kGridSearch);
  std::vector<absl::StatusOr<TeqGroupReport>> results(groups.size());
  tbb::parallel_for(size_t{0}, groups.size(), [&](size_t g) {
    results[g] = TeqTrainGroup(acts.Get(groups[g].input), acts.seqs, acts.len, groups[g], *w,
                               options);
  });
  std::vector<TeqGroupReport> reports;
  for (size_t g = 0; g < groups.size(); ++g) {
    RETURN_IF_ERROR(results[g].status());
    FoldScales(groups[g], results[g]->alpha, w);
    reports.push_back(*std::move(results[g]));
  }
  return reports;
}

}  // namespace wq
