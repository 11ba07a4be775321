// WeightOnlyQuantConfig (proto/wq/v1/quant_config.proto) checked and with
// its documented defaults filled in, ready for the quantizer.
#ifndef WQ_COMMON_QUANT_CONFIG_H_
#define WQ_COMMON_QUANT_CONFIG_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/formats/compute_dtype.h"
#include "common/formats/quant_format.h"
#include "wq/v1/quant_config.pb.h"

namespace wq {

// The config with every default made explicit (the form stored in artifact
// manifests), or INVALID_ARGUMENT saying what to change. AWQ and TEQ need a
// calibration source (texts or data_file); n_samples / seq_len default to
// 128 x 512, which the quantizer caps at what the text holds.
absl::StatusOr<v1::WeightOnlyQuantConfig> ResolveQuantConfig(
    const v1::WeightOnlyQuantConfig& config);

// The weight format of a resolved config (group_size, scheme, dtype).
QuantSpec QuantSpecOf(const v1::WeightOnlyQuantConfig& resolved);

// proto enum <-> format table row, and short names for ids and logs
// ("int4_clip", "sym", "rtn").
QuantType QuantTypeOf(v1::WeightDtype dtype);
v1::WeightDtype WeightDtypeOf(QuantType type);
QuantScheme QuantSchemeOf(v1::Scheme scheme);
v1::Scheme SchemeOf(QuantScheme scheme);
std::string_view SchemeName(v1::Scheme scheme);
// UNSPECIFIED reads as the documented default, fp32.
ComputeDtype ComputeDtypeOf(v1::ComputeDtype compute);
v1::ComputeDtype ProtoComputeDtype(ComputeDtype compute);
// "fp32" | "bf16" | "int8"; nullopt for anything else.
std::optional<ComputeDtype> ParseComputeDtype(std::string_view name);
std::string_view AlgorithmName(v1::Algorithm algorithm);

// Whether llm_int8_skip_modules keeps `module` in fp32: an entry matches the
// full module name or its last component, exactly or as a shell glob
// ("*.down_proj", "model.layers.0.*").
bool IsSkippedModule(const v1::WeightOnlyQuantConfig& resolved,
                     std::string_view module);

// A short, file-name-safe summary: "int4_clip-sym-g32-rtn".
std::string QuantConfigSlug(const v1::WeightOnlyQuantConfig& resolved);

}  // namespace wq

#endif  // WQ_COMMON_QUANT_CONFIG_H_
