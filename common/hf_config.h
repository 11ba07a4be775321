// Hugging Face config.json for Llama-architecture models: parsing with HF's
// defaults, validation of everything the inference engine relies on, and
// serialisation back to HF-style JSON.
#ifndef WQ_COMMON_HF_CONFIG_H_
#define WQ_COMMON_HF_CONFIG_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace wq {

struct LlamaConfig {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // Defaults to num_attention_heads.
  int head_dim = 0;  // Defaults to hidden_size / num_attention_heads.
  int vocab_size = 0;
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  bool tie_word_embeddings = false;
  int bos_token_id = 1;
  int eos_token_id = 2;
  std::string torch_dtype;  // E.g. "float32"; empty when absent.
};

// Every size must be below this; larger values are corrupt configs that would
// otherwise turn into enormous allocations.
inline constexpr int kMaxLlamaConfigDim = 1 << 20;

// INVALID_ARGUMENT for malformed JSON, wrong field types or inconsistent
// sizes; UNIMPLEMENTED for non-Llama architectures and rope_scaling.
absl::StatusOr<LlamaConfig> ParseLlamaConfig(std::string_view json);
// Reads and parses a config.json; errors name the file.
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& path);
// HF-style config.json text (architectures ["LlamaForCausalLM"], model_type
// "llama"); ParseLlamaConfig reads it back to an equal config.
std::string LlamaConfigToJson(const LlamaConfig& config);

}  // namespace wq

#endif  // WQ_COMMON_HF_CONFIG_H_
