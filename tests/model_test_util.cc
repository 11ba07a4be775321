#include "tests/model_test_util.h"

#include <algorithm>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace wq::test {

std::vector<int> GreedyTokens(const LlamaModel& model, const std::vector<int>& prompt,
                              int tokens, std::vector<float>* step_logits) {
  KVCache cache(model.config(), static_cast<int>(prompt.size()) + tokens);
  std::vector<int> seq = prompt;
  std::vector<float> logits;
  const int vocab = model.config().vocab_size;
  int start = 0;
  for (int step = 0; step < tokens; ++step) {
    SequenceChunk chunk;
    chunk.cache = &cache;
    chunk.tokens = absl::MakeConstSpan(seq).subspan(start);
    chunk.start_pos = start;
    const absl::Status status = model.Forward({&chunk, 1}, &logits);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) break;
    if (step_logits != nullptr) {
      step_logits->insert(step_logits->end(), logits.begin(), logits.begin() + vocab);
    }
    start = static_cast<int>(seq.size());
    seq.push_back(static_cast<int>(std::max_element(logits.begin(), logits.begin() + vocab) -
                                   logits.begin()));
  }
  return std::vector<int>(seq.begin() + prompt.size(), seq.end());
}

std::vector<float> SequenceLogits(const LlamaModel& model, const std::vector<int>& ids) {
  KVCache cache(model.config(), static_cast<int>(ids.size()));
  SequenceChunk chunk;
  chunk.cache = &cache;
  chunk.tokens = ids;
  chunk.all_logits = true;
  std::vector<float> logits;
  const absl::Status status = model.Forward({&chunk, 1}, &logits);
  EXPECT_TRUE(status.ok()) << status;
  return logits;
}

GenerationResult GenerateAndWait(GenerationScheduler& scheduler, const std::string& prompt,
                                 const GenerationParams& params) {
  absl::Notification done;
  GenerationResult result;
  auto handle = scheduler.Submit(prompt, params, {nullptr, [&](const GenerationResult& r) {
                                                    result = r;
                                                    done.Notify();
                                                  }});
  EXPECT_TRUE(handle.ok()) << handle.status();
  if (handle.ok()) done.WaitForNotification();
  return result;
}

}  // namespace wq::test
