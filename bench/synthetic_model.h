// Hugging Face format model directories with random weights in real model
// shapes, for speed and memory measurements where only the shapes matter.
#ifndef WQ_BENCH_SYNTHETIC_MODEL_H_
#define WQ_BENCH_SYNTHETIC_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/hf_config.h"
#include "common/formats/safetensors.h"

namespace wq::bench {

// The config of a named shape (SyntheticShapeNames()); NOT_FOUND otherwise.
absl::StatusOr<LlamaConfig> SyntheticShape(const std::string& name);
std::vector<std::string> SyntheticShapeNames();

struct SyntheticOptions {
  uint64_t seed = 1;
  DType dtype = DType::kF32;  // kF32, kBF16 or kF16 (round to nearest even)
  // 0: one model.safetensors; else shards of at most this many bytes (a
  // tensor larger than that gets a shard of its own) and
  // model.safetensors.index.json, as Hugging Face writes them.
  int64_t shard_bytes = 0;
};

// Writes config.json, the weights (linears, embeddings and biases
// normal(0, 0.02) from the seed, norms 1.0) and a copy of `tokenizer_model`
// (none when empty: the caller brings its own tokenizer files) into out_dir (created if needed), in the tensor order of the model
// description, spilling to disk so that memory holds one tensor at a time.
// The same options give the same bytes.
absl::Status WriteSyntheticModel(const LlamaConfig& config, const SyntheticOptions& options,
                                 const std::string& tokenizer_model,
                                 const std::string& out_dir);

}  // namespace wq::bench

#endif  // WQ_BENCH_SYNTHETIC_MODEL_H_
