#include "bench/synthetic_model.h"

#include <algorithm>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/model_description.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "tbb/parallel_for.h"

namespace wq::bench {
namespace {

// Values are drawn in chunks, each from its own generator seeded by (seed,
// tensor, chunk), so that generation runs in parallel and stays reproducible.
constexpr int64_t kChunk = int64_t{1} << 20;

std::string NormalBytes(int64_t count, uint64_t seed, uint64_t tensor) {
  std::string bytes(static_cast<size_t>(count) * sizeof(float), '\0');
  float* out = reinterpret_cast<float*>(bytes.data());
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  tbb::parallel_for(int64_t{0}, chunks, [&](int64_t c) {
    std::seed_seq seq{seed, tensor, static_cast<uint64_t>(c)};
    std::mt19937_64 gen(seq);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (int64_t i = c * kChunk; i < std::min(count, (c + 1) * kChunk); ++i) out[i] = normal(gen);
  });
  return bytes;
}

}  // namespace

std::vector<std::string> SyntheticShapeNames() { return {"tinyllama-1.1b", "llama-110m"}; }

absl::StatusOr<LlamaConfig> SyntheticShape(const std::string& name) {
  LlamaConfig c;
  if (name == "tinyllama-1.1b") {
    c.hidden_size = 2048;
    c.intermediate_size = 5632;
    c.num_hidden_layers = 22;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 4;
    c.rms_norm_eps = 1e-5f;
  } else if (name == "llama-110m") {
    c.hidden_size = 768;
    c.intermediate_size = 2048;
    c.num_hidden_layers = 12;
    c.num_attention_heads = 12;
    c.num_key_value_heads = 12;
  } else {
    return absl::NotFoundError(
        absl::StrCat("unknown shape \"", name, "\"; known: tinyllama-1.1b, llama-110m"));
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.vocab_size = 32000;
  c.max_position_embeddings = 2048;
  c.tie_word_embeddings = false;
  c.torch_dtype = "float32";
  return c;
}

absl::Status WriteSyntheticModel(const LlamaConfig& c, uint64_t seed,
                                 const std::string& tokenizer_model,
                                 const std::string& out_dir) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  const int64_t hidden = c.hidden_size;

  SafetensorsWriter writer;
  uint64_t tensor = 0;
  auto add_normal = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    return writer.AddTensor(name, DType::kF32, std::move(shape),
                            NormalBytes(count, seed, tensor++));
  };
  auto add_norm = [&](const std::string& name, int64_t size) {
    return writer.AddF32(name, {size}, std::vector<float>(size, 1.0f));
  };
  RETURN_IF_ERROR(add_normal(absl::StrCat(kEmbedName, ".weight"), {c.vocab_size, hidden}));
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    for (const BlockNormSpec& norm : BlockNorms(c)) {
      RETURN_IF_ERROR(add_norm(absl::StrCat(BlockModuleName(i, norm.name()), ".weight"), norm.size));
    }
    for (const BlockLinearSpec& linear : BlockLinears(c)) {
      const std::string module = BlockModuleName(i, linear.name());
      RETURN_IF_ERROR(
          add_normal(absl::StrCat(module, ".weight"), {linear.out_features, linear.in_features}));
      if (linear.bias) RETURN_IF_ERROR(add_normal(absl::StrCat(module, ".bias"), {linear.out_features}));
    }
  }
  RETURN_IF_ERROR(add_norm(absl::StrCat(kFinalNormName, ".weight"), hidden));
  RETURN_IF_ERROR(add_normal(absl::StrCat(kLmHeadName, ".weight"), {c.vocab_size, hidden}));
  RETURN_IF_ERROR(writer.Write(out_dir + "/model.safetensors"));
  RETURN_IF_ERROR(WriteFileDurably(out_dir + "/config.json", LlamaConfigToJson(c)));
  ASSIGN_OR_RETURN(std::string tokenizer, ReadFile(tokenizer_model));
  return WriteFileDurably(out_dir + "/tokenizer.model", tokenizer);
}

}  // namespace wq::bench
