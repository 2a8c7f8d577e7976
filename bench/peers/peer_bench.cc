// qmgr-peer-bench: qmgr-bench's producer/consumer load against the durable
// queue servers qmgrd is measured against (bench/peers/run.sh starts them):
//
//   redis-list      LPUSH / BRPOP (batched: LPUSH of --batch values, BLMPOP
//                   COUNT --batch). No acknowledgement: a consumer that dies
//                   after BRPOP loses the message.
//   redis-reliable  LPUSH / BLMOVE into a processing list, then LREM from it
//                   once the message is done (the "reliable queue" pattern).
//   postgres        a table: INSERT (batched: one INSERT of --batch rows);
//                   consumer, in one transaction, DELETE ... WHERE id =
//                   (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING
//                   (batched: LIMIT --batch).
//   beanstalkd      its text protocol: put / reserve-with-timeout / delete.
//   rabbitmq        AMQP 0-9-1 (librabbitmq): a durable quorum queue
//                   (--rabbitmq-queue-type classic: a classic durable one);
//                   producers publish persistent messages (delivery_mode 2)
//                   with publisher confirms and wait for the broker's
//                   basic.ack (batched: publish --batch, then wait for all
//                   of them); consumers basic.consume with prefetch --batch
//                   and manual acks (batched: one ack with multiple set per
//                   --batch messages).
//
// One call (or transaction) in flight per producer and consumer, each on its
// own connection. Each payload starts with its producer and sequence number,
// so messages differ (LREM removes the one it names). Only operations that
// complete within --seconds count. Prints the same RESULT line as
// qmgr-bench --result-line, which bench/peers/run.sh collects into its table.
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_support.h"

namespace {

using qmgr::bench::Clock;
using qmgr::bench::Die;
using qmgr::bench::Percentile;

struct Config {
  std::string system;
  std::string host = "127.0.0.1";
  int port = 0;
  std::string conninfo;  // postgres
  int producers = 1;
  int consumers = 1;
  size_t size = 1024;
  int batch = 1;
  double seconds = 10;
  std::string queue = "bench";
  std::string rabbitmq_queue_type = "quorum";
};

// What one producer or consumer measured: messages done and the latency of
// each call (an enqueue of --batch messages, or a consume of up to --batch).
struct Stats {
  uint64_t messages = 0;
  uint64_t calls = 0;
  uint64_t empty = 0;  // consumer calls that found nothing
  std::vector<Clock::duration> latencies;
};

struct Run {
  const Config* c = nullptr;
  Clock::time_point deadline;
  std::atomic<uint64_t> enqueued{0};
  std::atomic<uint64_t> consumed{0};
  bool Over(Clock::time_point t) const { return t > deadline; }
};

// A payload of --size bytes naming its producer and sequence number.
std::string Payload(const Config& c, int producer, uint64_t seq) {
  std::string p = absl::StrFormat("p%d-%d ", producer, seq);
  p.resize(std::max(c.size, p.size()), 'x');
  return p;
}

// ---- Redis (hiredis) ------------------------------------------------------------

class Redis {
 public:
  explicit Redis(const Config& c) {
    ctx_ = redisConnect(c.host.c_str(), c.port);
    if (ctx_ == nullptr || ctx_->err) {
      Die(absl::StrCat("redis ", c.host, ":", c.port, ": ", ctx_ ? ctx_->errstr : "no memory"));
    }
  }
  ~Redis() { redisFree(ctx_); }
  Redis(const Redis&) = delete;
  Redis& operator=(const Redis&) = delete;

  // Runs one command; dies on a connection or server error.
  redisReply* Command(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (reply == nullptr) Die(absl::StrCat("redis: ", ctx_->errstr));
    if (reply->type == REDIS_REPLY_ERROR) Die(absl::StrCat("redis ", args[0], ": ", reply->str));
    return reply;
  }
  void Do(const std::vector<std::string>& args) { freeReplyObject(Command(args)); }

 private:
  redisContext* ctx_;
};

// ---- PostgreSQL (libpq) -------------------------------------------------------

class Postgres {
 public:
  explicit Postgres(const Config& c) {
    conn_ = PQconnectdb(c.conninfo.c_str());
    if (PQstatus(conn_) != CONNECTION_OK) {
      Die(absl::StrCat("postgres: ", PQerrorMessage(conn_)));
    }
  }
  ~Postgres() { PQfinish(conn_); }
  Postgres(const Postgres&) = delete;
  Postgres& operator=(const Postgres&) = delete;

  void Exec(const std::string& sql) { Check(PQexec(conn_, sql.c_str()), sql); }
  void Prepare(const std::string& name, const std::string& sql, int params) {
    Check(PQprepare(conn_, name.c_str(), sql.c_str(), params, nullptr), sql);
  }
  // Runs a prepared statement with binary parameters; returns the row count.
  int Run(const std::string& name, const std::vector<std::string>& params) {
    std::vector<const char*> values;
    std::vector<int> lengths, formats;
    for (const std::string& p : params) {
      values.push_back(p.data());
      lengths.push_back(static_cast<int>(p.size()));
      formats.push_back(1);
    }
    PGresult* r = PQexecPrepared(conn_, name.c_str(), static_cast<int>(params.size()),
                                 values.data(), lengths.data(), formats.data(), 1);
    const int rows = Check(r, name);
    return rows;
  }

 private:
  int Check(PGresult* r, const std::string& what) {
    const ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
      const std::string error = PQresultErrorMessage(r);
      PQclear(r);
      Die(absl::StrCat("postgres: ", what, ": ", error));
    }
    const int rows = PQntuples(r);
    PQclear(r);
    return rows;
  }
  PGconn* conn_;
};

std::string PostgresInsert(int rows) {
  std::string sql = absl::StrCat("INSERT INTO ", "bench_queue (payload) VALUES ");
  for (int i = 1; i <= rows; ++i) absl::StrAppend(&sql, i > 1 ? "," : "", "($", i, "::bytea)");
  return sql;
}

// ---- beanstalkd (its text protocol) ----------------------------------------------

class Beanstalk {
 public:
  explicit Beanstalk(const Config& c) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(c.port));
    if (::inet_pton(AF_INET, c.host.c_str(), &addr.sin_addr) != 1) Die("beanstalkd: bad host");
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      Die(absl::StrCat("beanstalkd: cannot connect to ", c.host, ":", c.port));
    }
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~Beanstalk() { ::close(fd_); }
  Beanstalk(const Beanstalk&) = delete;
  Beanstalk& operator=(const Beanstalk&) = delete;

  void Send(const std::string& s) {
    size_t done = 0;
    while (done < s.size()) {
      const ssize_t n = ::write(fd_, s.data() + done, s.size() - done);
      if (n <= 0) Die("beanstalkd: write failed");
      done += static_cast<size_t>(n);
    }
  }
  // One "\r\n"-terminated line, without the terminator.
  std::string Line() {
    while (true) {
      const size_t end = buf_.find("\r\n");
      if (end != std::string::npos) {
        std::string line = buf_.substr(0, end);
        buf_.erase(0, end + 2);
        return line;
      }
      Fill();
    }
  }
  // `n` bytes of body and its "\r\n".
  std::string Body(size_t n) {
    while (buf_.size() < n + 2) Fill();
    std::string body = buf_.substr(0, n);
    buf_.erase(0, n + 2);
    return body;
  }
  std::string Command(const std::string& s) {
    Send(s);
    return Line();
  }
  void Expect(const std::string& command, const std::string& answer_prefix) {
    const std::string answer = Command(command);
    if (answer.rfind(answer_prefix, 0) != 0) {
      Die(absl::StrCat("beanstalkd: ", command, " answered ", answer));
    }
  }

 private:
  void Fill() {
    char chunk[16384];
    const ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n <= 0) Die("beanstalkd: connection closed");
    buf_.append(chunk, static_cast<size_t>(n));
  }
  int fd_;
  std::string buf_;
};

// ---- RabbitMQ (librabbitmq, AMQP 0-9-1) -----------------------------------------

class Rabbit {
 public:
  static constexpr amqp_channel_t kChannel = 1;

  explicit Rabbit(const Config& c) : c_(c) {
    conn_ = amqp_new_connection();
    amqp_socket_t* socket = amqp_tcp_socket_new(conn_);
    if (socket == nullptr) Die("rabbitmq: cannot create a socket");
    if (amqp_socket_open(socket, c.host.c_str(), c.port) != AMQP_STATUS_OK) {
      Die(absl::StrCat("rabbitmq: cannot connect to ", c.host, ":", c.port));
    }
    Check(amqp_login(conn_, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
    amqp_channel_open(conn_, kChannel);
    Check(amqp_get_rpc_reply(conn_), "channel.open");
  }
  ~Rabbit() {
    amqp_channel_close(conn_, kChannel, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn_);
  }
  Rabbit(const Rabbit&) = delete;
  Rabbit& operator=(const Rabbit&) = delete;

  // Deletes the queue (and what an earlier run left in it) and declares it
  // again: durable, of --rabbitmq-queue-type.
  void Redeclare() {
    amqp_queue_delete(conn_, kChannel, amqp_cstring_bytes(c_.queue.c_str()), 0, 0);
    Check(amqp_get_rpc_reply(conn_), "queue.delete");
    amqp_table_entry_t type;
    type.key = amqp_cstring_bytes("x-queue-type");
    type.value.kind = AMQP_FIELD_KIND_UTF8;
    type.value.value.bytes = amqp_cstring_bytes(c_.rabbitmq_queue_type.c_str());
    const amqp_table_t arguments = {1, &type};
    amqp_queue_declare(conn_, kChannel, amqp_cstring_bytes(c_.queue.c_str()), /*passive=*/0,
                       /*durable=*/1, /*exclusive=*/0, /*auto_delete=*/0, arguments);
    Check(amqp_get_rpc_reply(conn_), "queue.declare");
  }

  void ConfirmSelect() {
    amqp_confirm_select(conn_, kChannel);
    Check(amqp_get_rpc_reply(conn_), "confirm.select");
  }

  // Publishes persistent messages to the queue through the default exchange
  // and waits until the broker has confirmed every one of them.
  void PublishConfirmed(const std::vector<std::string>& payloads) {
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = 2;  // persistent
    for (const std::string& p : payloads) {
      const amqp_bytes_t body = {p.size(), const_cast<char*>(p.data())};
      if (amqp_basic_publish(conn_, kChannel, amqp_empty_bytes,
                             amqp_cstring_bytes(c_.queue.c_str()), /*mandatory=*/0,
                             /*immediate=*/0, &props, body) != AMQP_STATUS_OK) {
        Die("rabbitmq: basic.publish failed");
      }
      unconfirmed_.insert(++published_);
    }
    while (!unconfirmed_.empty()) {
      amqp_frame_t frame;
      if (amqp_simple_wait_frame(conn_, &frame) != AMQP_STATUS_OK) {
        Die("rabbitmq: connection lost waiting for a confirm");
      }
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      const amqp_method_number_t id = frame.payload.method.id;
      if (id == AMQP_BASIC_NACK_METHOD) Die("rabbitmq: the broker nacked a message");
      if (id == AMQP_CHANNEL_CLOSE_METHOD || id == AMQP_CONNECTION_CLOSE_METHOD) {
        Die("rabbitmq: the broker closed the channel while publishing");
      }
      if (id != AMQP_BASIC_ACK_METHOD) continue;
      const auto* ack = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
      // A single ack confirms its own tag; "multiple", every tag up to it.
      if (ack->multiple) {
        unconfirmed_.erase(unconfirmed_.begin(), unconfirmed_.upper_bound(ack->delivery_tag));
      } else {
        unconfirmed_.erase(ack->delivery_tag);
      }
    }
    amqp_maybe_release_buffers(conn_);
  }

  void Consume(uint16_t prefetch) {
    amqp_basic_qos(conn_, kChannel, 0, prefetch, 0);
    Check(amqp_get_rpc_reply(conn_), "basic.qos");
    amqp_basic_consume(conn_, kChannel, amqp_cstring_bytes(c_.queue.c_str()), amqp_empty_bytes,
                       /*no_local=*/0, /*no_ack=*/0, /*exclusive=*/0, amqp_empty_table);
    Check(amqp_get_rpc_reply(conn_), "basic.consume");
  }

  // The next delivery's tag, or 0 when none came within `timeout`.
  uint64_t Receive(timeval timeout) {
    amqp_envelope_t envelope;
    amqp_maybe_release_buffers(conn_);
    const amqp_rpc_reply_t r = amqp_consume_message(conn_, &envelope, &timeout, 0);
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
      return 0;
    }
    Check(r, "basic.deliver");
    const uint64_t tag = envelope.delivery_tag;
    amqp_destroy_envelope(&envelope);
    return tag;
  }

  void Ack(uint64_t tag, bool multiple) {
    if (amqp_basic_ack(conn_, kChannel, tag, multiple ? 1 : 0) != AMQP_STATUS_OK) {
      Die("rabbitmq: basic.ack failed");
    }
  }

 private:
  static std::string Text(amqp_bytes_t b) {
    return std::string(static_cast<const char*>(b.bytes), b.len);
  }
  void Check(const amqp_rpc_reply_t& r, const std::string& what) {
    switch (r.reply_type) {
      case AMQP_RESPONSE_NORMAL:
        return;
      case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        Die(absl::StrCat("rabbitmq: ", what, ": ", amqp_error_string2(r.library_error)));
      case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
          const auto* m = static_cast<const amqp_channel_close_t*>(r.reply.decoded);
          Die(absl::StrCat("rabbitmq: ", what, ": ", m->reply_code, " ", Text(m->reply_text)));
        }
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
          const auto* m = static_cast<const amqp_connection_close_t*>(r.reply.decoded);
          Die(absl::StrCat("rabbitmq: ", what, ": ", m->reply_code, " ", Text(m->reply_text)));
        }
        Die(absl::StrCat("rabbitmq: ", what, ": server exception"));
      default:
        Die(absl::StrCat("rabbitmq: ", what, ": no reply"));
    }
  }

  const Config& c_;
  amqp_connection_state_t conn_;
  uint64_t published_ = 0;          // delivery tags of this channel: 1, 2, ...
  std::set<uint64_t> unconfirmed_;  // published, not yet acked by the broker
};

// ---- Producers and consumers --------------------------------------------------------

// Times `op` (returning the messages it did) until the deadline.
template <typename Op>
void Loop(Run* run, Stats* st, std::atomic<uint64_t>* counter, Op op) {
  while (true) {
    const Clock::time_point t0 = Clock::now();
    const int done = op();
    const Clock::time_point t1 = Clock::now();
    if (run->Over(t1)) return;
    ++st->calls;
    if (done == 0) {
      ++st->empty;
      continue;
    }
    st->latencies.push_back(t1 - t0);
    st->messages += done;
    *counter += done;
  }
}

void Produce(Run* run, int id, Stats* st) {
  const Config& c = *run->c;
  uint64_t seq = 0;
  auto next_payloads = [&] {
    std::vector<std::string> p;
    for (int i = 0; i < c.batch; ++i) p.push_back(Payload(c, id, seq++));
    return p;
  };
  if (c.system == "redis-list" || c.system == "redis-reliable") {
    Redis r(c);
    Loop(run, st, &run->enqueued, [&] {
      std::vector<std::string> args = {"LPUSH", c.queue};
      for (std::string& p : next_payloads()) args.push_back(std::move(p));
      r.Do(args);
      return c.batch;
    });
  } else if (c.system == "postgres") {
    Postgres pg(c);
    pg.Prepare("enqueue", PostgresInsert(c.batch), c.batch);
    Loop(run, st, &run->enqueued, [&] {
      pg.Run("enqueue", next_payloads());
      return c.batch;
    });
  } else if (c.system == "beanstalkd") {
    Beanstalk b(c);
    b.Expect(absl::StrCat("use ", c.queue, "\r\n"), "USING");
    Loop(run, st, &run->enqueued, [&] {
      const std::string p = Payload(c, id, seq++);
      b.Expect(absl::StrCat("put 1024 0 60 ", p.size(), "\r\n", p, "\r\n"), "INSERTED");
      return 1;
    });
  } else if (c.system == "rabbitmq") {
    Rabbit r(c);
    r.ConfirmSelect();
    Loop(run, st, &run->enqueued, [&] {
      r.PublishConfirmed(next_payloads());
      return c.batch;
    });
  }
}

void Consume(Run* run, Stats* st) {
  const Config& c = *run->c;
  if (c.system == "redis-list") {
    Redis r(c);
    Loop(run, st, &run->consumed, [&] {
      redisReply* reply = c.batch == 1 ? r.Command({"BRPOP", c.queue, "0.1"})
                                       : r.Command({"BLMPOP", "0.1", "1", c.queue, "RIGHT", "COUNT",
                                                    std::to_string(c.batch)});
      int got = 0;
      if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        got = c.batch == 1 ? 1 : static_cast<int>(reply->element[1]->elements);
      }
      freeReplyObject(reply);
      return got;
    });
  } else if (c.system == "redis-reliable") {
    Redis r(c);
    const std::string processing = c.queue + ":processing";
    Loop(run, st, &run->consumed, [&] {
      redisReply* reply = r.Command({"BLMOVE", c.queue, processing, "RIGHT", "LEFT", "0.1"});
      if (reply->type != REDIS_REPLY_STRING) {
        freeReplyObject(reply);
        return 0;
      }
      const std::string message(reply->str, reply->len);
      freeReplyObject(reply);
      // The message is done: only now does it leave the processing list.
      r.Do({"LREM", processing, "1", message});
      return 1;
    });
  } else if (c.system == "postgres") {
    Postgres pg(c);
    pg.Prepare("dequeue",
               absl::StrCat("DELETE FROM bench_queue WHERE id IN (SELECT id FROM bench_queue "
                            "ORDER BY id FOR UPDATE SKIP LOCKED LIMIT ",
                            c.batch, ") RETURNING id, payload"),
               0);
    Loop(run, st, &run->consumed, [&] {
      const int rows = pg.Run("dequeue", {});
      // An empty table: poll again shortly (a real consumer would LISTEN).
      if (rows == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
      return rows;
    });
  } else if (c.system == "beanstalkd") {
    Beanstalk b(c);
    b.Expect(absl::StrCat("watch ", c.queue, "\r\n"), "WATCHING");
    b.Expect("ignore default\r\n", "WATCHING");
    Loop(run, st, &run->consumed, [&] {
      const std::string answer = b.Command("reserve-with-timeout 1\r\n");
      if (answer == "TIMED_OUT") return 0;
      std::vector<std::string> f = absl::StrSplit(answer, ' ');
      size_t bytes = 0;
      if (f.size() != 3 || f[0] != "RESERVED" || !absl::SimpleAtoi(f[2], &bytes)) {
        Die(absl::StrCat("beanstalkd: reserve answered ", answer));
      }
      b.Body(bytes);
      b.Expect(absl::StrCat("delete ", f[1], "\r\n"), "DELETED");
      return 1;
    });
  } else if (c.system == "rabbitmq") {
    Rabbit r(c);
    r.Consume(static_cast<uint16_t>(c.batch));
    Loop(run, st, &run->consumed, [&] {
      // Up to --batch deliveries (the broker sends no more than that
      // unacknowledged), then one ack for all of them.
      int got = 0;
      uint64_t last = 0;
      while (got < c.batch) {
        const uint64_t tag = r.Receive(timeval{0, got == 0 ? 100000 : 10000});
        if (tag == 0) break;
        last = tag;
        ++got;
      }
      if (got > 0) r.Ack(last, /*multiple=*/c.batch > 1);
      return got;
    });
  }
}

// Empties the queue, so that every run starts from nothing.
void Prepare(const Config& c) {
  if (c.system == "redis-list" || c.system == "redis-reliable") {
    Redis r(c);
    r.Do({"DEL", c.queue, c.queue + ":processing"});
  } else if (c.system == "postgres") {
    Postgres pg(c);
    pg.Exec("DROP TABLE IF EXISTS bench_queue");
    pg.Exec("CREATE TABLE bench_queue (id bigserial PRIMARY KEY, payload bytea NOT NULL)");
  } else if (c.system == "beanstalkd") {
    // Jobs left by an earlier run are deleted.
    Beanstalk b(c);
    b.Expect(absl::StrCat("watch ", c.queue, "\r\n"), "WATCHING");
    while (true) {
      const std::string answer = b.Command("reserve-with-timeout 0\r\n");
      if (answer.rfind("RESERVED", 0) != 0) break;
      std::vector<std::string> f = absl::StrSplit(answer, ' ');
      size_t bytes = 0;
      if (f.size() != 3 || !absl::SimpleAtoi(f[2], &bytes)) Die("beanstalkd: bad RESERVED");
      b.Body(bytes);
      b.Expect(absl::StrCat("delete ", f[1], "\r\n"), "DELETED");
    }
  } else if (c.system == "rabbitmq") {
    Rabbit r(c);
    r.Redeclare();
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{
      "qmgr-peer-bench: producers and consumers against Redis, PostgreSQL, beanstalkd, RabbitMQ"};
  app.add_option("--system", c.system, "Queue server and pattern")
      ->required()
      ->check(
          CLI::IsMember({"redis-list", "redis-reliable", "postgres", "beanstalkd", "rabbitmq"}));
  app.add_option("--host", c.host, "Server address (redis, beanstalkd, rabbitmq)")
      ->capture_default_str();
  app.add_option("--port", c.port, "Server port (redis, beanstalkd, rabbitmq)");
  app.add_option("--conninfo", c.conninfo, "libpq connection string (postgres)");
  app.add_option("--producers", c.producers, "Producer connections")->capture_default_str();
  app.add_option("--consumers", c.consumers, "Consumer connections")->capture_default_str();
  app.add_option("--size", c.size, "Payload bytes")->capture_default_str();
  app.add_option("--batch", c.batch, "Messages per enqueue call and per consume call")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--seconds", c.seconds, "Duration")->capture_default_str();
  app.add_option("--queue", c.queue, "Queue (list, table's rows, tube, AMQP queue)")
      ->capture_default_str();
  app.add_option("--rabbitmq-queue-type", c.rabbitmq_queue_type, "x-queue-type of the AMQP queue")
      ->check(CLI::IsMember({"quorum", "classic"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (c.system == "beanstalkd" && c.batch != 1) Die("beanstalkd: --batch 1 only");
  if (c.system == "redis-reliable" && c.batch != 1) Die("redis-reliable: --batch 1 only");

  Prepare(c);
  Run run;
  run.c = &c;
  std::vector<std::unique_ptr<Stats>> producer_stats, consumer_stats;
  for (int i = 0; i < c.producers; ++i) producer_stats.push_back(std::make_unique<Stats>());
  for (int i = 0; i < c.consumers; ++i) consumer_stats.push_back(std::make_unique<Stats>());
  const Clock::time_point start = Clock::now();
  run.deadline = start + std::chrono::microseconds(static_cast<int64_t>(c.seconds * 1e6));
  std::vector<std::thread> threads;
  for (int i = 0; i < c.producers; ++i) {
    threads.emplace_back([&, i] { Produce(&run, i, producer_stats[i].get()); });
  }
  for (int i = 0; i < c.consumers; ++i) {
    threads.emplace_back([&, i] { Consume(&run, consumer_stats[i].get()); });
  }
  std::thread progress([&] {
    uint64_t enq = 0, got = 0;
    for (int second = 1; start + std::chrono::seconds(second) <= run.deadline; ++second) {
      std::this_thread::sleep_until(start + std::chrono::seconds(second));
      const uint64_t e = run.enqueued, g = run.consumed;
      // Signed: a consumer may see a message before its producer's confirm.
      std::cerr << absl::StrFormat("[%s] %2ds  enqueued %8d/s  consumed %8d/s  backlog %d\n",
                                   c.system, second, e - enq, g - got,
                                   static_cast<int64_t>(e) - static_cast<int64_t>(g));
      enq = e;
      got = g;
    }
  });
  for (std::thread& t : threads) t.join();
  progress.join();

  uint64_t enqueued = 0, consumed = 0, empty = 0;
  std::vector<Clock::duration> enq_lat, deq_lat;
  for (auto& st : producer_stats) {
    enqueued += st->messages;
    enq_lat.insert(enq_lat.end(), st->latencies.begin(), st->latencies.end());
  }
  for (auto& st : consumer_stats) {
    consumed += st->messages;
    empty += st->empty;
    deq_lat.insert(deq_lat.end(), st->latencies.begin(), st->latencies.end());
  }
  // system,P,C,batch,enq msgs/s,consumed msgs/s,enq p50,enq p99,consume p50,consume p99 (µs),
  // errors, messages left queued.
  std::cout << absl::StrFormat(
      "RESULT,%s,%d,%d,%d,%.0f,%.0f,%.0f,%.0f,%.0f,%.0f,%d,%d\n", c.system, c.producers,
      c.consumers, c.batch, enqueued / c.seconds, consumed / c.seconds, Percentile(enq_lat, 50),
      Percentile(enq_lat, 99), Percentile(deq_lat, 50), Percentile(deq_lat, 99), 0,
      enqueued > consumed ? enqueued - consumed : 0);
  std::cerr << absl::StrFormat("[%s] consumer calls that found nothing: %d\n", c.system, empty);
  return 0;
}
