// Quantization quality on stories260K: every algorithm x dtype x group size
// asked for is quantized through QuantizeModel into a fresh artifact store,
// loaded back and scored with the project's perplexity protocol (encode the
// whole file without BOS, first 20,480 tokens, 80 windows of 256, each fed as
// [BOS] + window[:-1]) on each evaluation file, against the fp32 model.
// Prints a markdown table and writes JSON; then the checks between its rows
// (PrintChecks); then times one AWQ row in a oneTBB arena of 1 and of 2
// threads.
//
// The accuracy tables live here, not in the unit tests: RTN g32 rows of the
// dtypes with a float64 reference of neural-compressor's numerics show it
// (column "INC f64") and whether the change is within the tolerance the
// unit tests use, 0.5 + 10 % of the reference (points of change).
//
//   bazel-bin/bench/quality [--model_dir=testdata/models/stories260K]
//       [--data_root=../shared/data]
//       [--algorithms=rtn,rtn_mse,rtn_dq,rtn_bf16_scale,awq,teq]
//       [--dtypes=int4_clip_sym,...] [--groups=32,64,-1]
//       [--n_samples=128 --seq_len=512] [--json=quality.json] [--print_log]
//
// The rows tests/quantized_model_test asserted on before its table moved
// here, and tests/calibration_test's AWQ / TEQ comparison (32 x 256
// calibration), as in bench/results/quality_after_test_move.md:
//
//   bazel-bin/bench/quality --groups=32 --eval_files=tinystories_valid.txt
//       --algorithms=rtn --thread_speedup=false
//       --dtypes=int8_sym,int8_asym,int4_clip_sym,int4_fullrange_sym,int4_clip_asym,
//                int4_fullrange_asym,nf4,fp4_e2m1,int3_sym,int3_asym,int2_sym,int2_asym
//   bazel-bin/bench/quality --groups=32 --eval_files=tinystories_valid.txt
//       --algorithms=rtn,rtn_mse,rtn_dq,rtn_bf16_scale,awq,teq --dtypes=int4_clip_sym
//       --n_samples=32 --seq_len=256 --thread_speedup=false
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/artifact/artifact_store.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/quant/perplexity.h"
#include "common/formats/quant_config.h"
#include "common/formats/quant_format.h"
#include "common/quant/quantizer.h"
#include "common/io/status_macros.h"
#include "common/tokenizer/tokenizer.h"
#include "tbb/task_arena.h"

ABSL_FLAG(std::string, model_dir, "testdata/models/stories260K", "fp32 source model");
ABSL_FLAG(std::string, data_root, "../shared/data", "directory of the text files below");
ABSL_FLAG(std::string, calib_file, "tinystories_train_head.txt",
          "AWQ / TEQ calibration text, under --data_root");
ABSL_FLAG(std::vector<std::string>, eval_files,
          std::vector<std::string>({"tinystories_valid.txt", "wikitext2_test.txt"}),
          "perplexity texts under --data_root; the first also gives top-1 agreement");
ABSL_FLAG(std::vector<std::string>, algorithms,
          std::vector<std::string>({"rtn", "rtn_mse", "awq", "teq"}),
          "rtn, rtn_mse (rtn with mse_range), rtn_dq (rtn with use_double_quant), "
          "rtn_bf16_scale (rtn with bf16 scales), awq, teq");
ABSL_FLAG(std::vector<std::string>, dtypes,
          std::vector<std::string>({"int4_clip_sym", "int4_fullrange_sym", "int4_clip_asym", "nf4",
                                    "fp4_e2m1", "int3_sym", "int3_asym", "int8_sym"}),
          "weight dtype, with _sym / _asym for integers (int4 asym is int4_clip_asym)");
ABSL_FLAG(std::vector<std::string>, groups, std::vector<std::string>({"32", "64", "-1"}),
          "group sizes; -1 = per output channel");
ABSL_FLAG(int, n_samples, 128, "calibration blocks");
ABSL_FLAG(int, seq_len, 512, "calibration block length");
ABSL_FLAG(std::string, json, "", "write the results here as JSON");
ABSL_FLAG(bool, thread_speedup, true, "time AWQ int4_clip sym g32 with 1 and 2 threads");
ABSL_FLAG(std::string, work_dir, "/tmp/wq_quality", "scratch artifact stores");
ABSL_FLAG(bool, print_log, false,
          "print each quantization job's log (AWQ / TEQ per-block reports) to stderr");

namespace wq {
namespace {

struct EvalSet {
  std::string name;
  std::vector<int> ids;
  PerplexityResult fp32;
};

struct Row {
  std::string algorithm, dtype;
  int group = 0;
  double bits = 0, seconds = 0;
  std::vector<double> ppl, change, top1;  // per eval set
  std::vector<PerplexityResult> results;  // per eval set
  // PPL over the RTN row of the same dtype and group, per eval set; empty
  // for RTN rows or when RTN did not run first.
  std::vector<PerplexityRatio> vs_rtn;
  // The float64 reference's PPL change of this row on the first eval set
  // (RTN g32 of the dtypes it covers), NaN where there is none.
  double reference = std::nan("");
};

// PPL change (%) on tinystories_valid.txt of RTN g32 on stories260K from an
// independent float64 implementation of neural-compressor's numerics.
double IncReferenceChange(const v1::WeightOnlyQuantConfig& c) {
  struct Ref {
    v1::WeightDtype dtype;
    v1::Scheme scheme;
    double change;
  };
  static constexpr Ref kRefs[] = {
      {v1::INT8, v1::SYM, 0.10},           {v1::INT8, v1::ASYM, 0.02},
      {v1::INT4_CLIP, v1::SYM, 14.5},      {v1::INT4_FULLRANGE, v1::SYM, 7.1},
      {v1::INT4_CLIP, v1::ASYM, 7.9},      {v1::INT4_FULLRANGE, v1::ASYM, 7.9},
      {v1::NF4, v1::SYM, 10.1},            {v1::FP4_E2M1, v1::SYM, 16.2}};
  if (c.algorithm() != v1::RTN || c.mse_range() || c.use_double_quant() ||
      c.scale_dtype() == v1::SCALE_BF16 || c.group_size() != 32) {
    return std::nan("");
  }
  for (const Ref& r : kRefs) {
    if (r.dtype == c.weight_dtype() && r.scheme == c.scheme()) return r.change;
  }
  return std::nan("");
}

// The unit tests' tolerance around the reference (points of change).
bool WithinReference(double change, double reference) {
  return std::abs(change - reference) <= 0.5 + 0.1 * reference;
}

// "0.953 [0.941, 0.966]": a ratio to RTN and its 95 % interval.
std::string RatioText(const PerplexityRatio& r) {
  return absl::StrFormat("%.3f [%.3f, %.3f]", r.ratio, r.low, r.high);
}

absl::StatusOr<v1::WeightOnlyQuantConfig> ConfigOf(const std::string& algorithm,
                                                   const std::string& name, int group) {
  v1::WeightOnlyQuantConfig c;
  c.set_scheme(v1::SYM);
  absl::string_view dtype(name);
  if (absl::ConsumeSuffix(&dtype, "_asym")) {
    c.set_scheme(v1::ASYM);
  } else {
    absl::ConsumeSuffix(&dtype, "_sym");
  }
  ASSIGN_OR_RETURN(QuantType type, ParseQuantType(std::string(dtype)));
  c.set_weight_dtype(WeightDtypeOf(type));
  c.set_group_size(group);
  if (algorithm == "rtn_mse") {
    c.set_algorithm(v1::RTN);
    c.set_mse_range(true);
  } else if (algorithm == "rtn_dq") {
    c.set_algorithm(v1::RTN);
    c.set_use_double_quant(true);
  } else if (algorithm == "rtn_bf16_scale") {
    c.set_algorithm(v1::RTN);
    c.set_scale_dtype(v1::SCALE_BF16);
  } else if (algorithm == "rtn" || algorithm == "awq" || algorithm == "teq") {
    c.set_algorithm(algorithm == "rtn" ? v1::RTN : algorithm == "awq" ? v1::AWQ : v1::TEQ);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown algorithm ", algorithm));
  }
  c.mutable_calibration()->set_data_file(absl::GetFlag(FLAGS_calib_file));
  c.mutable_calibration()->set_n_samples(absl::GetFlag(FLAGS_n_samples));
  c.mutable_calibration()->set_seq_len(absl::GetFlag(FLAGS_seq_len));
  return c;
}

// Quantizes into a fresh store (so nothing is reused) and loads the result.
absl::StatusOr<std::shared_ptr<const LlamaWeights>> Quantize(
    const v1::WeightOnlyQuantConfig& config, double* seconds, double* bits) {
  const std::string root = absl::GetFlag(FLAGS_work_dir);
  std::filesystem::remove_all(root);
  ASSIGN_OR_RETURN(std::unique_ptr<ArtifactStore> store, ArtifactStore::Open(root));
  QuantizeRequest request;
  request.model_id = "stories260K";
  request.model_dir = absl::GetFlag(FLAGS_model_dir);
  request.data_root = absl::GetFlag(FLAGS_data_root);
  request.config = config;
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(v1::ArtifactManifest manifest, QuantizeModel(request, *store));
  *seconds = absl::ToDoubleSeconds(absl::Now() - start);
  *bits = manifest.bits_per_weight();
  if (absl::GetFlag(FLAGS_print_log)) {
    for (const std::string& line : manifest.log()) std::fprintf(stderr, "  %s\n", line.c_str());
  }
  return store->LoadWeights(manifest.artifact_id());
}

std::string Json(const std::vector<Row>& rows, const std::vector<EvalSet>& evals,
                 const std::string& speedup) {
  std::vector<std::string> fp32;
  for (const EvalSet& e : evals) {
    fp32.push_back(absl::StrFormat("\"%s\": %.5f", e.name, e.fp32.perplexity));
  }
  std::vector<std::string> out;
  for (const Row& r : rows) {
    std::vector<std::string> per_set;
    for (size_t i = 0; i < evals.size(); ++i) {
      std::string vs_rtn;
      if (!r.vs_rtn.empty()) {
        vs_rtn = absl::StrFormat(", \"ppl_vs_rtn\": {\"ratio\": %.5f, \"low95\": %.5f, \"high95\": %.5f}",
                                 r.vs_rtn[i].ratio, r.vs_rtn[i].low, r.vs_rtn[i].high);
      }
      per_set.push_back(absl::StrFormat(
          "\"%s\": {\"ppl\": %.5f, \"change_percent\": %.3f, \"top1_percent\": %.2f%s}",
          evals[i].name, r.ppl[i], r.change[i], r.top1[i], vs_rtn));
    }
    const std::string reference =
        std::isnan(r.reference)
            ? ""
            : absl::StrFormat(", \"inc_reference_change_percent\": %.2f", r.reference);
    out.push_back(absl::StrFormat(
        "    {\"algorithm\": \"%s\", \"dtype\": \"%s\", \"group_size\": %d, "
        "\"bits_per_weight\": %.4f, \"quantize_seconds\": %.3f, %s%s}",
        r.algorithm, r.dtype, r.group, r.bits, r.seconds, absl::StrJoin(per_set, ", "),
        reference));
  }
  return absl::StrCat("{\n  \"model\": \"", absl::GetFlag(FLAGS_model_dir),
                      "\",\n  \"calibration\": \"", absl::GetFlag(FLAGS_calib_file), " ",
                      absl::GetFlag(FLAGS_n_samples), "x", absl::GetFlag(FLAGS_seq_len),
                      "\",\n  \"protocol\": \"first 20480 tokens, 80 windows of 256, BOS-prefixed\",\n"
                      "  \"fp32_ppl\": {",
                      absl::StrJoin(fp32, ", "), "},\n  \"rows\": [\n",
                      absl::StrJoin(out, ",\n"), "\n  ],\n  \"thread_speedup\": ",
                      speedup.empty() ? "null" : speedup, "\n}\n");
}

// The checks between rows that the unit tests made on every dtype before
// the tables moved here, on the first eval set, for the rows present.
void PrintChecks(const std::vector<Row>& rows, const std::string& eval) {
  auto find = [&](const std::string& algorithm, const std::string& dtype,
                  int group) -> const Row* {
    for (const Row& r : rows) {
      if (r.algorithm == algorithm && r.dtype == dtype && r.group == group) return &r;
    }
    return nullptr;
  };
  std::vector<std::string> lines;
  int failed = 0;
  auto check = [&](bool ok, const Row& r, const std::string& what) {
    failed += !ok;
    lines.push_back(absl::StrFormat("| %s | %s | %d | %s | %s |", r.algorithm, r.dtype, r.group,
                                    what, ok ? "yes" : "**NO**"));
  };
  for (const Row& r : rows) {
    const double change = r.change.front();
    if (!std::isnan(r.reference)) {
      check(WithinReference(change, r.reference), r,
            absl::StrFormat("change %+.2f%% within 0.5 + 10%% of the reference %+.2f%%", change,
                            r.reference));
      if (absl::StartsWith(r.dtype, "int8")) {
        check(change < 1.0 && r.top1.front() >= 97.0, r,
              absl::StrFormat("change %+.2f%% < 1 %%, top-1 %.1f%% >= 97 %%", change,
                              r.top1.front()));
      } else {
        check(change < 20.0, r, absl::StrFormat("change %+.2f%% < 20 %%", change));
      }
    }
    const Row* rtn = find("rtn", r.dtype, r.group);
    if (rtn != nullptr && r.algorithm != "rtn" && absl::StartsWith(r.algorithm, "rtn_")) {
      // The clip search only lowers the weight error; the scale encodings
      // cost little.
      const double slack = r.algorithm == "rtn_mse" ? 0.1 : 1.0;
      check(change <= rtn->change.front() + slack, r,
            absl::StrFormat("change %+.2f%% <= RTN's %+.2f%% + %.1f", change,
                            rtn->change.front(), slack));
    }
    if (r.algorithm == "rtn" && absl::StartsWith(r.dtype, "int2")) {
      const std::string int3 = absl::StrCat("int3", r.dtype.substr(4));
      if (const Row* other = find("rtn", int3, r.group); other != nullptr) {
        check(other->ppl.front() < r.ppl.front(), r,
              absl::StrFormat("PPL %.4f above %s's %.4f (fewer bits, more error)",
                              r.ppl.front(), int3, other->ppl.front()));
      }
    }
  }
  if (lines.empty()) return;
  std::printf("\nChecks on %s (%zu, %d failed)\n\n| algorithm | dtype | group | check | holds |\n"
              "|---|---|---|---|---|\n",
              eval.c_str(), lines.size(), failed);
  for (const std::string& line : lines) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  const std::string data_root = absl::GetFlag(FLAGS_data_root);
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::Load(model_dir + "/tokenizer.model"));
  ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> fp32_weights, LoadLlamaModelDir(model_dir));
  const LlamaModel fp32(fp32_weights);
  std::vector<EvalSet> evals;
  for (const std::string& file : absl::GetFlag(FLAGS_eval_files)) {
    EvalSet e;
    e.name = std::string(absl::StripSuffix(file, ".txt"));
    ASSIGN_OR_RETURN(std::string text, ReadFile(absl::StrCat(data_root, "/", file)));
    ASSIGN_OR_RETURN(e.ids, tokenizer->Encode(text, /*add_bos=*/false));
    ASSIGN_OR_RETURN(e.fp32, EvaluatePerplexity(fp32, e.ids, tokenizer->bos_id(), {}));
    evals.push_back(std::move(e));
  }
  std::printf("stories260K, calibration %s %dx%d; PPL change vs fp32 (", 
              absl::GetFlag(FLAGS_calib_file).c_str(), absl::GetFlag(FLAGS_n_samples),
              absl::GetFlag(FLAGS_seq_len));
  for (const EvalSet& e : evals) std::printf(" %s %.4f", e.name.c_str(), e.fp32.perplexity);
  std::printf(" ); top-1 agreement on %s; vs RTN: PPL / PPL of RTN with the same dtype and "
              "group, [95 %% interval over the 80 windows, paired]\n\n",
              evals.front().name.c_str());
  std::printf("| algorithm | dtype | group | bits/w |");
  for (const EvalSet& e : evals) std::printf(" PPL %s | change | vs RTN |", e.name.c_str());
  std::printf(" top-1 | INC f64 | time s |\n|---|---|---|---|");
  for (size_t i = 0; i < evals.size(); ++i) std::printf("---|---|---|");
  std::printf("---|---|---|\n");
  std::fflush(stdout);

  std::vector<Row> rows;
  std::string speedup;
  const std::string json = absl::GetFlag(FLAGS_json);
  for (const std::string& g : absl::GetFlag(FLAGS_groups)) {
    int group = 0;
    if (!absl::SimpleAtoi(g, &group)) return absl::InvalidArgumentError("bad --groups");
    for (const std::string& dtype : absl::GetFlag(FLAGS_dtypes)) {
      for (const std::string& algorithm : absl::GetFlag(FLAGS_algorithms)) {
        ASSIGN_OR_RETURN(v1::WeightOnlyQuantConfig config, ConfigOf(algorithm, dtype, group));
        Row r{algorithm, dtype, group};
        r.reference = IncReferenceChange(config);
        ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> weights,
                         Quantize(config, &r.seconds, &r.bits));
        const LlamaModel model(weights);
        std::printf("| %s | %s | %s | %.3f |", algorithm.c_str(), dtype.c_str(),
                    group == -1 ? "ch" : g.c_str(), r.bits);
        const Row* rtn = nullptr;
        for (const Row& done : rows) {
          if (done.algorithm == "rtn" && done.dtype == dtype && done.group == group) rtn = &done;
        }
        for (size_t i = 0; i < evals.size(); ++i) {
          const EvalSet& e = evals[i];
          ASSIGN_OR_RETURN(PerplexityResult ppl,
                           EvaluatePerplexity(model, e.ids, tokenizer->bos_id(), {}));
          r.ppl.push_back(ppl.perplexity);
          r.change.push_back(100.0 * (ppl.perplexity / e.fp32.perplexity - 1.0));
          r.top1.push_back(100.0 * Top1Agreement(ppl.argmax, e.fp32.argmax));
          std::string vs_rtn = "-";
          if (rtn != nullptr && algorithm != "rtn") {
            r.vs_rtn.push_back(PairedPerplexityRatio(ppl, rtn->results[i]));
            vs_rtn = RatioText(r.vs_rtn.back());
          }
          std::printf(" %.4f | %+.2f%% | %s |", r.ppl.back(), r.change.back(), vs_rtn.c_str());
          r.results.push_back(std::move(ppl));
        }
        const std::string reference =
            std::isnan(r.reference)
                ? "-"
                : absl::StrFormat("%+.2f%% %s", r.reference,
                                  WithinReference(r.change.front(), r.reference) ? "within"
                                                                                 : "OUTSIDE");
        std::printf(" %.1f%% | %s | %.2f |\n", r.top1.front(), reference.c_str(), r.seconds);
        std::fflush(stdout);
        rows.push_back(std::move(r));
        // Rewritten after every row: a long run stopped early keeps its rows.
        if (!json.empty()) RETURN_IF_ERROR(WriteFileDurably(json, Json(rows, evals, speedup)));
      }
    }
  }

  PrintChecks(rows, evals.front().name);

  if (absl::GetFlag(FLAGS_thread_speedup)) {
    ASSIGN_OR_RETURN(v1::WeightOnlyQuantConfig config, ConfigOf("awq", "int4_clip_sym", 32));
    double seconds[2] = {0, 0};
    double bits = 0;
    for (int threads : {1, 2}) {
      tbb::task_arena arena(threads);
      absl::Status status = arena.execute([&] {
        return Quantize(config, &seconds[threads - 1], &bits).status();
      });
      RETURN_IF_ERROR(status);
    }
    std::printf("\nAWQ int4_clip sym g32 quantization: 1 thread %.2f s, 2 threads %.2f s, "
                "speed-up %.2fx\n",
                seconds[0], seconds[1], seconds[0] / seconds[1]);
    speedup = absl::StrFormat(
        "{\"row\": \"awq int4_clip_sym g32\", \"seconds_1_thread\": %.3f, "
        "\"seconds_2_threads\": %.3f, \"speedup\": %.3f}",
        seconds[0], seconds[1], seconds[0] / seconds[1]);
    if (!json.empty()) RETURN_IF_ERROR(WriteFileDurably(json, Json(rows, evals, speedup)));
  }
  std::filesystem::remove_all(absl::GetFlag(FLAGS_work_dir));
  return absl::OkStatus();
}

}  // namespace
}  // namespace wq

int main(int argc, char** argv) {
  return wq::bench::RunTool(argc, argv, "quality",
                            "Quantization quality of every algorithm x dtype on stories260K.",
                            &wq::Run);
}
