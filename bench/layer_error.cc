// Why mse_range can lose to plain RTN: for every linear layer of
// stories260K, the clip ratio INC's search picks by weight MSE, and the
// layer's output error on calibration activations with RTN (ratio 1) and
// with that ratio, plus the candidate ratio that would minimise the output
// error. A diagnostic, not part of the quantizer: mse_range itself uses no
// activations (INC's definition).
//
//   bazel-bin/bench/layer_error [--dtypes=int4_clip_asym,int4_fullrange_sym]
//       [--groups=32] [--n_samples=16 --seq_len=256] [--verbose]
//
// Also the MLP output down(silu(gate·x)·up·x) with all three layers
// quantized, RTN vs mse_range, relative to its fp32 energy.
//
// Output gain of a layer: sum of <x·Q(W)^T, x·W^T> over sum of ||x·W^T||^2,
// the fraction of the fp32 output the quantized layer reproduces along it.
// Rounding errors are unbiased (gain about 1); clipping shrinks the largest
// weights toward zero, a bias every layer repeats in the same direction.
//
// Output error of a layer: sum over calibration tokens of ||x·(Q(W) - W)^T||^2
// divided by the sum of ||x·W^T||^2 (its fp32 output energy), on the fp32
// model's activations at the layer's input (block by block, as AWQ sees
// them).
#include <cstdio>
#include <string>
#include <vector>

#include "Eigen/Core"
#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "absl/strings/strip.h"
#include "common/quant/calibration.h"
#include "common/model/llama.h"
#include "common/formats/quant_format.h"
#include "common/io/status_macros.h"
#include "common/tokenizer/tokenizer.h"

ABSL_FLAG(std::string, model_dir, "testdata/models/stories260K", "fp32 source model");
ABSL_FLAG(std::string, data_root, "../shared/data", "directory of the calibration text");
ABSL_FLAG(std::string, calib_file, "tinystories_train_head.txt", "under --data_root");
ABSL_FLAG(std::vector<std::string>, dtypes,
          std::vector<std::string>({"int4_clip_sym", "int4_fullrange_sym", "int4_clip_asym", "nf4",
                                    "fp4_e2m1"}),
          "weight dtype, with _sym / _asym for integers");
ABSL_FLAG(std::vector<std::string>, groups, std::vector<std::string>({"32"}), "group sizes");
ABSL_FLAG(int, n_samples, 16, "calibration blocks");
ABSL_FLAG(int, seq_len, 256, "calibration block length");
ABSL_FLAG(bool, verbose, false, "one line per layer");

namespace wq {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;

absl::StatusOr<QuantSpec> SpecOf(const std::string& name, int group) {
  QuantSpec spec;
  absl::string_view dtype(name);
  if (absl::ConsumeSuffix(&dtype, "_asym")) {
    spec.scheme = QuantScheme::kAsym;
  } else {
    absl::ConsumeSuffix(&dtype, "_sym");
  }
  ASSIGN_OR_RETURN(spec.type, ParseQuantType(std::string(dtype)));
  spec.group_size = group;
  return spec;
}

struct OutputEffect {
  double error = 0;  // relative to the fp32 output energy
  double gain = 1;
};

// Output error and gain of fake-quantizing w with `spec` on inputs x.
absl::StatusOr<OutputEffect> OutputError(const float* w, int64_t rows, int64_t cols,
                                         const float* x, int64_t tokens, const QuantSpec& spec) {
  ASSIGN_OR_RETURN(std::vector<float> q, FakeQuantize(w, rows, cols, spec));
  const ConstRowMap weight(w, rows, cols);
  const ConstRowMap quantized(q.data(), rows, cols);
  const ConstRowMap input(x, tokens, cols);
  const Eigen::MatrixXd ref = (input * weight.transpose()).cast<double>();
  const Eigen::MatrixXd out = (input * quantized.transpose()).cast<double>();
  const double energy = ref.squaredNorm();
  if (energy == 0) return OutputEffect{};
  return OutputEffect{(out - ref).squaredNorm() / energy, out.cwiseProduct(ref).sum() / energy};
}

struct Totals {
  int layers = 0, clipped = 0, worse = 0;
  double rtn = 0, mse = 0, best = 0;  // summed relative output errors
  double gain_rtn = 0, gain_mse = 0;   // summed output gains
  int mlp_worse = 0;
  double mlp_rtn = 0, mlp_mse = 0;  // summed relative MLP output errors
};

// down(silu(gate·x) * up·x) for token rows x.
RowMatrix Mlp(const ConstRowMap& x, const float* gate, const float* up, const float* down,
              int64_t hidden, int64_t inter) {
  const RowMatrix g = x * ConstRowMap(gate, inter, hidden).transpose();
  const RowMatrix u = x * ConstRowMap(up, inter, hidden).transpose();
  const RowMatrix h = g.unaryExpr([](float v) { return Silu(v); }).cwiseProduct(u);
  return h * ConstRowMap(down, hidden, inter).transpose();
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> weights, LoadLlamaModelDir(model_dir));
  if (weights->config.spec().fused_projections) {
    return absl::UnimplementedError("layer_error studies split gate/up projections only");
  }
  const LlamaModel model(weights);
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::LoadModelDir(model_dir));
  v1::CalibrationConfig config;
  config.set_data_file(absl::GetFlag(FLAGS_calib_file));
  config.set_n_samples(absl::GetFlag(FLAGS_n_samples));
  config.set_seq_len(absl::GetFlag(FLAGS_seq_len));
  ASSIGN_OR_RETURN(CalibrationSet calibration,
                   BuildCalibrationSet(config, absl::GetFlag(FLAGS_data_root), *tokenizer));
  std::printf("%s\n", calibration.message.c_str());

  std::vector<std::pair<std::string, QuantSpec>> specs;
  for (const std::string& g : absl::GetFlag(FLAGS_groups)) {
    int group = 0;
    if (!absl::SimpleAtoi(g, &group)) return absl::InvalidArgumentError("bad --groups");
    for (const std::string& dtype : absl::GetFlag(FLAGS_dtypes)) {
      ASSIGN_OR_RETURN(QuantSpec spec, SpecOf(dtype, group));
      specs.push_back({absl::StrCat(dtype, " g", g), spec});
    }
  }
  std::vector<Totals> totals(specs.size());
  const std::vector<float> ratios = DefaultClipRatios();
  const bool verbose = absl::GetFlag(FLAGS_verbose);
  if (verbose) {
    std::printf("| dtype | layer | mse_range ratio | weight MSE ratio/RTN | out err RTN | "
                "out err mse_range | best ratio by out err | its out err | gain RTN | "
                "gain mse_range |\n|---|---|---|---|---|---|---|---|---|---|\n");
  }
  RETURN_IF_ERROR(ForEachCalibratedBlock(
      model, calibration, nullptr,
      [&](int layer, const BlockWeights& w, const BlockActivations& acts) -> absl::Status {
        for (size_t s = 0; s < specs.size(); ++s) {
          for (const BlockLinearSpec& linear : BlockLinears(weights->config)) {
            const LinearRole l = linear.role;
            QuantSpec spec = specs[s].second;
            const float* m = w.linear[l].data();
            const int64_t rows = w.rows[l], cols = w.cols[l];
            ASSIGN_OR_RETURN(const float ratio, SearchClipRatio(m, rows, cols, spec, ratios));
            ASSIGN_OR_RETURN(const double weight_rtn, FakeQuantMse(m, rows, cols, spec));
            const float* x = acts.Get(InputPointOf(l));
            double out_best = 0;
            float best_ratio = 1;
            OutputEffect out_rtn, out_mse;
            for (float r : ratios) {
              spec.quantile = r;
              ASSIGN_OR_RETURN(const OutputEffect e,
                               OutputError(m, rows, cols, x, acts.tokens(), spec));
              if (r == 1.0f) out_rtn = e;
              if (r == ratio) out_mse = e;
              if (r == 1.0f || e.error < out_best) {
                out_best = e.error;
                best_ratio = r;
              }
            }
            spec.quantile = ratio;
            ASSIGN_OR_RETURN(const double weight_mse, FakeQuantMse(m, rows, cols, spec));
            Totals& t = totals[s];
            ++t.layers;
            t.clipped += ratio < 1.0f;
            t.worse += out_mse.error > out_rtn.error;
            t.rtn += out_rtn.error;
            t.mse += out_mse.error;
            t.best += out_best;
            t.gain_rtn += out_rtn.gain;
            t.gain_mse += out_mse.gain;
            if (verbose) {
              std::printf("| %s | %d.%s | %.3f | %.3f | %.5f | %.5f | %.3f | %.5f | %.4f | %.4f |\n",
                          specs[s].first.c_str(), layer, std::string(linear.name()).c_str(),
                          ratio, weight_mse / weight_rtn, out_rtn.error, out_mse.error,
                          best_ratio, out_best, out_rtn.gain, out_mse.gain);
            }
          }
          // The MLP output with gate, up and down all quantized, RTN vs
          // mse_range (each layer at its own searched ratio).
          const int64_t hidden = w.cols[kGate], inter = w.rows[kGate];
          const ConstRowMap x(acts.Get(BlockPoint::kMlpInput), acts.tokens(), hidden);
          const RowMatrix ref = Mlp(x, w.linear[kGate].data(), w.linear[kUp].data(),
                                    w.linear[kDown].data(), hidden, inter);
          double mlp_error[2];
          for (int use_mse = 0; use_mse < 2; ++use_mse) {
            std::vector<float> q[3];
            const LinearRole layers[3] = {kGate, kUp, kDown};
            for (int i = 0; i < 3; ++i) {
              QuantSpec spec = specs[s].second;
              const LinearRole l = layers[i];
              if (use_mse) {
                ASSIGN_OR_RETURN(spec.quantile, SearchClipRatio(w.linear[l].data(), w.rows[l],
                                                                w.cols[l], spec, ratios));
              }
              ASSIGN_OR_RETURN(q[i], FakeQuantize(w.linear[l].data(), w.rows[l], w.cols[l], spec));
            }
            const RowMatrix out = Mlp(x, q[0].data(), q[1].data(), q[2].data(), hidden, inter);
            mlp_error[use_mse] =
                (out - ref).cast<double>().squaredNorm() / ref.cast<double>().squaredNorm();
          }
          Totals& t = totals[s];
          t.mlp_rtn += mlp_error[0];
          t.mlp_mse += mlp_error[1];
          t.mlp_worse += mlp_error[1] > mlp_error[0];
          if (verbose) {
            std::printf("| %s | %d.mlp output | | | %.5f | %.5f | | | | |\n",
                        specs[s].first.c_str(), layer, mlp_error[0], mlp_error[1]);
          }
        }
        return absl::OkStatus();
      }));
  std::printf("\n| dtype | layers | clipped by mse_range | output error worse than RTN | "
              "sum of relative output errors: RTN | mse_range | best ratio per layer | "
              "MLP outputs worse | sum of relative MLP output errors: RTN | mse_range | "
              "mean output gain: RTN | mse_range |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t s = 0; s < specs.size(); ++s) {
    const Totals& t = totals[s];
    std::printf("| %s | %d | %d | %d | %.4f | %.4f | %.4f | %d of %d | %.4f | %.4f | %.4f | %.4f |\n",
                specs[s].first.c_str(), t.layers, t.clipped, t.worse, t.rtn, t.mse, t.best,
                t.mlp_worse, t.layers / static_cast<int>(BlockLinears(weights->config).size()), t.mlp_rtn, t.mlp_mse,
                t.gain_rtn / t.layers, t.gain_mse / t.layers);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace wq

int main(int argc, char** argv) {
  return wq::bench::RunTool(argc, argv, "layer_error",
                            "Per-layer output error of RTN vs mse_range on stories260K.",
                            &wq::Run);
}
