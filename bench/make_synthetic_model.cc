// Writes a Hugging Face format Llama directory with random weights in a real
// model's shape (see synthetic_model.h), for bench/speed and by hand:
//
//   bazel-bin/bench/make_synthetic_model --shape=tinyllama-1.1b
//       --out=/tmp/wq-synth/tinyllama-1.1b [--seed=1] [--tokenizer=PATH]
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "bench/synthetic_model.h"

ABSL_FLAG(std::string, shape, "llama-110m", "tinyllama-1.1b or llama-110m");
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
  const absl::Status status = wq::bench::WriteSyntheticModel(
      *config, absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_tokenizer), out);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
