// A model directory's checkpoint rounded to bf16 or f16, for tests of half
// precision checkpoints against their fp32 values.
#ifndef WQ_TESTS_ROUNDED_CHECKPOINT_H_
#define WQ_TESTS_ROUNDED_CHECKPOINT_H_

#include <string>

#include "absl/status/status.h"
#include "common/formats/safetensors.h"

namespace wq {

// Writes `dir` holding src_dir's config.json (and tokenizer.model, if it has
// one) and the tensors of its model.safetensors rounded to `half` (kBF16 or
// kF16, nearest even): stored as `half` in two shards with
// model.safetensors.index.json when `sharded`, else as their fp32 values in
// one model.safetensors.
absl::Status WriteRoundedCopy(const std::string& src_dir, const std::string& dir, DType half,
                              bool sharded);

}  // namespace wq

#endif  // WQ_TESTS_ROUNDED_CHECKPOINT_H_
