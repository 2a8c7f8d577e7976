#include "tools/qmgrd/coordinator_service.h"

#include "tools/qmgrd/coordination.h"
#include "tools/qmgrd/unary_call.h"

namespace qmgr::server {

namespace v1 = qmgr::v1;

namespace {

// The caller's identity when it may act for the request's coordinator name
// and qualifier: others never see or resolve that coordinator's units.
template <typename Request>
absl::StatusOr<std::string> AdmitCoordinator(const ServiceContext* c,
                                             const grpc::CallbackServerContext& ctx,
                                             absl::string_view rpc, const Request& request) {
  absl::StatusOr<std::string> who = Admit(c, ctx, Listener::kMain, rpc);
  if (!who.ok() || c->security == nullptr) return who;
  if (absl::Status s =
          c->security->AuthorizeCoordinator(*who, rpc, request.coordinator(), request.qualifier());
      !s.ok()) {
    return s;
  }
  return who;
}

}  // namespace

grpc::ServerUnaryReactor* CoordinatorService::Connect(grpc::CallbackServerContext* ctx,
                                                      const v1::ConnectRequest* request,
                                                      v1::ConnectResponse* response) {
  absl::StatusOr<std::string> who = AdmitCoordinator(c_, *ctx, "Coordinator.Connect", *request);
  if (!who.ok()) return Refuse(ctx, who.status());
  return Inline(ctx, [&] { return Fill(c_->coordination->Connect(*request), response); });
}

grpc::ServerUnaryReactor* CoordinatorService::Begin(grpc::CallbackServerContext* ctx,
                                                    const v1::BeginRequest* request,
                                                    v1::BeginResponse* response) {
  absl::StatusOr<std::string> who = AdmitCoordinator(c_, *ctx, "Coordinator.Begin", *request);
  if (!who.ok()) return Refuse(ctx, who.status());
  return Inline(ctx, [&] { return Fill(c_->coordination->Begin(*request, *who), response); });
}

grpc::ServerUnaryReactor* CoordinatorService::Prepare(grpc::CallbackServerContext* ctx,
                                                      const v1::PrepareRequest* request,
                                                      v1::PrepareResponse*) {
  absl::StatusOr<std::string> who = AdmitCoordinator(c_, *ctx, "Coordinator.Prepare", *request);
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Prepare(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::Commit(grpc::CallbackServerContext* ctx,
                                                     const v1::CommitRequest* request,
                                                     v1::CommitResponse*) {
  absl::StatusOr<std::string> who = AdmitCoordinator(c_, *ctx, "Coordinator.Commit", *request);
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Commit(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::Backout(grpc::CallbackServerContext* ctx,
                                                      const v1::CoordinatorBackoutRequest* request,
                                                      v1::CoordinatorBackoutResponse*) {
  absl::StatusOr<std::string> who = AdmitCoordinator(c_, *ctx, "Coordinator.Backout", *request);
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Backout(*request); });
}

grpc::ServerUnaryReactor* CoordinatorService::Resolve(grpc::CallbackServerContext* ctx,
                                                      const v1::ResolveRequest* request,
                                                      v1::ResolveResponse* response) {
  absl::StatusOr<std::string> who = AdmitCoordinator(c_, *ctx, "Coordinator.Resolve", *request);
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request, response] {
    return Fill(c_->coordination->Resolve(*request), response);
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Forget(grpc::CallbackServerContext* ctx,
                                                     const v1::ForgetRequest* request,
                                                     v1::ForgetResponse*) {
  absl::StatusOr<std::string> who = AdmitCoordinator(c_, *ctx, "Coordinator.Forget", *request);
  if (!who.ok()) return Refuse(ctx, who.status());
  return OnPool(c_->io_pool, ctx, [this, request] { return c_->coordination->Forget(*request); });
}

}  // namespace qmgr::server
