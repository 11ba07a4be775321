// wqctl as CI runs it, against the real servers: help, exit codes, JSON
// lines, deadlines, and a watch that outlives a quantizer restart.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server_process.h"

namespace wq::e2e {
namespace {

std::string Runfiles() { return std::string(std::getenv("TEST_SRCDIR")) + "/wq"; }

// Every line of `out` as a JSON object.
std::vector<nlohmann::json> JsonLines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json object = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(object.is_object()) << "not a JSON object: " << line;
    lines.push_back(std::move(object));
  }
  return lines;
}

class WqctlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(std::string(std::getenv("TEST_TMPDIR")) + "/wqctl");
    std::filesystem::create_directories(*dir_ + "/models");
    std::filesystem::copy(Runfiles() + "/testdata/models/stories260K",
                          *dir_ + "/models/stories260K",
                          std::filesystem::copy_options::recursive);
  }

  std::unique_ptr<ServerProcess> StartQuantizer(const std::string& name,
                                                const std::string& listen = "127.0.0.1:0") {
    return std::make_unique<ServerProcess>(
        name, Runfiles() + "/quantizer_service/quantizer_service", Roots(), *dir_, listen);
  }

  std::vector<std::string> Roots() const {
    return {"--model_root=" + *dir_ + "/models", "--artifact_root=" + *dir_ + "/artifacts",
            "--threads=1"};
  }

  CommandResult Wqctl(std::vector<std::string> args) {
    args.insert(args.begin(), Runfiles() + "/cli/wqctl");
    return RunCommand(args, *dir_);
  }

  static std::string* dir_;
};

std::string* WqctlTest::dir_ = nullptr;

TEST_F(WqctlTest, HelpForEveryCommandExitsZero) {
  const CommandResult top = Wqctl({"--help"});
  EXPECT_EQ(top.exit_code, 0) << top.err;
  EXPECT_NE(top.out.find("exit codes: 0 ok"), std::string::npos) << top.out;
  for (const char* command : {"quantize", "watch", "jobs", "cancel", "artifacts", "load",
                              "models", "info", "generate", "chat", "tokenize"}) {
    const CommandResult help = Wqctl({command, "--help"});
    EXPECT_EQ(help.exit_code, 0) << command << ": " << help.err;
    EXPECT_NE(help.out.find(std::string("usage: wqctl ") + command), std::string::npos)
        << help.out;
    EXPECT_NE(help.out.find("--timeout_s"), std::string::npos) << help.out;
  }
  EXPECT_NE(Wqctl({"quantize", "--help"}).out.find("--weight_dtype"), std::string::npos);
}

TEST_F(WqctlTest, UsageErrorsExitTwo) {
  EXPECT_EQ(Wqctl({}).exit_code, 2);
  EXPECT_EQ(Wqctl({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Wqctl({"load"}).exit_code, 2);  // no --model
  EXPECT_EQ(Wqctl({"models", "--output=yaml"}).exit_code, 2);
  EXPECT_EQ(Wqctl({"quantize", "--model=stories260K", "--weight_dtype=int5"}).exit_code, 2);
}

TEST_F(WqctlTest, UnreachableExitsThreeAndDeadlineExitsFour) {
  // A port nothing listens on: a server started and stopped.
  std::unique_ptr<ServerProcess> gone = StartQuantizer("gone");
  const std::string address = "127.0.0.1:" + std::to_string(gone->WaitForPort(std::chrono::seconds(30)));
  ASSERT_EQ(gone->Stop(std::chrono::seconds(30)), 0);
  const CommandResult refused = Wqctl({"jobs", "--quantizer=" + address, "--output=json"});
  EXPECT_EQ(refused.exit_code, 3) << refused.err;
  const std::vector<nlohmann::json> error = JsonLines(refused.out);
  ASSERT_EQ(error.size(), 1u) << refused.out;
  EXPECT_EQ(error[0]["error"]["code"], 14);  // UNAVAILABLE
  EXPECT_EQ(error[0]["error"]["exit_code"], 3);

  const auto start = std::chrono::steady_clock::now();
  const CommandResult waited =
      Wqctl({"jobs", "--quantizer=" + address, "--wait_for_ready", "--timeout_s=2"});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(waited.exit_code, 4) << waited.err;
  EXPECT_GE(seconds, 1.9);
  EXPECT_LT(seconds, 10);
  // watch retries an unavailable server, but not past its deadline.
  const CommandResult watch =
      Wqctl({"watch", "--job=job-0000000000000000", "--quantizer=" + address, "--timeout_s=2"});
  EXPECT_EQ(watch.exit_code, 4) << watch.err;
  EXPECT_NE(watch.err.find("retrying"), std::string::npos) << watch.err;
}

TEST_F(WqctlTest, QuantizeLoadGenerateAsJsonLines) {
  std::unique_ptr<ServerProcess> quantizer = StartQuantizer("quantizer");
  const std::string qaddress =
      "--quantizer=127.0.0.1:" + std::to_string(quantizer->WaitForPort(std::chrono::seconds(30)));
  const CommandResult quantize =
      Wqctl({"quantize", qaddress, "--model=stories260K", "--weight_dtype=int4_clip",
             "--group_size=32", "--output=json", "--timeout_s=60"});
  ASSERT_EQ(quantize.exit_code, 0) << quantize.err;
  const std::vector<nlohmann::json> progress = JsonLines(quantize.out);
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back()["state"], "JOB_STATE_SUCCEEDED") << quantize.out;
  const std::string artifact = progress.back()["artifact_id"];
  EXPECT_EQ(artifact.rfind("stories260K-int4_clip-sym-g32-rtn-", 0), 0u) << artifact;
  for (const nlohmann::json& job : progress) EXPECT_TRUE(job.contains("progress")) << job;

  // A job that fails at submission: exit 1, the error as JSON.
  const CommandResult awq = Wqctl({"quantize", qaddress, "--model=stories260K",
                                   "--algorithm=awq", "--output=json"});
  EXPECT_EQ(awq.exit_code, 1) << awq.err;
  ASSERT_EQ(JsonLines(awq.out).size(), 1u) << awq.out;
  EXPECT_EQ(JsonLines(awq.out)[0]["error"]["code"], 3);  // INVALID_ARGUMENT

  ServerProcess inference("inference", Runfiles() + "/inference_service/inference_service",
                          Roots(), *dir_);
  const std::string iaddress =
      "--inference=127.0.0.1:" + std::to_string(inference.WaitForPort(std::chrono::seconds(30)));
  const CommandResult load = Wqctl({"load", iaddress, "--model=" + artifact, "--output=json"});
  ASSERT_EQ(load.exit_code, 0) << load.err;
  ASSERT_EQ(JsonLines(load.out).size(), 1u);
  EXPECT_EQ(JsonLines(load.out)[0]["quantized"], true);

  const CommandResult generate =
      Wqctl({"generate", iaddress, "--model=" + artifact, "--prompt=Once upon a time",
             "--max_new_tokens=12", "--output=json"});
  ASSERT_EQ(generate.exit_code, 0) << generate.err;
  const std::vector<nlohmann::json> events = JsonLines(generate.out);
  ASSERT_EQ(events.size(), 13u) << generate.out;  // 12 tokens, then the end
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    ASSERT_TRUE(events[i].contains("token")) << events[i];
    text += events[i]["token"]["text"].get<std::string>();
  }
  EXPECT_EQ(events.back()["end"]["finish_reason"], "LENGTH");
  EXPECT_EQ(events.back()["end"]["text"], text);
  EXPECT_EQ(events.back()["end"]["usage"]["completion_tokens"], 12);

  const CommandResult unknown =
      Wqctl({"generate", iaddress, "--model=no-such-model", "--prompt=x"});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.err;
  EXPECT_EQ(inference.Stop(std::chrono::seconds(30)), 0);
  EXPECT_EQ(quantizer->Stop(std::chrono::seconds(30)), 0);
}

// The quantizer goes away while a client watches: the client waits for it
// with backoff, and the restarted server answers from the job's record.
TEST_F(WqctlTest, WatchOutlivesQuantizerRestart) {
  std::unique_ptr<ServerProcess> first = StartQuantizer("before_restart");
  const int port = first->WaitForPort(std::chrono::seconds(30));
  const std::string address = "127.0.0.1:" + std::to_string(port);
  const CommandResult submitted =
      Wqctl({"quantize", "--quantizer=" + address, "--model=stories260K",
             "--weight_dtype=int8", "--wait=false"});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string job = submitted.out.substr(0, submitted.out.find('\n'));
  // Finished before the restart (a stories260K job takes well under a second).
  ASSERT_EQ(Wqctl({"watch", "--quantizer=" + address, "--job=" + job}).exit_code, 0);
  ASSERT_EQ(first->Stop(std::chrono::seconds(30)), 0);

  CommandResult watch;
  std::thread watcher([&] {
    watch = Wqctl({"watch", "--quantizer=" + address, "--job=" + job, "--timeout_s=60",
                   "--output=json"});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  std::unique_ptr<ServerProcess> second = StartQuantizer("after_restart", address);
  EXPECT_EQ(second->WaitForPort(std::chrono::seconds(30)), port);
  watcher.join();
  EXPECT_EQ(watch.exit_code, 0) << watch.err;
  EXPECT_NE(watch.err.find("retrying"), std::string::npos) << watch.err;
  const std::vector<nlohmann::json> states = JsonLines(watch.out);
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back()["job_id"], job);
  EXPECT_EQ(states.back()["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_EQ(second->Stop(std::chrono::seconds(30)), 0);
}

}  // namespace
}  // namespace wq::e2e
