#include "common/model/llama.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <filesystem>
#include <map>
#include <set>

#include "Eigen/Core"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/formats/bf16.h"
#include "common/io/file_util.h"
#include "common/formats/safetensors.h"
#include "common/io/parallel.h"
#include "nlohmann/json.hpp"
#include "common/io/status_macros.h"

namespace wq {
namespace {

using ConstRowMatrix =
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
using ConstVector = Eigen::Map<const Eigen::VectorXf>;
using Vector = Eigen::Map<Eigen::VectorXf>;

// The shards model.safetensors.index.json maps tensors to, else every
// *.safetensors file, sorted.
absl::StatusOr<std::vector<RootedPath>> CheckpointFiles(const RootedPath& dir) {
  std::vector<RootedPath> paths;
  absl::StatusOr<std::string> text = ReadFile(dir.Child("model.safetensors.index.json"));
  if (text.ok()) {
    const nlohmann::json index = nlohmann::json::parse(*text, nullptr, false);
    const auto map = index.is_object() ? index.find("weight_map") : index.end();
    if (index.is_discarded() || map == index.end() || !map->is_object()) {
      return absl::InvalidArgumentError(
          "model.safetensors.index.json has no 'weight_map' object");
    }
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : map->items()) {
      // A shard is a plain file name beside the index.
      if (!shard.is_string() || shard.get<std::string>().empty() ||
          shard.get<std::string>().find('/') != std::string::npos ||
          shard.get<std::string>()[0] == '.') {
        return absl::InvalidArgumentError(absl::StrCat(
            "model.safetensors.index.json maps ", tensor, " to ", shard.dump(),
            "; expected a file name in the model directory"));
      }
      shards.insert(shard.get<std::string>());
    }
    for (const std::string& shard : shards) paths.push_back(dir.Child(shard));
    return paths;
  }
  if (!absl::IsNotFound(text.status())) return text.status();
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir.Full(), ec)) {
    if (entry.path().extension() == ".safetensors") names.push_back(entry.path().filename());
  }
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", dir.path, ": ", ec.message()));
  if (names.empty()) {
    return absl::NotFoundError(absl::StrCat("no *.safetensors file in ", dir.path));
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) paths.push_back(dir.Child(name));
  return paths;
}


void RmsNorm(const float* x, const float* weight, int n, float eps, float* out) {
  double sum_squares = 0;
  for (int i = 0; i < n; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / n + eps));
  for (int i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * inv_rms);
}


}  // namespace

absl::StatusOr<LinearWeight> WeightSource::DenseMatrix(absl::string_view tensor, int64_t rows,
                                                       int64_t cols) {
  const int64_t shape[] = {rows, cols};
  ASSIGN_OR_RETURN(const float* w, F32(tensor, shape));
  return LinearWeight::Dense(w, rows, cols);
}

void EmbeddingRow(const LinearWeight& embed, int64_t token, float* out) {
  embed.DenseRowsToF32(token, 1, out);
}

absl::Status CheckpointSource::Open(const RootedPath& dir, FileBacking backing,
                                    HalfWeights half) {
  half_ = half;
  ASSIGN_OR_RETURN(std::vector<RootedPath> paths, CheckpointFiles(dir));
  for (const RootedPath& path : paths) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path, backing));
    for (const TensorInfo& t : file->tensors()) {
      if (!by_name_.emplace(t.name, file.get()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", t.name, " appears in two files of ", dir.path));
      }
    }
    files_.push_back(std::move(file));
  }
  return absl::OkStatus();
}

bool CheckpointSource::Has(absl::string_view module) {
  return by_name_.count(absl::StrCat(module, ".weight")) > 0;
}

absl::StatusOr<const float*> CheckpointSource::F32(absl::string_view tensor,
                                                   absl::Span<const int64_t> shape) {
  auto it = by_name_.find(std::string(tensor));
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat("model has no tensor ", tensor));
  }
  ASSIGN_OR_RETURN(F32Tensor t, it->second->LoadF32(std::string(tensor)));
  if (t.shape != std::vector<int64_t>(shape.begin(), shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", tensor, " has shape [", absl::StrJoin(t.shape, ","),
        "], config.json implies [", absl::StrJoin(shape, ","), "]"));
  }
  used_.insert(std::string(tensor));
  loaded_.push_back({it->second, it->second->Find(std::string(tensor)), std::move(t)});
  return loaded_.back().tensor.data;
}

absl::StatusOr<LinearWeight> CheckpointSource::DenseMatrix(absl::string_view tensor,
                                                           int64_t rows, int64_t cols) {
  auto it = by_name_.find(std::string(tensor));
  const TensorInfo* info = it != by_name_.end() ? it->second->Find(std::string(tensor)) : nullptr;
  if (half_ == HalfWeights::kServeAsStored && info != nullptr &&
      (info->dtype == DType::kBF16 || info->dtype == DType::kF16)) {
    const int64_t shape[] = {rows, cols};
    const DType dtype = info->dtype;
    ASSIGN_OR_RETURN(info, it->second->Get(std::string(tensor), dtype, shape));
    const uint8_t* bytes = it->second->data(*info);
    // Safetensors writers align tensors; one that is not is converted below.
    if (reinterpret_cast<uintptr_t>(bytes) % alignof(uint16_t) == 0) {
      used_.insert(std::string(tensor));
      loaded_.push_back({it->second, info, F32Tensor{}});  // its pages, for ReleaseLoaded
      const auto* w = reinterpret_cast<const uint16_t*>(bytes);
      return dtype == DType::kBF16 ? LinearWeight::DenseBf16(w, rows, cols)
                                   : LinearWeight::DenseF16(w, rows, cols);
    }
  }
  return WeightSource::DenseMatrix(tensor, rows, cols);
}

absl::StatusOr<LinearWeight> CheckpointSource::Linear(absl::string_view module,
                                                      int64_t out_features, int64_t in_features) {
  return DenseMatrix(absl::StrCat(module, ".weight"), out_features, in_features);
}

void CheckpointSource::ReleaseLoaded() {
  for (const Loaded& l : loaded_) l.file->ReleasePages(*l.info);
  loaded_.clear();
}

absl::Status CheckpointSource::CheckAllUsed() const {
  for (const auto& [name, file] : by_name_) {
    if (used_.count(name) == 0 && !absl::EndsWith(name, ".rotary_emb.inv_freq")) {
      return absl::UnimplementedError(absl::StrCat(
          "checkpoint tensor ", name,
          " is not part of the architecture config.json describes; wq would ignore it"));
    }
  }
  return absl::OkStatus();
}

int64_t LlamaWeights::StorageBytes() const {
  const int64_t hidden = config.hidden_size;
  int64_t bytes = embed.storage_bytes() + hidden * 4;
  const std::vector<BlockNormSpec> norms = BlockNorms(config);
  const std::vector<BlockLinearSpec> linears = BlockLinears(config);
  for (const LlamaLayerWeights& l : layers) {
    for (const BlockNormSpec& n : norms) bytes += n.size * 4;
    for (const BlockLinearSpec& spec : linears) {
      bytes += l.linear[spec.role].storage_bytes();
      if (spec.bias) bytes += spec.out_features * 4;
    }
  }
  const bool tied = !lm_head.quantized() && lm_head.dense() == embed.dense() &&
                    lm_head.dense_bf16() == embed.dense_bf16() &&
                    lm_head.dense_f16() == embed.dense_f16();
  if (!tied) bytes += lm_head.storage_bytes();
  return bytes;
}

absl::StatusOr<LinearWeight> LoadEmbedding(const LlamaConfig& config, WeightSource& source) {
  return source.DenseMatrix(absl::StrCat(kEmbedName, ".weight"), config.vocab_size,
                            config.hidden_size);
}

absl::StatusOr<const float*> LoadFinalNorm(const LlamaConfig& config, WeightSource& source) {
  const int64_t shape[] = {config.hidden_size};
  return source.F32(absl::StrCat(kFinalNormName, ".weight"), shape);
}

absl::StatusOr<LlamaLayerWeights> LoadLayer(const LlamaConfig& config, WeightSource& source,
                                            int layer) {
  LlamaLayerWeights l;
  for (const BlockNormSpec& n : BlockNorms(config)) {
    const int64_t shape[] = {n.size};
    ASSIGN_OR_RETURN(l.norm[n.role],
                     source.F32(absl::StrCat(BlockModuleName(layer, n.name()), ".weight"), shape));
  }
  for (const BlockLinearSpec& spec : BlockLinears(config)) {
    const std::string module = BlockModuleName(layer, spec.name());
    ASSIGN_OR_RETURN(l.linear[spec.role],
                     source.Linear(module, spec.out_features, spec.in_features));
    if (spec.bias) {
      const int64_t shape[] = {spec.out_features};
      ASSIGN_OR_RETURN(l.bias[spec.role], source.F32(absl::StrCat(module, ".bias"), shape));
    }
  }
  return l;
}

absl::StatusOr<LinearWeight> LoadLmHead(const LlamaConfig& config, WeightSource& source,
                                        const LinearWeight& embed) {
  if (source.Has(kLmHeadName)) {
    return source.Linear(kLmHeadName, config.vocab_size, config.hidden_size);
  }
  if (!config.tie_word_embeddings) {
    return absl::NotFoundError(
        "model has no lm_head.weight and config.json does not tie word embeddings");
  }
  return embed;
}

absl::StatusOr<std::shared_ptr<const LlamaWeights>> BuildLlamaWeights(
    const LlamaConfig& config, std::shared_ptr<WeightSource> source) {
  auto w = std::make_shared<LlamaWeights>();
  w->config = config;
  ASSIGN_OR_RETURN(w->embed, LoadEmbedding(config, *source));
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    ASSIGN_OR_RETURN(LlamaLayerWeights layer, LoadLayer(config, *source, i));
    w->layers.push_back(layer);
  }
  ASSIGN_OR_RETURN(w->final_norm, LoadFinalNorm(config, *source));
  ASSIGN_OR_RETURN(w->lm_head, LoadLmHead(config, *source, w->embed));
  w->source = std::move(source);
  return std::shared_ptr<const LlamaWeights>(std::move(w));
}

absl::StatusOr<std::shared_ptr<const LlamaWeights>> LoadLlamaModelDir(
    const RootedPath& dir, FileBacking backing, HalfWeights half) {
  ASSIGN_OR_RETURN(LlamaConfig config, LoadModelDirConfig(dir));
  auto source = std::make_shared<CheckpointSource>();
  RETURN_IF_ERROR(source->Open(dir, backing, half));
  ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> weights,
                   BuildLlamaWeights(config, source));
  RETURN_IF_ERROR(source->CheckAllUsed());
  return weights;
}

std::optional<KvCacheDtype> ParseKvCacheDtype(std::string_view name) {
  if (name == "fp32") return KvCacheDtype::kF32;
  if (name == "bf16") return KvCacheDtype::kBf16;
  return std::nullopt;
}

KVCache::KVCache(const LlamaConfig& config, int max_positions, KvCacheDtype dtype)
    : dtype_(dtype),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      window_(config.sliding_window),
      max_positions_(max_positions),
      slots_(window_ > 0 ? std::min(max_positions, window_) : max_positions) {
  const size_t n = static_cast<size_t>(config.num_hidden_layers) * kv_heads_ * slots_ * head_dim_;
  if (dtype_ == KvCacheDtype::kF32) {
    keys_.resize(n);
    values_.resize(n);
  } else {
    keys_bf16_.resize(n);
    values_bf16_.resize(n);
  }
}

bool KVCache::CanStartAt(int pos) const {
  const int first_read = window_ > 0 ? std::max(0, pos - window_ + 1) : 0;
  const int first_held = std::max(0, length_ - slots_);
  // Keys [first_read, pos) are read: none at the start (or with a window of 1).
  return pos <= length_ && (first_read == pos || first_read >= first_held);
}

void KVCache::Store(int layer, int kv_head, int pos, const float* key, const float* value) {
  const int64_t o = Offset(layer, kv_head, pos % slots_);
  if (dtype_ == KvCacheDtype::kF32) {
    std::copy_n(key, head_dim_, keys_.data() + o);
    std::copy_n(value, head_dim_, values_.data() + o);
    return;
  }
  std::transform(key, key + head_dim_, keys_bf16_.data() + o, FloatToBf16);
  std::transform(value, value + head_dim_, values_bf16_.data() + o, FloatToBf16);
}

void KVCache::RoundAsStored(float* x, int64_t count) const {
  if (dtype_ == KvCacheDtype::kF32) return;
  for (int64_t i = 0; i < count; ++i) x[i] = Bf16ToFloat(FloatToBf16(x[i]));
}

const float* KVCache::Rows(const std::vector<float>& f32, const std::vector<uint16_t>& bf16,
                           int layer, int kv_head, int first, int end,
                           std::vector<float>* scratch) const {
  const int n = end - first;
  const int slot = first % slots_;
  const int before_wrap = std::min(n, slots_ - slot);
  if (dtype_ == KvCacheDtype::kF32 && before_wrap == n) {
    return f32.data() + Offset(layer, kv_head, slot);
  }
  scratch->resize(static_cast<size_t>(n) * head_dim_);
  // Slots [slot, slot + before_wrap), then [0, n - before_wrap) past the wrap.
  auto copy = [&](int from_slot, int count, float* to) {
    const int64_t o = Offset(layer, kv_head, from_slot);
    const int64_t floats = static_cast<int64_t>(count) * head_dim_;
    if (dtype_ == KvCacheDtype::kF32) {
      std::copy_n(f32.data() + o, floats, to);
    } else {
      std::transform(bf16.data() + o, bf16.data() + o + floats, to, Bf16ToFloat);
    }
  };
  copy(slot, before_wrap, scratch->data());
  copy(0, n - before_wrap, scratch->data() + static_cast<int64_t>(before_wrap) * head_dim_);
  return scratch->data();
}

const float* KVCache::Keys(int layer, int kv_head, int first, int end,
                           std::vector<float>* scratch) const {
  return Rows(keys_, keys_bf16_, layer, kv_head, first, end, scratch);
}

const float* KVCache::Values(int layer, int kv_head, int first, int end,
                             std::vector<float>* scratch) const {
  return Rows(values_, values_bf16_, layer, kv_head, first, end, scratch);
}

int64_t KVCache::bytes() const {
  return static_cast<int64_t>((keys_.size() + values_.size()) * sizeof(float) +
                              (keys_bf16_.size() + values_bf16_.size()) * sizeof(uint16_t));
}

std::vector<double> RotaryEmbedding::InverseFrequencies(const LlamaConfig& c, int seq_len) {
  const int half = c.head_dim / 2;
  const RopeScaling& r = c.rope_scaling;
  double base = c.rope_theta;
  if (r.type == RopeScaling::Type::kDynamic && seq_len > r.original_max_position_embeddings) {
    // transformers _compute_dynamic_ntk_parameters
    const double stretch =
        r.factor * seq_len / r.original_max_position_embeddings - (r.factor - 1.0);
    base *= std::pow(stretch, static_cast<double>(c.head_dim) / (c.head_dim - 2));
  }
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(base, -2.0 * i / c.head_dim);
    if (r.type == RopeScaling::Type::kLinear) inv_freq[i] /= r.factor;
    if (r.type == RopeScaling::Type::kLlama3) {
      // transformers _compute_llama3_parameters: long wavelengths slow down
      // by `factor`, short ones stay, the band between blends the two.
      const double wavelen = 2 * M_PI / inv_freq[i];
      const double low_wavelen = r.original_max_position_embeddings / r.low_freq_factor;
      const double high_wavelen = r.original_max_position_embeddings / r.high_freq_factor;
      if (wavelen > low_wavelen) {
        inv_freq[i] /= r.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (r.original_max_position_embeddings / wavelen - r.low_freq_factor) /
                              (r.high_freq_factor - r.low_freq_factor);
        inv_freq[i] = (1 - smooth) * inv_freq[i] / r.factor + smooth * inv_freq[i];
      }
    }
  }
  return inv_freq;
}

BlockPoint InputPointOf(LinearRole role) {
  switch (role) {
    case kQ:
    case kK:
    case kV:
    case kQkv:
      return BlockPoint::kAttentionInput;
    case kO:
      return BlockPoint::kOProjInput;
    case kGate:
    case kUp:
    case kGateUp:
      return BlockPoint::kMlpInput;
    case kDown:
    case kNumLinearRoles:
      break;
  }
  return BlockPoint::kDownInput;
}

int ContextLength(const LlamaConfig& c) {
  if (c.rope_scaling.type != RopeScaling::Type::kDynamic) return c.max_position_embeddings;
  const double stretched = static_cast<double>(c.max_position_embeddings) * c.rope_scaling.factor;
  return static_cast<int>(std::min<double>(stretched, kMaxLlamaConfigDim));
}

RotaryEmbedding::RotaryEmbedding(const LlamaConfig& c, int positions)
    : config_(c), head_dim_(c.head_dim) {
  const int half = c.head_dim / 2;
  const std::vector<double> inv_freq = InverseFrequencies(c, 0);
  cos_.resize(static_cast<size_t>(positions) * half);
  sin_.resize(cos_.size());
  for (int pos = 0; pos < positions; ++pos) {
    for (int i = 0; i < half; ++i) {
      cos_[static_cast<size_t>(pos) * half + i] = static_cast<float>(std::cos(pos * inv_freq[i]));
      sin_[static_cast<size_t>(pos) * half + i] = static_cast<float>(std::sin(pos * inv_freq[i]));
    }
  }
}

void RotaryEmbedding::Apply(float* x, int heads, int pos, bool inverse, int seq_len) const {
  const int half = head_dim_ / 2;
  const float* cos;
  const float* sin;
  std::vector<float> stretched;  // dynamic-NTK past the trained context
  if (config_.rope_scaling.type != RopeScaling::Type::kDynamic ||
      seq_len <= config_.rope_scaling.original_max_position_embeddings) {
    cos = cos_.data() + static_cast<size_t>(pos) * half;
    sin = sin_.data() + static_cast<size_t>(pos) * half;
  } else {
    const std::vector<double> inv_freq = InverseFrequencies(config_, seq_len);
    stretched.resize(2 * half);
    for (int i = 0; i < half; ++i) {
      stretched[i] = static_cast<float>(std::cos(pos * inv_freq[i]));
      stretched[half + i] = static_cast<float>(std::sin(pos * inv_freq[i]));
    }
    cos = stretched.data();
    sin = stretched.data() + half;
  }
  for (int h = 0; h < heads; ++h) {
    float* head = x + static_cast<size_t>(h) * head_dim_;
    for (int i = 0; i < half; ++i) {
      const float a = head[i];
      const float b = head[i + half];
      const float s = inverse ? -sin[i] : sin[i];
      head[i] = a * cos[i] - b * s;
      head[i + half] = b * cos[i] + a * s;
    }
  }
}

LlamaModel::LlamaModel(std::shared_ptr<const LlamaWeights> weights)
    : weights_(std::move(weights)),
      // Dynamic-NTK positions past the trained context are computed per pass.
      rope_(weights_->config, std::max(weights_->config.max_position_embeddings,
                                       weights_->config.rope_scaling.original_max_position_embeddings)) {}

void LlamaModel::Attention(absl::Span<const SequenceChunk> chunks, int layer,
                           const float* q, float* k, float* v,
                           float* out) const {
  const LlamaConfig& c = weights_->config;
  const int head_dim = c.head_dim;
  const int heads = c.num_attention_heads;
  const int kv_heads = c.num_key_value_heads;
  const int group = heads / kv_heads;
  const int window = c.sliding_window;
  const int64_t q_dim = static_cast<int64_t>(heads) * head_dim;
  const int64_t kv_dim = static_cast<int64_t>(kv_heads) * head_dim;

  // A chunk's queries read its own keys and values here in k and v, and
  // earlier positions' from its cache; the chunk is stored only once all
  // queries ran, so a windowed cache's ring never loses a key that a query
  // of this chunk still reads, whatever the chunk's length. Rounded first to
  // what the cache keeps, so chunking does not change a bf16 cache's result.
  int64_t row = 0;
  for (const SequenceChunk& chunk : chunks) {
    const int64_t floats = static_cast<int64_t>(chunk.tokens.size()) * kv_dim;
    chunk.cache->RoundAsStored(k + row * kv_dim, floats);
    chunk.cache->RoundAsStored(v + row * kv_dim, floats);
    row += static_cast<int64_t>(chunk.tokens.size());
  }

  // One work item: up to kQueryTile tokens of one chunk against one KV head.
  // The `group` query heads sharing that KV head and the tile's tokens form
  // one query matrix, so scores and output are matrix products that read
  // the head's keys and values once, instead of a matrix-vector product per
  // token and query head.
  constexpr int kQueryTile = 32;
  struct Work {
    const SequenceChunk* chunk;
    int64_t first_row;  // of the chunk's first token in q/k/v/out
    int token0, tokens;
    int kv_head;
  };
  std::vector<Work> work;
  row = 0;
  for (const SequenceChunk& chunk : chunks) {
    const int m = static_cast<int>(chunk.tokens.size());
    for (int t0 = 0; t0 < m; t0 += kQueryTile) {
      for (int h = 0; h < kv_heads; ++h) {
        work.push_back({&chunk, row, t0, std::min(kQueryTile, m - t0), h});
      }
    }
    row += m;
  }
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // Rows of one KV head in k or v: tokens kv_dim apart.
  using ChunkRows = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  ParallelFor(
      tbb::blocked_range<size_t>(0, work.size()), [&](const tbb::blocked_range<size_t>& range) {
        RowMatrix queries, scores, outputs;
        std::vector<float> key_rows, value_rows;  // wrapped or bf16 rows land here
        for (size_t i = range.begin(); i != range.end(); ++i) {
          const Work& w = work[i];
          const int start = w.chunk->start_pos;
          const int pos0 = start + w.token0;
          // Keys of positions [first_key, end) serve the whole tile (earlier
          // tokens mask the tail): [first_key, cached_end) from the cache,
          // the rest from this chunk. Column j holds position first_key + j.
          const int end = pos0 + w.tokens;
          const int first_key = window > 0 ? std::max(0, pos0 - window + 1) : 0;
          const int cached_end = std::max(first_key, start);
          const int cached = cached_end - first_key;
          const int fresh = end - cached_end;
          const int rows = w.tokens * group;
          queries.resize(rows, head_dim);
          for (int t = 0; t < w.tokens; ++t) {
            const float* src = q + (w.first_row + w.token0 + t) * q_dim +
                               static_cast<int64_t>(w.kv_head) * group * head_dim;
            std::copy(src, src + group * head_dim, queries.data() + int64_t{t} * group * head_dim);
          }
          const int64_t fresh_offset =
              (w.first_row + cached_end - start) * kv_dim + int64_t{w.kv_head} * head_dim;
          const ChunkRows fresh_keys(k + fresh_offset, fresh, head_dim, Eigen::OuterStride<>(kv_dim));
          const ChunkRows fresh_values(v + fresh_offset, fresh, head_dim,
                                       Eigen::OuterStride<>(kv_dim));
          scores.resize(rows, cached + fresh);
          scores.rightCols(fresh).noalias() = (queries * fresh_keys.transpose()) * scale;
          if (cached > 0) {
            const ConstRowMatrix keys(
                w.chunk->cache->Keys(layer, w.kv_head, first_key, cached_end, &key_rows), cached,
                head_dim);
            scores.leftCols(cached).noalias() = (queries * keys.transpose()) * scale;
          }
          for (int r = 0; r < rows; ++r) {
            // Keys [first, visible): causal, and within the sliding window.
            const int visible = pos0 + r / group + 1;
            const int first = window > 0 ? std::max(first_key, visible - window) : 0;
            auto row_scores = scores.row(r);
            auto seen = row_scores.segment(first - first_key, visible - first).array();
            seen = (seen - seen.maxCoeff()).exp();
            seen /= seen.sum();
            row_scores.head(first - first_key).setZero();
            row_scores.tail(end - visible).setZero();
          }
          outputs.resize(rows, head_dim);
          outputs.noalias() = scores.rightCols(fresh) * fresh_values;
          if (cached > 0) {
            const ConstRowMatrix values(
                w.chunk->cache->Values(layer, w.kv_head, first_key, cached_end, &value_rows),
                cached, head_dim);
            outputs.noalias() += scores.leftCols(cached) * values;
          }
          for (int t = 0; t < w.tokens; ++t) {
            float* dst = out + (w.first_row + w.token0 + t) * q_dim +
                         static_cast<int64_t>(w.kv_head) * group * head_dim;
            const float* src = outputs.data() + int64_t{t} * group * head_dim;
            std::copy(src, src + group * head_dim, dst);
          }
        }
      });

  // Of a chunk longer than a ring, only the last `slots` positions stay.
  row = 0;
  for (const SequenceChunk& chunk : chunks) {
    const int m = static_cast<int>(chunk.tokens.size());
    for (int t = std::max(0, m - chunk.cache->slots()); t < m; ++t) {
      for (int h = 0; h < kv_heads; ++h) {
        const int64_t offset = (row + t) * kv_dim + int64_t{h} * head_dim;
        chunk.cache->Store(layer, h, chunk.start_pos + t, k + offset, v + offset);
      }
    }
    row += m;
  }
}

struct LlamaModel::Scratch {
  Scratch(const LlamaConfig& c, int64_t n)
      : xb(n * c.hidden_size),
        q(n * c.num_attention_heads * c.head_dim),
        k(n * c.num_key_value_heads * c.head_dim),
        v(n * c.num_key_value_heads * c.head_dim),
        att(n * c.num_attention_heads * c.head_dim),
        proj(n * c.hidden_size),
        gate(n * c.intermediate_size),
        up(n * c.intermediate_size) {
    if (c.spec().fused_projections) {
      const int64_t qkv = int64_t{c.num_attention_heads + 2 * c.num_key_value_heads} * c.head_dim;
      fused.resize(n * std::max<int64_t>(qkv, 2 * int64_t{c.intermediate_size}));
    }
  }
  std::vector<float> xb, q, k, v, att, proj, gate, up;
  std::vector<float> fused;  // a fused projection's output before its split
};

namespace {

void AddBias(const float* bias, int64_t n, int64_t dim, float* y) {
  if (bias == nullptr) return;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] += bias[i];
  }
}

}  // namespace

void LlamaModel::Project(const LlamaLayerWeights& l, LinearRole fused,
                         absl::Span<const LinearRole> parts, const float* in, int64_t n,
                         absl::Span<float* const> outs, std::vector<float>& fused_out) const {
  const LinearWeight& whole = l.linear[fused];
  if (whole.out_features() > 0) {
    const int64_t width = whole.out_features();
    whole.Forward(in, n, fused_out.data());
    AddBias(l.bias[fused], n, width, fused_out.data());
    const std::vector<RowRange> ranges = FusedParts(weights_->config, fused);
    for (size_t p = 0; p < ranges.size(); ++p) {
      for (int64_t r = 0; r < n; ++r) {
        const float* src = fused_out.data() + r * width + ranges[p].first;
        std::copy(src, src + ranges[p].rows, outs[p] + r * ranges[p].rows);
      }
    }
    return;
  }
  std::vector<const LinearWeight*> layers;
  for (LinearRole role : parts) layers.push_back(&l.linear[role]);
  LinearWeight::ForwardShared(layers, in, n, outs);
  for (size_t p = 0; p < parts.size(); ++p) {
    AddBias(l.bias[parts[p]], n, l.linear[parts[p]].out_features(), outs[p]);
  }
}

void LlamaModel::GatedHidden(const LlamaLayerWeights& l, const float* in, int64_t n, float* h,
                             float* up, std::vector<float>& fused_out) const {
  Project(l, kGateUp, {kGate, kUp}, in, n, {h, up}, fused_out);
  const int64_t size = n * weights_->config.intermediate_size;
  for (int64_t i = 0; i < size; ++i) h[i] = Silu(h[i]) * up[i];
}

void LlamaModel::Down(const LlamaLayerWeights& l, const float* in, int64_t n, float* out) const {
  l.linear[kDown].Forward(in, n, out);
  AddBias(l.bias[kDown], n, weights_->config.hidden_size, out);
}

void LlamaModel::MlpOutput(const LlamaLayerWeights& l, BlockPoint from, const float* in,
                           int64_t n, float* out) const {
  std::vector<float> h;
  if (from == BlockPoint::kMlpInput) {
    const int64_t inter = weights_->config.intermediate_size;
    h.resize(n * inter);
    std::vector<float> up(n * inter);
    std::vector<float> fused(n * l.linear[kGateUp].out_features());
    GatedHidden(l, in, n, h.data(), up.data(), fused);
    in = h.data();
  }
  Down(l, in, n, out);
}

void LlamaModel::Block(const LlamaLayerWeights& l, int cache_layer,
                       absl::Span<const SequenceChunk> chunks, float* x, Scratch& s,
                       const BlockObserver& observer, BlockPoint stop_after) const {
  const LlamaConfig& c = weights_->config;
  int64_t n = 0;
  int seq_len = 0;  // the furthest position this pass reaches, for dynamic RoPE
  for (const SequenceChunk& chunk : chunks) {
    n += static_cast<int64_t>(chunk.tokens.size());
    seq_len = std::max(seq_len, chunk.start_pos + static_cast<int>(chunk.tokens.size()));
  }
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = static_cast<int64_t>(c.num_attention_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_key_value_heads) * c.head_dim;
  const int64_t inter = c.intermediate_size;
  // Reports a point; true when the caller asked to stop there.
  auto observe = [&](BlockPoint point, const float* data, int64_t dim) {
    if (observer) observer(point, data, n, dim);
    return point == stop_after;
  };

  for (int64_t r = 0; r < n; ++r) {
    RmsNorm(x + r * hidden, l.norm[kInputNorm], hidden, c.rms_norm_eps,
            s.xb.data() + r * hidden);
  }
  if (observe(BlockPoint::kAttentionInput, s.xb.data(), hidden)) return;
  Project(l, kQkv, {kQ, kK, kV}, s.xb.data(), n, {s.q.data(), s.k.data(), s.v.data()}, s.fused);
  if (l.norm[kQNorm] != nullptr) {
    // Qwen3: every head of q and k is RMS-normalized before RoPE.
    for (int64_t h = 0; h < n * c.num_attention_heads; ++h) {
      float* head = s.q.data() + h * c.head_dim;
      RmsNorm(head, l.norm[kQNorm], c.head_dim, c.rms_norm_eps, head);
    }
    for (int64_t h = 0; h < n * c.num_key_value_heads; ++h) {
      float* head = s.k.data() + h * c.head_dim;
      RmsNorm(head, l.norm[kKNorm], c.head_dim, c.rms_norm_eps, head);
    }
  }
  int64_t row = 0;
  for (const SequenceChunk& chunk : chunks) {
    for (size_t t = 0; t < chunk.tokens.size(); ++t, ++row) {
      const int pos = chunk.start_pos + static_cast<int>(t);
      rope_.Apply(s.q.data() + row * q_dim, c.num_attention_heads, pos, false, seq_len);
      rope_.Apply(s.k.data() + row * kv_dim, c.num_key_value_heads, pos, false, seq_len);
    }
  }
  Attention(chunks, cache_layer, s.q.data(), s.k.data(), s.v.data(), s.att.data());
  if (observe(BlockPoint::kOProjInput, s.att.data(), q_dim)) return;
  l.linear[kO].Forward(s.att.data(), n, s.proj.data());
  AddBias(l.bias[kO], n, hidden, s.proj.data());
  if (observe(BlockPoint::kAttentionOutput, s.proj.data(), hidden)) return;
  for (int64_t i = 0; i < n * hidden; ++i) x[i] += s.proj[i];

  for (int64_t r = 0; r < n; ++r) {
    RmsNorm(x + r * hidden, l.norm[kPostAttentionNorm], hidden, c.rms_norm_eps,
            s.xb.data() + r * hidden);
  }
  if (observe(BlockPoint::kMlpInput, s.xb.data(), hidden)) return;
  GatedHidden(l, s.xb.data(), n, s.gate.data(), s.up.data(), s.fused);
  if (observe(BlockPoint::kDownInput, s.gate.data(), inter)) return;
  Down(l, s.gate.data(), n, s.proj.data());
  if (observe(BlockPoint::kMlpOutput, s.proj.data(), hidden)) return;
  for (int64_t i = 0; i < n * hidden; ++i) x[i] += s.proj[i];
  observe(BlockPoint::kOutput, x, hidden);
}

void LlamaModel::RunBlock(const LlamaLayerWeights& weights, int seqs, int len, float* x,
                          const BlockObserver& observer, BlockPoint stop_after) const {
  // Each sequence gets a cache of one layer, discarded afterwards.
  LlamaConfig one_layer = weights_->config;
  one_layer.num_hidden_layers = 1;
  std::vector<KVCache> caches;
  caches.reserve(seqs);
  std::vector<int> dummy_tokens(len, 0);  // only the count matters inside Block
  std::vector<SequenceChunk> chunks(seqs);
  for (int i = 0; i < seqs; ++i) {
    caches.emplace_back(one_layer, len);
    chunks[i].cache = &caches.back();
    chunks[i].tokens = dummy_tokens;
  }
  Scratch scratch(weights_->config, static_cast<int64_t>(seqs) * len);
  Block(weights, /*cache_layer=*/0, chunks, x, scratch, observer, stop_after);
}

absl::Status LlamaModel::Forward(absl::Span<const SequenceChunk> chunks,
                                 std::vector<float>* logits) const {
  const LlamaConfig& c = weights_->config;
  int64_t n = 0;
  int64_t n_logits = 0;
  for (const SequenceChunk& chunk : chunks) {
    if (chunk.cache == nullptr || chunk.tokens.empty()) {
      return absl::InvalidArgumentError("every chunk needs a KV cache and at least one token");
    }
    const int64_t end = static_cast<int64_t>(chunk.start_pos) + chunk.tokens.size();
    const int context = std::min(chunk.cache->max_positions(), ContextLength(c));
    if (chunk.start_pos < 0 || end > context) {
      return absl::OutOfRangeError(absl::StrCat("positions ", chunk.start_pos, "..", end - 1,
                                                " exceed the context of ", context, " tokens"));
    }
    if (!chunk.cache->CanStartAt(chunk.start_pos)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a chunk starts at position ", chunk.start_pos, " but its KV cache holds positions [",
          chunk.cache->length() - chunk.cache->held(), ", ", chunk.cache->length(), ")"));
    }
    // A chunk reads its cache before any chunk of this pass is stored.
    if (std::count_if(chunks.begin(), chunks.end(), [&](const SequenceChunk& other) {
          return other.cache == chunk.cache;
        }) > 1) {
      return absl::InvalidArgumentError("two chunks of one pass share a KV cache");
    }
    for (int token : chunk.tokens) {
      if (token < 0 || token >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", token, " outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    n += static_cast<int64_t>(chunk.tokens.size());
    n_logits += chunk.all_logits ? static_cast<int64_t>(chunk.tokens.size()) : 1;
  }

  const int64_t hidden = c.hidden_size;
  std::vector<float> x(n * hidden);
  int64_t row = 0;
  for (const SequenceChunk& chunk : chunks) {
    for (int token : chunk.tokens) {
      EmbeddingRow(weights_->embed, token, x.data() + row++ * hidden);
    }
  }
  Scratch scratch(c, n);
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    Block(weights_->layers[layer], layer, chunks, x.data(), scratch, nullptr,
          BlockPoint::kOutput);
  }
  for (const SequenceChunk& chunk : chunks) {
    chunk.cache->set_length(chunk.start_pos + static_cast<int>(chunk.tokens.size()));
  }

  // Final norm only on the rows whose logits are wanted.
  std::vector<float> selected(n_logits * hidden);
  row = 0;
  int64_t out_row = 0;
  for (const SequenceChunk& chunk : chunks) {
    const int64_t count = static_cast<int64_t>(chunk.tokens.size());
    const int64_t first = chunk.all_logits ? row : row + count - 1;
    for (int64_t r = first; r < row + count; ++r) {
      RmsNorm(x.data() + r * hidden, weights_->final_norm, hidden, c.rms_norm_eps,
              selected.data() + out_row++ * hidden);
    }
    row += count;
  }
  logits->resize(n_logits * c.vocab_size);
  weights_->lm_head.Forward(selected.data(), n_logits, logits->data());
  return absl::OkStatus();
}

}  // namespace wq
