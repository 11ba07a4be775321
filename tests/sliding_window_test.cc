// Sliding-window attention over a ring KV cache of `window` slots, on
// tiny-mistral (window 8) and sequences several windows long: logits at every
// position, whatever the prefill chunking, equal a float64 recomputation of
// windowed attention from scratch; the cache's memory is the window's, not
// the context's; and the scheduler generates past the window with several
// sequences at once exactly as with one.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/io/metrics.h"
#include "common/serving/scheduler.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

constexpr char kModelDir[] = "../shared/models/tiny-mistral";
constexpr int kLength = 48;  // six windows

using Matrix = std::vector<std::vector<double>>;

std::vector<double> MatVec(const LinearWeight& w, const std::vector<double>& x) {
  const float* m = w.dense();
  std::vector<double> y(w.out_features(), 0.0);
  for (size_t r = 0; r < y.size(); ++r) {
    for (size_t c = 0; c < x.size(); ++c) y[r] += m[r * x.size() + c] * x[c];
  }
  return y;
}

std::vector<double> RmsNorm(const std::vector<double>& x, const float* weight, double eps) {
  double sum = 0;
  for (double v : x) sum += v * v;
  const double inv = 1.0 / std::sqrt(sum / x.size() + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = weight[i] * x[i] * inv;
  return y;
}

// Hugging Face's rotate_half RoPE of every head of x at position pos.
void Rope(std::vector<double>& x, int head_dim, double theta, int pos) {
  const int half = head_dim / 2;
  for (size_t h = 0; h < x.size(); h += head_dim) {
    for (int i = 0; i < half; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * i / head_dim);
      const double a = x[h + i], b = x[h + i + half];
      x[h + i] = a * std::cos(angle) - b * std::sin(angle);
      x[h + i + half] = b * std::cos(angle) + a * std::sin(angle);
    }
  }
}

// Mistral's forward pass in float64 over the whole sequence at once, from
// the weights alone: query i attends to keys j with i - window < j <= i.
// No cache, no chunks: O(n^2) and independent of the engine's attention.
Matrix ReferenceLogits(const LlamaWeights& w, const std::vector<int>& ids, int window) {
  const LlamaConfig& c = w.config;
  const int n = static_cast<int>(ids.size());
  const int d = c.head_dim;
  const int group = c.num_attention_heads / c.num_key_value_heads;
  Matrix x(n);
  for (int t = 0; t < n; ++t) {
    std::vector<float> row(c.hidden_size);
    EmbeddingRow(w.embed, ids[t], row.data());
    x[t].assign(row.begin(), row.end());
  }
  for (const LlamaLayerWeights& l : w.layers) {
    Matrix q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const std::vector<double> h = RmsNorm(x[t], l.norm[kInputNorm], c.rms_norm_eps);
      q[t] = MatVec(l.linear[kQ], h);
      k[t] = MatVec(l.linear[kK], h);
      v[t] = MatVec(l.linear[kV], h);
      Rope(q[t], d, c.rope_theta, t);
      Rope(k[t], d, c.rope_theta, t);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> att(q[t].size(), 0.0);
      const int first = std::max(0, t - window + 1);
      for (int head = 0; head < c.num_attention_heads; ++head) {
        const int kv = head / group;
        std::vector<double> p;
        for (int j = first; j <= t; ++j) {
          double dot = 0;
          for (int i = 0; i < d; ++i) dot += q[t][head * d + i] * k[j][kv * d + i];
          p.push_back(dot / std::sqrt(static_cast<double>(d)));
        }
        const double top = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (double& s : p) sum += (s = std::exp(s - top));
        for (int j = first; j <= t; ++j) {
          for (int i = 0; i < d; ++i) att[head * d + i] += p[j - first] / sum * v[j][kv * d + i];
        }
      }
      const std::vector<double> o = MatVec(l.linear[kO], att);
      for (int i = 0; i < c.hidden_size; ++i) x[t][i] += o[i];
    }
    for (int t = 0; t < n; ++t) {
      const std::vector<double> h = RmsNorm(x[t], l.norm[kPostAttentionNorm], c.rms_norm_eps);
      std::vector<double> gate = MatVec(l.linear[kGate], h);
      const std::vector<double> up = MatVec(l.linear[kUp], h);
      for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      const std::vector<double> down = MatVec(l.linear[kDown], gate);
      for (int i = 0; i < c.hidden_size; ++i) x[t][i] += down[i];
    }
  }
  Matrix logits(n);
  for (int t = 0; t < n; ++t) {
    logits[t] = MatVec(w.lm_head, RmsNorm(x[t], w.final_norm, c.rms_norm_eps));
  }
  return logits;
}

// Logits of every position of `ids`, fed in chunks of sizes[0], sizes[1], ...
// (the last size repeating) through one cache.
absl::StatusOr<Matrix> ChunkedLogits(const LlamaModel& model, const std::vector<int>& ids,
                                     const std::vector<int>& sizes, KVCache& cache) {
  const int vocab = model.config().vocab_size;
  Matrix logits;
  int start = 0;
  for (size_t i = 0; start < static_cast<int>(ids.size()); ++i) {
    const int size = std::min<int>(sizes[std::min(i, sizes.size() - 1)], ids.size() - start);
    SequenceChunk chunk;
    chunk.cache = &cache;
    chunk.tokens = absl::MakeConstSpan(ids).subspan(start, size);
    chunk.start_pos = start;
    chunk.all_logits = true;
    std::vector<float> out;
    if (absl::Status s = model.Forward({&chunk, 1}, &out); !s.ok()) return s;
    for (int t = 0; t < size; ++t) {
      logits.emplace_back(out.begin() + t * vocab, out.begin() + (t + 1) * vocab);
    }
    start += size;
    if (cache.held() != std::min(start, cache.slots())) {
      return absl::InternalError("cache holds a wrong number of positions");
    }
  }
  return logits;
}

double MaxDifference(const Matrix& a, const Matrix& b) {
  double worst = 0;
  for (size_t t = 0; t < a.size(); ++t) {
    for (size_t i = 0; i < a[t].size(); ++i) worst = std::max(worst, std::abs(a[t][i] - b[t][i]));
  }
  return worst;
}

class SlidingWindowTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto weights = LoadLlamaModelDir(kModelDir);
    ASSERT_TRUE(weights.ok()) << weights.status();
    model_ = new std::shared_ptr<const LlamaModel>(std::make_shared<LlamaModel>(*weights));
    ASSERT_EQ((*model_)->config().sliding_window, 8);
    auto text = ReadFile(std::string(kModelDir) + "/golden.json");
    ASSERT_TRUE(text.ok()) << text.status();
    golden_ = new nlohmann::json(nlohmann::json::parse(*text));
    // The golden's natural-text sequence, continued with arbitrary ids.
    ids_ = new std::vector<int>((*golden_)["sequences"][0]["ids"].get<std::vector<int>>());
    for (int i = 0; ids_->size() < kLength; ++i) ids_->push_back(3 + (i * 97) % 509);
    reference_ = new Matrix(ReferenceLogits((*model_)->weights(), *ids_, /*window=*/8));
  }
  static const LlamaModel& model() { return **model_; }

  static std::shared_ptr<const LlamaModel>* model_;
  static nlohmann::json* golden_;
  static std::vector<int>* ids_;
  static Matrix* reference_;
};
std::shared_ptr<const LlamaModel>* SlidingWindowTest::model_;
nlohmann::json* SlidingWindowTest::golden_;
std::vector<int>* SlidingWindowTest::ids_;
Matrix* SlidingWindowTest::reference_;

// The float64 reference is itself right: it reproduces golden.json (the
// team's independent implementation of Hugging Face's code) on its 24 ids.
TEST_F(SlidingWindowTest, ReferenceReproducesTheGolden) {
  const auto& expected = (*golden_)["sequences"][0]["logits"];
  ASSERT_EQ(expected.size(), 24u);
  for (size_t t = 0; t < expected.size(); ++t) {
    for (size_t i = 0; i < expected[t].size(); ++i) {
      ASSERT_NEAR((*reference_)[t][i], expected[t][i].get<double>(), 1e-8) << t << " " << i;
    }
  }
}

// Chunks of 1 (decode), 3, the window, more than the window, more than the
// 32-query attention tile, the whole sequence; and a prefill then decode.
// The bound is the fp32 engine's own rounding against float64 (measured
// <= 1.1e-5, as on the goldens); ignoring the window moves logits by ~10.
TEST_F(SlidingWindowTest, RingCacheMatchesWindowedReferenceForAnyChunking) {
  const double unwindowed =
      MaxDifference(ReferenceLogits(model().weights(), *ids_, kLength), *reference_);
  std::printf("full attention instead of the window moves logits by %.2f\n", unwindowed);
  EXPECT_GT(unwindowed, 1.0);
  const std::vector<std::vector<int>> schedules = {{1},     {3},     {8},     {13},
                                                   {kLength}, {5, 1}, {20, 1}, {33, 1}};
  for (const std::vector<int>& sizes : schedules) {
    KVCache cache(model().config(), 64);
    ASSERT_EQ(cache.slots(), 8);
    absl::StatusOr<Matrix> logits = ChunkedLogits(model(), *ids_, sizes, cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const double worst = MaxDifference(*logits, *reference_);
    std::printf("chunks of %d then %d: max |logit - reference| over %d positions: %.2e\n",
                sizes.front(), sizes.back(), kLength, worst);
    EXPECT_LE(worst, 3e-5) << "chunks of " << sizes.front() << " then " << sizes.back();
  }
}

// A bf16 ring: a chunk's queries see their own keys rounded as the cache
// keeps them, so chunking moves logits far less than the rounding itself
// (only where a projection's last bit, which differs with the number of
// rows, flips a key's rounding).
TEST_F(SlidingWindowTest, Bf16RingIsIndependentOfChunking) {
  KVCache whole(model().config(), 64, KvCacheDtype::kBf16);
  KVCache steps(model().config(), 64, KvCacheDtype::kBf16);
  absl::StatusOr<Matrix> a = ChunkedLogits(model(), *ids_, {kLength}, whole);
  absl::StatusOr<Matrix> b = ChunkedLogits(model(), *ids_, {1}, steps);
  ASSERT_TRUE(a.ok() && b.ok());
  const double chunking = MaxDifference(*a, *b);
  const double rounding = MaxDifference(*a, *reference_);
  std::printf("bf16 ring: chunking moves logits by %.2e, bf16 rounding by %.2e\n", chunking,
              rounding);
  EXPECT_LT(chunking * 10, rounding);
}

// Memory: a windowed model's cache for a 4k context holds the window.
TEST_F(SlidingWindowTest, CacheBytesAreTheWindowsNotTheContexts) {
  LlamaConfig full = model().config();
  full.sliding_window = 0;
  for (KvCacheDtype dtype : {KvCacheDtype::kF32, KvCacheDtype::kBf16}) {
    const KVCache windowed(model().config(), 4096, dtype);
    const KVCache unbounded(full, 4096, dtype);
    EXPECT_EQ(windowed.max_positions(), 4096);
    EXPECT_EQ(windowed.slots(), 8);
    EXPECT_EQ(unbounded.slots(), 4096);
    EXPECT_EQ(windowed.bytes() * 4096, unbounded.bytes() * 8);
    // layers x K and V x kv_heads x slots x head_dim
    EXPECT_EQ(windowed.bytes(),
              2 * 2 * 2 * 8 * 16 * (dtype == KvCacheDtype::kF32 ? 4 : 2));
  }
  // A sequence shorter than the window needs no more than its length.
  EXPECT_EQ(KVCache(model().config(), 5).slots(), 5);
}

// Chunks must continue their cache: a gap, a restart the ring no longer
// holds, or two chunks of one cache in a pass are refused, writing nothing.
TEST_F(SlidingWindowTest, RefusesChunksTheCacheCannotServe) {
  KVCache cache(model().config(), 64);
  ASSERT_TRUE(ChunkedLogits(model(), std::vector<int>(ids_->begin(), ids_->begin() + 20), {20},
                            cache)
                  .ok());
  std::vector<float> logits;
  SequenceChunk chunk;
  chunk.cache = &cache;
  chunk.tokens = absl::MakeConstSpan(*ids_).subspan(20, 2);
  for (int start : {5, 22}) {
    chunk.start_pos = start;
    EXPECT_EQ(model().Forward({&chunk, 1}, &logits).code(), absl::StatusCode::kInvalidArgument)
        << start;
  }
  chunk.start_pos = 20;
  const SequenceChunk twice[] = {chunk, chunk};
  EXPECT_EQ(model().Forward(twice, &logits).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.length(), 20);
  // Restarting one position back is still within what the ring holds.
  chunk.start_pos = 19;
  chunk.tokens = absl::MakeConstSpan(*ids_).subspan(19, 3);
  EXPECT_TRUE(model().Forward({&chunk, 1}, &logits).ok());
  EXPECT_EQ(cache.length(), 22);
  // Starting over reads nothing the ring lost.
  chunk.start_pos = 0;
  chunk.tokens = absl::MakeConstSpan(*ids_).subspan(0, 3);
  EXPECT_TRUE(model().Forward({&chunk, 1}, &logits).ok());
  EXPECT_EQ(cache.length(), 3);
}

// The metrics text and the number of running sequences at one moment.
struct KvSnapshot {
  std::string metrics;
  int running = 0;
};

struct Outcome {
  absl::Notification done;
  GenerationResult result;
};

// Runs `prompts` through one scheduler, all submitted at once.
std::vector<GenerationResult> GenerateAll(const GenerationScheduler::Options& options,
                                          const std::vector<std::string>& prompts,
                                          int max_new_tokens, KvSnapshot* snapshot) {
  auto weights = LoadLlamaModelDir(kModelDir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto tokenizer = Tokenizer::Load(std::string(kModelDir) + "/tokenizer.model");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!weights.ok() || !tokenizer.ok()) return {};
  GenerationScheduler scheduler(std::make_shared<const LlamaModel>(*weights),
                                std::move(*tokenizer), options);
  GenerationParams params;
  params.sampling.temperature = 0;
  params.max_new_tokens = max_new_tokens;
  std::vector<Outcome> outcomes(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationCallbacks callbacks;
    if (i == 0 && snapshot != nullptr) {
      // Three windows into the first sequence: the gauges of the last step,
      // and the sequences that step left running.
      callbacks.on_token = [&, generated = 0](const TokenEvent&) mutable {
        if (++generated != 3 * 8) return;
        snapshot->metrics = MetricsRegistry::Default().Render();
        snapshot->running = scheduler.running();
      };
    }
    callbacks.on_done = [&outcomes, i](const GenerationResult& r) {
      outcomes[i].result = r;
      outcomes[i].done.Notify();
    };
    EXPECT_TRUE(scheduler.Submit(prompts[i], params, std::move(callbacks)).ok());
  }
  std::vector<GenerationResult> results;
  for (Outcome& o : outcomes) {
    EXPECT_TRUE(o.done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    results.push_back(o.result);
  }
  return results;
}

// Greedy generation of up to 40 tokens (five windows) for four prompts: one
// at a time with whole-prompt prefill, then all four at once with 3-token
// prefill slices interleaved with the others' decode steps. Same tokens; and
// the single run's tokens are the reference's argmax at every step.
TEST_F(SlidingWindowTest, SchedulerGeneratesPastTheWindowAsASingleSequenceWould) {
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog ran",
                                            "Lily liked to play with her ball in the park",
                                            "One day"};
  constexpr int kNewTokens = 40;
  GenerationScheduler::Options single;
  single.max_running = 1;
  single.model_name = "tiny-mistral-single";
  GenerationScheduler::Options batched;
  batched.max_running = 4;
  batched.prefill_chunk = 3;
  batched.model_name = "tiny-mistral-batched";
  const std::vector<GenerationResult> alone = GenerateAll(single, prompts, kNewTokens, nullptr);
  KvSnapshot snapshot;
  const std::vector<GenerationResult> together =
      GenerateAll(batched, prompts, kNewTokens, &snapshot);
  ASSERT_EQ(alone.size(), prompts.size());
  ASSERT_EQ(together.size(), prompts.size());
  auto tokenizer = Tokenizer::Load(std::string(kModelDir) + "/tokenizer.model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(together[i].token_ids, alone[i].token_ids) << prompts[i];
    EXPECT_EQ(together[i].finish_reason, alone[i].finish_reason) << prompts[i];
    std::vector<int> ids = *(*tokenizer)->Encode(prompts[i], /*add_bos=*/true);
    // Well past the window (one prompt meets EOS after 17 tokens).
    EXPECT_GT(ids.size() + alone[i].token_ids.size(), 2u * 8) << prompts[i];
    const size_t prompt = ids.size();
    ids.insert(ids.end(), alone[i].token_ids.begin(), alone[i].token_ids.end());
    const Matrix reference = ReferenceLogits(model().weights(), ids, /*window=*/8);
    for (size_t t = 0; t < alone[i].token_ids.size(); ++t) {
      const std::vector<double>& row = reference[prompt - 1 + t];
      EXPECT_EQ(std::max_element(row.begin(), row.end()) - row.begin(), alone[i].token_ids[t])
          << prompts[i] << " token " << t;
    }
  }
  // Every running sequence, by then longer than the window, holds 8
  // positions, whatever its length.
  ASSERT_EQ(alone[0].token_ids.size(), static_cast<size_t>(kNewTokens));
  EXPECT_GE(snapshot.running, 2);
  for (const char* gauge : {"wq:kv_cache_capacity_tokens", "wq:kv_cache_usage_tokens"}) {
    EXPECT_NE(snapshot.metrics.find(absl::StrCat(gauge, "{model_name=\"tiny-mistral-batched\"} ",
                                                 8 * snapshot.running, "\n")),
              std::string::npos)
        << snapshot.metrics;
  }
}

}  // namespace
}  // namespace wq
