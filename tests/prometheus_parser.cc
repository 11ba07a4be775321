#include "tests/prometheus_parser.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"

namespace wq {

nlohmann::json ParseWithPrometheusClient(const std::string& text) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* tmpdir = std::getenv("TEST_TMPDIR");
  if (srcdir == nullptr || tmpdir == nullptr) {
    ADD_FAILURE() << "run under bazel test (TEST_SRCDIR, TEST_TMPDIR unset)";
    return nullptr;
  }
  const std::string input = std::string(tmpdir) + "/exposition.txt";
  std::ofstream(input) << text;
  const std::string command = std::string("/usr/bin/python3 ") + srcdir +
                              "/wq/tests/prometheus_parse.py " + input;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return nullptr;
  }
  std::string output;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
  if (pclose(pipe) != 0) {
    ADD_FAILURE() << command << " failed (see its stderr) on:\n" << text;
    return nullptr;
  }
  nlohmann::json parsed = nlohmann::json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object()) ADD_FAILURE() << "not JSON: " << output;
  return parsed;
}

std::optional<double> SampleValue(const nlohmann::json& parsed, const std::string& sample_name,
                                  const std::map<std::string, std::string>& labels) {
  if (!parsed.is_object()) return std::nullopt;
  for (const nlohmann::json& family : parsed["families"]) {
    for (const nlohmann::json& sample : family["samples"]) {
      if (sample["name"] != sample_name ||
          sample["labels"].get<std::map<std::string, std::string>>() != labels) {
        continue;
      }
      if (sample["value"].is_number()) return sample["value"].get<double>();
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace wq
