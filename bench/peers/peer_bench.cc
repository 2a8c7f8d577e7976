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
//
// One call (or transaction) in flight per producer and consumer, each on its
// own connection. Each payload starts with its producer and sequence number,
// so messages differ (LREM removes the one it names). Only operations that
// complete within --seconds count. Prints the same RESULT line as
// qmgr-bench --result-line, which bench/peers/run.sh collects into its table.
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
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"qmgr-peer-bench: producers and consumers against Redis, PostgreSQL, beanstalkd"};
  app.add_option("--system", c.system, "Queue server and pattern")
      ->required()
      ->check(CLI::IsMember({"redis-list", "redis-reliable", "postgres", "beanstalkd"}));
  app.add_option("--host", c.host, "Server address (redis, beanstalkd)")->capture_default_str();
  app.add_option("--port", c.port, "Server port (redis, beanstalkd)");
  app.add_option("--conninfo", c.conninfo, "libpq connection string (postgres)");
  app.add_option("--producers", c.producers, "Producer connections")->capture_default_str();
  app.add_option("--consumers", c.consumers, "Consumer connections")->capture_default_str();
  app.add_option("--size", c.size, "Payload bytes")->capture_default_str();
  app.add_option("--batch", c.batch, "Messages per enqueue call and per consume call")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--seconds", c.seconds, "Duration")->capture_default_str();
  app.add_option("--queue", c.queue, "Queue (list, table's rows, tube)")->capture_default_str();
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
      std::cerr << absl::StrFormat("[%s] %2ds  enqueued %8d/s  consumed %8d/s  backlog %d\n",
                                   c.system, second, e - enq, g - got, e - g);
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
