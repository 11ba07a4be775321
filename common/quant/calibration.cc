#include "common/quant/calibration.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/io/file_util.h"
#include "common/artifact/model_registry.h"
#include "common/io/parallel.h"
#include "common/io/status_macros.h"

namespace wq {

absl::StatusOr<CalibrationSet> BuildCalibrationSet(
    const v1::CalibrationConfig& config, const std::string& data_root,
    const Tokenizer& tokenizer) {
  if (config.n_samples() <= 0 || config.seq_len() <= 0) {
    return absl::InvalidArgumentError(
        "calibration n_samples and seq_len must be >= 1 (resolve the config first)");
  }
  std::vector<std::string> texts;
  std::string source;
  if (config.has_texts()) {
    texts.assign(config.texts().texts().begin(), config.texts().texts().end());
    source = absl::StrCat(texts.size(), " inline texts");
  } else if (config.has_data_file()) {
    // Calibration files are many levels deep at most; 8 as the service allows.
    // ResolveUnderRoot checks the id and the root (an empty root would
    // read as a trusted path); the open is confined as well, so that a
    // symlink swapped in after that check cannot lead out of the root.
    RETURN_IF_ERROR(ResolveUnderRoot(data_root, config.data_file(), "calibration data_file", 8)
                        .status());
    ASSIGN_OR_RETURN(std::string contents, ReadFile(RootedPath(data_root, config.data_file())));
    for (absl::string_view line : absl::StrSplit(contents, '\n')) {
      texts.emplace_back(line);
    }
    source = absl::StrCat("data_file ", config.data_file());
  } else {
    return absl::InvalidArgumentError(
        "AWQ and TEQ need calibration data: set calibration.texts or "
        "calibration.data_file");
  }

  const int64_t want = static_cast<int64_t>(config.n_samples()) * config.seq_len();
  std::vector<int> stream;
  int skipped = 0;
  for (const std::string& text : texts) {
    if (static_cast<int64_t>(stream.size()) >= want) break;
    const absl::string_view stripped =
        absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size()));
    if (stripped.empty()) continue;
    ASSIGN_OR_RETURN(std::vector<int> ids,
                     tokenizer.Encode(std::string_view(stripped.data(), stripped.size()),
                                      /*add_bos=*/true));
    if (static_cast<int>(ids.size()) > config.seq_len()) {
      ++skipped;
      continue;
    }
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  CalibrationSet set;
  set.seq_len = config.seq_len();
  set.n_samples = static_cast<int>(
      std::min<int64_t>(config.n_samples(), stream.size() / config.seq_len()));
  if (set.n_samples == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration ", source, " holds ", stream.size(), " usable tokens, less than one block of ",
        config.seq_len(), "; give more text or a smaller seq_len"));
  }
  stream.resize(static_cast<size_t>(set.n_samples) * set.seq_len);
  set.tokens = std::move(stream);
  set.message = absl::StrCat("calibration: ", set.n_samples, " blocks x ", set.seq_len,
                             " tokens from ", source);
  if (set.n_samples < config.n_samples()) {
    absl::StrAppend(&set.message, " (", config.n_samples(),
                    " requested; the text holds only ", set.n_samples, ")");
  }
  if (skipped > 0) {
    absl::StrAppend(&set.message, "; skipped ", skipped, " texts longer than seq_len");
  }
  return set;
}

BlockWeights BlockWeights::Copy(const LlamaLayerWeights& layer, const LlamaConfig& config) {
  BlockWeights w;
  for (const BlockNormSpec& n : BlockNorms(config)) {
    w.norm[n.role].assign(layer.norm[n.role], layer.norm[n.role] + n.size);
  }
  for (const BlockLinearSpec& spec : BlockLinears(config)) {
    const LinearWeight& src = layer.linear[spec.role];
    w.rows[spec.role] = src.out_features();
    w.cols[spec.role] = src.in_features();
    w.linear[spec.role].resize(src.out_features() * src.in_features());
    src.DenseRowsToF32(0, src.out_features(), w.linear[spec.role].data());
    if (layer.bias[spec.role] != nullptr) {
      w.bias[spec.role].assign(layer.bias[spec.role], layer.bias[spec.role] + src.out_features());
    }
  }
  return w;
}

LlamaLayerWeights BlockWeights::View() const {
  LlamaLayerWeights l;
  for (int n = 0; n < kNumNormRoles; ++n) {
    if (!norm[n].empty()) l.norm[n] = norm[n].data();
  }
  for (int i = 0; i < kNumLinearRoles; ++i) {
    if (linear[i].empty()) continue;
    l.linear[i] = LinearWeight::Dense(linear[i].data(), rows[i], cols[i]);
    if (!bias[i].empty()) l.bias[i] = bias[i].data();
  }
  return l;
}

std::vector<ScalingGroup> LlamaScalingGroups(const LlamaConfig& config) {
  using Prev = ScalingGroup::Prev;
  const bool fused = config.spec().fused_projections;
  const int64_t q_dim = static_cast<int64_t>(config.num_attention_heads) * config.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(config.num_key_value_heads) * config.head_dim;
  // Split or fused layers of one input, whichever the family stores.
  auto roles = [fused](std::vector<LinearRole> split, LinearRole whole) {
    return fused ? std::vector<LinearRole>{whole} : split;
  };
  std::vector<ScalingGroup> groups;
  groups.push_back({Prev::kNorm, kInputNorm, kV, 0, roles({kQ, kK, kV}, kQkv),
                    BlockPoint::kAttentionInput, BlockPoint::kAttentionOutput});
  // AutoAWQ: `if module.self_attn.v_proj.weight.shape == o_proj.weight.shape`.
  if (kv_dim == q_dim && q_dim == config.hidden_size) {
    groups.push_back({Prev::kLinear, kInputNorm, fused ? kQkv : kV,
                      fused ? FusedParts(config, kQkv)[2].first : 0, {kO},
                      BlockPoint::kOProjInput, BlockPoint::kAttentionOutput});
  }
  groups.push_back({Prev::kNorm, kPostAttentionNorm, kV, 0, roles({kGate, kUp}, kGateUp),
                    BlockPoint::kMlpInput, BlockPoint::kMlpOutput});
  groups.push_back({Prev::kLinear, kInputNorm, fused ? kGateUp : kUp,
                    fused ? FusedParts(config, kGateUp)[1].first : 0, {kDown},
                    BlockPoint::kDownInput, BlockPoint::kMlpOutput});
  return groups;
}

void DivideIntoPrevious(const ScalingGroup& group, absl::Span<const float> s, BlockWeights* w) {
  const int64_t n = static_cast<int64_t>(s.size());
  if (group.prev == ScalingGroup::Prev::kNorm) {
    std::vector<float>& norm = w->norm[group.prev_norm];
    for (int64_t j = 0; j < n; ++j) norm[j] /= s[j];
  } else {
    // Output row prev_first_row + j of the previous linear feeds input channel j.
    const LinearRole prev = group.prev_linear;
    const int64_t cols = w->cols[prev];
    float* rows = w->linear[prev].data() + group.prev_first_row * cols;
    ParallelFor(int64_t{0}, n, [&](int64_t j) {
      for (int64_t c = 0; c < cols; ++c) rows[j * cols + c] /= s[j];
    });
    if (!w->bias[prev].empty()) {
      for (int64_t j = 0; j < n; ++j) w->bias[prev][group.prev_first_row + j] /= s[j];
    }
  }
}

void MultiplyColumns(absl::Span<const float> s, int64_t rows, float* w) {
  const int64_t n = static_cast<int64_t>(s.size());
  ParallelFor(int64_t{0}, rows, [&](int64_t r) {
    for (int64_t j = 0; j < n; ++j) w[r * n + j] *= s[j];
  });
}

void FoldScales(const ScalingGroup& group, absl::Span<const float> s, BlockWeights* w) {
  DivideIntoPrevious(group, s, w);
  for (LinearRole layer : group.layers) MultiplyColumns(s, w->rows[layer], w->linear[layer].data());
}

absl::Status CheckCancelled(const std::atomic<bool>* cancelled) {
  return IsCancelled(cancelled) ? absl::CancelledError("quantization cancelled")
                                : absl::OkStatus();
}

absl::Status ForEachCalibratedBlock(const LlamaModel& model,
                                    const CalibrationSet& calibration,
                                    const std::atomic<bool>* cancelled,
                                    const CalibratedBlockFn& fn,
                                    const LayerWeightsFn& layers) {
  const LlamaConfig& c = model.config();
  const int64_t hidden = c.hidden_size;
  if (calibration.seq_len > ContextLength(c)) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration seq_len ", calibration.seq_len, " exceeds the model's context of ",
                     ContextLength(c), " tokens"));
  }
  BlockActivations acts;
  acts.seqs = calibration.n_samples;
  acts.len = calibration.seq_len;
  const int64_t n = acts.tokens();
  std::vector<float> x(n * hidden);
  for (int64_t t = 0; t < n; ++t) {
    const int token = calibration.tokens[t];
    if (token < 0 || token >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("calibration token id ", token,
                                                     " outside the vocabulary"));
    }
    EmbeddingRow(model.weights().embed, token, x.data() + t * hidden);
  }
  // Sequences per RunBlock: enough rows for the kernels to run at full
  // speed, few enough that the block's temporaries (its scratch and KV
  // cache, about 20 floats per token and hidden unit at Llama's shapes) stay
  // small next to the captured activations.
  constexpr int kTokensPerPass = 512;
  const int seqs_per_pass = std::max(1, kTokensPerPass / acts.len);
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    RETURN_IF_ERROR(CheckCancelled(cancelled));
    for (std::vector<float>& a : acts.at) std::vector<float>().swap(a);  // the last block's
    ASSIGN_OR_RETURN(BlockWeights weights,
                     layers ? layers(layer)
                            : absl::StatusOr<BlockWeights>(
                                  BlockWeights::Copy(model.weights().layers[layer], c)));
    const LlamaLayerWeights view = weights.View();
    acts.input = x;
    for (int first = 0; first < acts.seqs; first += seqs_per_pass) {
      const int seqs = std::min(seqs_per_pass, acts.seqs - first);
      const int64_t first_row = static_cast<int64_t>(first) * acts.len;
      const BlockObserver capture = [&](BlockPoint p, const float* data, int64_t rows,
                                        int64_t dim) {
        if (p == BlockPoint::kOutput) return;
        const int i = static_cast<int>(p);
        acts.at[i].resize(n * dim);
        acts.dims[i] = dim;
        std::copy_n(data, rows * dim, acts.at[i].data() + first_row * dim);
      };
      model.RunBlock(view, seqs, acts.len, x.data() + first_row * hidden, capture);
    }
    RETURN_IF_ERROR(fn(layer, weights, acts));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> FakeQuantize(const float* w, int64_t rows, int64_t cols,
                                                const QuantSpec& spec) {
  ASSIGN_OR_RETURN(QuantizedMatrix q, QuantizeMatrix(w, rows, cols, spec));
  return DequantizeMatrix(q.view());
}

std::vector<float> MeanAbsPerChannel(const float* x, int64_t rows, int64_t cols) {
  std::vector<float> mean(cols);
  // One channel per task: each sum runs in a fixed order, so it is deterministic.
  ParallelFor(int64_t{0}, cols, [&](int64_t j) {
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += std::abs(x[r * cols + j]);
    mean[j] = static_cast<float>(sum / static_cast<double>(rows));
  });
  return mean;
}

}  // namespace wq
