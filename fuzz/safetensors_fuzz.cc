// The safetensors header and tensor offsets, from memory (FromBytes runs the
// validation Open runs on a file's bytes, whichever its backing): every
// tensor accepted must lie inside the file, which touching its first and last
// byte checks.
#include <cstdint>
#include <string_view>

#include "common/formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = wq::SafetensorsFile::FromBytes(
      "fuzzed.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  if (!file.ok()) return 0;
  volatile uint8_t sink = 0;
  for (const wq::TensorInfo& info : (*file)->tensors()) {
    if (info.nbytes == 0) continue;
    const uint8_t* bytes = (*file)->data(info);
    sink = sink + bytes[0] + bytes[info.nbytes - 1];
    (void)(*file)->LoadF32(info.name);
  }
  return 0;
}
