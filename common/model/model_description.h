// The tensors of a model, derived from its config and its architecture's row
// in architecture.h: the one list that loading, the forward pass, the
// quantizer, calibration and the artifact writer iterate.
#ifndef WQ_COMMON_MODEL_DESCRIPTION_H_
#define WQ_COMMON_MODEL_DESCRIPTION_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "common/model/architecture.h"
#include "common/model/hf_config.h"

namespace wq {

inline constexpr absl::string_view kEmbedName = "model.embed_tokens";
inline constexpr absl::string_view kFinalNormName = "model.norm";
inline constexpr absl::string_view kLmHeadName = "lm_head";

// "model.layers.<layer>.<name>"
std::string BlockModuleName(int layer, absl::string_view name);

struct BlockLinearSpec {
  LinearRole role;
  int64_t out_features;
  int64_t in_features;
  bool bias;  // "<module>.bias" [out_features] is stored beside the weight
  absl::string_view name() const { return kLinearRoleNames[role]; }
};

struct BlockNormSpec {
  NormRole role;
  int64_t size;
  absl::string_view name() const { return kNormRoleNames[role]; }
};

// The linear layers of every decoder block, in the order a block runs them.
std::vector<BlockLinearSpec> BlockLinears(const LlamaConfig& config);
// The RMSNorm weights of every decoder block.
std::vector<BlockNormSpec> BlockNorms(const LlamaConfig& config);

// Row ranges of a fused projection's outputs: q, k, v of kQkv; gate, up of
// kGateUp. {first_row, rows} per part.
struct RowRange {
  int64_t first;
  int64_t rows;
};
std::vector<RowRange> FusedParts(const LlamaConfig& config, LinearRole fused);

// Every tensor name (with its ".weight"/".bias" suffix) a checkpoint of this
// config holds, lm_head.weight included unless tied and absent.
std::vector<std::string> ExpectedTensorNames(const LlamaConfig& config, bool has_lm_head);

}  // namespace wq

#endif  // WQ_COMMON_MODEL_DESCRIPTION_H_
