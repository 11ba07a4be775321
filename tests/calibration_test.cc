// AWQ and TEQ: scale folding, clip search, TEQ determinism, the config
// rules, and end to end on stories260K that both beat RTN in perplexity.
//
// The end-to-end test calibrates on 32 blocks of 256 tokens of
// testdata/data/tinystories_train_head.txt (AWQ's default is 128 x 512) and
// scores with the full protocol (first 20,480 tokens of tinystories_valid.txt,
// 80 windows of 256, [BOS] + window[:-1]).
#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/artifact/artifact_store.h"
#include "common/quant/awq.h"
#include "common/quant/calibration.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/quant/perplexity.h"
#include "common/formats/compute_dtype.h"
#include "common/formats/quant_config.h"
#include "common/quant/quantizer.h"
#include "common/quant/teq.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/test_util.h"

namespace wq {
namespace {

constexpr char kCalibrationFile[] = "tinystories_train_head.txt";
const std::string kDataRoot = test::CanonicalDataRoot();

std::shared_ptr<const LlamaWeights> Fp32Weights() {
  auto weights = LoadLlamaModelDir(test::kStoriesDir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  return *weights;
}

CalibrationSet SmallCalibration(int n_samples, int seq_len) {
  auto tokenizer = Tokenizer::Load(absl::StrCat(test::kStoriesDir, "/tokenizer.model"));
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  v1::CalibrationConfig config;
  config.set_data_file(kCalibrationFile);
  config.set_n_samples(n_samples);
  config.set_seq_len(seq_len);
  auto set = BuildCalibrationSet(config, kDataRoot, **tokenizer);
  EXPECT_TRUE(set.ok()) << set.status();
  return *set;
}

// Block 0's activations over a small calibration set.
BlockActivations FirstBlockActivations(const LlamaModel& model, int n_samples, int seq_len) {
  const CalibrationSet set = SmallCalibration(n_samples, seq_len);
  BlockActivations first;
  EXPECT_TRUE(ForEachCalibratedBlock(model, set, nullptr,
                                     [&](int layer, BlockWeights&, const BlockActivations& acts) {
                                       if (layer == 0) first = acts;
                                       return absl::OkStatus();
                                     })
                  .ok());
  return first;
}

TEST(Calibration, CapsAtWhatTheTextHoldsAndSaysSo) {
  const CalibrationSet set = SmallCalibration(100000, 256);
  EXPECT_GT(set.n_samples, 100);
  EXPECT_LT(set.n_samples, 100000);
  EXPECT_EQ(set.tokens.size(), static_cast<size_t>(set.n_samples) * 256);
  EXPECT_NE(set.message.find("100000 requested"), std::string::npos) << set.message;

  auto tokenizer = Tokenizer::Load(absl::StrCat(test::kStoriesDir, "/tokenizer.model"));
  ASSERT_TRUE(tokenizer.ok());
  v1::CalibrationConfig outside;
  outside.set_data_file("../models/stories260K/config.json");
  outside.set_n_samples(1);
  outside.set_seq_len(16);
  EXPECT_EQ(BuildCalibrationSet(outside, kDataRoot, **tokenizer).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FoldScales, LeavesTheFp32BlockOutputUnchanged) {
  const LlamaModel model(Fp32Weights());
  const LlamaConfig& c = model.config();
  const BlockActivations acts = FirstBlockActivations(model, 2, 64);
  BlockWeights w = BlockWeights::Copy(model.weights().layers[0], c);
  std::vector<float> reference = acts.input;
  model.RunBlock(w.View(), acts.seqs, acts.len, reference.data());

  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(0.25f, 4.0f);
  const std::vector<ScalingGroup> groups = LlamaScalingGroups(c);
  ASSERT_EQ(groups.size(), 3u);  // GQA: no v_proj -> o_proj group
  for (const ScalingGroup& g : groups) {
    std::vector<float> s(w.cols[g.layers.front()]);
    for (float& v : s) v = dist(rng);
    FoldScales(g, s, &w);
  }
  std::vector<float> folded = acts.input;
  model.RunBlock(w.View(), acts.seqs, acts.len, folded.data());
  double max_diff = 0;
  for (size_t i = 0; i < folded.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::abs(folded[i] - reference[i])));
  }
  EXPECT_LT(max_diff, 1e-5);
}

// Inputs [tokens, 8] for the clip-search cases: normal, except channel 0,
// which is always zero.
std::vector<float> ClipSearchInputs(int64_t tokens, unsigned seed) {
  const std::vector<float> normal = test::RandomVector(tokens * 7, seed);
  std::vector<float> x(tokens * 8);
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy_n(normal.begin() + t * 7, 7, x.begin() + t * 8 + 1);
  }
  return x;
}

// Two rows of one group of 8 whose input channel 0 is always zero, so the
// outlier there costs nothing and the best clip is the one that makes the
// other weights exact: max 7 (scale 1) for row 0, 6.4 for row 1.
TEST(AwqSearchClip, PicksTheKnownBestRatio) {
  const float step1 = 6.4f / 7;
  const std::vector<float> w = {10, 1, -2, 3, -4, 5, -6, 2,
                                8,  step1, -2 * step1, 3 * step1, -4 * step1, 5 * step1,
                                -6 * step1, step1};
  const int64_t tokens = 16;
  const std::vector<float> x = ClipSearchInputs(tokens, 3);
  AwqOptions options;
  options.spec.type = QuantType::kInt4Clip;
  options.spec.group_size = 8;
  auto best = AwqSearchClip(w.data(), 2, 8, x.data(), tokens, options);
  ASSERT_TRUE(best.ok()) << best.status();
  ASSERT_EQ(best->hi.size(), 2u);
  EXPECT_FLOAT_EQ(best->hi[0], 7.0f);
  EXPECT_FLOAT_EQ(best->hi[1], 6.4f);
  EXPECT_FLOAT_EQ(best->lo[0], -7.0f);
  EXPECT_FLOAT_EQ(best->lo[1], -6.4f);
}

// Asym: two skewed groups of 8 whose long tail (channel 0, input always
// zero) is free to clip. With the tail clipped to 6 (row 0) or -6 (row 1)
// the range is 7.5 wide, scale 0.5 with an integer zero point, and every
// other weight (a multiple of 0.5) is exact; clipping the short side could
// only move its end weight. So the search must clip the tail side alone.
TEST(AwqSearchClip, AsymClipsOnlyTheLongTail) {
  const std::vector<float> w = {10,  -1.5f, 0.5f,  2, -1, 3.5f,  6,  4.5f,
                                -10, 1.5f,  -0.5f, -2, 1, -3.5f, -6, -4.5f};
  const int64_t tokens = 16;
  const std::vector<float> x = ClipSearchInputs(tokens, 5);
  AwqOptions options;
  options.spec.type = QuantType::kInt4Clip;
  options.spec.scheme = QuantScheme::kAsym;
  options.spec.group_size = 8;
  auto best = AwqSearchClip(w.data(), 2, 8, x.data(), tokens, options);
  ASSERT_TRUE(best.ok()) << best.status();
  ASSERT_EQ(best->hi.size(), 2u);
  EXPECT_FLOAT_EQ(best->hi[0], 6.0f);
  EXPECT_FLOAT_EQ(best->lo[0], -1.5f);
  EXPECT_FLOAT_EQ(best->hi[1], 1.5f);
  EXPECT_FLOAT_EQ(best->lo[1], -6.0f);
}

TEST(Awq, ScaleSearchDoesNotLoseToNoScaling) {
  const LlamaModel model(Fp32Weights());
  const BlockActivations acts = FirstBlockActivations(model, 4, 128);
  const BlockWeights w =
      BlockWeights::Copy(model.weights().layers[0], model.config());
  AwqOptions options;
  for (const ScalingGroup& g : LlamaScalingGroups(model.config())) {
    auto search = AwqSearchScales(model, acts, g, w, options);
    ASSERT_TRUE(search.ok()) << search.status();
    ASSERT_EQ(search->losses.size(), 20u);
    // Grid point 0 (a = 0) is plain RTN up to the w_mean term; the chosen one
    // is the minimum.
    for (double loss : search->losses) EXPECT_LE(search->losses[search->best], loss);
  }
}

// The scale search's forward passes on the fast kernels (bf16 or int8
// compute, the job's compute dtype) choose the grid point that fp32 compute
// chooses, for every scaling group of every block of stories260K: the scales,
// and so the artifact, are those of fp32 forwards (the clip search runs no
// forward pass).
TEST(Awq, FastComputeChoosesTheFp32Scales) {
  const LlamaModel model(Fp32Weights());
  const std::vector<ScalingGroup> groups = LlamaScalingGroups(model.config());
  int searched = 0;
  const absl::Status status = ForEachCalibratedBlock(
      model, SmallCalibration(8, 256), nullptr,
      [&](int layer, BlockWeights& w, const BlockActivations& acts) {
        for (size_t g = 0; g < groups.size(); ++g) {
          std::array<AwqScaleSearch, kNumComputeDtypes> by_compute;
          for (ComputeDtype compute :
               {ComputeDtype::kFp32, ComputeDtype::kBf16, ComputeDtype::kInt8}) {
            AwqOptions options;
            options.compute = compute;
            auto search = AwqSearchScales(model, acts, groups[g], w, options);
            if (!search.ok()) return search.status();
            by_compute[static_cast<int>(compute)] = *std::move(search);
          }
          const AwqScaleSearch& fp32 = by_compute[static_cast<int>(ComputeDtype::kFp32)];
          for (ComputeDtype compute : {ComputeDtype::kBf16, ComputeDtype::kInt8}) {
            const AwqScaleSearch& fast = by_compute[static_cast<int>(compute)];
            EXPECT_EQ(fast.best, fp32.best)
                << "block " << layer << " group " << g << " " << ComputeDtypeName(compute)
                << " losses " << absl::StrJoin(fast.losses, " ") << " fp32 "
                << absl::StrJoin(fp32.losses, " ");
            // The loss of fp32's choice moves by the arithmetic only (and
            // does move: the search did run in that arithmetic).
            EXPECT_NE(fast.losses[fp32.best], fp32.losses[fp32.best]);
            EXPECT_NEAR(fast.losses[fp32.best], fp32.losses[fp32.best],
                        0.05 * fp32.losses[fp32.best]);
          }
          ++searched;
        }
        return absl::OkStatus();
      });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(searched, model.config().num_hidden_layers * static_cast<int>(groups.size()));
}

TEST(Teq, DeterministicAcrossRunsAndThreadCountsAndLowersTheLoss) {
  const LlamaModel model(Fp32Weights());
  const BlockActivations acts = FirstBlockActivations(model, 4, 128);
  TeqOptions options;
  options.steps = 20;
  options.spec.type = QuantType::kInt3;
  auto run = [&](int threads) {
    BlockWeights w = BlockWeights::Copy(model.weights().layers[0], model.config());
    tbb::task_arena arena(threads);
    std::vector<TeqGroupReport> reports;
    arena.execute([&] {
      auto r = TeqTransformBlock(model.config(), acts, options, &w);
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) reports = *std::move(r);
    });
    return reports;
  };
  const std::vector<TeqGroupReport> a = run(2);
  const std::vector<TeqGroupReport> b = run(2);
  const std::vector<TeqGroupReport> c = run(1);
  ASSERT_EQ(a.size(), 3u);
  for (size_t g = 0; g < a.size(); ++g) {
    EXPECT_EQ(a[g].alpha, b[g].alpha);
    EXPECT_EQ(a[g].alpha, c[g].alpha);
    EXPECT_EQ(a[g].final_loss, b[g].final_loss);
    EXPECT_LE(a[g].final_loss, a[g].initial_loss);
  }
}

// TEQ's attention (its q/k/v loss) computes what the engine computes: from
// block 0's captured input_layernorm output to the captured o_proj input.
TEST(Teq, CausalAttentionMatchesTheEngine) {
  const LlamaModel model(Fp32Weights());
  const BlockActivations acts = FirstBlockActivations(model, 2, 64);
  const BlockWeights w = BlockWeights::Copy(model.weights().layers[0], model.config());
  using Matrix = CausalAttention::Matrix;
  const Eigen::Map<const Matrix> x(acts.Get(BlockPoint::kAttentionInput), acts.tokens(),
                                   w.cols[kQ]);
  auto project = [&](LinearRole l) -> Matrix {
    return x * Eigen::Map<const Matrix>(w.linear[l].data(), w.rows[l], w.cols[l]).transpose();
  };
  const CausalAttention attention(model.config(), acts.len);
  const Matrix att = attention.Forward(project(kQ), project(kK), project(kV), nullptr);
  const Eigen::Map<const Matrix> engine(acts.Get(BlockPoint::kOProjInput), acts.tokens(),
                                        acts.Dim(BlockPoint::kOProjInput));
  ASSERT_EQ(att.cols(), engine.cols());
  EXPECT_LT((att - engine).cwiseAbs().maxCoeff(), 1e-5f * engine.cwiseAbs().maxCoeff());
}

// Its backward pass against central differences of L = sum(G .* attention).
TEST(Teq, CausalAttentionGradientMatchesFiniteDifferences) {
  LlamaConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  const int seqs = 2, len = 6;
  using Matrix = CausalAttention::Matrix;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  auto random = [&](int64_t rows, int64_t cols) {
    Matrix m(rows, cols);
    for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
    return m;
  };
  Matrix y[3] = {random(seqs * len, 16), random(seqs * len, 8), random(seqs * len, 8)};
  const Matrix g = random(seqs * len, 16);
  const CausalAttention attention(c, len);
  auto loss = [&] {
    return static_cast<double>(
        attention.Forward(y[0], y[1], y[2], nullptr).cwiseProduct(g).sum());
  };
  CausalAttention::Saved saved;
  attention.Forward(y[0], y[1], y[2], &saved);
  Matrix grad[3];
  attention.Backward(y[2], saved, g, &grad[0], &grad[1], &grad[2]);
  for (int which = 0; which < 3; ++which) {
    for (int64_t i = 0; i < y[which].size(); i += 5) {
      float& v = y[which].data()[i];
      const float keep = v;
      const float h = 1e-2f;
      v = keep + h;
      const double up = loss();
      v = keep - h;
      const double down = loss();
      v = keep;
      EXPECT_NEAR(grad[which].data()[i], (up - down) / (2 * h), 2e-3)
          << "input " << which << " element " << i;
    }
  }
}

TEST(QuantConfig, CalibratedAlgorithmsNeedDataAndSkipModulesTakeGlobs) {
  v1::WeightOnlyQuantConfig config;
  config.set_algorithm(v1::AWQ);
  EXPECT_EQ(ResolveQuantConfig(config).status().code(), absl::StatusCode::kInvalidArgument);
  config.mutable_calibration()->set_data_file(kCalibrationFile);
  auto resolved = ResolveQuantConfig(config);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->calibration().n_samples(), 128);
  EXPECT_EQ(resolved->calibration().seq_len(), 512);
  EXPECT_EQ(QuantConfigSlug(*resolved), "nf4-sym-g32-awq");

  config.add_llm_int8_skip_modules("model.layers.1.*");
  config.add_llm_int8_skip_modules("*_proj_never");
  config.add_llm_int8_skip_modules("down_proj");
  resolved = ResolveQuantConfig(config);
  ASSERT_TRUE(resolved.ok());
  EXPECT_TRUE(IsSkippedModule(*resolved, "model.layers.1.self_attn.q_proj"));
  EXPECT_TRUE(IsSkippedModule(*resolved, "model.layers.3.mlp.down_proj"));
  EXPECT_FALSE(IsSkippedModule(*resolved, "model.layers.3.mlp.up_proj"));
  EXPECT_FALSE(IsSkippedModule(*resolved, "lm_head"));  // an explicit list replaces the default
}

// A cancel seen inside a block's grid search ends the job there, with no
// artifact.
TEST(CalibratedQuantization, CancelInsideABlockLeavesNoArtifact) {
  const std::string root = testing::TempDir() + "/cancelled_artifacts";
  std::filesystem::remove_all(root);
  auto store = ArtifactStore::Open(root);
  ASSERT_TRUE(store.ok()) << store.status();
  std::atomic<bool> cancelled{false};
  std::vector<QuantizeProgress> seen;
  QuantizeRequest request;
  request.model_id = "stories260K";
  request.model_dir = test::kStoriesDir;
  request.data_root = kDataRoot;
  request.config.set_algorithm(v1::AWQ);
  request.config.mutable_calibration()->set_data_file(kCalibrationFile);
  request.config.mutable_calibration()->set_n_samples(8);
  request.config.mutable_calibration()->set_seq_len(128);
  request.cancelled = &cancelled;
  request.on_progress = [&](const QuantizeProgress& p) {
    seen.push_back(p);
    if (p.phase == QuantizePhase::kGridSearch && p.step == 2) cancelled = true;
  };
  EXPECT_EQ(QuantizeModel(request, **store).status().code(), absl::StatusCode::kCancelled);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().phase, QuantizePhase::kGridSearch);
  EXPECT_EQ(seen.back().step, 2);
  EXPECT_EQ(seen.back().total_steps, 5);
  EXPECT_TRUE((*store)->List().empty());
}

// AWQ and TEQ beat RTN on int4_clip sym g32, the dtype with the largest RTN
// error (+14.5 %).
TEST(CalibratedQuantization, AwqAndTeqBeatRtnInPerplexity) {
  auto tokenizer = Tokenizer::Load(absl::StrCat(test::kStoriesDir, "/tokenizer.model"));
  ASSERT_TRUE(tokenizer.ok());
  auto text = ReadFile(absl::StrCat(kDataRoot, "/tinystories_valid.txt"));
  ASSERT_TRUE(text.ok());
  auto ids = (*tokenizer)->Encode(*text, /*add_bos=*/false);
  ASSERT_TRUE(ids.ok());
  const LlamaModel fp32(Fp32Weights());
  auto fp32_ppl = EvaluatePerplexity(fp32, *ids, (*tokenizer)->bos_id(), {});
  ASSERT_TRUE(fp32_ppl.ok());

  const std::string root = testing::TempDir() + "/calibrated_artifacts";
  std::filesystem::remove_all(root);
  auto store = ArtifactStore::Open(root);
  ASSERT_TRUE(store.ok()) << store.status();
  auto change = [&](v1::Algorithm algorithm, std::vector<std::string>* log) {
    QuantizeRequest request;
    request.model_id = "stories260K";
    request.model_dir = test::kStoriesDir;
    request.data_root = kDataRoot;
    request.config.set_weight_dtype(v1::INT4_CLIP);
    request.config.set_group_size(32);
    request.config.set_algorithm(algorithm);
    request.config.mutable_calibration()->set_data_file(kCalibrationFile);
    request.config.mutable_calibration()->set_n_samples(32);
    request.config.mutable_calibration()->set_seq_len(256);
    auto manifest = QuantizeModel(request, **store);
    EXPECT_TRUE(manifest.ok()) << manifest.status();
    if (!manifest.ok()) return 1e9;
    log->assign(manifest->log().begin(), manifest->log().end());
    auto weights = (*store)->LoadWeights(manifest->artifact_id());
    EXPECT_TRUE(weights.ok()) << weights.status();
    const LlamaModel model(*weights);
    auto ppl = EvaluatePerplexity(model, *ids, (*tokenizer)->bos_id(), {});
    EXPECT_TRUE(ppl.ok());
    return 100.0 * (ppl->perplexity / fp32_ppl->perplexity - 1.0);
  };
  std::vector<std::string> rtn_log, awq_log, teq_log;
  const double rtn = change(v1::RTN, &rtn_log);
  const double awq = change(v1::AWQ, &awq_log);
  const double teq = change(v1::TEQ, &teq_log);
  std::printf("int4_clip sym g32 PPL change: RTN %+.2f%%, AWQ %+.2f%%, TEQ %+.2f%%\n", rtn, awq,
              teq);
  EXPECT_LT(awq, 0.7 * rtn);  // the target: at least 30 % less degradation
  EXPECT_LT(teq, 0.9 * rtn);  // at least 10 % less degradation (+10.5 % vs +14.5 %)
  const std::string joined = absl::StrJoin(awq_log, "\n");
  EXPECT_NE(joined.find("calibration: 32 blocks x 256 tokens"), std::string::npos) << joined;
  EXPECT_NE(joined.find("awq block 4"), std::string::npos) << joined;
}

}  // namespace
}  // namespace wq
