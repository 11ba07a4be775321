#include "server/reflection_v1.h"

#include <grpcpp/support/method_handler.h>

namespace wq {
namespace {

constexpr char kV1Method[] = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
constexpr char kV1alphaMethod[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

}  // namespace

ReflectionV1Service::ReflectionV1Service() {
  // What generated code does for a bidi method, with raw bytes as messages.
  AddMethod(new grpc::internal::RpcServiceMethod(
      kV1Method, grpc::internal::RpcMethod::BIDI_STREAMING,
      new grpc::internal::BidiStreamingHandler<ReflectionV1Service, grpc::ByteBuffer,
                                               grpc::ByteBuffer>(
          [](ReflectionV1Service* service, grpc::ServerContext* context,
             grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
            return service->Forward(context, stream);
          },
          this)));
}

void ReflectionV1Service::Connect(grpc::Server* server) {
  v1alpha_ = server->InProcessChannel(grpc::ChannelArguments());
}

grpc::Status ReflectionV1Service::Forward(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
  if (v1alpha_ == nullptr) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "starting");
  // Cancellation and deadline follow the caller's.
  std::unique_ptr<grpc::ClientContext> upstream_context =
      grpc::ClientContext::FromServerContext(*context);
  const grpc::internal::RpcMethod method(kV1alphaMethod,
                                         grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> upstream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          v1alpha_.get(), method, upstream_context.get()));
  // The reflection service answers every request with exactly one response.
  grpc::ByteBuffer request, response;
  while (stream->Read(&request)) {
    if (!upstream->Write(request) || !upstream->Read(&response)) break;
    if (!stream->Write(response)) {
      upstream_context->TryCancel();
      break;
    }
  }
  upstream->WritesDone();
  return upstream->Finish();
}

}  // namespace wq
