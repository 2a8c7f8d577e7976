// A producer: puts messages on queue REQUESTS, several in flight on one
// stream, and prints where each went. Usage: producer [TARGET [COUNT]]
#include <cstdlib>
#include <future>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"

int main(int argc, char** argv) {
  qmgr::client::ClientOptions options;
  if (argc > 1) options.target = argv[1];
  const int count = argc > 2 ? std::atoi(argv[2]) : 10;

  auto client = qmgr::client::Client::Connect(options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  // Define the queue if it is new (ALREADY_EXISTS otherwise, which is fine).
  if (absl::Status s = (*client)->DefineQueue("REQUESTS", {});
      !s.ok() && !absl::IsAlreadyExists(s)) {
    std::cerr << s << "\n";
    return 1;
  }
  auto producer = (*client)->OpenProducer(/*window=*/32);
  if (!producer.ok()) return 1;

  std::vector<std::future<absl::StatusOr<qmgr::client::Enqueued>>> answers;
  for (int i = 0; i < count; ++i) {
    qmgr::v1::NewMessage message;
    message.set_queue("REQUESTS");
    message.set_payload(absl::StrCat("request ", i));
    message.set_reply_to("REPLIES");
    answers.push_back((*producer)->EnqueueAsync(std::move(message)));
  }
  int failed = 0;
  for (auto& answer : answers) {
    absl::StatusOr<qmgr::client::Enqueued> result = answer.get();
    if (!result.ok()) {
      std::cerr << "refused: " << result.status() << "\n";
      ++failed;
      continue;
    }
    std::cout << "message " << result->message_id << (result->durable ? " durable" : " queued")
              << " at LSN " << result->lsn << "\n";
  }
  return failed == 0 && (*producer)->Close().ok() ? 0 : 1;
}
