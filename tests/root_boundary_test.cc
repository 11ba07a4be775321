// Files the services open stay beneath their roots: model files, artifact
// directories and calibration data reached through a symlink that leaves
// the root are refused, and a FIFO or directory where a file belongs fails
// at once instead of hanging the loader.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/artifact/artifact_store.h"
#include "common/quant/calibration.h"
#include "common/io/file_util.h"
#include "common/model/llama.h"
#include "common/quant/quantizer.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

namespace fs = std::filesystem;

class RootBoundaryTest : public testing::Test {
 protected:
  void SetUp() override {
    base_ = testing::TempDir() + "/root_boundary";
    fs::remove_all(base_);
    models_ = base_ + "/models";
    fs::create_directories(models_);
    fs::create_directories(base_ + "/outside");
    // Real copies: the runfiles tree holds symlinks that leave any root.
    const fs::path source = fs::canonical("testdata/models/stories260K/config.json").parent_path();
    fs::copy(source, models_ + "/m");
    fs::copy(source / "model.safetensors", base_ + "/outside/model.safetensors");
  }

  // A model directory like "m" whose model.safetensors is replaced by `make`.
  template <typename Make>
  void ModelWith(const std::string& id, Make make) {
    fs::copy(models_ + "/m", models_ + "/" + id);
    const std::string weights = models_ + "/" + id + "/model.safetensors";
    fs::remove(weights);
    make(weights);
  }

  // The load's status: its code, and a message that names the path
  // relative to the root but not the server's absolute paths.
  absl::Status Load(const std::string& id) {
    absl::Status status = LoadLlamaModelDir(RootedPath(models_, id)).status();
    EXPECT_TRUE(absl::StrContains(status.message(), id + "/model.safetensors")) << status;
    EXPECT_FALSE(absl::StrContains(status.message(), base_)) << status;
    return status;
  }

  std::string base_, models_;
};

TEST_F(RootBoundaryTest, ModelFilesInsideTheRootLoad) {
  EXPECT_TRUE(LoadLlamaModelDir(RootedPath(models_, "m")).ok());
  EXPECT_TRUE(Tokenizer::Load(RootedPath(models_, "m/tokenizer.model")).ok());
}

TEST_F(RootBoundaryTest, SymlinkedWeightsLeavingTheModelRootAreRefused) {
  ModelWith("relative", [&](const std::string& weights) {
    ASSERT_EQ(::symlink("../../outside/model.safetensors", weights.c_str()), 0);
  });
  ModelWith("absolute", [&](const std::string& weights) {
    ASSERT_EQ(::symlink((base_ + "/outside/model.safetensors").c_str(), weights.c_str()), 0);
  });
  EXPECT_EQ(Load("relative").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Load("absolute").code(), absl::StatusCode::kPermissionDenied);
  // The quantizer checksums the source first: refused there already.
  QuantizeRequest request;
  request.model_id = "relative";
  request.model_dir = RootedPath(models_, "relative");
  auto store = ArtifactStore::Open(base_ + "/artifacts");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(QuantizeModel(request, **store).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(RootBoundaryTest, FifoOrDirectoryInPlaceOfWeightsFailsAtOnce) {
  ModelWith("fifo", [&](const std::string& weights) {
    ASSERT_EQ(::mkfifo(weights.c_str(), 0644), 0);  // no writer: a blocking open hangs
  });
  ModelWith("dir", [&](const std::string& weights) { fs::create_directory(weights); });
  EXPECT_EQ(Load("fifo").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Load("dir").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RootBoundaryTest, SymlinkedArtifactDirectoryLeavingTheRootIsInvisible) {
  // Quantized into a store outside the served root, then linked into it.
  auto elsewhere = ArtifactStore::Open(base_ + "/outside/artifacts");
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status();
  QuantizeRequest request;
  request.model_id = "m";
  request.model_dir = RootedPath(models_, "m");
  request.config.set_weight_dtype(v1::INT4_CLIP);
  auto manifest = QuantizeModel(request, **elsewhere);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  const std::string id = manifest->artifact_id();
  ASSERT_TRUE((*elsewhere)->LoadWeights(id).ok());

  auto served = ArtifactStore::Open(base_ + "/artifacts");
  ASSERT_TRUE(served.ok()) << served.status();
  ASSERT_EQ(::symlink((*elsewhere)->ArtifactDir(id).c_str(), (*served)->ArtifactDir(id).c_str()), 0);
  EXPECT_FALSE((*served)->Exists(id));
  EXPECT_TRUE((*served)->List().empty());
  const absl::Status status = (*served)->ReadManifest(id).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_FALSE(absl::StrContains(status.message(), base_)) << status;
  EXPECT_EQ((*served)->Verify(id).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*served)->LoadWeights(id).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*served)->SizeBytes(id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RootBoundaryTest, CalibrationFifoFailsAtOnce) {
  const std::string data = base_ + "/data";
  fs::create_directories(data);
  ASSERT_EQ(::mkfifo((data + "/calibration.txt").c_str(), 0644), 0);
  auto tokenizer = Tokenizer::Load(RootedPath(models_, "m/tokenizer.model"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  v1::CalibrationConfig config;
  config.set_data_file("calibration.txt");
  config.set_n_samples(1);
  config.set_seq_len(16);
  const absl::Status status = BuildCalibrationSet(config, data, **tokenizer).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_FALSE(absl::StrContains(status.message(), base_)) << status;
}

// As the inference server loads a model directory: copied, so truncating
// its file afterwards (SIGBUS for a mapping) changes no logits.
TEST_F(RootBoundaryTest, CopiedModelSurvivesTruncatedFile) {
  auto weights = LoadLlamaModelDir(RootedPath(models_, "m"), FileBacking::kCopied);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto logits = [&] {
    const LlamaModel model(*weights);
    KVCache cache((*weights)->config, 8);
    SequenceChunk chunk;
    chunk.cache = &cache;
    const std::vector<int> tokens = {1, 403, 407, 261};
    chunk.tokens = tokens;
    std::vector<float> out;
    EXPECT_TRUE(model.Forward({&chunk, 1}, &out).ok());
    return out;
  };
  const std::vector<float> before = logits();
  ASSERT_EQ(::truncate((models_ + "/m/model.safetensors").c_str(), 0), 0);
  EXPECT_EQ(logits(), before);
}

}  // namespace
}  // namespace wq
