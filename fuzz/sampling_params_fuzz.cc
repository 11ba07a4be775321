// The inference service's request validation: SamplingParams as they arrive
// over gRPC (binary protobuf). What ToGenerationParams accepts must be in the
// documented ranges, NaN and infinities included.
#include <cmath>
#include <cstdint>

#include "inference_service/inference_service.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  wq::v1::SamplingParams sampling;
  if (!sampling.ParseFromArray(data, static_cast<int>(size))) return 0;
  const wq::InferenceLimits limits;
  auto params = wq::ToGenerationParams(sampling, limits);
  if (!params.ok()) return 0;
  const wq::SamplingOptions& s = params->sampling;
  const bool in_range = std::isfinite(s.temperature) && s.temperature >= 0 && s.top_k >= 0 &&
                        s.top_p > 0 && s.top_p <= 1 && std::isfinite(s.repetition_penalty) &&
                        s.repetition_penalty > 0 && params->max_new_tokens >= 1 &&
                        params->max_new_tokens <= limits.max_new_tokens_cap &&
                        static_cast<int>(params->stop_sequences.size()) <= limits.max_stop_sequences;
  if (!in_range) __builtin_trap();
  for (const auto& stop : params->stop_sequences) {
    if (stop.empty()) __builtin_trap();
  }
  return 0;
}
