// qmgrd's Coordinator service (docs/in-doubt.md) over Coordination, on
// gRPC's callback API: Connect and Begin touch memory only and run on gRPC's
// thread; Prepare, Commit, Backout, Resolve and Forget wait for the log and
// run on the io pool (docs/server.md, "Threads").
#ifndef QMGR_TOOLS_QMGRD_COORDINATOR_SERVICE_H_
#define QMGR_TOOLS_QMGRD_COORDINATOR_SERVICE_H_

#include "qmgr/v1/qmgr.grpc.pb.h"
#include "tools/qmgrd/services.h"

namespace qmgr::server {

class CoordinatorService final : public qmgr::v1::Coordinator::CallbackService {
 public:
  // `context` (with its coordination) and what it points to must outlive
  // the server.
  explicit CoordinatorService(const ServiceContext* context) : c_(context) {}

  grpc::ServerUnaryReactor* Connect(grpc::CallbackServerContext* ctx,
                                    const qmgr::v1::ConnectRequest* request,
                                    qmgr::v1::ConnectResponse* response) override;
  grpc::ServerUnaryReactor* Begin(grpc::CallbackServerContext* ctx,
                                  const qmgr::v1::BeginRequest* request,
                                  qmgr::v1::BeginResponse* response) override;
  grpc::ServerUnaryReactor* Prepare(grpc::CallbackServerContext* ctx,
                                    const qmgr::v1::PrepareRequest* request,
                                    qmgr::v1::PrepareResponse* response) override;
  grpc::ServerUnaryReactor* Commit(grpc::CallbackServerContext* ctx,
                                   const qmgr::v1::CommitRequest* request,
                                   qmgr::v1::CommitResponse* response) override;
  grpc::ServerUnaryReactor* Backout(grpc::CallbackServerContext* ctx,
                                    const qmgr::v1::CoordinatorBackoutRequest* request,
                                    qmgr::v1::CoordinatorBackoutResponse* response) override;
  grpc::ServerUnaryReactor* Resolve(grpc::CallbackServerContext* ctx,
                                    const qmgr::v1::ResolveRequest* request,
                                    qmgr::v1::ResolveResponse* response) override;
  grpc::ServerUnaryReactor* Forget(grpc::CallbackServerContext* ctx,
                                   const qmgr::v1::ForgetRequest* request,
                                   qmgr::v1::ForgetResponse* response) override;

 private:
  const ServiceContext* const c_;
};

}  // namespace qmgr::server

#endif  // QMGR_TOOLS_QMGRD_COORDINATOR_SERVICE_H_
