#include "common/quant/awq.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/formats/bf16.h"
#include "common/io/parallel.h"
#include "common/quant/block_transform.h"
#include "common/io/status_macros.h"

namespace wq {
std::vector<float> AwqWeightMean(const BlockWeights& w,
                                        const std::vector<LinearRole>& layers,
                                        const QuantSpec& spec) {
  const int64_t cols = w.cols[layers.front()];
  const int64_t gs = EffectiveGroupSize(spec, cols);
  std::vector<double> sum(cols, 0.0);
  int64_t total_rows = 0;
  for (LinearRole layer : layers) {
    const float* m = w.linear[layer].data();
    for (int64_t r = 0; r < w.rows[layer]; ++r) {
      const float* row = m + r * cols;
      for (int64_t begin = 0; begin < cols; begin += gs) {
        const int64_t end = std::min(cols, begin + gs);
        float amax = 0;
        for (int64_t k = begin; k < end; ++k) amax = std::max(amax, std::abs(row[k]));
        for (int64_t k = begin; k < end; ++k) sum[k] += std::abs(row[k]) / (amax + 1e-6);
      }
    }
    total_rows += w.rows[layer];
  }
  std::vector<float> mean(cols);
  for (int64_t k = 0; k < cols; ++k) mean[k] = static_cast<float>(sum[k] / total_rows);
  return mean;
}

std::vector<float> AwqGridScales(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                              float ratio, bool duo_scaling) {
  std::vector<float> s(x_mean.size());
  for (size_t j = 0; j < s.size(); ++j) {
    const float v = duo_scaling
                        ? std::pow(x_mean[j], ratio) / (std::pow(w_mean[j], 1 - ratio) + 1e-4f)
                        : std::pow(x_mean[j], ratio);
    s[j] = std::max(v, 1e-4f);
  }
  const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
  const float norm = std::sqrt(*hi * *lo);
  for (float& v : s) {
    v /= norm;
    if (!std::isfinite(v)) v = 1;  // "avoid scaling values that overflow"
  }
  return s;
}

namespace {

// A grid point of a group as the block runs it: the group's layers
// quantized as Q(W·diag(s)) for the kernels of `compute`, and 1/s folded into
// the op before them, so the block computes with Q(W·diag(s))·diag(1/s) (the
// fake-quantized candidate) in the arithmetic the quantized model will use.
// The layers after the group that the loss runs through (o_proj for q/k/v,
// down_proj for gate/up) are unquantized; with bf16 or int8 compute they run
// as bf16 copies (exact for a bf16 checkpoint) on the bf16 kernels.
struct GridCandidate {
  std::vector<QuantizedMatrix> quantized;  // the group's layers
  BlockWeights prev;                       // the op before the group, 1/s folded in
  LlamaLayerWeights view;
};

absl::StatusOr<std::unique_ptr<GridCandidate>> MakeGridCandidate(
    const LlamaLayerWeights& base, const BlockWeights& w, const ScalingGroup& group,
    bool fold_into_prev, const std::vector<float>& s, const AwqOptions& options) {
  auto c = std::make_unique<GridCandidate>();  // the view points into it
  c->view = base;
  const int64_t cols = static_cast<int64_t>(s.size());
  std::vector<float> scaled;
  for (LinearRole layer : group.layers) {
    const int64_t rows = w.rows[layer];
    scaled.assign(w.linear[layer].begin(), w.linear[layer].end());
    MultiplyColumns(s, rows, scaled.data());
    ASSIGN_OR_RETURN(QuantizedMatrix q, QuantizeMatrix(scaled.data(), rows, cols, options.spec));
    c->quantized.push_back(std::move(q));
  }
  for (size_t i = 0; i < group.layers.size(); ++i) {
    c->view.linear[group.layers[i]] =
        LinearWeight::Quantized(c->quantized[i].view(), options.compute);
  }
  if (!fold_into_prev) return c;
  if (group.prev == ScalingGroup::Prev::kNorm) {
    c->prev.norm[group.prev_norm] = w.norm[group.prev_norm];
    c->view.norm[group.prev_norm] = c->prev.norm[group.prev_norm].data();
  } else {
    const LinearRole prev = group.prev_linear;
    c->prev.linear[prev] = w.linear[prev];
    c->prev.bias[prev] = w.bias[prev];
    c->prev.rows[prev] = w.rows[prev];
    c->prev.cols[prev] = w.cols[prev];
  }
  DivideIntoPrevious(group, s, &c->prev);
  if (group.prev == ScalingGroup::Prev::kLinear) {
    const LinearRole prev = group.prev_linear;
    c->view.linear[prev] =
        LinearWeight::Dense(c->prev.linear[prev].data(), w.rows[prev], w.cols[prev]);
    if (!c->prev.bias[prev].empty()) c->view.bias[prev] = c->prev.bias[prev].data();
  }
  return c;
}

// The layer's input with the group's scales divided out, sampled with
// AutoAWQ's stride (input_feat[:, ::max(1, n // n_sample_token)]).
std::vector<float> SampledInput(const BlockActivations& acts, BlockPoint point,
                                const std::vector<float>* scales, int clip_tokens,
                                int64_t* sampled) {
  const int64_t n = acts.tokens();
  const int64_t dim = acts.Dim(point);
  const int64_t step = std::max<int64_t>(1, n / clip_tokens);
  *sampled = (n + step - 1) / step;
  std::vector<float> x(*sampled * dim);
  const float* src = acts.Get(point);
  for (int64_t t = 0; t < *sampled; ++t) {
    for (int64_t j = 0; j < dim; ++j) {
      x[t * dim + j] = src[t * step * dim + j] / (scales ? (*scales)[j] : 1.0f);
    }
  }
  return x;
}

}  // namespace

absl::StatusOr<AwqScaleSearch> AwqSearchScales(const LlamaModel& model,
                                               const BlockActivations& acts,
                                               const ScalingGroup& group, const BlockWeights& w,
                                               const AwqOptions& options) {
  const int64_t n = acts.tokens();
  const int64_t cols = acts.Dim(group.input);
  const std::vector<float> x_mean = MeanAbsPerChannel(acts.Get(group.input), n, cols);
  const std::vector<float> w_mean = AwqWeightMean(w, group.layers, options.spec);
  const float* reference = acts.Get(group.inspect);
  const int64_t out_dim = acts.Dim(group.inspect);

  const bool mlp_only =
      group.input == BlockPoint::kMlpInput || group.input == BlockPoint::kDownInput;
  // The unquantized layers the loss runs through after the group's.
  LlamaLayerWeights base = w.View();
  std::array<std::vector<uint16_t>, kNumLinearRoles> bf16;
  for (const BlockLinearSpec& spec : BlockLinears(model.config())) {
    const BlockPoint in = InputPointOf(spec.role);
    const bool in_group = std::find(group.layers.begin(), group.layers.end(), spec.role) !=
                          group.layers.end();
    if (options.compute == ComputeDtype::kFp32 || in_group || in < group.input ||
        in >= group.inspect) {
      continue;
    }
    const std::vector<float>& m = w.linear[spec.role];
    bf16[spec.role].resize(m.size());
    std::transform(m.begin(), m.end(), bf16[spec.role].begin(), FloatToBf16);
    base.linear[spec.role] =
        LinearWeight::DenseBf16(bf16[spec.role].data(), w.rows[spec.role], w.cols[spec.role]);
  }

  AwqScaleSearch result;
  result.losses.assign(options.n_grid, std::numeric_limits<double>::infinity());
  std::vector<absl::Status> statuses(options.n_grid);
  ParallelFor(0, options.n_grid, [&](int i) {
    if (IsCancelled(options.cancelled)) return;
    const std::vector<float> s =
        AwqGridScales(x_mean, w_mean, static_cast<float>(i) / options.n_grid, options.duo_scaling);
    absl::StatusOr<std::unique_ptr<GridCandidate>> candidate =
        MakeGridCandidate(base, w, group, /*fold_into_prev=*/!mlp_only, s, options);
    if (!candidate.ok()) {
      statuses[i] = candidate.status();
      return;
    }
    const LlamaLayerWeights& view = (*candidate)->view;
    // One calibration sequence at a time: the same loss (a sequence attends
    // only to itself) with one sequence's temporaries instead of the whole
    // set's, which is what bounds AWQ's memory on large models.
    const int64_t len = acts.len;
    const int64_t hidden = model.config().hidden_size;
    double sum = 0;
    const auto accumulate = [&](const float* data, int64_t first_token) {
      const float* expected = reference + first_token * out_dim;
      for (int64_t k = 0; k < len * out_dim; ++k) {
        const double d = static_cast<double>(data[k]) - expected[k];
        sum += d * d;
      }
    };
    std::vector<float> buffer(len * (mlp_only ? out_dim : hidden));
    std::vector<float> input(mlp_only ? len * cols : 0);
    for (int seq = 0; seq < acts.seqs; ++seq) {
      const int64_t first = seq * len;
      if (mlp_only) {
        // The MLP's output depends on the captured MLP input alone: no need
        // to rerun attention (most of a block's time) for every grid point.
        // 1/s goes into that input (what folding it into the previous op does).
        const float* captured = acts.Get(group.input) + first * cols;
        for (int64_t t = 0; t < len; ++t) {
          for (int64_t j = 0; j < cols; ++j) input[t * cols + j] = captured[t * cols + j] / s[j];
        }
        model.MlpOutput(view, group.input, input.data(), len, buffer.data());
        accumulate(buffer.data(), first);
      } else {
        std::copy_n(acts.input.data() + first * hidden, len * hidden, buffer.data());
        model.RunBlock(view, 1, static_cast<int>(len), buffer.data(),
                       [&](BlockPoint p, const float* data, int64_t, int64_t) {
                         if (p == group.inspect) accumulate(data, first);
                       },
                       group.inspect);
      }
    }
    result.losses[i] = sum / static_cast<double>(n * out_dim);
  });
  RETURN_IF_ERROR(CheckCancelled(options.cancelled));
  for (const absl::Status& s : statuses) RETURN_IF_ERROR(s);
  for (int i = 1; i < options.n_grid; ++i) {
    if (result.losses[i] < result.losses[result.best]) result.best = i;
  }
  result.ratio = static_cast<double>(result.best) / options.n_grid;
  result.scales = AwqGridScales(x_mean, w_mean, static_cast<float>(result.ratio),
                             options.duo_scaling);
  return result;
}

namespace {

// A group's error mean_t (x_t,g · d)^2 for a weight change d over its gs
// columns, as d·(Σ_k d_k F_k) / tokens with F_k the rows of the group's Gram
// matrix Σ_t x_t,g x_t,g^T when gs <= tokens (gs² multiply-adds per error
// instead of tokens·gs), or as |Σ_k d_k F_k|² / tokens with F_k = the
// group's column k of x over the tokens otherwise: the same sum either way.
class GroupError {
 public:
  GroupError(const float* x, int64_t tokens, int64_t cols, int64_t gs)
      : tokens_(tokens), gram_(gs <= tokens), width_(gram_ ? gs : tokens),
        factors_(cols * width_, 0.0) {
    ParallelFor(int64_t{0}, cols, [&](int64_t k) {
      double* f = &factors_[k * width_];
      if (!gram_) {
        for (int64_t t = 0; t < tokens; ++t) f[t] = x[t * cols + k];
        return;
      }
      const int64_t g0 = k / gs * gs;
      const int64_t g1 = std::min(cols, g0 + gs);
      for (int64_t t = 0; t < tokens; ++t) {
        const float* xt = x + t * cols;
        for (int64_t j = g0; j < g1; ++j) f[j - g0] += static_cast<double>(xt[k]) * xt[j];
      }
    });
  }

  // d: the change of the group starting at column g0, n <= gs values;
  // scratch: width() doubles.
  double operator()(const float* d, int64_t g0, int64_t n, double* scratch) const {
    std::fill_n(scratch, width_, 0.0);
    for (int64_t k = 0; k < n; ++k) {
      const double dk = d[k];
      const double* f = &factors_[(g0 + k) * width_];
      for (int64_t j = 0; j < width_; ++j) scratch[j] += dk * f[j];
    }
    double err = 0;
    if (gram_) {
      for (int64_t j = 0; j < n; ++j) err += d[j] * scratch[j];
    } else {
      for (int64_t t = 0; t < width_; ++t) err += scratch[t] * scratch[t];
    }
    return err / static_cast<double>(tokens_);
  }

  int64_t width() const { return width_; }

 private:
  int64_t tokens_;
  bool gram_;
  int64_t width_;
  std::vector<double> factors_;  // [cols, width]
};

}  // namespace

absl::StatusOr<AwqClip> AwqSearchClip(const float* w, int64_t rows, int64_t cols, const float* x,
                                      int64_t tokens, const AwqOptions& options) {
  const int64_t gs = EffectiveGroupSize(options.spec, cols);
  const int64_t groups = (cols + gs - 1) / gs;
  const bool asym = options.spec.scheme == QuantScheme::kAsym;
  const GroupError group_error(x, tokens, cols, gs);
  AwqClip best{std::vector<float>(rows * groups), std::vector<float>(rows * groups)};
  // Output channels in batches, as AutoAWQ (oc_batch_size 64) but in parallel.
  constexpr int64_t kBatch = 64;
  const int64_t batches = (rows + kBatch - 1) / kBatch;
  const int shrinks = static_cast<int>(options.max_shrink * options.clip_grid);
  std::vector<absl::Status> statuses(batches);
  ParallelFor(int64_t{0}, batches, [&](int64_t b) {
    if (IsCancelled(options.cancelled)) return;
    const int64_t r0 = b * kBatch;
    const int64_t nr = std::min(kBatch, rows - r0);
    const float* wb = w + r0 * cols;
    // The unclipped range: [-max|w|, max|w|] for sym, the range the asym
    // quantizer sees ([min(wmin, 0), max(wmax, 0)]) for asym, so that both
    // ends shrink towards 0 and lo <= hi always holds.
    std::vector<float> org_lo(nr * groups, 0.0f);
    std::vector<float> org_hi(nr * groups, 0.0f);
    for (int64_t r = 0; r < nr; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k1 = std::min(cols, (g + 1) * gs);
        float& lo = org_lo[r * groups + g];
        float& hi = org_hi[r * groups + g];
        for (int64_t k = g * gs; k < k1; ++k) {
          const float v = wb[r * cols + k];
          if (asym) {
            lo = std::min(lo, v);
            hi = std::max(hi, v);
          } else {
            hi = std::max(hi, std::abs(v));
          }
        }
        if (!asym) lo = -hi;
      }
    }
    std::vector<float> best_lo = org_lo;
    std::vector<float> best_hi = org_hi;
    std::vector<double> min_err(nr * groups, 1e9);  // AutoAWQ's initial min_errs
    std::vector<float> cand_lo(nr * groups);
    std::vector<float> cand_hi(nr * groups);
    std::vector<float> clipped(nr * cols);
    std::vector<double> scratch(group_error.width());
    // One pass over the shrinks of the upper end; the lower end shrinks
    // alike (sym) or by lo_shrink (asym). Each (row, group) keeps its own
    // best, as its error does not depend on the other groups.
    const auto search = [&](float lo_shrink) -> absl::Status {
      for (int i = 0; i < shrinks; ++i) {
        const float shrink = 1.0f - static_cast<float>(i) / options.clip_grid;
        for (int64_t rg = 0; rg < nr * groups; ++rg) {
          cand_lo[rg] = org_lo[rg] * (asym ? lo_shrink : shrink);
          cand_hi[rg] = org_hi[rg] * shrink;
        }
        for (int64_t r = 0; r < nr; ++r) {
          for (int64_t k = 0; k < cols; ++k) {
            const int64_t rg = r * groups + k / gs;
            clipped[r * cols + k] = std::clamp(wb[r * cols + k], cand_lo[rg], cand_hi[rg]);
          }
        }
        ASSIGN_OR_RETURN(std::vector<float> q, FakeQuantize(clipped.data(), nr, cols, options.spec));
        for (int64_t k = 0; k < nr * cols; ++k) q[k] -= wb[k];  // the change d
        for (int64_t r = 0; r < nr; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            const int64_t g0 = g * gs;
            const double err =
                group_error(&q[r * cols + g0], g0, std::min(cols, g0 + gs) - g0, scratch.data());
            const int64_t rg = r * groups + g;
            if (err < min_err[rg]) {
              min_err[rg] = err;
              best_lo[rg] = cand_lo[rg];
              best_hi[rg] = cand_hi[rg];
            }
          }
        }
      }
      return absl::OkStatus();
    };
    absl::Status status = search(1.0f);
    // Asym: the full grid of both shrinks. Coordinate descent (one end, then
    // the other) settles on local optima of skewed groups, and the grid
    // holds AutoAWQ's symmetric shrinks, so no group ends worse than those.
    for (int j = 1; asym && status.ok() && j < shrinks; ++j) {
      status = search(1.0f - static_cast<float>(j) / options.clip_grid);
    }
    if (!status.ok()) {
      statuses[b] = status;
      return;
    }
    std::copy(best_lo.begin(), best_lo.end(), best.lo.begin() + r0 * groups);
    std::copy(best_hi.begin(), best_hi.end(), best.hi.begin() + r0 * groups);
  });
  RETURN_IF_ERROR(CheckCancelled(options.cancelled));
  for (const absl::Status& s : statuses) RETURN_IF_ERROR(s);
  return best;
}

void ApplyClip(const AwqClip& clip, int64_t rows, int64_t cols, int group_size, float* w) {
  const int64_t groups = (cols + group_size - 1) / group_size;
  ParallelFor(int64_t{0}, rows, [&](int64_t r) {
    for (int64_t k = 0; k < cols; ++k) {
      const int64_t rg = r * groups + k / group_size;
      w[r * cols + k] = std::clamp(w[r * cols + k], clip.lo[rg], clip.hi[rg]);
    }
  });
}

absl::StatusOr<AwqBlockReport> AwqTransformBlock(const LlamaModel& model,
                                                 const BlockActivations& acts,
                                                 const AwqOptions& options, BlockWeights* w) {
  const std::vector<ScalingGroup> groups = LlamaScalingGroups(model.config());
  if (options.on_stage) options.on_stage(CalibrationStage::kGridSearch);
  AwqBlockReport report;
  report.groups.resize(groups.size());
  std::vector<absl::Status> statuses(groups.size());
  // Every group is searched on the unscaled block, then all are folded
  // (AutoAWQ: scales_list for all groups, then apply_scale).
  ParallelFor(size_t{0}, groups.size(), [&](size_t g) {
    absl::StatusOr<AwqScaleSearch> r = AwqSearchScales(model, acts, groups[g], *w, options);
    if (r.ok()) {
      report.groups[g] = *std::move(r);
    } else {
      statuses[g] = r.status();
    }
  });
  for (const absl::Status& s : statuses) RETURN_IF_ERROR(s);
  for (size_t g = 0; g < groups.size(); ++g) FoldScales(groups[g], report.groups[g].scales, w);
  if (!options.clip) return report;

  if (options.on_stage) options.on_stage(CalibrationStage::kClipSearch);
  // Each layer's input, and the scales folded into it (none for o_proj when
  // v->o is skipped).
  struct ClipJob {
    LinearRole layer;
    BlockPoint input;
    const std::vector<float>* scales;
  };
  std::vector<ClipJob> jobs;
  for (const BlockLinearSpec& spec : BlockLinears(model.config())) {
    // AutoAWQ avoids clipping "q_" and "k_" (its fused "qkv_proj" is clipped).
    if (spec.role == kQ || spec.role == kK || options.skip[spec.role]) continue;
    const std::vector<float>* scales = nullptr;
    for (size_t g = 0; g < groups.size(); ++g) {
      const auto& layers = groups[g].layers;
      if (std::find(layers.begin(), layers.end(), spec.role) != layers.end()) {
        scales = &report.groups[g].scales;
      }
    }
    jobs.push_back({spec.role, InputPointOf(spec.role), scales});
  }
  statuses.assign(jobs.size(), absl::OkStatus());
  ParallelFor(size_t{0}, jobs.size(), [&](size_t j) {
    const ClipJob& job = jobs[j];
    int64_t tokens = 0;
    const std::vector<float> x =
        SampledInput(acts, job.input, job.scales, options.clip_tokens, &tokens);
    float* m = w->linear[job.layer].data();
    const int64_t rows = w->rows[job.layer];
    const int64_t cols = w->cols[job.layer];
    absl::StatusOr<AwqClip> clip = AwqSearchClip(m, rows, cols, x.data(), tokens, options);
    if (!clip.ok()) {
      statuses[j] = clip.status();
      return;
    }
    ApplyClip(*clip, rows, cols, EffectiveGroupSize(options.spec, cols), m);
  });
  for (const absl::Status& s : statuses) RETURN_IF_ERROR(s);
  return report;
}

namespace {

absl::StatusOr<std::vector<std::string>> AwqBlock(const BlockTransformInputs& inputs,
                                                  BlockWeights* w) {
  AwqOptions options;
  options.spec = inputs.spec;
  options.compute = inputs.compute;
  options.skip = inputs.skip;
  options.cancelled = inputs.cancelled;
  options.on_stage = inputs.on_stage;
  ASSIGN_OR_RETURN(AwqBlockReport report,
                   AwqTransformBlock(*inputs.model, *inputs.acts, options, w));
  std::vector<std::string> groups;
  for (const AwqScaleSearch& g : report.groups) {
    groups.push_back(absl::StrFormat("a=%.2f loss %.3g (a=0: %.3g)", g.ratio,
                                     g.losses[g.best], g.losses[0]));
  }
  return groups;
}

}  // namespace

const BlockTransform kAwqBlockTransform = {v1::AWQ, "awq", "scale search", &AwqBlock};

}  // namespace wq
