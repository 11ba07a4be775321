#include "server/request_validation.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <string>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/message.h>
#include <google/protobuf/stubs/common.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/impl/service_type.h>

#include "absl/strings/str_cat.h"

namespace wq {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

constexpr int kMaxNesting = 32;
// The highest field number protobuf allows: where a refusal travels to a
// callback method (RequestRefusal).
constexpr int kRefusalField = (1 << 29) - 1;

bool IsIdField(const FieldDescriptor& field) {
  const std::string& name = field.name();
  return name == "model" || name == "model_id" || name == "artifact_id" || name == "job_id";
}

// Walks the wire format with the schema beside it rather than parsing into the
// generated class, whose parser refuses invalid UTF-8 without saying where.
absl::Status ValidateFields(absl::string_view bytes, const Descriptor& type,
                            const std::string& prefix, int depth) {
  if (depth > kMaxNesting) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, " nests too deeply"));
  }
  UnknownFieldSet fields;
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix.empty() ? "the request" : prefix, " is not a valid ",
                     type.full_name(), " message"));
  }
  std::map<int, int> seen;  // field number -> entries so far (repeated fields)
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& wire = fields.field(i);
    if (depth == 0 && wire.number() == kRefusalField) {
      return absl::InvalidArgumentError(
          absl::StrCat("field number ", kRefusalField, " is reserved"));
    }
    const FieldDescriptor* field = type.FindFieldByNumber(wire.number());
    if (field == nullptr || wire.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    std::string name = absl::StrCat(prefix, prefix.empty() ? "" : ".", field->name());
    if (field->is_repeated()) absl::StrAppend(&name, "[", seen[wire.number()]++, "]");
    const std::string& value = wire.length_delimited();
    if (field->type() == FieldDescriptor::TYPE_STRING) {
      const size_t limit = IsIdField(*field) ? kMaxIdBytes : kMaxTextBytes;
      if (value.size() > limit) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, " is ", value.size(), " bytes; at most ", limit, " are accepted"));
      }
      if (!google::protobuf::internal::IsStructurallyValidUTF8(value.data(),
                                                               static_cast<int>(value.size()))) {
        return absl::InvalidArgumentError(absl::StrCat(name, " is not valid UTF-8"));
      }
    } else if (field->type() == FieldDescriptor::TYPE_MESSAGE) {
      if (absl::Status nested = ValidateFields(value, *field->message_type(), name, depth + 1);
          !nested.ok()) {
        return nested;
      }
    }
  }
  return absl::OkStatus();
}

// An empty message but for the refusal in field kRefusalField.
grpc_byte_buffer* RefusalMessage(absl::string_view refusal) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.WriteTag(static_cast<uint32_t>(kRefusalField) << 3 |
                   google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
    coded.WriteVarint32(static_cast<uint32_t>(refusal.size()));
    coded.WriteRaw(refusal.data(), static_cast<int>(refusal.size()));
  }
  grpc_slice slice = grpc_slice_from_copied_buffer(bytes.data(), bytes.size());
  grpc_byte_buffer* buffer = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return buffer;
}

class ValidatingHandler : public grpc::internal::MethodHandler {
 public:
  ValidatingHandler(grpc::internal::MethodHandler* inner, const Descriptor* request_type,
                    bool callback)
      : inner_(inner), request_type_(request_type), callback_(callback) {}

  void RunHandler(const HandlerParameter& param) override { inner_->RunHandler(param); }

  // Owns `request` like every handler's Deserialize: frees it when refusing.
  void* Deserialize(grpc_call* call, grpc_byte_buffer* request, grpc::Status* status,
                    void** handler_data) override {
    if (request != nullptr) {
      absl::Status valid = absl::OkStatus();
      grpc_byte_buffer_reader reader;
      if (grpc_byte_buffer_reader_init(&reader, request)) {
        grpc_slice bytes = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
        valid = ValidateRequestBytes(
            absl::string_view(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(bytes)),
                              GRPC_SLICE_LENGTH(bytes)),
            *request_type_);
        grpc_slice_unref(bytes);
      }
      if (!valid.ok()) {
        grpc_byte_buffer_destroy(request);
        if (callback_) {
          return inner_->Deserialize(call, RefusalMessage(valid.message()), status,
                                     handler_data);
        }
        *status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(valid.message()));
        return nullptr;
      }
    }
    return inner_->Deserialize(call, request, status, handler_data);
  }

 private:
  grpc::internal::MethodHandler* inner_;  // owned by the inner service
  const Descriptor* request_type_;
  const bool callback_;
};

// The inner service's handlers, through the protected accessor that generated
// code uses (a pointer to member named through a derived class is legal).
struct HandlerAccess : grpc::Service {
  static grpc::internal::MethodHandler* Handler(grpc::Service* service, int index) {
    return (service->*(&HandlerAccess::GetHandler))(index);
  }
};

class ValidatingService : public grpc::Service {
 public:
  ValidatingService(grpc::Service* inner, const google::protobuf::ServiceDescriptor& descriptor,
                    const std::vector<std::string>& callback_methods) {
    // Generated services add their methods in the order of the proto.
    for (int i = 0; i < descriptor.method_count(); ++i) {
      const google::protobuf::MethodDescriptor& method = *descriptor.method(i);
      const grpc::internal::RpcMethod::RpcType type =
          method.client_streaming()
              ? (method.server_streaming() ? grpc::internal::RpcMethod::BIDI_STREAMING
                                           : grpc::internal::RpcMethod::CLIENT_STREAMING)
              : (method.server_streaming() ? grpc::internal::RpcMethod::SERVER_STREAMING
                                           : grpc::internal::RpcMethod::NORMAL_RPC);
      grpc::internal::MethodHandler* handler = HandlerAccess::Handler(inner, i);
      const std::string& path =
          paths_.emplace_back(absl::StrCat("/", descriptor.full_name(), "/", method.name()));
      const bool callback = std::find(callback_methods.begin(), callback_methods.end(),
                                      method.name()) != callback_methods.end();
      auto* served = new grpc::internal::RpcServiceMethod(
          path.c_str(), type,
          // A streamed request (none in wq's services) is read by the handler itself,
          // after Deserialize(nullptr): such methods pass through unchecked.
          new ValidatingHandler(handler, method.input_type(), callback));
      if (callback) served->SetServerApiType(grpc::internal::RpcServiceMethod::ApiType::CALL_BACK);
      AddMethod(served);
    }
  }

 private:
  std::deque<std::string> paths_;  // RpcMethod keeps the name's pointer
};

}  // namespace

absl::Status ValidateRequestBytes(absl::string_view bytes, const Descriptor& type) {
  if (absl::Status fields = ValidateFields(bytes, type, "", 0); !fields.ok()) return fields;
  // The walk above reads the wire format more leniently than the generated
  // parser (a malformed packed list, a tag longer than 5 bytes), and what that
  // parser refuses would end INTERNAL with no message in the handler.
  std::unique_ptr<google::protobuf::Message> request(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(&type)->New());
  if (!request->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request is not a valid ", type.full_name(), " message"));
  }
  return absl::OkStatus();
}

std::unique_ptr<grpc::Service> WithRequestValidation(
    grpc::Service* inner, const google::protobuf::ServiceDescriptor& descriptor,
    const std::vector<std::string>& callback_methods) {
  return std::make_unique<ValidatingService>(inner, descriptor, callback_methods);
}

std::optional<grpc::Status> RequestRefusal(const google::protobuf::Message& request) {
  const UnknownFieldSet& unknown = request.GetReflection()->GetUnknownFields(request);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const UnknownField& field = unknown.field(i);
    if (field.number() == kRefusalField && field.type() == UnknownField::TYPE_LENGTH_DELIMITED) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, field.length_delimited());
    }
  }
  return std::nullopt;
}

}  // namespace wq
