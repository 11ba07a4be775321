// What the model-level tests share: greedy decoding through the engine's KV
// cache, every position's logits of a sequence, and one generation through
// the real scheduler.
#ifndef WQ_TESTS_MODEL_TEST_UTIL_H_
#define WQ_TESTS_MODEL_TEST_UTIL_H_

#include <string>
#include <vector>

#include "common/model/llama.h"
#include "common/serving/scheduler.h"

namespace wq::test {

// The greedy continuation of `prompt`, `tokens` long: the prompt in one
// chunk, then one token per step through the KV cache. When `step_logits` is
// given, each step's logits (vocab floats) are appended to it.
std::vector<int> GreedyTokens(const LlamaModel& model, const std::vector<int>& prompt,
                              int tokens, std::vector<float>* step_logits = nullptr);

// The logits of every position of `ids`, fed as one chunk into a fresh cache.
std::vector<float> SequenceLogits(const LlamaModel& model, const std::vector<int>& ids);

// `prompt` submitted to `scheduler` with `params`; waits for and returns its
// result (empty, with a test failure, when the submit is refused).
GenerationResult GenerateAndWait(GenerationScheduler& scheduler, const std::string& prompt,
                                 const GenerationParams& params);

}  // namespace wq::test

#endif  // WQ_TESTS_MODEL_TEST_UTIL_H_
