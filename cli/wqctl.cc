// wqctl: command-line client of the quantizer and inference services,
// usable as a CI step (exit 0 on success, 1 on failure, 2 on usage errors).
//
//   wqctl quantize --model=stories260K --weight_dtype=int4_clip --group_size=32
//   wqctl jobs | cancel --job=ID | watch --job=ID | artifacts
//   wqctl load --model=ID | models | info
//   wqctl generate --model=ID --prompt="Once upon a time" --max_new_tokens=64
//   wqctl chat --model=ID [--system=TEXT] --prompt=TEXT
//   wqctl tokenize --model=ID --prompt=TEXT | --ids=1,2,3
#include <map>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "cli/common.h"

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "wqctl [--quantizer=host:port] [--inference=host:port] <command> [flags]\n"
      "commands: quantize, watch, jobs, cancel, artifacts (quantizer service);\n"
      "          load, models, info, generate, chat, tokenize (inference service)");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    return wq::UsageError(absl::StrCat("expected one command, see --help\n",
                                       absl::ProgramUsageMessage()));
  }
  const std::string command = args[1];
  const std::map<std::string, int (*)()> commands = {
      {"quantize", wq::Quantize}, {"watch", wq::WatchCommand}, {"jobs", wq::Jobs},
      {"cancel", wq::Cancel},     {"artifacts", wq::Artifacts}, {"load", wq::Load},
      {"models", wq::Models},     {"info", wq::Info},           {"generate", wq::Generate},
      {"chat", wq::Chat},         {"tokenize", wq::Tokenize}};
  auto it = commands.find(command);
  if (it == commands.end()) {
    return wq::UsageError(absl::StrCat("unknown command \"", command, "\"\n",
                                       absl::ProgramUsageMessage()));
  }
  return it->second();
}
