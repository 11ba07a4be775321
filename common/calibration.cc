#include "common/calibration.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/model_registry.h"
#include "common/status_macros.h"
#include "tbb/parallel_for.h"

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
    ASSIGN_OR_RETURN(std::string path,
                     ResolveUnderRoot(data_root, config.data_file(),
                                      "calibration data_file", 8));
    ASSIGN_OR_RETURN(std::string contents, ReadFile(path));
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

BlockWeights BlockWeights::Copy(const LlamaLayerWeights& layer, int64_t hidden) {
  BlockWeights w;
  w.input_norm.assign(layer.input_norm, layer.input_norm + hidden);
  w.post_attention_norm.assign(layer.post_attention_norm,
                               layer.post_attention_norm + hidden);
  const LinearWeight* src[] = {&layer.q,    &layer.k,  &layer.v,   &layer.o,
                               &layer.gate, &layer.up, &layer.down};
  for (int i = 0; i < kNumBlockLinears; ++i) {
    w.rows[i] = src[i]->out_features();
    w.cols[i] = src[i]->in_features();
    w.linear[i].assign(src[i]->dense(), src[i]->dense() + w.rows[i] * w.cols[i]);
  }
  return w;
}

LlamaLayerWeights BlockWeights::View() const {
  LlamaLayerWeights l;
  l.input_norm = input_norm.data();
  l.post_attention_norm = post_attention_norm.data();
  LinearWeight* dst[] = {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down};
  for (int i = 0; i < kNumBlockLinears; ++i) {
    *dst[i] = LinearWeight::Dense(linear[i].data(), rows[i], cols[i]);
  }
  return l;
}

std::vector<ScalingGroup> LlamaScalingGroups(const LlamaConfig& config) {
  using Prev = ScalingGroup::Prev;
  std::vector<ScalingGroup> groups;
  groups.push_back({Prev::kInputNorm, {kQ, kK, kV}, BlockPoint::kAttentionInput,
                    BlockPoint::kAttentionOutput});
  // AutoAWQ: `if module.self_attn.v_proj.weight.shape == o_proj.weight.shape`.
  const int64_t q_dim = static_cast<int64_t>(config.num_attention_heads) * config.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(config.num_key_value_heads) * config.head_dim;
  if (kv_dim == q_dim && q_dim == config.hidden_size) {
    groups.push_back({Prev::kVProj, {kO}, BlockPoint::kOProjInput,
                      BlockPoint::kAttentionOutput});
  }
  groups.push_back({Prev::kPostAttentionNorm, {kGate, kUp}, BlockPoint::kMlpInput,
                    BlockPoint::kMlpOutput});
  groups.push_back({Prev::kUpProj, {kDown}, BlockPoint::kDownInput, BlockPoint::kMlpOutput});
  return groups;
}

void FoldScales(const ScalingGroup& group, absl::Span<const float> s, BlockWeights* w) {
  const int64_t n = static_cast<int64_t>(s.size());
  switch (group.prev) {
    case ScalingGroup::Prev::kInputNorm:
      for (int64_t j = 0; j < n; ++j) w->input_norm[j] /= s[j];
      break;
    case ScalingGroup::Prev::kPostAttentionNorm:
      for (int64_t j = 0; j < n; ++j) w->post_attention_norm[j] /= s[j];
      break;
    case ScalingGroup::Prev::kVProj:
    case ScalingGroup::Prev::kUpProj: {
      // Output row j of the previous linear feeds input channel j.
      const BlockLinear prev = group.prev == ScalingGroup::Prev::kVProj ? kV : kUp;
      float* rows = w->linear[prev].data();
      const int64_t cols = w->cols[prev];
      tbb::parallel_for(int64_t{0}, n, [&](int64_t j) {
        for (int64_t c = 0; c < cols; ++c) rows[j * cols + c] /= s[j];
      });
      break;
    }
  }
  for (BlockLinear layer : group.layers) {
    float* m = w->linear[layer].data();
    tbb::parallel_for(int64_t{0}, w->rows[layer], [&](int64_t r) {
      for (int64_t j = 0; j < n; ++j) m[r * n + j] *= s[j];
    });
  }
}

absl::Status CheckCancelled(const std::atomic<bool>* cancelled) {
  return IsCancelled(cancelled) ? absl::CancelledError("quantization cancelled")
                                : absl::OkStatus();
}

absl::Status ForEachCalibratedBlock(const LlamaModel& model,
                                    const CalibrationSet& calibration,
                                    const std::atomic<bool>* cancelled,
                                    const CalibratedBlockFn& fn) {
  const LlamaConfig& c = model.config();
  const int64_t hidden = c.hidden_size;
  if (calibration.seq_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration seq_len ", calibration.seq_len, " exceeds the model's context of ",
                     c.max_position_embeddings, " tokens"));
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
    std::copy_n(model.weights().embed + token * hidden, hidden, x.data() + t * hidden);
  }
  const BlockObserver capture = [&acts](BlockPoint p, const float* data, int64_t rows,
                                        int64_t dim) {
    if (p == BlockPoint::kOutput) return;
    const int i = static_cast<int>(p);
    acts.at[i].assign(data, data + rows * dim);
    acts.dims[i] = dim;
  };
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    RETURN_IF_ERROR(CheckCancelled(cancelled));
    acts.input = x;
    model.RunBlock(model.weights().layers[layer], acts.seqs, acts.len, x.data(), capture);
    RETURN_IF_ERROR(fn(layer, acts));
  }
  return absl::OkStatus();
}

namespace {

// Serves the transformed blocks by module name and everything else from the
// base model's source.
class TransformedSource : public WeightSource {
 public:
  TransformedSource(std::shared_ptr<const LlamaWeights> base, std::vector<BlockWeights> blocks)
      : base_(std::move(base)), blocks_(std::move(blocks)) {
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const int layer = static_cast<int>(i);
      BlockWeights& b = blocks_[i];
      vectors_[BlockModuleName(layer, "input_layernorm")] = b.input_norm.data();
      vectors_[BlockModuleName(layer, "post_attention_layernorm")] = b.post_attention_norm.data();
      for (int j = 0; j < kNumBlockLinears; ++j) {
        linears_[BlockModuleName(layer, kBlockLinearNames[j])] =
            LinearWeight::Dense(b.linear[j].data(), b.rows[j], b.cols[j]);
      }
    }
  }
  absl::StatusOr<const float*> F32(std::string_view name,
                                   absl::Span<const int64_t> shape) override {
    auto it = vectors_.find(std::string(name));
    if (it != vectors_.end()) return it->second;
    return base_->source->F32(name, shape);
  }
  bool Has(std::string_view name) override {
    return vectors_.count(std::string(name)) > 0 || linears_.count(std::string(name)) > 0 ||
           base_->source->Has(name);
  }
  absl::StatusOr<LinearWeight> Linear(std::string_view name, int64_t out_features,
                                      int64_t in_features) override {
    auto it = linears_.find(std::string(name));
    if (it == linears_.end()) return base_->source->Linear(name, out_features, in_features);
    if (it->second.out_features() != out_features || it->second.in_features() != in_features) {
      return absl::InvalidArgumentError(absl::StrCat("transformed ", std::string(name),
                                                     " has another shape"));
    }
    return it->second;
  }

 private:
  std::shared_ptr<const LlamaWeights> base_;
  std::vector<BlockWeights> blocks_;
  std::map<std::string, const float*> vectors_;
  std::map<std::string, LinearWeight> linears_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const LlamaWeights>> WithTransformedBlocks(
    std::shared_ptr<const LlamaWeights> base, std::vector<BlockWeights> blocks) {
  if (static_cast<int>(blocks.size()) != base->config.num_hidden_layers) {
    return absl::InvalidArgumentError("one transformed block per decoder layer expected");
  }
  const LlamaConfig config = base->config;
  return BuildLlamaWeights(
      config, std::make_shared<TransformedSource>(std::move(base), std::move(blocks)));
}

absl::StatusOr<std::vector<float>> FakeQuantize(const float* w, int64_t rows, int64_t cols,
                                                const QuantSpec& spec) {
  ASSIGN_OR_RETURN(QuantizedMatrix q, QuantizeMatrix(w, rows, cols, spec));
  return DequantizeMatrix(q.view());
}

std::vector<float> MeanAbsPerChannel(const float* x, int64_t rows, int64_t cols) {
  std::vector<float> mean(cols);
  // One channel per task: each sum runs in a fixed order, so it is deterministic.
  tbb::parallel_for(int64_t{0}, cols, [&](int64_t j) {
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += std::abs(x[r * cols + j]);
    mean[j] = static_cast<float>(sum / static_cast<double>(rows));
  });
  return mean;
}

}  // namespace wq
