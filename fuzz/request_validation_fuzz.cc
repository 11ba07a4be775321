// The gRPC request validator (server/request_validation): the first byte
// picks the request type of one of the two services' methods, the rest is
// the request as it arrives on the wire. What the validator lets through must
// parse as that type, or the handler would answer INTERNAL with no message.
#include <cstdint>
#include <memory>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include "server/request_validation.h"
#include "wq/v1/inference.pb.h"
#include "wq/v1/quantizer.pb.h"

namespace {

std::vector<const google::protobuf::Descriptor*> RequestTypes() {
  std::vector<const google::protobuf::Descriptor*> types;
  for (const google::protobuf::ServiceDescriptor* service :
       {wq::v1::GenerateRequest::descriptor()->file()->FindServiceByName("InferenceService"),
        wq::v1::SubmitJobRequest::descriptor()->file()->FindServiceByName("QuantizerService")}) {
    for (int i = 0; i < service->method_count(); ++i) {
      types.push_back(service->method(i)->input_type());
    }
  }
  return types;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<const google::protobuf::Descriptor*> types = RequestTypes();
  if (size == 0) return 0;
  const google::protobuf::Descriptor& type = *types[data[0] % types.size()];
  const absl::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  if (!wq::ValidateRequestBytes(bytes, type).ok()) return 0;
  std::unique_ptr<google::protobuf::Message> request(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(&type)->New());
  if (!request->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) __builtin_trap();
  return 0;
}
