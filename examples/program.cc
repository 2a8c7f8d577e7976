// An application program in IMS single mode: takes each message of queue
// REQUESTS, puts a reply on its reply-to queue, and commits both with the
// next Get (one round trip per message). Stops after 2 s without a message.
// Usage: program [TARGET]
#include <iostream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client/client.h"

int main(int argc, char** argv) {
  qmgr::client::ClientOptions options;
  if (argc > 1) options.target = argv[1];
  auto client = qmgr::client::Client::Connect(options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  if (absl::Status s = (*client)->DefineQueue("REPLIES", {});
      !s.ok() && !absl::IsAlreadyExists(s)) {
    std::cerr << s << "\n";
    return 1;
  }
  auto program = (*client)->OpenProgram();
  if (!program.ok()) return 1;

  qmgr::client::UnitOfWork unit = (*program)->Begin();
  int processed = 0;
  while (true) {
    // Commits the previous message and its reply, then takes the next one.
    absl::StatusOr<std::optional<qmgr::v1::Message>> next =
        unit.CommitAndGet("REQUESTS", absl::Seconds(2));
    if (!next.ok()) {
      std::cerr << next.status() << "\n";  // `unit` backs out what it holds
      return 1;
    }
    if (!next->has_value()) break;  // nothing for 2 s; the last unit is committed
    const qmgr::v1::Message& request = **next;
    if (!request.reply_to().empty()) {
      qmgr::v1::NewMessage reply;
      reply.set_queue(request.reply_to());
      reply.set_payload(absl::StrCat("reply to ", request.payload()));
      reply.set_correlation_id(absl::StrCat(request.id()));
      if (absl::Status s = unit.Insert(std::move(reply)); !s.ok()) {
        std::cerr << s << "\n";
        return 1;
      }
    }
    ++processed;
  }
  std::cout << "processed " << processed << " message(s)\n";
  return 0;
}
