// Assertions on grpc::Status for the tests that talk to a real qmgrd: the
// code and the ErrorInfo reason a refusal carries (client/rpc_status.h).
#ifndef QMGR_TESTS_SUPPORT_RPC_EXPECT_H_
#define QMGR_TESTS_SUPPORT_RPC_EXPECT_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "client/rpc_status.h"
#include "gtest/gtest.h"
#include "qmgr/status.h"

namespace qmgr::testing {

struct Refusal {
  absl::StatusCode code;
  std::string reason;
};

inline Refusal Of(const grpc::Status& s) {
  absl::Status a = qmgr::rpc::FromGrpcStatus(s);
  return {a.code(), ReasonOf(a)};
}

}  // namespace qmgr::testing

#define EXPECT_REFUSED(status, expected_code, expected_reason)                \
  do {                                                                        \
    const grpc::Status s_ = (status);                                         \
    const ::qmgr::testing::Refusal r = ::qmgr::testing::Of(s_);               \
    EXPECT_EQ(r.code, absl::StatusCode::expected_code) << s_.error_message(); \
    EXPECT_EQ(r.reason, expected_reason) << s_.error_message();               \
  } while (0)
#define ASSERT_OK(status)                                                  \
  do {                                                                     \
    const grpc::Status s_ = (status);                                      \
    ASSERT_TRUE(s_.ok()) << s_.error_code() << ": " << s_.error_message(); \
  } while (0)
#define EXPECT_OK(status)                                                  \
  do {                                                                     \
    const grpc::Status s_ = (status);                                      \
    EXPECT_TRUE(s_.ok()) << s_.error_code() << ": " << s_.error_message(); \
  } while (0)

#endif  // QMGR_TESTS_SUPPORT_RPC_EXPECT_H_
