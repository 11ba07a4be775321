// wqctl: command-line client of the quantizer and inference services,
// usable as a CI step (exit codes in cli/common.h; `wqctl --help`).
//
//   wqctl quantize --model=stories260K --weight_dtype=int4_clip --group_size=32
//   wqctl jobs | cancel --job=ID | watch --job=ID | artifacts
//   wqctl load --model=ID | models | info
//   wqctl generate --model=ID --prompt="Once upon a time" --max_new_tokens=64
//   wqctl chat --model=ID [--system=TEXT] --prompt=TEXT
//   wqctl tokenize --model=ID --prompt=TEXT | --ids=1,2,3
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/common.h"

namespace {

struct Command {
  const char* name;
  int (*run)();
  const char* summary;
  std::vector<const char*> flags;  // besides the common ones
};

const std::vector<Command>& Commands() {
  static const auto* const kCommands = new std::vector<Command>{
      {"quantize", wq::Quantize,
       "submit a quantization job and (with --wait) watch it to its end; prints the "
       "artifact id",
       {"model", "weight_dtype", "scheme", "group_size", "algorithm", "mse_range", "scale_dtype",
        "compute_dtype", "double_quant", "skip_modules", "calib_file", "n_samples", "seq_len",
        "wait"}},
      {"watch", wq::WatchCommand,
       "stream a job's progress until it ends (exit 1 unless it succeeded), waiting with "
       "backoff while the quantizer is unavailable (a restart keeps the job)",
       {"job"}},
      {"jobs", wq::Jobs, "list jobs, oldest first", {}},
      {"cancel", wq::Cancel, "cancel a queued or running job", {"job"}},
      {"artifacts", wq::Artifacts, "list quantized artifacts", {}},
      {"load", wq::Load, "load a model or artifact into the inference service", {"model"}},
      {"models", wq::Models, "list loaded and loadable models", {}},
      {"info", wq::Info, "the inference server's build, CPU and limits", {}},
      {"generate", wq::Generate, "stream a completion of --prompt",
       {"model", "prompt", "max_new_tokens", "temperature", "top_k", "top_p",
        "repetition_penalty", "seed", "stop"}},
      {"chat", wq::Chat, "stream the assistant's answer to --prompt (chat template)",
       {"model", "prompt", "system", "max_new_tokens", "temperature", "top_k", "top_p",
        "repetition_penalty", "seed", "stop"}},
      {"tokenize", wq::Tokenize, "--prompt to token ids, or --ids to text",
       {"model", "prompt", "ids", "add_special_tokens", "skip_special_tokens"}},
  };
  return *kCommands;
}

constexpr const char* kCommonFlags[] = {"quantizer", "inference", "server", "timeout_s",
                                        "wait_for_ready", "output"};

constexpr char kExitCodes[] =
    "exit codes: 0 ok, 1 the job or request failed, 2 usage, 3 server unavailable, "
    "4 --timeout_s passed\n";

void PrintFlags(const char* title, const std::vector<const char*>& names) {
  if (names.empty()) return;
  std::cout << title << ":\n";
  for (const char* name : names) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) continue;
    std::cout << absl::StrFormat("  --%s (default \"%s\")\n      %s\n", name,
                                 flag->DefaultValue(), flag->Help());
  }
}

// Our own help, exiting 0: absl's --help exits 1 and lists every flag of
// every command.
void PrintHelp(const Command* command) {
  if (command == nullptr) {
    std::cout << "usage: wqctl <command> [flags]\n\ncommands:\n";
    for (const Command& c : Commands()) {
      std::cout << absl::StrFormat("  %-10s %s\n", c.name, c.summary);
    }
    std::cout << "\n`wqctl <command> --help` shows a command's flags.\n\n";
  } else {
    std::cout << "usage: wqctl " << command->name << " [flags]\n" << command->summary
              << "\n\n";
    PrintFlags("flags", command->flags);
    std::cout << "\n";
  }
  PrintFlags("common flags", std::vector<const char*>(std::begin(kCommonFlags),
                                                       std::end(kCommonFlags)));
  std::cout << "\n" << kExitCodes;
}

const Command* FindCommand(const std::string& name) {
  for (const Command& c : Commands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "wqctl [--quantizer=host:port] [--inference=host:port] <command> [flags]; "
      "`wqctl --help` lists the commands");
  // Help before parsing: it must work whatever else is on the line.
  const Command* help_for = nullptr;
  bool help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-help" || arg == "-h") {
      help = true;
    } else if (arg[0] != '-' && help_for == nullptr) {
      help_for = FindCommand(arg);
    }
  }
  if (help) {
    PrintHelp(help_for);
    return wq::kOk;
  }
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  wq::CommandDeadline();  // the clock starts now
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output != "text" && output != "json") return wq::UsageError("--output must be text or json");
  if (absl::GetFlag(FLAGS_timeout_s) <= 0) return wq::UsageError("--timeout_s must be > 0");
  if (args.size() != 2) return wq::UsageError("expected one command; see wqctl --help");
  const Command* command = FindCommand(args[1]);
  if (command == nullptr) {
    return wq::UsageError(absl::StrCat("unknown command \"", args[1], "\"; see wqctl --help"));
  }
  return command->run();
}
