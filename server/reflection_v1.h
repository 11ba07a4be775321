// grpc.reflection.v1.ServerReflection, which Debian's gRPC 1.51 lacks (its
// reflection library serves only v1alpha). The two versions' messages are
// the same on the wire, so this service forwards each call's bytes to the
// server's own v1alpha reflection over an in-process channel: one
// implementation answers both names.
#ifndef WQ_SERVER_REFLECTION_V1_H_
#define WQ_SERVER_REFLECTION_V1_H_

#include <memory>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/support/sync_stream.h>

namespace wq {

class ReflectionV1Service : public grpc::Service {
 public:
  ReflectionV1Service();
  // Call once the server (with v1alpha reflection) is started; before it,
  // calls fail UNAVAILABLE.
  void Connect(grpc::Server* server);

 private:
  grpc::Status Forward(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream);

  std::shared_ptr<grpc::Channel> v1alpha_;
};

}  // namespace wq

#endif  // WQ_SERVER_REFLECTION_V1_H_
