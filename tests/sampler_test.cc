// Sampler on hand-made logits: top-k, top-p, the repetition penalty, OpenAI's
// presence and frequency penalties, and the log-probabilities it reports.
#include "common/serving/sampler.h"

#include <cmath>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace wq {
namespace {

// Greedy picks of `steps` tokens from the same logits each step, as a model
// that always predicts the same would.
std::vector<int> GreedyPicks(const SamplingOptions& options, const std::vector<float>& logits,
                             int steps, const std::vector<int>& prompt = {}) {
  Sampler sampler(options);
  std::vector<int> history = prompt;
  std::vector<int> picks;
  for (int i = 0; i < steps; ++i) {
    picks.push_back(sampler.Sample(logits, history).id);
    history.push_back(picks.back());
  }
  return picks;
}

TEST(SamplerTest, PresencePenaltyIsPaidOncePerGeneratedId) {
  SamplingOptions options;
  options.presence_penalty = 0.2f;
  // 1.0 - 0.2 stays above 0.7 however often id 0 is picked.
  EXPECT_EQ(GreedyPicks(options, {1.0f, 0.7f}, 4), (std::vector<int>{0, 0, 0, 0}));
  // ...but not above 0.9; once both paid, 0.8 beats 0.7 for good.
  EXPECT_EQ(GreedyPicks(options, {1.0f, 0.9f, 0.0f}, 4), (std::vector<int>{0, 1, 0, 0}));
}

TEST(SamplerTest, FrequencyPenaltyGrowsWithEachRepeat) {
  SamplingOptions options;
  options.frequency_penalty = 0.2f;
  // id 0: 1.0, then 0.8 (> 0.7), then 0.6 (< 0.7); id 1 then pays 0.2 too.
  EXPECT_EQ(GreedyPicks(options, {1.0f, 0.7f}, 4), (std::vector<int>{0, 0, 1, 0}));
}

TEST(SamplerTest, NegativePenaltiesFavourRepeats) {
  SamplingOptions options;
  options.presence_penalty = -0.5f;
  // Tied logits: the lower id wins the first pick, then keeps winning.
  EXPECT_EQ(GreedyPicks(options, {0.0f, 0.0f}, 3), (std::vector<int>{0, 0, 0}));
  EXPECT_EQ(GreedyPicks(options, {0.0f, 0.3f}, 3), (std::vector<int>{1, 1, 1}));
}

TEST(SamplerTest, PromptIdsAreNotPenalised) {
  SamplingOptions options;
  options.presence_penalty = 2.0f;
  options.frequency_penalty = 2.0f;
  EXPECT_EQ(GreedyPicks(options, {1.0f, 0.0f}, 2, /*prompt=*/{0, 0, 0}),
            (std::vector<int>{0, 1}));
}

TEST(SamplerTest, LogprobsAreTheModelsWhateverTheSampling) {
  const std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f, 0.5f};
  double sum = 0;
  for (float l : logits) sum += std::exp(l);
  auto log_softmax = [&](int id) { return logits[id] - std::log(sum); };

  SamplingOptions options;
  options.temperature = 0.7f;
  options.top_k = 2;
  options.frequency_penalty = 1.5f;
  options.top_logprobs = 4;
  options.seed = 7;
  Sampler sampler(options);
  for (int step = 0; step < 5; ++step) {
    const SampledToken token = sampler.Sample(logits, {});
    EXPECT_NEAR(token.logprob, log_softmax(token.id), 1e-5);
    ASSERT_EQ(token.top.size(), 4u);
    // Most likely first; equal logits by id.
    const int expected_order[] = {3, 0, 2, 4};
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(token.top[i].id, expected_order[i]);
      EXPECT_NEAR(token.top[i].logprob, log_softmax(expected_order[i]), 1e-5);
    }
  }
}

TEST(SamplerTest, TopLogprobsBeyondTheVocabularyListEveryId) {
  SamplingOptions options;
  options.top_logprobs = kMaxTopLogprobs;
  Sampler sampler(options);
  const SampledToken token = sampler.Sample(std::vector<float>{0.0f, 1.0f, 2.0f}, {});
  EXPECT_EQ(token.id, 2);
  ASSERT_EQ(token.top.size(), 3u);
  double mass = 0;
  for (const TokenLogprob& t : token.top) mass += std::exp(t.logprob);
  EXPECT_NEAR(mass, 1.0, 1e-5);
  EXPECT_TRUE(Sampler(SamplingOptions()).Sample(std::vector<float>{0.0f, 1.0f}, {}).top.empty());
}

TEST(SamplerTest, SeedsGiveIndependentSamples) {
  const std::vector<float> logits(50, 0.0f);  // uniform
  SamplingOptions options;
  options.temperature = 1.0f;
  auto draw = [&](uint64_t seed) {
    options.seed = seed;
    Sampler sampler(options);
    std::vector<int> ids;
    for (int i = 0; i < 8; ++i) ids.push_back(sampler.Sample(logits, {}).id);
    return ids;
  };
  EXPECT_EQ(draw(1), draw(1));
  EXPECT_NE(draw(1), draw(2));
}

TEST(SamplerTest, ValidationNamesTheFieldAndRange) {
  SamplingOptions options;
  EXPECT_TRUE(ValidateSamplingOptions(options).ok());
  options.presence_penalty = 2.5f;
  EXPECT_EQ(ValidateSamplingOptions(options).message(),
            "presence_penalty must be in [-2, 2], got 2.5");
  options.presence_penalty = -2.0f;
  options.frequency_penalty = NAN;
  EXPECT_EQ(ValidateSamplingOptions(options).code(), absl::StatusCode::kInvalidArgument);
  options.frequency_penalty = 2.0f;
  options.top_logprobs = 21;
  EXPECT_EQ(ValidateSamplingOptions(options).message(), "top_logprobs must be in [0, 20], got 21");
  options.top_logprobs = 20;
  EXPECT_TRUE(ValidateSamplingOptions(options).ok());
}

// The ids drawn by `draws` samplers of different seeds from the same logits.
std::set<int> Drawn(SamplingOptions options, const std::vector<float>& logits, int draws) {
  std::set<int> ids;
  for (int seed = 1; seed <= draws; ++seed) {
    options.seed = seed;
    ids.insert(Sampler(options).Sample(logits, {}).id);
  }
  return ids;
}

TEST(SamplerTest, TopKKeepsTheKMostLikely) {
  SamplingOptions options;
  options.temperature = 1.0f;
  const std::vector<float> logits = {0.0f, 2.0f, 1.9f, 0.1f, 1.8f};
  options.top_k = 3;
  EXPECT_EQ(Drawn(options, logits, 300), (std::set<int>{1, 2, 4}));
  options.top_k = 1;
  EXPECT_EQ(Drawn(options, logits, 50), (std::set<int>{1}));
  options.top_k = 0;  // all tokens
  EXPECT_EQ(Drawn(options, logits, 500).size(), logits.size());
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingTheMass) {
  SamplingOptions options;
  options.temperature = 1.0f;
  // Probabilities 0.5, 0.3, 0.15, 0.05.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  options.top_p = 0.75f;  // 0.5 + 0.3 reach it
  EXPECT_EQ(Drawn(options, logits, 300), (std::set<int>{0, 1}));
  options.top_p = 0.4f;  // the first alone
  EXPECT_EQ(Drawn(options, logits, 50), (std::set<int>{0}));
  options.top_p = 0.9f;
  EXPECT_EQ(Drawn(options, logits, 300), (std::set<int>{0, 1, 2}));
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplingOptions options;
  options.repetition_penalty = 2.0f;
  // In the history, 3.0 becomes 1.5 (< 2.0): id 1 wins.
  EXPECT_EQ(GreedyPicks(options, {3.0f, 2.0f}, 1, /*prompt=*/{0}), (std::vector<int>{1}));
  // -1.0 becomes -2.0 (< -1.5): id 1 wins; without the penalty id 0 would.
  EXPECT_EQ(GreedyPicks(options, {-1.0f, -1.5f}, 1, /*prompt=*/{0}), (std::vector<int>{1}));
  options.repetition_penalty = 1.0f;
  EXPECT_EQ(GreedyPicks(options, {-1.0f, -1.5f}, 1, /*prompt=*/{0}), (std::vector<int>{0}));
}

}  // namespace
}  // namespace wq
