#include "bench/synthetic_model.h"

#include <algorithm>
#include <filesystem>
#include <cstring>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/formats/bf16.h"
#include "common/io/file_util.h"
#include "common/io/parallel.h"
#include "common/model/model_description.h"
#include "common/formats/safetensors.h"
#include "common/io/status_macros.h"
#include "nlohmann/json.hpp"

namespace wq::bench {
namespace {

// Values are drawn in chunks, each from its own generator seeded by (seed,
// tensor, chunk), so that generation runs in parallel and stays reproducible.
constexpr int64_t kChunk = int64_t{1} << 20;

std::vector<float> NormalValues(int64_t count, uint64_t seed, uint64_t tensor) {
  std::vector<float> values(count);
  float* out = values.data();
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  ParallelFor(int64_t{0}, chunks, [&](int64_t c) {
    std::seed_seq seq{seed, tensor, static_cast<uint64_t>(c)};
    std::mt19937_64 gen(seq);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (int64_t i = c * kChunk; i < std::min(count, (c + 1) * kChunk); ++i) out[i] = normal(gen);
  });
  return values;
}

struct Shape {
  const char* name;
  Architecture architecture;
  int hidden, intermediate, layers, heads, kv_heads, vocab, max_positions;
  float rms_norm_eps, rope_theta;
  bool tie_word_embeddings;
  int sliding_window;
  RopeScaling rope_scaling;
};

// Hugging Face's published config.json values of each model.
const Shape kShapes[] = {
    {"llama-110m", Architecture::kLlama, 768, 2048, 12, 12, 12, 32000, 2048, 1e-6f, 1e4f, false,
     0, {}},
    {"tinyllama-1.1b", Architecture::kLlama, 2048, 5632, 22, 32, 4, 32000, 2048, 1e-5f, 1e4f,
     false, 0, {}},
    {"llama-3.2-1b", Architecture::kLlama, 2048, 8192, 16, 32, 8, 128256, 131072, 1e-5f, 5e5f,
     true, 0, {RopeScaling::Type::kLlama3, 32.0f, 1.0f, 4.0f, 8192}},
    {"llama-2-7b", Architecture::kLlama, 4096, 11008, 32, 32, 32, 32000, 4096, 1e-5f, 1e4f,
     false, 0, {}},
    {"mistral-7b", Architecture::kMistral, 4096, 14336, 32, 32, 8, 32000, 32768, 1e-5f, 1e4f,
     false, 4096, {}},
    {"qwen2.5-0.5b", Architecture::kQwen2, 896, 4864, 24, 14, 2, 151936, 32768, 1e-6f, 1e6f, true,
     0, {}},
    {"qwen2.5-7b", Architecture::kQwen2, 3584, 18944, 28, 28, 4, 152064, 32768, 1e-6f, 1e6f,
     false, 0, {}},
};

std::string DTypeTorchName(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

// `count` values of normal(0, 0.02) (or all `fill` when set) as `dtype` bytes.
std::string TensorBytes(int64_t count, DType dtype, uint64_t seed, uint64_t tensor,
                        std::optional<float> fill) {
  std::vector<float> values(count, fill.value_or(0.0f));
  if (!fill.has_value()) values = NormalValues(count, seed, tensor);
  const size_t width = DTypeSize(dtype);
  std::string bytes(static_cast<size_t>(count) * width, '\0');
  ParallelFor(int64_t{0}, count, [&](int64_t i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + i * 4, &values[i], 4);
    } else {
      const uint16_t half =
          dtype == DType::kF16 ? FloatToF16(values[i]) : FloatToBf16(values[i]);
      std::memcpy(bytes.data() + i * 2, &half, 2);
    }
  });
  return bytes;
}

}  // namespace

std::vector<std::string> SyntheticShapeNames() {
  std::vector<std::string> names;
  for (const Shape& s : kShapes) names.push_back(s.name);
  return names;
}

absl::StatusOr<LlamaConfig> SyntheticShape(const std::string& name) {
  for (const Shape& s : kShapes) {
    if (name != s.name) continue;
    LlamaConfig c;
    c.architecture = s.architecture;
    c.hidden_size = s.hidden;
    c.intermediate_size = s.intermediate;
    c.num_hidden_layers = s.layers;
    c.num_attention_heads = s.heads;
    c.num_key_value_heads = s.kv_heads;
    c.head_dim = s.hidden / s.heads;
    c.vocab_size = s.vocab;
    c.max_position_embeddings = s.max_positions;
    c.rms_norm_eps = s.rms_norm_eps;
    c.rope_theta = s.rope_theta;
    c.tie_word_embeddings = s.tie_word_embeddings;
    c.sliding_window = s.sliding_window;
    c.rope_scaling = s.rope_scaling;
    c.torch_dtype = "float32";
    return c;
  }
  return absl::NotFoundError(absl::StrCat("unknown shape \"", name, "\"; known: ",
                                          absl::StrJoin(SyntheticShapeNames(), ", ")));
}

absl::Status WriteSyntheticModel(const LlamaConfig& config, const SyntheticOptions& options,
                                 const std::string& tokenizer_model,
                                 const std::string& out_dir) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16 &&
      options.dtype != DType::kF16) {
    return absl::InvalidArgumentError("synthetic weights are F32, BF16 or F16");
  }
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  LlamaConfig c = config;
  c.torch_dtype = DTypeTorchName(options.dtype);

  // Every tensor in description order, with its shape and whether it is a
  // norm (filled with 1.0).
  struct Planned {
    std::string name;
    std::vector<int64_t> shape;
    bool norm;
  };
  std::vector<Planned> plan;
  const int64_t hidden = c.hidden_size;
  plan.push_back({absl::StrCat(kEmbedName, ".weight"), {c.vocab_size, hidden}, false});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    for (const BlockNormSpec& norm : BlockNorms(c)) {
      plan.push_back({absl::StrCat(BlockModuleName(i, norm.name()), ".weight"), {norm.size}, true});
    }
    for (const BlockLinearSpec& linear : BlockLinears(c)) {
      const std::string module = BlockModuleName(i, linear.name());
      plan.push_back({absl::StrCat(module, ".weight"), {linear.out_features, linear.in_features},
                      false});
      if (linear.bias) plan.push_back({absl::StrCat(module, ".bias"), {linear.out_features}, false});
    }
  }
  plan.push_back({absl::StrCat(kFinalNormName, ".weight"), {hidden}, true});
  if (!c.tie_word_embeddings) {
    plan.push_back({absl::StrCat(kLmHeadName, ".weight"), {c.vocab_size, hidden}, false});
  }

  // Tensors go into shards in order; a shard closes before it would exceed
  // shard_bytes.
  const size_t width = DTypeSize(options.dtype);
  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_size = 0;
  for (size_t t = 0; t < plan.size(); ++t) {
    int64_t bytes = static_cast<int64_t>(width);
    for (int64_t d : plan[t].shape) bytes *= d;
    if (options.shard_bytes > 0 && shard_size > 0 && shard_size + bytes > options.shard_bytes) {
      shards.emplace_back();
      shard_size = 0;
    }
    shards.back().push_back(t);
    shard_size += bytes;
  }
  const bool sharded = options.shard_bytes > 0;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file =
        sharded ? absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size())
                : std::string("model.safetensors");
    SafetensorsWriter writer(absl::StrCat(out_dir, "/.", file, ".spill"));
    writer.SetMetadata("format", "pt");
    for (size_t t : shards[s]) {
      const Planned& p = plan[t];
      int64_t count = 1;
      for (int64_t d : p.shape) count *= d;
      RETURN_IF_ERROR(writer.AddTensor(
          p.name, options.dtype, p.shape,
          TensorBytes(count, options.dtype, options.seed, t,
                      p.norm ? std::optional<float>(1.0f) : std::nullopt)));
      weight_map[p.name] = file;
    }
    RETURN_IF_ERROR(writer.Write(absl::StrCat(out_dir, "/", file)));
  }
  if (sharded) {
    const nlohmann::json index = {{"metadata", nlohmann::json::object()},
                                  {"weight_map", weight_map}};
    RETURN_IF_ERROR(
        WriteFileDurably(out_dir + "/model.safetensors.index.json", index.dump(2)));
  }
  RETURN_IF_ERROR(WriteFileDurably(out_dir + "/config.json", LlamaConfigToJson(c)));
  if (tokenizer_model.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string tokenizer, ReadFile(tokenizer_model));
  return WriteFileDurably(out_dir + "/tokenizer.model", tokenizer);
}

}  // namespace wq::bench
