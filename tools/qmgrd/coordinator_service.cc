#include "tools/qmgrd/coordinator_service.h"

#include "tools/qmgrd/coordination.h"
#include "tools/qmgrd/unary_call.h"

namespace qmgr::server {

namespace v1 = qmgr::v1;

grpc::ServerUnaryReactor* CoordinatorService::Connect(grpc::CallbackServerContext* ctx,
                                                      const v1::ConnectRequest* request,
                                                      v1::ConnectResponse* response) {
  return Inline(ctx, [&] { return Fill(c_->coordination->Connect(*request), response); });
}

grpc::ServerUnaryReactor* CoordinatorService::Begin(grpc::CallbackServerContext* ctx,
                                                    const v1::BeginRequest* request,
                                                    v1::BeginResponse* response) {
  return Inline(ctx, [&] { return Fill(c_->coordination->Begin(*request), response); });
}

grpc::ServerUnaryReactor* CoordinatorService::Prepare(grpc::CallbackServerContext* ctx,
                                                      const v1::PrepareRequest* request,
                                                      v1::PrepareResponse*) {
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Prepare(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::Commit(grpc::CallbackServerContext* ctx,
                                                     const v1::CommitRequest* request,
                                                     v1::CommitResponse*) {
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Commit(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::Backout(grpc::CallbackServerContext* ctx,
                                                      const v1::CoordinatorBackoutRequest* request,
                                                      v1::CoordinatorBackoutResponse*) {
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Backout(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::Resolve(grpc::CallbackServerContext* ctx,
                                                      const v1::ResolveRequest* request,
                                                      v1::ResolveResponse* response) {
  return OnPool(c_->io_pool, ctx, [this, request, response] {
    return Fill(c_->coordination->Resolve(*request), response);
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Forget(grpc::CallbackServerContext* ctx,
                                                     const v1::ForgetRequest* request,
                                                     v1::ForgetResponse*) {
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Forget(*request); });
}

}  // namespace qmgr::server
