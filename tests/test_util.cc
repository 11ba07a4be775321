#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "common/io/file_util.h"
#include "gtest/gtest.h"

namespace wq::test {

std::string SharedModelDir(const std::string& name) { return "../shared/models/" + name; }

std::string CanonicalDataRoot(const std::string& dir, const std::string& file) {
  return std::filesystem::canonical(dir + "/" + file).parent_path().string();
}

nlohmann::json ReadJson(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? nlohmann::json::parse(*text) : nlohmann::json();
}

std::vector<float> RandomVector(int64_t size, uint32_t seed, Distribution distribution) {
  std::mt19937 rng(seed);
  std::vector<float> v(size);
  if (distribution == Distribution::kNormal) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (float& x : v) x = dist(rng);
  } else {
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (float& x : v) x = dist(rng);
  }
  return v;
}

std::vector<FormatCase> AllFormatCases() {
  std::vector<FormatCase> out;
  for (const QuantFormat& f : AllQuantFormats()) {
    out.push_back({f.type, QuantScheme::kSym});
    if (f.supports_asym) out.push_back({f.type, QuantScheme::kAsym});
  }
  return out;
}

std::string FormatCaseName(const FormatCase& c) {
  return std::string(GetQuantFormat(c.type).name) +
         (c.scheme == QuantScheme::kSym ? "_sym" : "_asym");
}

double MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  }
  return worst;
}

}  // namespace wq::test
