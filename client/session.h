// client::Session: the client's half of a session (docs/sessions.md, the
// contract; docs/client.md, this half). A terminal or workstation program
// sends numbered input and receives confirmed output; the session keeps its
// numbers in a SessionFile and resynchronizes by itself after any failure of
// the connection, of qmgrd, or of the client process:
//
//   BIND (OpenSession) → STSN (SET_AND_TEST both flows with the file's
//   numbers) → SDT → resend the RECOVERABLE inputs the server lacks, in
//   order → Receive again.
//
// What it cannot decide it reports (ResyncReport): inputs it resent, deferred
// inputs the application must reissue (they never reached a sync point),
// what became of the output in doubt, and output that may be a duplicate.
// A disagreement it cannot resolve (STSN TEST_NEGATIVE) is an error the
// application acts on; the library never guesses.
//
// Durability (fsync, through SessionFile::Save):
//  - before an input is sent: its number and contents;
//  - before an output is acknowledged: its number and message id.
// Forgetting an input the server has hardened is written with the next save,
// not synced on its own: a crash before then only makes the next resync find
// it hardened again.
//
// Thread safety: every method may be called from any thread; calls that talk
// to the server run one at a time. A background thread reads the Receive
// stream.
#ifndef QMGR_CLIENT_SESSION_H_
#define QMGR_CLIENT_SESSION_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/credentials.h"
#include "client/session_file.h"
#include "log/file.h"
#include "qmgr/v1/client_session.pb.h"
#include "qmgr/v1/qmgr.grpc.pb.h"

namespace qmgr::client {

// What a resynchronization found and did.
struct ResyncReport {
  // False when the server needed no resynchronization and the file held
  // nothing in doubt (a session closed normally, or a new one).
  bool resynchronized = false;
  // Opened cold (the file was lost): the server's numbers were taken.
  bool cold = false;
  // Inputs the file held that the server had hardened already.
  std::vector<uint64_t> hardened_inputs;
  // Inputs resent, with the numbers they were resent under, in order.
  std::vector<uint64_t> resent_inputs;
  // Resent inputs the server refused (QUEUE_FULL, ...): not queued, dropped
  // from the file. The application decides whether to send them again.
  std::vector<std::pair<qmgr::v1::ClientSentInput, absl::Status>> refused_inputs;
  // Deferred inputs (RESPONSE, CONVERSATIONAL, FASTPATH) that never reached
  // their sync point: gone from the server and from the file. Reissue them
  // (Send) if they are still wanted.
  std::vector<qmgr::v1::ClientSentInput> reissue_inputs;
  // The output flow's STSN outcome, and the server's numbers after it.
  qmgr::v1::OutputOutcome output_outcome = qmgr::v1::OUTPUT_OUTCOME_UNSPECIFIED;
  uint64_t output_seq = 0;
  uint64_t output_message_id = 0;
  // The output in doubt comes again and may have reached the application
  // before (WILL_RESEND, a cold open, or the server's possible-duplicate
  // mark): Next flags it possible_duplicate.
  bool output_possible_duplicate = false;
};

struct SessionOptions {
  std::string name = "";       // 1..48 of [A-Za-z0-9._-]
  std::string file_path = "";  // the SessionFile
  std::string target = "127.0.0.1:7430";
  // When set, asked for the target before every connection (a server that
  // restarts elsewhere is followed).
  std::function<std::string()> resolve_target = nullptr;
  // The session file was lost: the session opens cold and takes the server's
  // numbers (inputs in flight may be lost, the output in doubt is flagged
  // possibly duplicate). Refused when the file exists.
  bool file_lost = false;
  absl::Duration call_timeout = absl::Seconds(30);
  // Reconnection: a pause from `reconnect_backoff`, doubled up to
  // `reconnect_backoff_max`, for at most `reconnect_timeout` per failure;
  // then the call fails with the last error (Unavailable).
  absl::Duration reconnect_backoff = absl::Milliseconds(50);
  absl::Duration reconnect_backoff_max = absl::Seconds(1);
  absl::Duration reconnect_timeout = absl::Seconds(60);
  int max_receive_bytes = 64 << 20;
  // TLS, client certificate, token (docs/security.md); empty: plaintext.
  // The session is bound to the identity they prove: after a crash the same
  // identity binds it again (takes it over); another is refused.
  Credentials credentials = {};
  // Called after every resynchronization (the first one is also
  // open_report()). Runs while the session is busy: it must not call the
  // session.
  std::function<void(const ResyncReport&)> on_resync = nullptr;
  // The session file's file system; null: the real one.
  log::FileSystem* fs = nullptr;
};

// The server's answer to an input.
struct Accepted {
  uint64_t input_seq = 0;   // 0: IRRECOVERABLE (not numbered)
  uint64_t message_id = 0;  // 0 when an answer was lost and only the number is known
  // RECOVERABLE: hardened. Deferred classes: false until their sync point.
  bool durable = false;
  // The first attempt failed in transit; the resynchronization then resent
  // the input or found it already held (input_seq may differ from the first
  // attempt's only if an earlier deferred input had to be reissued).
  bool recovered = false;
};

// An output of the session.
struct Output {
  uint64_t out_seq = 0;  // 0 for an exception response
  qmgr::v1::Message message;
  // IRRECOVERABLE output: done when sent, no acknowledgement.
  bool exception_response = false;
  // It may have reached the application before: the server's mark (cold
  // open, forced Assign) or a resend after a resynchronization.
  bool possible_duplicate = false;
};

class Session {
 public:
  // Loads the file, connects (retrying within reconnect_timeout), binds and
  // resynchronizes. Errors: DataLoss (damaged file), FailedPrecondition
  // (STSN TEST_NEGATIVE: the file does not match the server; the message
  // says both sides' numbers), Unavailable (no server within the timeout).
  static absl::StatusOr<std::unique_ptr<Session>> Open(SessionOptions options);
  // Stops receiving. No UNBIND: the next Open resynchronizes.
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const ResyncReport& open_report() const { return open_report_; }

  // Sends one input. Its class must be explicit (the library must know
  // whether to resend it or report it for reissue); `session`, `input_seq`
  // and `ack_out_seq` are filled in here. RECOVERABLE and deferred input is
  // numbered and recorded durably first; IRRECOVERABLE is neither (and not
  // resent: it may be lost). `acknowledge`: an output Next returned, secured
  // with the same save and confirmed by this input (implied acknowledgement).
  // A transit failure resynchronizes and answers what became of the input.
  // A refusal (RESPONSE_OUTSTANDING, QUEUE_FULL, ...) gives its number back.
  absl::StatusOr<Accepted> Send(qmgr::v1::NewMessage input, const Output* acknowledge = nullptr);

  // The next output, waiting up to `wait`; nullopt if none came. An output
  // already secured is acknowledged again silently, never returned twice
  // except flagged possible_duplicate.
  absl::StatusOr<std::optional<Output>> Next(absl::Duration wait);
  // The application has secured `output`: recorded durably, then
  // acknowledged. OK once recorded: if the acknowledgement is lost, the
  // resynchronization confirms it (DELIVERED). FailedPrecondition when a
  // resynchronization since Next took the output back: Next hands it out
  // again, flagged possible_duplicate.
  absl::Status Acknowledge(const Output& output);
  // Negative acknowledgement: the server keeps the output and counts it.
  absl::Status Reject(const Output& output, uint32_t sense_code);

  // UNBIND: refused while output is unacknowledged or a deferred input
  // awaits its reply. The session then needs no resynchronization.
  absl::Status Close();

  qmgr::v1::ClientSessionState state() const;

 private:
  struct Received {
    uint64_t generation;
    qmgr::v1::ReceiveResponse response;
  };
  // The Send whose input a resynchronization must resend, whatever its
  // class, and the outcome the resynchronization found for it.
  struct InFlight {
    uint64_t seq;
    std::optional<absl::StatusOr<Accepted>> outcome = std::nullopt;
  };

  Session(SessionOptions options, SessionFile file);

  // Reconnects and resynchronizes until done, a fatal error, or the
  // reconnect timeout.
  // `rebind` false: the binding is kept (RQR instead of BIND) on the first
  // attempt, for a number out of sequence.
  absl::Status Recover(InFlight* in_flight, bool rebind = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  absl::Status Connect(absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  absl::Status BindAndResync(InFlight* in_flight, bool rebind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  // STSN's answers applied to state_ (both checked for agreement first);
  // the inputs to resend, renumbered, in `resend`.
  absl::Status ApplyInputAnswer(const qmgr::v1::InputFlowAnswer& answer, InFlight* in_flight,
                                std::vector<qmgr::v1::ClientSentInput>& resend,
                                ResyncReport& report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  void ApplyOutputAnswer(const qmgr::v1::OutputFlowAnswer& answer, ResyncReport& report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  absl::Status Resend(std::vector<qmgr::v1::ClientSentInput> resend, InFlight* in_flight,
                      ResyncReport& report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);

  absl::StatusOr<qmgr::v1::EnqueueResponse> EnqueueCall(const qmgr::v1::ClientSentInput& input,
                                                        uint64_t ack_out_seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  absl::Status AcknowledgeCall(uint64_t out_seq, bool positive, uint32_t sense_code)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  // Input `seq` and every earlier one are hardened, durably: forgotten (in
  // state_, written by the next Save).
  void ForgetThrough(uint64_t seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  // Writes state_; a failure breaks the session.
  absl::Status Save() ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);

  void StartReceiving() ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  void StopReceiving() ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  void ReceiveLoop(uint64_t generation, grpc::ClientReader<qmgr::v1::ReceiveResponse>* reader);
  bool HasReceived() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !received_.empty() || receive_ended_.has_value();
  }
  // What to do with a received output: nullopt to drop it (a repeat).
  absl::StatusOr<std::optional<Output>> Classify(const Received& received)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);

  const SessionOptions options_;

  // Serializes every conversation with the server and every change of the
  // file. Taken before mu_.
  mutable absl::Mutex op_mu_;
  SessionFile file_ ABSL_GUARDED_BY(op_mu_);
  // The current state; the file has it as of the last Save, except inputs
  // forgotten since.
  qmgr::v1::ClientSessionState state_ ABSL_GUARDED_BY(op_mu_);
  bool cold_ ABSL_GUARDED_BY(op_mu_);
  // A fatal error: every later call fails with it (reopen the session).
  absl::Status broken_ ABSL_GUARDED_BY(op_mu_);
  bool ready_ ABSL_GUARDED_BY(op_mu_) = false;  // bound and in data traffic
  bool closed_ ABSL_GUARDED_BY(op_mu_) = false;
  // The highest input number the server accepted. It accepts input N only
  // once N - 1 is hardened, and its log is durable as a prefix: so a durable
  // answer to a later request (an Acknowledge) proves every input below it
  // hardened durably.
  uint64_t accepted_seq_ ABSL_GUARDED_BY(op_mu_) = 0;
  // The output handed to the application and not yet acknowledged.
  std::optional<std::pair<uint64_t, uint64_t>> pending_ ABSL_GUARDED_BY(op_mu_);  // seq, id
  // The output number a resynchronization said comes again (0: none).
  uint64_t duplicate_seq_ ABSL_GUARDED_BY(op_mu_) = 0;
  std::string target_ ABSL_GUARDED_BY(op_mu_);
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(op_mu_);
  std::unique_ptr<qmgr::v1::QueueManager::Stub> stub_ ABSL_GUARDED_BY(op_mu_);
  std::unique_ptr<grpc::ClientContext> receive_context_ ABSL_GUARDED_BY(op_mu_);
  std::unique_ptr<grpc::ClientReader<qmgr::v1::ReceiveResponse>> receive_reader_
      ABSL_GUARDED_BY(op_mu_);
  std::thread receiver_ ABSL_GUARDED_BY(op_mu_);
  ResyncReport last_report_ ABSL_GUARDED_BY(op_mu_);
  ResyncReport open_report_;  // set once by Open

  // Between the receiving thread and Next.
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(op_mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // of the current Receive stream
  std::deque<Received> received_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> receive_ended_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qmgr::client

#endif  // QMGR_CLIENT_SESSION_H_
