// Encode speed of the tokenizers LoadModelDir picks, one thread, one
// Encode call per line (as prompts arrive), best of --reps passes:
//
// one row per tokenizer implementation by default: byte-level BPE from
// vocab.json + merges.txt (gpt2, qwen2), SentencePiece-style tokenizer.json
// (phi3-mini), tiktoken tokenizer.model (llama3), SentencePiece (llama2).
//
//   bazel-bin/bench/tokenizer_bench
//       [--dirs=../shared/tokenizers/gpt2,../shared/tokenizers/qwen2]
//       [--text=../shared/data/tinystories_valid.txt] [--reps=3]
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "common/io/file_util.h"
#include "common/io/status_macros.h"
#include "common/tokenizer/tokenizer.h"

ABSL_FLAG(std::vector<std::string>, dirs,
          std::vector<std::string>({"../shared/tokenizers/gpt2",
                                    "../shared/tokenizers/qwen2",
                                    "../shared/tokenizers/phi3-mini",
                                    "../shared/tokenizers/llama3",
                                    "../shared/tokenizers/llama2"}),
          "model directories holding tokenizer files");
ABSL_FLAG(std::string, text, "../shared/data/tinystories_valid.txt",
          "UTF-8 text, encoded line by line");
ABSL_FLAG(int, reps, 3, "passes over the text; the fastest counts");

namespace wq {
namespace {

absl::Status Run() {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(absl::GetFlag(FLAGS_text)));
  const std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  for (const std::string& dir : absl::GetFlag(FLAGS_dirs)) {
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok,
                     Tokenizer::LoadModelDir(dir));
    size_t tokens = 0;
    absl::Status status;
    const double seconds = bench::BestSeconds(absl::GetFlag(FLAGS_reps), [&] {
      tokens = 0;
      for (absl::string_view line : lines) {
        auto ids = tok->Encode(std::string_view(line.data(), line.size()),
                               /*add_bos=*/false);
        if (!ids.ok()) status = ids.status();
        tokens += ids.ok() ? ids->size() : 0;
      }
    });
    RETURN_IF_ERROR(status);
    std::printf("%-32s %9zu tokens  %7.3f s  %10.0f tokens/s  %6.2f MB/s\n",
                dir.c_str(), tokens, seconds, tokens / seconds,
                text.size() / seconds / 1e6);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace wq

int main(int argc, char** argv) {
  return wq::bench::RunTool(argc, argv, "tokenizer_bench",
                            "Encode speed of model-directory tokenizers.",
                            &wq::Run);
}
