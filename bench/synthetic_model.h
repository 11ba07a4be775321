// Hugging Face format Llama model directories with random weights in real
// model shapes, for speed measurements where only the shapes matter.
#ifndef WQ_BENCH_SYNTHETIC_MODEL_H_
#define WQ_BENCH_SYNTHETIC_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/hf_config.h"

namespace wq::bench {

// "tinyllama-1.1b" or "llama-110m"; NOT_FOUND for anything else.
absl::StatusOr<LlamaConfig> SyntheticShape(const std::string& name);
std::vector<std::string> SyntheticShapeNames();

// Writes config.json, model.safetensors (fp32: linears and embeddings
// normal(0, 0.02) from `seed`, norms 1.0) and a copy of `tokenizer_model`
// into out_dir (created if needed). The same seed gives the same bytes.
absl::Status WriteSyntheticModel(const LlamaConfig& config, uint64_t seed,
                                 const std::string& tokenizer_model,
                                 const std::string& out_dir);

}  // namespace wq::bench

#endif  // WQ_BENCH_SYNTHETIC_MODEL_H_
