// What many unit tests share: where the test data lives, seeded random
// inputs, the weight formats to sweep, golden JSON files. No model code; the
// helpers that run a model are in tests/model_test_util.h.
#ifndef WQ_TESTS_TEST_UTIL_H_
#define WQ_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/formats/quant_format.h"
#include "nlohmann/json.hpp"

namespace wq::test {

// Paths as a test sees them from its runfiles root: //testdata filegroups,
// and ../shared (the team's read-only data, the @shared repository).
inline constexpr char kStoriesDir[] = "testdata/models/stories260K";
inline constexpr char kTestDataDir[] = "testdata/data";
inline constexpr char kSharedDataDir[] = "../shared/data";
inline constexpr char kSharedTokenizersDir[] = "../shared/tokenizers/";

// ../shared/models/<name>: the tiny checkpoints of every model family.
std::string SharedModelDir(const std::string& name);

// The directory `file` (a runfiles link under `dir`) really lies in: a
// quantization job's data_root, since calibration files must resolve inside
// it, as a deployment's do.
std::string CanonicalDataRoot(const std::string& dir = kTestDataDir,
                              const std::string& file = "tinystories_train_head.txt");

// The file parsed as JSON; null (and a test failure) when it cannot be read.
nlohmann::json ReadJson(const std::string& path);

// `size` floats from one std::mt19937(seed), drawn in order: N(0, 1) or
// U(-1, 1).
enum class Distribution { kNormal, kUniform };
std::vector<float> RandomVector(int64_t size, uint32_t seed,
                                Distribution distribution = Distribution::kNormal);

// Every weight dtype with each scheme it supports (asym where the format
// row allows it), in AllQuantFormats() order.
struct FormatCase {
  QuantType type;
  QuantScheme scheme;
};
std::vector<FormatCase> AllFormatCases();
// "int4_clip_asym": a readable GoogleTest parameter name.
std::string FormatCaseName(const FormatCase& c);

// max_i |a[i] - b[i]| (a size mismatch fails the test and compares the
// common prefix).
double MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace wq::test

#endif  // WQ_TESTS_TEST_UTIL_H_
