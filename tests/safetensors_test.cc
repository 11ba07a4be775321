#include "common/formats/safetensors.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/formats/bf16.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wq {
namespace {

using ::testing::HasSubstr;

constexpr char kStoriesModel[] =
    "testdata/models/stories260K/model.safetensors";

std::string TempPath(const std::string& name) {
  return testing::TempDir() + "/safetensors_test_" + name;
}

std::string LengthPrefix(uint64_t length) {
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &length, 8);
  return bytes;
}

// A file with the given header text followed by `data_size` zero bytes.
std::string WriteRaw(const std::string& name, const std::string& header,
                     size_t data_size) {
  const std::string path = TempPath(name);
  std::string contents = LengthPrefix(header.size()) + header;
  contents.append(data_size, '\0');
  EXPECT_TRUE(WriteFileDurably(path, contents).ok());
  return path;
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()),
                     values.size() * sizeof(T));
}

TEST(DTypeTest, NamesSizesAndParsing) {
  const std::pair<DType, size_t> expected[] = {
      {DType::kF32, 4},  {DType::kF16, 2}, {DType::kBF16, 2}, {DType::kF64, 8},
      {DType::kI8, 1},   {DType::kU8, 1},  {DType::kI16, 2},  {DType::kU16, 2},
      {DType::kI32, 4},  {DType::kU32, 4}, {DType::kI64, 8},  {DType::kU64, 8},
      {DType::kBool, 1},
  };
  for (const auto& [dtype, size] : expected) {
    EXPECT_EQ(DTypeSize(dtype), size) << DTypeName(dtype);
    auto parsed = ParseDType(DTypeName(dtype));
    ASSERT_TRUE(parsed.ok()) << DTypeName(dtype);
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
  EXPECT_FALSE(ParseDType("F8_E4M3").ok());
  EXPECT_FALSE(ParseDType("f32").ok());
}

TEST(SafetensorsRoundTripTest, SeveralDTypesMetadataAndAlignment) {
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  writer.SetMetadata("wq.scheme", "int4");
  // Inserted narrow-first so that the writer has to reorder.
  const std::vector<uint8_t> u8 = {1, 2, 3};
  const std::vector<int16_t> i16 = {-1, 2, -3};
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 4.0f, 5.0f, 6.0f};
  const std::vector<int64_t> i64 = {std::numeric_limits<int64_t>::min(), 7};
  const std::vector<double> f64 = {3.141592653589793};
  ASSERT_TRUE(writer.AddTensor("u8", DType::kU8, {3}, Bytes(u8)).ok());
  ASSERT_TRUE(writer.AddTensor("i16", DType::kI16, {3}, Bytes(i16)).ok());
  ASSERT_TRUE(writer.AddF32("f32", {2, 3}, f32).ok());
  ASSERT_TRUE(writer.AddTensor("i64", DType::kI64, {2}, Bytes(i64)).ok());
  ASSERT_TRUE(writer.AddTensor("f64", DType::kF64, {}, Bytes(f64)).ok());
  ASSERT_TRUE(writer.AddTensor("empty", DType::kF32, {0, 4}, "").ok());
  ASSERT_TRUE(writer.AddTensor("flag", DType::kBool, {1}, "\x01").ok());

  const std::string path = TempPath("roundtrip.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& st = **file;
  EXPECT_EQ(st.path(), path);
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.metadata().at("wq.scheme"), "int4");
  ASSERT_EQ(st.tensors().size(), 7u);

  // Data starts at a multiple of 64 bytes.
  const std::string raw = *ReadFile(path);
  uint64_t header_size;
  std::memcpy(&header_size, raw.data(), 8);
  EXPECT_EQ((8 + header_size) % 64, 0u);
  EXPECT_EQ(raw[8 + header_size - 1], ' ');
  EXPECT_EQ(st.file_size(), raw.size());

  // Widest dtypes first, stable within a width, packed without holes.
  std::vector<std::string> order;
  for (const TensorInfo& info : st.tensors()) {
    order.push_back(info.name);
    EXPECT_EQ(info.offset % DTypeSize(info.dtype), 0u) << info.name;
  }
  EXPECT_THAT(order, testing::ElementsAre("i64", "f64", "f32", "empty", "i16",
                                          "u8", "flag"));
  uint64_t expected_offset = 8 + header_size;
  for (const TensorInfo& info : st.tensors()) {
    EXPECT_EQ(info.offset, expected_offset) << info.name;
    expected_offset += info.nbytes;
  }
  EXPECT_EQ(expected_offset, st.file_size());

  auto check_bytes = [&](const char* name, const std::string& expected) {
    const TensorInfo* info = st.Find(name);
    ASSERT_NE(info, nullptr) << name;
    ASSERT_EQ(info->nbytes, expected.size()) << name;
    EXPECT_EQ(std::memcmp(st.data(*info), expected.data(), expected.size()), 0)
        << name;
  };
  check_bytes("u8", Bytes(u8));
  check_bytes("i16", Bytes(i16));
  check_bytes("f32", Bytes(f32));
  check_bytes("i64", Bytes(i64));
  check_bytes("f64", Bytes(f64));
  check_bytes("flag", "\x01");

  const TensorInfo* scalar = st.Find("f64");
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->numel(), 1);
  const TensorInfo* empty = st.Find("empty");
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->nbytes, 0u);
  EXPECT_EQ(st.Find("missing"), nullptr);

  auto f32_view = st.LoadF32("f32");
  ASSERT_TRUE(f32_view.ok()) << f32_view.status();
  EXPECT_TRUE(f32_view->owned.empty()) << "aligned F32 should be a view";
  EXPECT_EQ(f32_view->data,
            reinterpret_cast<const float*>(st.data(*st.Find("f32"))));
  EXPECT_THAT(f32_view->shape, testing::ElementsAre(2, 3));
  EXPECT_THAT(f32_view->values(), testing::ElementsAreArray(f32));

  auto empty_view = st.LoadF32("empty");
  ASSERT_TRUE(empty_view.ok()) << empty_view.status();
  EXPECT_EQ(empty_view->numel(), 0);

  auto not_float = st.LoadF32("i64");
  EXPECT_EQ(not_float.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_float.status().message()), HasSubstr("I64"));
}

TEST(SafetensorsRoundTripTest, EmptyWriterWritesValidFile) {
  SafetensorsWriter writer;
  const std::string path = TempPath("empty.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
  EXPECT_EQ((*file)->file_size(), 64u);
}

// Tensors spilled to a scratch file as they are added give the same file as
// tensors kept in memory, and the scratch file is gone afterwards.
TEST(SafetensorsWriterTest, SpilledWriterWritesTheSameBytes) {
  const std::string spill = TempPath("spill.tmp");
  SafetensorsWriter in_memory, spilled(spill);
  for (SafetensorsWriter* writer : {&in_memory, &spilled}) {
    writer->SetMetadata("format", "test");
    ASSERT_TRUE(writer->AddTensor("codes", DType::kU8, {3}, std::string("\x01\x02\x03")).ok());
    ASSERT_TRUE(writer->AddF32("scales", {2}, std::vector<float>{0.5f, -2.0f}).ok());
    ASSERT_TRUE(writer->AddTensor("half", DType::kBF16, {1}, std::string("\x80\x3f")).ok());
  }
  EXPECT_TRUE(std::filesystem::exists(spill));
  ASSERT_TRUE(in_memory.Write(TempPath("in_memory.safetensors")).ok());
  const absl::Status written = spilled.Write(TempPath("spilled.safetensors"));
  ASSERT_TRUE(written.ok()) << written;
  EXPECT_FALSE(std::filesystem::exists(spill));
  auto a = ReadFile(TempPath("in_memory.safetensors"));
  auto b = ReadFile(TempPath("spilled.safetensors"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  auto file = SafetensorsFile::Open(TempPath("spilled.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  auto scales = (*file)->LoadF32("scales");
  ASSERT_TRUE(scales.ok()) << scales.status();
  EXPECT_THAT(scales->values(), testing::ElementsAre(0.5f, -2.0f));
}

TEST(SafetensorsWriterTest, RejectsBadTensors) {
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddF32("w", {2}, std::vector<float>{1, 2}).ok());
  absl::Status duplicate = writer.AddF32("w", {2}, std::vector<float>{1, 2});
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(duplicate.message()), HasSubstr("already added"));

  absl::Status wrong_size =
      writer.AddTensor("x", DType::kF16, {3}, std::string(4, '\0'));
  EXPECT_EQ(wrong_size.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_size.message()), HasSubstr("needs 6 bytes"));

  EXPECT_FALSE(writer.AddTensor("neg", DType::kU8, {-1}, "").ok());
  EXPECT_FALSE(writer.AddTensor("", DType::kU8, {0}, "").ok());
  EXPECT_FALSE(writer.AddTensor("__metadata__", DType::kU8, {0}, "").ok());
  EXPECT_FALSE(writer
                   .AddTensor("huge", DType::kU8,
                              {int64_t{1} << 40, int64_t{1} << 40}, "")
                   .ok());
}

TEST(SafetensorsWriterTest, RejectsInvalidUtf8NamesAtWrite) {
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("bad\xff", DType::kU8, {0}, "").ok());
  absl::Status status = writer.Write(TempPath("bad_utf8.safetensors"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("UTF-8"));
}

TEST(SafetensorsLoadF32Test, ConvertsF16AndBf16) {
  // F16: 1.0, -2.0, 0.5, 65504 (max), smallest subnormal 2^-24, +inf, -0.
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x3800, 0x7bff,
                                     0x0001, 0x7c00, 0x8000, 0x0200};
  const std::vector<float> f16_expected = {
      1.0f,
      -2.0f,
      0.5f,
      65504.0f,
      std::ldexp(1.0f, -24),
      std::numeric_limits<float>::infinity(),
      -0.0f,
      std::ldexp(1.0f, -15)};
  // BF16: 1.0, -3.0, 1/3 truncated, largest finite.
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc040, 0x3eaa, 0x7f7f};
  std::vector<float> bf16_expected;
  for (uint16_t raw : bf16) {
    uint32_t bits = static_cast<uint32_t>(raw) << 16;
    float value;
    std::memcpy(&value, &bits, 4);
    bf16_expected.push_back(value);
  }
  EXPECT_EQ(bf16_expected[0], 1.0f);
  EXPECT_EQ(bf16_expected[1], -3.0f);

  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("h", DType::kF16, {2, 4}, Bytes(f16)).ok());
  ASSERT_TRUE(writer.AddTensor("b", DType::kBF16, {4}, Bytes(bf16)).ok());
  const std::string path = TempPath("half.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();

  auto h = (*file)->LoadF32("h");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(h->shape, testing::ElementsAre(2, 4));
  ASSERT_EQ(h->numel(), 8);
  for (size_t i = 0; i < f16_expected.size(); ++i) {
    EXPECT_EQ(h->data[i], f16_expected[i]) << i;
    EXPECT_EQ(std::signbit(h->data[i]), std::signbit(f16_expected[i])) << i;
  }
  auto b = (*file)->LoadF32("b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(b->values(), testing::ElementsAreArray(bf16_expected));

  // Moving keeps the converted data valid.
  F32Tensor moved = std::move(*b);
  EXPECT_EQ(moved.data, moved.owned.data());
  EXPECT_THAT(moved.values(), testing::ElementsAreArray(bf16_expected));

  auto nan = (*file)->LoadF32("missing");
  EXPECT_EQ(nan.status().code(), absl::StatusCode::kNotFound);
}

TEST(F16Conversion, EveryHalfRoundTripsAndFloatsRoundToNearestEven) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f)))) << h;
      continue;
    }
    ASSERT_EQ(FloatToF16(f), h) << h;
  }
  // Halfway between 1 and its successor (1 + 2^-10) goes to the even 1; the
  // next halfway point to the even 1 + 2^-9; just above halfway rounds up.
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(FloatToF16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // halfway: to even, which is inf
  EXPECT_EQ(FloatToF16(-1e9f), 0xfc00);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);  // halfway to 2^-24: even
  EXPECT_EQ(FloatToF16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToF16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 subnormal units: even
}

TEST(SafetensorsLoadF32Test, F16TensorIsItsFp32ValuesWithinHalfRounding) {
  std::vector<float> values;
  for (int i = 0; i < 4096; ++i) values.push_back(std::sin(i * 0.37f) * std::ldexp(1.0f, i % 24 - 12));
  std::vector<uint16_t> half;
  for (float v : values) half.push_back(FloatToF16(v));
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("w", DType::kF16, {64, 64}, Bytes(half)).ok());
  const std::string path = TempPath("f16_values.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto loaded = (*file)->LoadF32("w");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (size_t i = 0; i < values.size(); ++i) {
    // Half an ulp: of f16's 11-bit significand, or of the subnormal step 2^-24.
    ASSERT_LE(std::abs(loaded->data[i] - values[i]),
              std::max(std::ldexp(std::abs(values[i]), -11), std::ldexp(1.0f, -25)))
        << i;
  }
}

TEST(SafetensorsLoadF32Test, F16NaNStaysNaN) {
  SafetensorsWriter writer;
  const std::vector<uint16_t> nan = {0x7e00};
  ASSERT_TRUE(writer.AddTensor("n", DType::kF16, {1}, Bytes(nan)).ok());
  const std::string path = TempPath("nan.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto n = (*file)->LoadF32("n");
  ASSERT_TRUE(n.ok());
  EXPECT_TRUE(std::isnan(n->data[0]));
}

TEST(SafetensorsLoadF32Test, UnalignedF32IsCopied) {
  // A hand-made file whose F32 tensor starts at an odd offset.
  std::string header =
      R"({"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("w":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  // Pad so the data buffer starts 4-aligned, making "w" start at an odd byte.
  header.append((4 - (8 + header.size()) % 4) % 4, ' ');
  std::string contents = LengthPrefix(header.size()) + header;
  contents.push_back('\x07');
  const float values[] = {2.5f, -1.0f};
  contents.append(reinterpret_cast<const char*>(values), sizeof(values));
  const std::string path = TempPath("unaligned.safetensors");
  ASSERT_TRUE(WriteFileDurably(path, contents).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  auto loaded = (*file)->LoadF32("w");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_THAT(loaded->values(), testing::ElementsAre(2.5f, -1.0f));
  ASSERT_EQ(w->offset % 4, 1u);
  EXPECT_FALSE(loaded->owned.empty());
  EXPECT_EQ(loaded->data, loaded->owned.data());
}

TEST(SafetensorsGetTest, ChecksDTypeAndShape) {
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddF32("w", {2, 2}, std::vector<float>{1, 2, 3, 4}).ok());
  const std::string path = TempPath("get.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());

  auto ok = (*file)->Get("w", DType::kF32, {2, 2});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->name, "w");

  auto missing = (*file)->Get("v", DType::kF32, {2, 2});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("'v'"));

  auto wrong_shape = (*file)->Get("w", DType::kF32, {4});
  EXPECT_EQ(wrong_shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_shape.status().message()),
              HasSubstr("expected F32 [4], found F32 [2, 2]"));

  auto wrong_dtype = (*file)->Get("w", DType::kF16, {2, 2});
  EXPECT_EQ(wrong_dtype.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_dtype.status().message()),
              HasSubstr("expected F16 [2, 2], found F32 [2, 2]"));
}

TEST(SafetensorsStoriesTest, OpensBundledModel) {
  auto file = SafetensorsFile::Open(kStoriesModel);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& st = **file;
  EXPECT_EQ(st.tensors().size(), 48u);
  for (const TensorInfo& info : st.tensors()) {
    EXPECT_EQ(info.dtype, DType::kF32) << info.name;
  }
  // Header length 5040 puts the data at byte 5048.
  uint64_t min_offset = std::numeric_limits<uint64_t>::max();
  for (const TensorInfo& info : st.tensors()) {
    min_offset = std::min(min_offset, info.offset);
  }
  EXPECT_EQ(min_offset, 8u + 5040u);

  auto expect_shape = [&](const std::string& name, std::vector<int64_t> shape) {
    auto info = st.Get(name, DType::kF32, shape);
    EXPECT_TRUE(info.ok()) << info.status();
  };
  expect_shape("model.embed_tokens.weight", {512, 64});
  expect_shape("model.norm.weight", {64});
  expect_shape("lm_head.weight", {512, 64});
  for (int layer = 0; layer < 5; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    expect_shape(prefix + "input_layernorm.weight", {64});
    expect_shape(prefix + "post_attention_layernorm.weight", {64});
    expect_shape(prefix + "self_attn.q_proj.weight", {64, 64});
    expect_shape(prefix + "self_attn.k_proj.weight", {32, 64});
    expect_shape(prefix + "self_attn.v_proj.weight", {32, 64});
    expect_shape(prefix + "self_attn.o_proj.weight", {64, 64});
    expect_shape(prefix + "mlp.gate_proj.weight", {172, 64});
    expect_shape(prefix + "mlp.up_proj.weight", {172, 64});
    expect_shape(prefix + "mlp.down_proj.weight", {64, 172});
  }

  const TensorInfo* embed = st.Find("model.embed_tokens.weight");
  const TensorInfo* head = st.Find("lm_head.weight");
  ASSERT_NE(embed, nullptr);
  ASSERT_NE(head, nullptr);
  ASSERT_EQ(embed->nbytes, head->nbytes);
  EXPECT_NE(embed->offset, head->offset);
  EXPECT_EQ(std::memcmp(st.data(*embed), st.data(*head), embed->nbytes), 0);

  auto norm = st.LoadF32("model.norm.weight");
  ASSERT_TRUE(norm.ok()) << norm.status();
  for (float value : norm->values()) EXPECT_TRUE(std::isfinite(value));
}

TEST(SafetensorsOpenTest, MissingFileIsNotFound) {
  auto file = SafetensorsFile::Open(TempPath("no_such.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
}

struct MalformedCase {
  const char* name;
  std::string contents;
  const char* expected_message;
};

std::string WithHeader(const std::string& header, size_t data_size) {
  std::string contents = LengthPrefix(header.size()) + header;
  contents.append(data_size, '\0');
  return contents;
}

std::string Tensor(const std::string& fields) {
  return R"({"t":{)" + fields + "}}";
}

class SafetensorsMalformedTest : public testing::TestWithParam<MalformedCase> {
};

TEST_P(SafetensorsMalformedTest, IsRejectedWithMessage) {
  const MalformedCase& c = GetParam();
  const std::string path = TempPath(std::string(c.name) + ".safetensors");
  ASSERT_TRUE(WriteFileDurably(path, c.contents).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok()) << c.name;
  EXPECT_THAT(std::string(file.status().message()),
              HasSubstr(c.expected_message))
      << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
  // The bytes from memory are refused alike.
  EXPECT_EQ(SafetensorsFile::FromBytes(path, c.contents).status(), file.status());
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, SafetensorsMalformedTest,
    testing::Values(
        MalformedCase{"empty_file", "", "shorter than the 8-byte"},
        MalformedCase{"truncated_length", std::string("\x10\0\0", 3),
                      "shorter than the 8-byte"},
        MalformedCase{"truncated_header",
                      LengthPrefix(100) + R"({"t":{"dtype":)",
                      "the file is truncated"},
        MalformedCase{"huge_header_length", LengthPrefix(uint64_t{1} << 63),
                      "-byte limit"},
        MalformedCase{"all_ones_header_length",
                      LengthPrefix(std::numeric_limits<uint64_t>::max()) + "{}",
                      "-byte limit"},
        MalformedCase{"header_past_eof", LengthPrefix(1000) + "{}",
                      "only 2 bytes follow"},
        MalformedCase{"zero_header", LengthPrefix(0), "not valid JSON"},
        MalformedCase{"invalid_json", WithHeader("{\"t\": ", 0),
                      "not valid JSON"},
        MalformedCase{"json_array", WithHeader("[1, 2]", 0),
                      "must be an object, got array"},
        MalformedCase{"json_string", WithHeader("\"x\"", 0),
                      "must be an object, got string"},
        MalformedCase{
            "deeply_nested",
            WithHeader(std::string(100000, '[') + std::string(100000, ']'), 0),
            "nests deeper"},
        MalformedCase{"entry_not_object", WithHeader(R"({"t": 5})", 0),
                      "entry must be an object"},
        MalformedCase{
            "missing_dtype",
            WithHeader(Tensor(R"("shape":[],"data_offsets":[0,4])"), 4),
            "'dtype'"},
        MalformedCase{"unknown_dtype",
                      WithHeader(Tensor(R"("dtype":"F8_E4M3","shape":[1],)"
                                        R"("data_offsets":[0,1])"),
                                 1),
                      "unsupported dtype 'F8_E4M3'"},
        MalformedCase{"negative_shape",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[-1],)"
                                        R"("data_offsets":[0,4])"),
                                 4),
                      "non-negative integers"},
        MalformedCase{"float_shape",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[1.5],)"
                                        R"("data_offsets":[0,4])"),
                                 4),
                      "non-negative integers"},
        MalformedCase{"shape_not_array",
                      WithHeader(Tensor(R"("dtype":"F32","shape":4,)"
                                        R"("data_offsets":[0,4])"),
                                 4),
                      "'shape'"},
        MalformedCase{"numel_overflow",
                      WithHeader(Tensor(R"("dtype":"F32",)"
                                        R"("shape":[4294967296,4294967296],)"
                                        R"("data_offsets":[0,4])"),
                                 4),
                      "overflows"},
        MalformedCase{"nbytes_overflow",
                      WithHeader(Tensor(R"("dtype":"F64",)"
                                        R"("shape":[4611686018427387904],)"
                                        R"("data_offsets":[0,4])"),
                                 4),
                      "overflows"},
        MalformedCase{"offsets_past_end",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[4],)"
                                        R"("data_offsets":[0,16])"),
                                 8),
                      "beyond the 8-byte data buffer"},
        MalformedCase{"offsets_size_mismatch",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[3],)"
                                        R"("data_offsets":[0,8])"),
                                 8),
                      "needs 12"},
        MalformedCase{"begin_after_end",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[1],)"
                                        R"("data_offsets":[8,4])"),
                                 8),
                      "greater than end"},
        MalformedCase{"non_integer_offsets",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[1],)"
                                        R"("data_offsets":["0","4"])"),
                                 4),
                      "data_offsets"},
        MalformedCase{"float_offsets",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[1],)"
                                        R"("data_offsets":[0.0,4.0])"),
                                 4),
                      "data_offsets"},
        MalformedCase{"negative_offsets",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[1],)"
                                        R"("data_offsets":[-4,0])"),
                                 4),
                      "data_offsets"},
        MalformedCase{"three_offsets",
                      WithHeader(Tensor(R"("dtype":"F32","shape":[1],)"
                                        R"("data_offsets":[0,4,8])"),
                                 8),
                      "data_offsets"},
        MalformedCase{"huge_offsets",
                      WithHeader(Tensor(R"("dtype":"U8","shape":[1],)"
                                        R"("data_offsets":)"
                                        R"([18446744073709551615,0])"),
                                 4),
                      "data_offsets"},
        MalformedCase{
            "overlapping_offsets",
            WithHeader(
                R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                12),
            "overlap"},
        MalformedCase{
            "duplicate_names",
            WithHeader(
                R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                2),
            "more than once"},
        MalformedCase{"metadata_not_strings",
                      WithHeader(R"({"__metadata__":{"k":1}})", 0),
                      "must be a string"}),
    [](const testing::TestParamInfo<MalformedCase>& info) {
      return std::string(info.param.name);
    });

TEST(SafetensorsOpenTest, AcceptsHolesAndEmptyTensorsAnywhere) {
  const std::string path =
      WriteRaw("holes",
               R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
               R"("e":{"dtype":"F32","shape":[0],"data_offsets":[1,1]},)"
               R"("b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
               8);
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  // Header order is kept, not sorted by name.
  ASSERT_EQ((*file)->tensors().size(), 3u);
  EXPECT_EQ((*file)->tensors()[0].name, "a");
  EXPECT_EQ((*file)->tensors()[1].name, "e");
  EXPECT_EQ((*file)->tensors()[2].name, "b");

  absl::StatusOr<std::string> bytes = ReadFile(path);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto from_bytes = SafetensorsFile::FromBytes("holes", *bytes);
  ASSERT_TRUE(from_bytes.ok()) << from_bytes.status();
  ASSERT_EQ((*from_bytes)->tensors().size(), 3u);
  EXPECT_EQ((*from_bytes)->tensors()[2].offset, (*file)->tensors()[2].offset);
  EXPECT_EQ((*from_bytes)->data((*from_bytes)->tensors()[2])[1],
            (*file)->data((*file)->tensors()[2])[1]);
}

TEST(SafetensorsOpenTest, AcceptsTrailingWhitespaceInHeader) {
  const std::string path = WriteRaw(
      "padded", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}   )",
      1);
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
}

}  // namespace
}  // namespace wq
