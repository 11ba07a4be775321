#include "common/model/model_description.h"

#include "absl/strings/str_cat.h"

namespace wq {

std::string BlockModuleName(int layer, absl::string_view name) {
  return absl::StrCat("model.layers.", layer, ".", name);
}

std::vector<BlockLinearSpec> BlockLinears(const LlamaConfig& c) {
  const ArchitectureSpec& spec = c.spec();
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = static_cast<int64_t>(c.num_attention_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_key_value_heads) * c.head_dim;
  const int64_t inter = c.intermediate_size;
  const bool qkv_bias = spec.qkv_bias || c.attention_bias;
  std::vector<BlockLinearSpec> linears;
  if (spec.fused_projections) {
    linears.push_back({kQkv, q_dim + 2 * kv_dim, hidden, qkv_bias});
  } else {
    linears.push_back({kQ, q_dim, hidden, qkv_bias});
    linears.push_back({kK, kv_dim, hidden, qkv_bias});
    linears.push_back({kV, kv_dim, hidden, qkv_bias});
  }
  linears.push_back({kO, hidden, q_dim, c.attention_bias});
  if (spec.fused_projections) {
    linears.push_back({kGateUp, 2 * inter, hidden, c.mlp_bias});
  } else {
    linears.push_back({kGate, inter, hidden, c.mlp_bias});
    linears.push_back({kUp, inter, hidden, c.mlp_bias});
  }
  linears.push_back({kDown, hidden, inter, c.mlp_bias});
  return linears;
}

std::vector<BlockNormSpec> BlockNorms(const LlamaConfig& c) {
  std::vector<BlockNormSpec> norms = {{kInputNorm, c.hidden_size},
                                      {kPostAttentionNorm, c.hidden_size}};
  if (c.spec().qk_norm) {
    norms.push_back({kQNorm, c.head_dim});
    norms.push_back({kKNorm, c.head_dim});
  }
  return norms;
}

std::vector<RowRange> FusedParts(const LlamaConfig& c, LinearRole fused) {
  if (fused == kGateUp) {
    return {{0, c.intermediate_size}, {c.intermediate_size, c.intermediate_size}};
  }
  const int64_t q_dim = static_cast<int64_t>(c.num_attention_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_key_value_heads) * c.head_dim;
  return {{0, q_dim}, {q_dim, kv_dim}, {q_dim + kv_dim, kv_dim}};
}

std::vector<std::string> ExpectedTensorNames(const LlamaConfig& c, bool has_lm_head) {
  std::vector<std::string> names = {absl::StrCat(kEmbedName, ".weight"),
                                    absl::StrCat(kFinalNormName, ".weight")};
  if (has_lm_head) names.push_back(absl::StrCat(kLmHeadName, ".weight"));
  const std::vector<BlockLinearSpec> linears = BlockLinears(c);
  const std::vector<BlockNormSpec> norms = BlockNorms(c);
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    for (const BlockNormSpec& n : norms) {
      names.push_back(absl::StrCat(BlockModuleName(layer, n.name()), ".weight"));
    }
    for (const BlockLinearSpec& l : linears) {
      const std::string module = BlockModuleName(layer, l.name());
      names.push_back(absl::StrCat(module, ".weight"));
      if (l.bias) names.push_back(absl::StrCat(module, ".bias"));
    }
  }
  return names;
}

}  // namespace wq
