// A terminal in response mode: each input goes to queue REQUESTS (where
// examples/program answers it) and the terminal waits for its reply on its
// own output queue, secures it (here: prints it) and acknowledges it. The
// session's numbers live in SESSION.session, so a restarted terminal, or a
// restarted qmgrd, resynchronizes: the report says what was resent, what to
// reissue, and whether a reply may be a duplicate.
// Usage: terminal [TARGET [SESSION [COUNT]]]
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/session.h"

namespace {

void PrintReport(const qmgr::client::ResyncReport& r) {
  if (!r.resynchronized) return;
  std::cout << "resynchronized: resent " << r.resent_inputs.size() << " input(s), "
            << r.reissue_inputs.size() << " to reissue, output "
            << qmgr::v1::OutputOutcome_Name(r.output_outcome)
            << (r.output_possible_duplicate ? " (possibly duplicate)" : "") << "\n";
  for (const auto& input : r.reissue_inputs) {
    std::cout << "  reissue input " << input.input_seq() << ": " << input.payload() << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = argc > 1 ? argv[1] : "127.0.0.1:7430";
  const std::string name = argc > 2 ? argv[2] : "TERM1";
  const int count = argc > 3 ? std::atoi(argv[3]) : 3;
  const std::string output_queue = absl::StrCat(name, ".OUT");

  // The queues, once: REQUESTS, and the session's output queue.
  auto client = qmgr::client::Client::Connect({.target = target});
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  qmgr::v1::QueueAttributes output;
  output.set_output_of_session(name);
  for (const auto& [queue, attributes] :
       {std::pair{std::string("REQUESTS"), qmgr::v1::QueueAttributes()},
        std::pair{output_queue, output}}) {
    if (absl::Status s = (*client)->DefineQueue(queue, attributes);
        !s.ok() && !absl::IsAlreadyExists(s)) {
      std::cerr << s << "\n";
      return 1;
    }
  }

  auto session = qmgr::client::Session::Open({.name = name,
                                              .file_path = absl::StrCat(name, ".session"),
                                              .target = target,
                                              .on_resync = PrintReport});
  if (!session.ok()) {
    std::cerr << session.status() << "\n";  // e.g. a damaged file: decide, then open cold
    return 1;
  }
  for (int i = 1; i <= count; ++i) {
    qmgr::v1::NewMessage input;
    input.set_queue("REQUESTS");
    input.set_class_(qmgr::v1::RESPONSE);  // no further input until its reply is acknowledged
    input.set_payload(absl::StrCat(name, " request ", i));
    input.set_reply_to(output_queue);
    absl::StatusOr<qmgr::client::Accepted> sent = (*session)->Send(input);
    if (!sent.ok()) {
      std::cerr << "input " << i << ": " << sent.status() << "\n";
      return 1;
    }
    std::cout << "sent input " << sent->input_seq << "\n";
    absl::StatusOr<std::optional<qmgr::client::Output>> reply = (*session)->Next(absl::Seconds(30));
    if (!reply.ok() || !reply->has_value()) {
      std::cerr << "no reply: "
                << (reply.ok() ? absl::DeadlineExceededError("30 s") : reply.status()) << "\n";
      return 1;
    }
    const qmgr::client::Output& out = **reply;
    std::cout << "output " << out.out_seq << ": " << out.message.payload()
              << (out.possible_duplicate ? " (possibly a duplicate)" : "") << "\n";
    // Printed, so secured: recorded in the file, then acknowledged.
    if (absl::Status s = (*session)->Acknowledge(out); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
  }
  if (absl::Status s = (*session)->Close(); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  return 0;
}
