// The safetensors header and tensor offsets: every tensor Open accepts must
// lie inside the file, which touching its first and last byte checks.
#include <cstdint>
#include <string>

#include "common/safetensors.h"
#include "fuzz/scratch_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = wq::fuzz::WriteScratchFile("model.safetensors", data, size);
  for (const wq::FileBacking backing : {wq::FileBacking::kMapped, wq::FileBacking::kCopied}) {
    auto file = wq::SafetensorsFile::Open(path, backing);
    if (!file.ok()) return 0;
    volatile uint8_t sink = 0;
    for (const wq::TensorInfo& info : (*file)->tensors()) {
      if (info.nbytes == 0) continue;
      const uint8_t* bytes = (*file)->data(info);
      sink = sink + bytes[0] + bytes[info.nbytes - 1];
      (void)(*file)->LoadF32(info.name);
    }
  }
  return 0;
}
