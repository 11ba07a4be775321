// quantizer_service --once, as a CI step runs it: one job, no server, the
// artifact id on stdout and the exit code saying how it ended.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server_process.h"

namespace wq::e2e {
namespace {

class OneShotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string runfiles = std::string(std::getenv("TEST_SRCDIR")) + "/wq";
    binary_ = runfiles + "/quantizer_service/quantizer_service";
    dir_ = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::create_directories(dir_ + "/models");
    std::filesystem::copy(runfiles + "/testdata/models/stories260K", dir_ + "/models/stories260K",
                          std::filesystem::copy_options::recursive);
  }

  CommandResult Once(const std::string& model_id, std::vector<std::string> flags) {
    std::vector<std::string> argv = {binary_, "--once", "--threads=1",
                                     "--model_root=" + dir_ + "/models",
                                     "--artifact_root=" + dir_ + "/artifacts",
                                     "--model_id=" + model_id};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return RunCommand(argv, dir_);
  }

  std::string binary_, dir_;
};

TEST_F(OneShotTest, WritesTheArtifactAndPrintsItsId) {
  const std::string config = dir_ + "/config.json";
  std::ofstream(config) << R"({"weight_dtype": "INT4_CLIP", "group_size": 32})";
  const CommandResult run = Once("stories260K", {"--config_file=" + config});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "stories260K-int4_clip-sym-g32-rtn-babacf9106\n");
  const std::string artifact = dir_ + "/artifacts/stories260K-int4_clip-sym-g32-rtn-babacf9106";
  EXPECT_TRUE(std::filesystem::is_regular_file(artifact + "/manifest.json")) << run.err;
  EXPECT_TRUE(std::filesystem::is_regular_file(artifact + "/model.safetensors"));
  EXPECT_NE(run.err.find("\"job_progress\""), std::string::npos) << run.err;
  // Only the finished artifact and the job records: no temporary left.
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_ + "/artifacts")) {
    const std::string name = entry.path().filename();
    EXPECT_TRUE(name == ".jobs" || name == "stories260K-int4_clip-sym-g32-rtn-babacf9106")
        << name;
    ++entries;
  }
  EXPECT_EQ(entries, 2);

  // Again: the artifact exists, so the job reuses it and succeeds at once.
  const CommandResult again =
      Once("stories260K", {R"(--config_json={"weightDtype":"INT4_CLIP","groupSize":32})"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, run.out);
}

TEST_F(OneShotTest, FailedJobExitsOne) {
  // Weights cut short: accepted at submission, fails while it runs.
  const std::string broken = dir_ + "/models/broken";
  std::filesystem::create_directories(broken);
  for (const char* file : {"config.json", "tokenizer.model"}) {
    std::filesystem::copy(dir_ + "/models/stories260K/" + file, broken + "/" + file);
  }
  std::filesystem::copy(dir_ + "/models/stories260K/model.safetensors",
                        broken + "/model.safetensors");
  std::filesystem::resize_file(broken + "/model.safetensors", 600000);
  const CommandResult run = Once("broken", {R"(--config_json={"weight_dtype":"INT4_CLIP"})"});
  EXPECT_EQ(run.exit_code, 1) << run.err;
  EXPECT_EQ(run.out, "");
  EXPECT_NE(run.err.find("truncated"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("\"job_failed\""), std::string::npos) << run.err;
}

TEST_F(OneShotTest, RefusedRequestsExitTwo) {
  EXPECT_EQ(Once("stories260K", {R"(--config_json={"no_such_field":1})"}).exit_code, 2);
  EXPECT_EQ(Once("stories260K", {}).exit_code, 2);  // no config at all
  EXPECT_EQ(Once("missing", {R"(--config_json={})"}).exit_code, 2);
  const CommandResult group = Once("stories260K", {R"(--config_json={"group_size":-5})"});
  EXPECT_EQ(group.exit_code, 2) << group.err;
  EXPECT_NE(group.err.find("group_size"), std::string::npos) << group.err;
}

}  // namespace
}  // namespace wq::e2e
