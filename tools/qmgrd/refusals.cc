#include "tools/qmgrd/refusals.h"

#include <grpcpp/support/server_interceptor.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/rpc_status.h"
#include "qmgr/status.h"
#include "tools/qmgrd/server_log.h"

namespace qmgr::server {

void Refusals::Record(absl::string_view rpc, const absl::Status& status) {
  if (status.ok() || absl::IsCancelled(status)) return;
  Key key{std::string(rpc), absl::StatusCodeToString(status.code()), ReasonOf(status)};
  uint64_t count = 0;
  {
    absl::MutexLock lock(&mu_);
    Kind& kind = kinds_[key];
    ++kind.count;
    ++kind.unlogged;
    const absl::Time now = absl::Now();
    if (now - kind.logged < log_interval_) return;
    kind.logged = now;
    count = kind.unlogged;
    kind.unlogged = 0;
  }
  const auto& [rpc_name, code, reason] = key;
  LogEvent("request.refused")
      .Add("rpc", rpc_name)
      .Add("code", code)
      .Add("reason", reason)
      .Add("count", count)
      .Add("message", status.message());
}

std::vector<Refusals::Count> Refusals::Counts() const {
  absl::MutexLock lock(&mu_);
  std::vector<Count> out;
  out.reserve(kinds_.size());
  for (const auto& [key, kind] : kinds_) {
    out.push_back({std::get<0>(key), std::get<1>(key), std::get<2>(key), kind.count});
  }
  return out;
}

namespace {

using grpc::experimental::InterceptionHookPoints;

class RefusalInterceptor final : public grpc::experimental::Interceptor {
 public:
  RefusalInterceptor(grpc::experimental::ServerRpcInfo* info, Refusals* refusals)
      : info_(info), refusals_(refusals) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
        refusals_->Record(RpcName(info_->method()), qmgr::rpc::FromGrpcStatus(status));
      }
    }
    methods->Proceed();
  }

 private:
  // "/qmgr.v1.QueueManager/Enqueue" -> "QueueManager.Enqueue".
  static std::string RpcName(absl::string_view method) {
    const size_t slash = method.rfind('/');
    const absl::string_view service = method.substr(0, slash);
    const size_t dot = service.rfind('.');
    return absl::StrCat(service.substr(dot == absl::string_view::npos ? 1 : dot + 1), ".",
                        method.substr(slash + 1));
  }

  grpc::experimental::ServerRpcInfo* const info_;
  Refusals* const refusals_;
};

class RefusalInterceptorFactoryImpl final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RefusalInterceptorFactoryImpl(Refusals* refusals) : refusals_(refusals) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RefusalInterceptor(info, refusals_);
  }

 private:
  Refusals* const refusals_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RefusalInterceptorFactory(
    Refusals* refusals) {
  return std::make_unique<RefusalInterceptorFactoryImpl>(refusals);
}

}  // namespace qmgr::server
