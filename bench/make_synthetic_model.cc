// Writes a Hugging Face format Llama directory with random weights in a real
// model's shape (see synthetic_model.h), for bench/speed and by hand:
//
//   bazel-bin/bench/make_synthetic_model --shape=llama-2-7b --dtype=bf16
//       --shard_gb=5 --out=/tmp/wq-synth/llama-2-7b [--seed=1] [--tokenizer=PATH]
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "bench/synthetic_model.h"

ABSL_FLAG(std::string, shape, "llama-110m",
          "llama-110m, tinyllama-1.1b, llama-3.2-1b, llama-2-7b, mistral-7b, qwen2.5-0.5b or qwen2.5-7b");
ABSL_FLAG(std::string, dtype, "f32", "weight dtype: f32, bf16 or f16");
ABSL_FLAG(double, shard_gb, 0, "shard size in GB (1e9 bytes) with an index file; 0: one file");
ABSL_FLAG(std::string, out, "", "output directory (outside the repository)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the random weights");
ABSL_FLAG(std::string, tokenizer, "../shared/tokenizers/llama2/tokenizer.model",
          "tokenizer.model to copy into the directory");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Writes a random-weight Llama model directory.");
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "--out is required\n");
    return 2;
  }
  absl::StatusOr<wq::LlamaConfig> config = wq::bench::SyntheticShape(absl::GetFlag(FLAGS_shape));
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 2;
  }
  wq::bench::SyntheticOptions options;
  options.seed = absl::GetFlag(FLAGS_seed);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype != "f32" && dtype != "bf16" && dtype != "f16") {
    std::fprintf(stderr, "--dtype must be f32, bf16 or f16\n");
    return 2;
  }
  absl::StatusOr<wq::DType> parsed = wq::ParseDType(absl::AsciiStrToUpper(dtype));
  options.dtype = *parsed;
  options.shard_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_shard_gb) * 1e9);
  const absl::Status status = wq::bench::WriteSyntheticModel(
      *config, options, absl::GetFlag(FLAGS_tokenizer), out);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
