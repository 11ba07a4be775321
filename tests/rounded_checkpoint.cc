#include "tests/rounded_checkpoint.h"

#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/formats/bf16.h"
#include "common/io/file_util.h"
#include "common/io/status_macros.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

uint16_t ToHalf(DType half, float v) {
  return half == DType::kF16 ? FloatToF16(v) : FloatToBf16(v);
}
float FromHalf(DType half, uint16_t h) {
  return half == DType::kF16 ? F16ToFloat(h) : Bf16ToFloat(h);
}

}  // namespace

absl::Status WriteRoundedCopy(const std::string& src_dir, const std::string& dir, DType half,
                              bool sharded) {
  std::filesystem::create_directories(dir);
  for (const char* file : {"config.json", "tokenizer.model"}) {
    if (!std::filesystem::exists(src_dir + "/" + file)) continue;
    std::filesystem::copy_file(src_dir + "/" + file, dir + "/" + file,
                               std::filesystem::copy_options::overwrite_existing);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> source,
                   SafetensorsFile::Open(src_dir + "/model.safetensors"));
  SafetensorsWriter shards[2];
  nlohmann::json weight_map = nlohmann::json::object();
  int index = 0;
  for (const TensorInfo& t : source->tensors()) {
    ASSIGN_OR_RETURN(F32Tensor values, source->LoadF32(t.name));
    if (sharded) {
      const int shard = index++ % 2;
      std::string bytes(values.numel() * 2, '\0');
      for (int64_t i = 0; i < values.numel(); ++i) {
        const uint16_t h = ToHalf(half, values.data[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      RETURN_IF_ERROR(shards[shard].AddTensor(t.name, half, t.shape, bytes));
      weight_map[t.name] = absl::StrCat("model-0000", shard + 1, "-of-00002.safetensors");
    } else {
      std::vector<float> rounded(values.values().begin(), values.values().end());
      for (float& v : rounded) v = FromHalf(half, ToHalf(half, v));
      RETURN_IF_ERROR(shards[0].AddF32(t.name, t.shape, rounded));
    }
  }
  if (!sharded) return shards[0].Write(dir + "/model.safetensors");
  for (int s = 0; s < 2; ++s) {
    RETURN_IF_ERROR(shards[s].Write(absl::StrCat(dir, "/model-0000", s + 1, "-of-00002.safetensors")));
  }
  const nlohmann::json index_json = {{"metadata", nlohmann::json::object()},
                                     {"weight_map", weight_map}};
  return WriteFileDurably(dir + "/model.safetensors.index.json", index_json.dump());
}

}  // namespace wq
