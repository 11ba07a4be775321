// The quantizer's request validation: a WeightOnlyQuantConfig as it arrives
// over gRPC (binary protobuf), resolved; what resolves must describe a valid
// weight format and a slug.
#include <cstdint>

#include "common/formats/quant_config.h"
#include "common/formats/quant_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  wq::v1::WeightOnlyQuantConfig config;
  if (!config.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto resolved = wq::ResolveQuantConfig(config);
  if (!resolved.ok()) return 0;
  if (!wq::ValidateQuantSpec(wq::QuantSpecOf(*resolved)).ok()) __builtin_trap();
  (void)wq::QuantConfigSlug(*resolved);
  return 0;
}
