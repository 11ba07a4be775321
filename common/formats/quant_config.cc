#include "common/formats/quant_config.h"

#include <fnmatch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace wq {
namespace {

// proto WeightDtype <-> format table row.
struct DtypeMapping {
  v1::WeightDtype proto;
  QuantType type;
};
constexpr DtypeMapping kDtypes[] = {
    {v1::INT8, QuantType::kInt8},
    {v1::INT4_FULLRANGE, QuantType::kInt4FullRange},
    {v1::INT4_CLIP, QuantType::kInt4Clip},
    {v1::NF4, QuantType::kNf4},
    {v1::FP4_E2M1, QuantType::kFp4E2M1},
    {v1::INT3, QuantType::kInt3},
    {v1::INT2, QuantType::kInt2},
};

constexpr int kDefaultGroupSize = 32;
constexpr int kDefaultCalibrationSamples = 128;
constexpr int kDefaultCalibrationSeqLen = 512;

}  // namespace

QuantType QuantTypeOf(v1::WeightDtype dtype) {
  for (const DtypeMapping& m : kDtypes) {
    if (m.proto == dtype) return m.type;
  }
  return QuantType::kNf4;  // the documented default
}

v1::WeightDtype WeightDtypeOf(QuantType type) {
  for (const DtypeMapping& m : kDtypes) {
    if (m.type == type) return m.proto;
  }
  return v1::WEIGHT_DTYPE_UNSPECIFIED;
}

QuantScheme QuantSchemeOf(v1::Scheme scheme) {
  return scheme == v1::ASYM ? QuantScheme::kAsym : QuantScheme::kSym;
}

v1::Scheme SchemeOf(QuantScheme scheme) {
  return scheme == QuantScheme::kAsym ? v1::ASYM : v1::SYM;
}

v1::ComputeDtype ProtoComputeDtype(ComputeDtype compute) {
  constexpr v1::ComputeDtype kProto[kNumComputeDtypes] = {v1::COMPUTE_FP32, v1::COMPUTE_BF16,
                                                          v1::COMPUTE_INT8};
  return kProto[static_cast<int>(compute)];
}

std::optional<ComputeDtype> ParseComputeDtype(std::string_view name) {
  for (int c = 0; c < kNumComputeDtypes; ++c) {
    if (ComputeDtypeName(static_cast<ComputeDtype>(c)) == name) return static_cast<ComputeDtype>(c);
  }
  return std::nullopt;
}

ComputeDtype ComputeDtypeOf(v1::ComputeDtype compute) {
  switch (compute) {
    case v1::COMPUTE_BF16:
      return ComputeDtype::kBf16;
    case v1::COMPUTE_INT8:
      return ComputeDtype::kInt8;
    default:
      return ComputeDtype::kFp32;
  }
}

std::string_view SchemeName(v1::Scheme scheme) {
  return scheme == v1::ASYM ? "asym" : "sym";
}

std::string_view AlgorithmName(v1::Algorithm algorithm) {
  switch (algorithm) {
    case v1::AWQ: return "awq";
    case v1::TEQ: return "teq";
    default: return "rtn";
  }
}

absl::StatusOr<v1::WeightOnlyQuantConfig> ResolveQuantConfig(
    const v1::WeightOnlyQuantConfig& config) {
  v1::WeightOnlyQuantConfig c = config;
  // proto3 enums are open: a client may send any number.
  if (!v1::WeightDtype_IsValid(c.weight_dtype()) || !v1::ComputeDtype_IsValid(c.compute_dtype()) ||
      !v1::ScaleDtype_IsValid(c.scale_dtype()) || !v1::Scheme_IsValid(c.scheme()) ||
      !v1::Algorithm_IsValid(c.algorithm())) {
    return absl::InvalidArgumentError(
        "config has an enum value this server does not know (weight_dtype, compute_dtype, "
        "scale_dtype, scheme or algorithm)");
  }
  if (c.weight_dtype() == v1::WEIGHT_DTYPE_UNSPECIFIED) c.set_weight_dtype(v1::NF4);
  if (c.compute_dtype() == v1::COMPUTE_DTYPE_UNSPECIFIED) c.set_compute_dtype(v1::COMPUTE_FP32);
  if (c.scale_dtype() == v1::SCALE_DTYPE_UNSPECIFIED) c.set_scale_dtype(v1::SCALE_FP32);
  if (c.scheme() == v1::SCHEME_UNSPECIFIED) c.set_scheme(v1::SYM);
  if (c.algorithm() == v1::ALGORITHM_UNSPECIFIED) c.set_algorithm(v1::RTN);
  if (!c.has_group_size()) c.set_group_size(kDefaultGroupSize);
  if (c.llm_int8_skip_modules_size() == 0) c.add_llm_int8_skip_modules("lm_head");

  if (c.group_size() == 0 || c.group_size() < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group_size must be -1 (one group per output channel) or >= 1, got ", c.group_size()));
  }
  const QuantFormat& format = GetQuantFormat(QuantTypeOf(c.weight_dtype()));
  if (c.scheme() == v1::ASYM && !format.supports_asym) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheme asym is not supported for weight_dtype ", std::string(format.name),
        " (a codebook format, as in ITREX); use scheme sym or an integer dtype"));
  }
  if (c.algorithm() != v1::RTN && !c.calibration().has_texts() &&
      !c.calibration().has_data_file()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "algorithm ", std::string(AlgorithmName(c.algorithm())),
        " needs calibration data: set calibration.data_file (under the server's data root) "
        "or calibration.texts"));
  }
  // Double quant stores 8-bit scales; there is no bf16 to round them to.
  if (c.use_double_quant() && c.scale_dtype() != v1::SCALE_FP32) {
    return absl::InvalidArgumentError(
        "use_double_quant already stores the scales in 8 bits; combine it with scale_dtype fp32");
  }
  for (const std::string& module : c.llm_int8_skip_modules()) {
    if (module.empty()) {
      return absl::InvalidArgumentError("llm_int8_skip_modules has an empty entry");
    }
  }
  v1::CalibrationConfig* calibration = c.mutable_calibration();
  if (calibration->n_samples() < 0 || calibration->seq_len() < 0) {
    return absl::InvalidArgumentError("calibration n_samples and seq_len must be >= 0");
  }
  if (calibration->n_samples() == 0) calibration->set_n_samples(kDefaultCalibrationSamples);
  if (calibration->seq_len() == 0) calibration->set_seq_len(kDefaultCalibrationSeqLen);
  return c;
}

QuantSpec QuantSpecOf(const v1::WeightOnlyQuantConfig& resolved) {
  QuantSpec spec;
  spec.type = QuantTypeOf(resolved.weight_dtype());
  spec.scheme = QuantSchemeOf(resolved.scheme());
  spec.group_size = resolved.group_size();
  if (resolved.use_double_quant()) {
    spec.scale_encoding = ScaleEncoding::kDoubleQuant;
  } else if (resolved.scale_dtype() == v1::SCALE_BF16) {
    spec.scale_encoding = ScaleEncoding::kBf16;
  }
  return spec;
}

bool IsSkippedModule(const v1::WeightOnlyQuantConfig& resolved, std::string_view module) {
  const size_t dot = module.rfind('.');
  const std::string full(module);
  const std::string last(dot == std::string_view::npos ? module : module.substr(dot + 1));
  for (const std::string& skip : resolved.llm_int8_skip_modules()) {
    // fnmatch without flags: '*' also crosses dots, so "model.layers.*.mlp.*" works.
    if (fnmatch(skip.c_str(), full.c_str(), 0) == 0 ||
        fnmatch(skip.c_str(), last.c_str(), 0) == 0) {
      return true;
    }
  }
  return false;
}

std::string QuantConfigSlug(const v1::WeightOnlyQuantConfig& resolved) {
  const QuantFormat& format = GetQuantFormat(QuantTypeOf(resolved.weight_dtype()));
  const std::string group = resolved.group_size() == -1
                                ? std::string("perchannel")
                                : absl::StrCat("g", resolved.group_size());
  // Options appear only when set, so the slugs of plain configs never change.
  return absl::StrFormat("%s-%s-%s-%s%s%s%s", std::string(format.name),
                         std::string(SchemeName(resolved.scheme())), group,
                         std::string(AlgorithmName(resolved.algorithm())),
                         resolved.mse_range() ? "-mse" : "",
                         resolved.use_double_quant() ? "-dq" : "",
                         resolved.scale_dtype() == v1::SCALE_BF16 ? "-bf16scale" : "");
}

}  // namespace wq
