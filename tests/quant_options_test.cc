// Config validation of the int3/int2 dtypes and the RTN options (mse_range,
// double quant, bf16 scales), and how their artifacts are stored, versioned
// and read back.
#include <string>

#include "absl/strings/match.h"
#include "common/artifact_store.h"
#include "common/file_util.h"
#include "common/quant_config.h"
#include "common/quant_format.h"
#include "common/quantizer.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

constexpr char kModelDir[] = "testdata/models/stories260K";

v1::WeightOnlyQuantConfig Config(v1::WeightDtype dtype, v1::Scheme scheme = v1::SYM) {
  v1::WeightOnlyQuantConfig c;
  c.set_weight_dtype(dtype);
  c.set_scheme(scheme);
  return c;
}

TEST(QuantConfig, AcceptsLowBitDtypesAndRtnOptions) {
  for (v1::WeightDtype dtype : {v1::INT3, v1::INT2}) {
    for (v1::Scheme scheme : {v1::SYM, v1::ASYM}) {
      auto r = ResolveQuantConfig(Config(dtype, scheme));
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(QuantSpecOf(*r).type, dtype == v1::INT3 ? QuantType::kInt3 : QuantType::kInt2);
    }
  }
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP);
  c.set_mse_range(true);
  auto r = ResolveQuantConfig(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(QuantSpecOf(*r).scale_encoding, ScaleEncoding::kF32);
  EXPECT_EQ(QuantConfigSlug(*r), "int4_clip-sym-g32-rtn-mse");

  c = Config(v1::NF4);
  c.set_use_double_quant(true);
  r = ResolveQuantConfig(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(QuantSpecOf(*r).scale_encoding, ScaleEncoding::kDoubleQuant);
  EXPECT_EQ(QuantConfigSlug(*r), "nf4-sym-g32-rtn-dq");

  c = Config(v1::INT3, v1::ASYM);
  c.set_scale_dtype(v1::SCALE_BF16);
  r = ResolveQuantConfig(c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(QuantSpecOf(*r).scale_encoding, ScaleEncoding::kBf16);
  EXPECT_EQ(QuantConfigSlug(*r), "int3-asym-g32-rtn-bf16scale");
  // Plain configs keep their slug.
  EXPECT_EQ(QuantConfigSlug(*ResolveQuantConfig(Config(v1::INT4_CLIP))), "int4_clip-sym-g32-rtn");
}

TEST(QuantConfig, RejectsInvalidCombinations) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP);
  c.set_use_double_quant(true);
  c.set_scale_dtype(v1::SCALE_BF16);
  EXPECT_EQ(ResolveQuantConfig(c).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveQuantConfig(Config(v1::NF4, v1::ASYM)).status().code(),
            absl::StatusCode::kInvalidArgument);
  c = Config(v1::INT3, v1::ASYM);
  c.set_compute_dtype(v1::COMPUTE_INT8);
  EXPECT_EQ(ResolveQuantConfig(c).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(QuantConfig, EveryFormatHasAProtoDtype) {
  for (const QuantFormat& f : AllQuantFormats()) {
    const v1::WeightDtype dtype = WeightDtypeOf(f.type);
    EXPECT_NE(dtype, v1::WEIGHT_DTYPE_UNSPECIFIED) << f.name;
    EXPECT_EQ(QuantTypeOf(dtype), f.type);
  }
}

TEST(QuantConfig, ComputeDtypeNamesAndProtoRoundTrip) {
  for (int c = 0; c < kNumComputeDtypes; ++c) {
    const auto compute = static_cast<ComputeDtype>(c);
    EXPECT_EQ(ParseComputeDtype(ComputeDtypeName(compute)), compute);
    EXPECT_EQ(ComputeDtypeOf(ProtoComputeDtype(compute)), compute);
  }
  EXPECT_EQ(ParseComputeDtype("fp64"), std::nullopt);
  EXPECT_EQ(ParseComputeDtype(""), std::nullopt);
}

class ArtifactFormatTest : public testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::TempDir() + "/quant_options_artifacts";
    auto store = ArtifactStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  v1::ArtifactManifest Quantize(const v1::WeightOnlyQuantConfig& config) {
    QuantizeRequest request;
    request.model_id = "stories260K";
    request.model_dir = kModelDir;
    request.config = config;
    auto m = QuantizeModel(request, *store_);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : v1::ArtifactManifest();
  }

  // Tensor names and dtypes of the artifact's safetensors file.
  std::unique_ptr<SafetensorsFile> Weights(const v1::ArtifactManifest& m) {
    auto f = SafetensorsFile::Open(store_->ArtifactDir(m.artifact_id()) + "/" + kWeightsFile);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? *std::move(f) : nullptr;
  }

  void SetFormatVersion(const v1::ArtifactManifest& m, int version) {
    const std::string path = store_->ArtifactDir(m.artifact_id()) + "/" + kManifestFile;
    std::string json = *ReadFile(path);
    const std::string from = "\"format_version\": " + std::to_string(m.format_version());
    ASSERT_TRUE(absl::StrContains(json, from));
    json.replace(json.find(from), from.size(),
                 "\"format_version\": " + std::to_string(version));
    ASSERT_TRUE(WriteFileDurably(path, json).ok());
  }

  std::string root_;
  std::unique_ptr<ArtifactStore> store_;
};

constexpr char kModule[] = "model.layers.0.mlp.down_proj";

TEST_F(ArtifactFormatTest, DoubleQuantTensors) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT4_CLIP, v1::ASYM);
  c.set_use_double_quant(true);
  const v1::ArtifactManifest m = Quantize(c);
  EXPECT_EQ(m.format_version(), 2);
  auto f = Weights(m);
  ASSERT_NE(f, nullptr);
  const std::string module = kModule;
  EXPECT_EQ(f->Find(module + ".scales"), nullptr);
  EXPECT_TRUE(f->Find(module + ".scales_q") != nullptr);
  EXPECT_TRUE(f->Find(module + ".scales_scale") != nullptr);
  EXPECT_TRUE(f->Find(module + ".scales_mean") != nullptr);
  EXPECT_TRUE(f->Find(module + ".qzeros") != nullptr);
  auto weights = store_->LoadWeights(m.artifact_id());
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights)->layers[0].down.quantized_view().spec.scale_encoding,
            ScaleEncoding::kDoubleQuant);
}

TEST_F(ArtifactFormatTest, Bf16ScalesAndVersions) {
  v1::WeightOnlyQuantConfig c = Config(v1::INT3);
  c.set_scale_dtype(v1::SCALE_BF16);
  const v1::ArtifactManifest m = Quantize(c);
  auto f = Weights(m);
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->Find(std::string(kModule) + ".scales") != nullptr);
  EXPECT_FALSE(f->Find(std::string(kModule) + ".scales_q") != nullptr);
  ASSERT_TRUE(store_->LoadWeights(m.artifact_id()).ok());

  // A newer version is refused with a clear message; a plain artifact marked
  // version 1 (what the previous release wrote) still loads.
  SetFormatVersion(m, 3);
  EXPECT_EQ(store_->ReadManifest(m.artifact_id()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const v1::ArtifactManifest plain = Quantize(Config(v1::INT4_CLIP));
  SetFormatVersion(plain, 1);
  auto v1_manifest = store_->ReadManifest(plain.artifact_id());
  ASSERT_TRUE(v1_manifest.ok()) << v1_manifest.status();
  EXPECT_EQ(v1_manifest->format_version(), 1);
  EXPECT_TRUE(store_->LoadWeights(plain.artifact_id()).ok());
}

}  // namespace
}  // namespace wq
