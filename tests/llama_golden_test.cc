// The fp32 engine against golden.json: logits computed in float64 by an
// independent implementation, and its 32 greedy tokens.
#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "common/model/llama.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"
#include "tests/test_util.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

class LlamaGoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto weights = LoadLlamaModelDir(test::kStoriesDir);
    ASSERT_TRUE(weights.ok()) << weights.status();
    model_ = std::make_unique<LlamaModel>(*weights);
    golden_ = test::ReadJson(std::string(test::kStoriesDir) + "/golden.json");
    prompt_ = golden_["prompt_ids"].get<std::vector<int>>();
    greedy_ = golden_["greedy_ids"].get<std::vector<int>>();
  }

  std::unique_ptr<LlamaModel> model_;
  nlohmann::json golden_;
  std::vector<int> prompt_, greedy_;
};

TEST_F(LlamaGoldenTest, LogitsMatchAtEveryStoredPosition) {
  std::vector<int> seq = prompt_;
  seq.insert(seq.end(), greedy_.begin(), greedy_.end());
  const auto& expected = golden_["logits"];
  const int positions = static_cast<int>(expected.size());
  ASSERT_EQ(positions, 8);
  seq.resize(positions);
  const std::vector<float> logits = test::SequenceLogits(*model_, seq);
  const int vocab = model_->config().vocab_size;
  double worst = 0;
  for (int p = 0; p < positions; ++p) {
    ASSERT_EQ(expected[p].size(), static_cast<size_t>(vocab));
    for (int i = 0; i < vocab; ++i) {
      const double diff = std::abs(logits[p * vocab + i] - expected[p][i].get<double>());
      worst = std::max(worst, diff);
      ASSERT_LT(diff, 1e-4) << "position " << p << " token " << i;
    }
  }
  std::printf("max |logit - golden| over %d positions: %.2e\n", positions, worst);
}

TEST_F(LlamaGoldenTest, GreedyTokensMatchExactly) {
  EXPECT_EQ(test::GreedyTokens(*model_, prompt_, static_cast<int>(greedy_.size())), greedy_);
}

TEST_F(LlamaGoldenTest, BatchedSequencesMatchSeparateRuns) {
  // Two sequences of different lengths in one pass equal two separate passes.
  std::vector<int> a = prompt_;
  std::vector<int> b(greedy_.begin(), greedy_.begin() + 9);
  b.insert(b.begin(), 1);
  KVCache ca(model_->config(), 32), cb(model_->config(), 32), cs(model_->config(), 32);
  SequenceChunk chunks[2];
  chunks[0].cache = &ca;
  chunks[0].tokens = a;
  chunks[1].cache = &cb;
  chunks[1].tokens = b;
  chunks[1].all_logits = true;
  std::vector<float> batched, single;
  ASSERT_TRUE(model_->Forward(chunks, &batched).ok());
  SequenceChunk alone;
  alone.cache = &cs;
  alone.tokens = b;
  alone.all_logits = true;
  ASSERT_TRUE(model_->Forward({&alone, 1}, &single).ok());
  const int vocab = model_->config().vocab_size;
  ASSERT_EQ(batched.size(), (1 + b.size()) * vocab);
  for (size_t i = 0; i < single.size(); ++i) {
    ASSERT_NEAR(batched[vocab + i], single[i], 1e-4);  // GEMM blocking differs with n
  }
}

TEST_F(LlamaGoldenTest, ChunkedPrefillMatchesOneTokenAtATime) {
  // A chunk of several attention query tiles (32 tokens each) after a first
  // chunk: every token sees exactly the keys up to its own position.
  std::vector<int> seq;
  for (int i = 0; seq.size() < 90; ++i) seq.push_back(1 + (i * 37) % 511);
  const int first = 11;
  const int vocab = model_->config().vocab_size;
  KVCache chunked_cache(model_->config(), 128), step_cache(model_->config(), 128);
  std::vector<float> logits, chunked;
  SequenceChunk head;
  head.cache = &chunked_cache;
  head.tokens = absl::MakeConstSpan(seq).subspan(0, first);
  ASSERT_TRUE(model_->Forward({&head, 1}, &logits).ok());
  SequenceChunk rest;
  rest.cache = &chunked_cache;
  rest.tokens = absl::MakeConstSpan(seq).subspan(first);
  rest.start_pos = first;
  rest.all_logits = true;
  ASSERT_TRUE(model_->Forward({&rest, 1}, &chunked).ok());
  ASSERT_EQ(chunked.size(), (seq.size() - first) * vocab);
  for (size_t pos = 0; pos < seq.size(); ++pos) {
    SequenceChunk one;
    one.cache = &step_cache;
    one.tokens = absl::MakeConstSpan(seq).subspan(pos, 1);
    one.start_pos = static_cast<int>(pos);
    ASSERT_TRUE(model_->Forward({&one, 1}, &logits).ok());
    if (pos < static_cast<size_t>(first)) continue;
    for (int i = 0; i < vocab; ++i) {
      ASSERT_NEAR(chunked[(pos - first) * vocab + i], logits[i], 1e-4)
          << "position " << pos << " token " << i;
    }
  }
}

TEST_F(LlamaGoldenTest, ChainedBlocksReproduceForward) {
  // RunBlock (calibration's building block) over every layer, then the final
  // norm and lm_head, gives Forward's logits; observers see every point.
  const LlamaWeights& w = model_->weights();
  const int hidden = model_->config().hidden_size;
  const int vocab = model_->config().vocab_size;
  const int len = static_cast<int>(prompt_.size());
  std::vector<float> x(len * hidden);
  for (int t = 0; t < len; ++t) {
    EmbeddingRow(w.embed, prompt_[t], x.data() + t * hidden);
  }
  int points = 0;
  for (const LlamaLayerWeights& layer : w.layers) {
    model_->RunBlock(layer, /*seqs=*/1, len, x.data(),
                     [&](BlockPoint, const float*, int64_t rows, int64_t) {
                       EXPECT_EQ(rows, len);
                       ++points;
                     });
  }
  EXPECT_EQ(points, 7 * static_cast<int>(w.layers.size()));
  const float* last = x.data() + (len - 1) * hidden;
  double sum = 0;
  for (int i = 0; i < hidden; ++i) sum += last[i] * last[i];
  std::vector<float> normed(hidden);
  const float inv = 1.0f / std::sqrt(sum / hidden + model_->config().rms_norm_eps);
  for (int i = 0; i < hidden; ++i) normed[i] = w.final_norm[i] * (last[i] * inv);
  std::vector<float> chained(vocab), direct;
  w.lm_head.Forward(normed.data(), 1, chained.data());
  KVCache cache(model_->config(), 16);
  SequenceChunk chunk;
  chunk.cache = &cache;
  chunk.tokens = prompt_;
  ASSERT_TRUE(model_->Forward({&chunk, 1}, &direct).ok());
  for (int i = 0; i < vocab; ++i) ASSERT_NEAR(chained[i], direct[i], 1e-4);

  // stop_after leaves x untouched and ends the block early.
  std::vector<float> before = x;
  int seen = 0;
  model_->RunBlock(w.layers[0], 1, len, x.data(),
                   [&](BlockPoint, const float*, int64_t, int64_t) { ++seen; },
                   BlockPoint::kOProjInput);
  EXPECT_EQ(seen, 2);
  EXPECT_EQ(x, before);
}

// A bf16 KV cache takes half the memory and stays close to fp32: keys and
// values carry 8 significant bits (relative error <= 2^-9 each), so logits
// move by under 1 % of their largest magnitude and the greedy continuation
// is unchanged.
TEST_F(LlamaGoldenTest, Bf16KvCacheStaysCloseToFp32) {
  std::vector<int> seq = prompt_;
  seq.insert(seq.end(), greedy_.begin(), greedy_.end());
  KVCache f32(model_->config(), 64), bf16(model_->config(), 64, KvCacheDtype::kBf16);
  EXPECT_EQ(bf16.bytes() * 2, f32.bytes());
  std::vector<float> a, b;
  for (KVCache* cache : {&f32, &bf16}) {
    SequenceChunk chunk;
    chunk.cache = cache;
    chunk.tokens = seq;
    chunk.all_logits = true;
    ASSERT_TRUE(model_->Forward({&chunk, 1}, cache == &f32 ? &a : &b).ok());
  }
  ASSERT_EQ(a.size(), b.size());
  const int vocab = model_->config().vocab_size;
  double worst = 0, largest = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double{std::abs(a[i] - b[i])});
    largest = std::max(largest, double{std::abs(a[i])});
  }
  EXPECT_GT(worst, 0);  // the cache really is rounded
  EXPECT_LT(worst, 0.01 * largest);
  // Greedy: every position's argmax agrees over the golden continuation.
  for (size_t p = prompt_.size() - 1; p + 1 < seq.size(); ++p) {
    const float* ra = a.data() + p * vocab;
    const float* rb = b.data() + p * vocab;
    EXPECT_EQ(std::max_element(ra, ra + vocab) - ra, std::max_element(rb, rb + vocab) - rb)
        << "position " << p;
  }
  std::printf("max |logit(bf16 KV) - logit(fp32 KV)|: %.2e (max |logit| %.1f)\n", worst,
              largest);
}

TEST(KvCacheDtypeTest, ParsesTheFlagNames) {
  EXPECT_EQ(ParseKvCacheDtype("fp32"), KvCacheDtype::kF32);
  EXPECT_EQ(ParseKvCacheDtype("bf16"), KvCacheDtype::kBf16);
  EXPECT_EQ(ParseKvCacheDtype("fp16"), std::nullopt);
  EXPECT_EQ(ParseKvCacheDtype(""), std::nullopt);
}

TEST_F(LlamaGoldenTest, RejectsBadTokensAndPositions) {
  KVCache cache(model_->config(), 4);
  std::vector<int> bad = {1, 9999};
  SequenceChunk chunk;
  chunk.cache = &cache;
  chunk.tokens = bad;
  std::vector<float> logits;
  EXPECT_EQ(model_->Forward({&chunk, 1}, &logits).code(), absl::StatusCode::kInvalidArgument);
  std::vector<int> too_long = {1, 2, 3, 4, 5};
  chunk.tokens = too_long;
  EXPECT_EQ(model_->Forward({&chunk, 1}, &logits).code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace wq
