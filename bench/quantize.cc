// Memory and time of a quantization job on a real-sized checkpoint: runs
// QuantizeModel in-process on a model directory (e.g. one written by
// make_synthetic_model --dtype=bf16 --shard_gb=5) while a sampler records the
// peak anonymous resident memory (RssAnon: what the job allocated, not the
// checkpoint pages it maps). Prints a table row and writes JSON.
//
//   bazel-bin/bench/quantize --model_dir=/tmp/wq-synth/llama-2-7b
//       --algorithm=rtn --json_out=/tmp/quantize.json
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "common/artifact/artifact_store.h"
#include "common/io/file_util.h"
#include "common/io/process_memory.h"
#include "common/quant/quantizer.h"
#include "common/io/status_macros.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model_dir, "", "Hugging Face model directory to quantize");
ABSL_FLAG(std::string, artifact_root, "/tmp/wq-quantize-bench", "artifact store for the result");
ABSL_FLAG(std::string, weight_dtype, "INT4_CLIP", "WeightDtype name");
ABSL_FLAG(int, group_size, 32, "quantization group size");
ABSL_FLAG(std::string, compute_dtype, "FP32",
          "ComputeDtype name (FP32, BF16, INT8, with or without COMPUTE_): AWQ's search runs in it");
ABSL_FLAG(std::string, algorithm, "RTN", "RTN, AWQ or TEQ");
ABSL_FLAG(std::string, data_root, "../shared/data", "calibration data root (AWQ/TEQ)");
ABSL_FLAG(std::string, calibration_file, "tinystories_train_head.txt", "under --data_root");
ABSL_FLAG(int, n_samples, 16, "calibration blocks (AWQ/TEQ)");
ABSL_FLAG(int, seq_len, 512, "calibration block length (AWQ/TEQ)");
ABSL_FLAG(std::string, json_out, "", "write the measurements here as JSON");

namespace wq::bench {
namespace {

int64_t DirectoryBytes(const std::string& dir, const std::string& extension) {
  int64_t bytes = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() == extension) bytes += entry.file_size(ec);
  }
  return bytes;
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty()) return absl::InvalidArgumentError("--model_dir is required");
  QuantizeRequest request;
  request.model_id = std::filesystem::path(model_dir).filename().string();
  request.model_dir = model_dir;
  request.data_root = std::filesystem::weakly_canonical(absl::GetFlag(FLAGS_data_root)).string();
  v1::WeightDtype dtype;
  if (!v1::WeightDtype_Parse(absl::AsciiStrToUpper(absl::GetFlag(FLAGS_weight_dtype)), &dtype)) {
    return absl::InvalidArgumentError("unknown --weight_dtype");
  }
  v1::Algorithm algorithm;
  if (!v1::Algorithm_Parse(absl::AsciiStrToUpper(absl::GetFlag(FLAGS_algorithm)), &algorithm)) {
    return absl::InvalidArgumentError("unknown --algorithm");
  }
  std::string compute_name = absl::AsciiStrToUpper(absl::GetFlag(FLAGS_compute_dtype));
  if (!absl::StartsWith(compute_name, "COMPUTE_")) compute_name = "COMPUTE_" + compute_name;
  v1::ComputeDtype compute;
  if (!v1::ComputeDtype_Parse(compute_name, &compute)) {
    return absl::InvalidArgumentError("unknown --compute_dtype");
  }
  request.config.set_weight_dtype(dtype);
  request.config.set_compute_dtype(compute);
  request.config.set_group_size(absl::GetFlag(FLAGS_group_size));
  request.config.set_algorithm(algorithm);
  if (algorithm != v1::RTN) {
    request.config.mutable_calibration()->set_data_file(absl::GetFlag(FLAGS_calibration_file));
    request.config.mutable_calibration()->set_n_samples(absl::GetFlag(FLAGS_n_samples));
    request.config.mutable_calibration()->set_seq_len(absl::GetFlag(FLAGS_seq_len));
  }
  // A fresh store: an existing artifact would be reused instead of measured.
  std::filesystem::remove_all(absl::GetFlag(FLAGS_artifact_root));
  ASSIGN_OR_RETURN(std::unique_ptr<ArtifactStore> store,
                   ArtifactStore::Open(absl::GetFlag(FLAGS_artifact_root)));

  std::atomic<bool> done{false};
  std::atomic<int64_t> peak_anon{AnonymousResidentBytes()};
  std::thread sampler([&] {
    while (!done.load()) {
      const int64_t now = AnonymousResidentBytes();
      if (now > peak_anon.load()) peak_anon.store(now);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  const auto start = std::chrono::steady_clock::now();
  // Block times of the calibrated phases (AWQ / TEQ: per decoder block).
  std::vector<double> block_seconds;
  auto block_start = std::chrono::steady_clock::now();
  int last_block = 0;
  // Seconds from each report to the next, summed per phase: the scale search
  // (kGridSearch), and the clip search with the block's quantization and the
  // next block's capture (kClipSearch).
  std::map<std::string, double> phase_seconds;
  std::string last_phase;
  auto phase_start = start;
  request.on_progress = [&](const QuantizeProgress& p) {
    const auto report = std::chrono::steady_clock::now();
    if (!last_phase.empty()) {
      phase_seconds[last_phase] += std::chrono::duration<double>(report - phase_start).count();
    }
    last_phase = p.phase == QuantizePhase::kGridSearch   ? "scale_search"
                 : p.phase == QuantizePhase::kClipSearch ? "clip_quantize_capture"
                                                         : "other";
    phase_start = report;
    // A line per report: a run too long to finish still shows its pace.
    std::fprintf(stderr, "[%7.1f s] %5.1f%% RssAnon %.2f GB  %s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                 100 * p.fraction, AnonymousResidentBytes() / 1e9, p.message.c_str());
    if (p.phase != QuantizePhase::kGridSearch || p.step == last_block) return;
    const auto now = std::chrono::steady_clock::now();
    if (last_block > 0) {
      block_seconds.push_back(std::chrono::duration<double>(now - block_start).count());
    }
    block_start = now;
    last_block = p.step;
  };
  absl::StatusOr<v1::ArtifactManifest> manifest = QuantizeModel(request, *store);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  phase_seconds[last_phase] +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - phase_start).count();
  done.store(true);
  sampler.join();
  RETURN_IF_ERROR(manifest.status());

  const int64_t checkpoint_bytes = DirectoryBytes(model_dir, ".safetensors");
  double block_mean = 0;
  for (double s : block_seconds) block_mean += s / block_seconds.size();
  std::printf("| model | algorithm | checkpoint GB | wall s | peak RssAnon GB | peak RSS GB | "
              "read GB/s | s per block |\n|---|---|---|---|---|---|---|---|\n");
  std::printf("| %s | %s %s g%d | %.2f | %.1f | %.2f | %.2f | %.2f | %s |\n",
              request.model_id.c_str(), v1::Algorithm_Name(algorithm).c_str(),
              v1::WeightDtype_Name(dtype).c_str(), absl::GetFlag(FLAGS_group_size),
              checkpoint_bytes / 1e9, seconds, peak_anon.load() / 1e9,
              PeakResidentBytes() / 1e9, checkpoint_bytes / 1e9 / seconds,
              block_seconds.empty() ? "-" : absl::StrCat(block_mean).c_str());
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    const nlohmann::json json = {{"model", request.model_id},
                                 {"algorithm", v1::Algorithm_Name(algorithm)},
                                 {"weight_dtype", v1::WeightDtype_Name(dtype)},
                                 {"group_size", absl::GetFlag(FLAGS_group_size)},
                                 {"compute_dtype", v1::ComputeDtype_Name(compute)},
                                 {"n_samples", absl::GetFlag(FLAGS_n_samples)},
                                 {"seq_len", absl::GetFlag(FLAGS_seq_len)},
                                 {"seconds_by_phase", phase_seconds},
                                 {"checkpoint_bytes", checkpoint_bytes},
                                 {"wall_seconds", seconds},
                                 {"peak_rss_anon_bytes", peak_anon.load()},
                                 {"peak_rss_bytes", PeakResidentBytes()},
                                 {"seconds_per_calibrated_block", block_seconds},
                                 {"artifact_id", manifest->artifact_id()}};
    RETURN_IF_ERROR(WriteFileDurably(absl::GetFlag(FLAGS_json_out), json.dump(2)));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace wq::bench

int main(int argc, char** argv) {
  return wq::bench::RunTool(argc, argv, "quantize",
                            "Quantizes a model directory and reports time and peak memory.",
                            wq::bench::Run);
}
