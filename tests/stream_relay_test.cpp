// The stream relay over real loopback TCP sockets: every stream gets exactly its bytes in order;
// a client that stops reading holds up only itself and is dropped after the write timeout; a
// client that closes, a source that throws and a relay that stops each end the stream as gone.
#include "server/stream_relay.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <deque>
#include <future>
#include <optional>
#include <random>

#include "tests/catch.hpp"

using namespace hyco;
using Clock = std::chrono::steady_clock;

namespace {

// A connected TCP pair on 127.0.0.1: `server` is the relay's side, `client` the reader's. With
// `small` both buffers are a few KiB, so that a client that stops reading blocks writes soon.
struct TcpPair {
  int server = -1, client = -1;
  explicit TcpPair(bool small = false) {
    const int lis = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(lis, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(lis, 1) == 0);
    REQUIRE(::getsockname(lis, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    client = ::socket(AF_INET, SOCK_STREAM, 0);
    const int buf = 4096;
    if (small) ::setsockopt(client, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    REQUIRE(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    server = ::accept(lis, nullptr, nullptr);
    REQUIRE(server >= 0);
    if (small) ::setsockopt(server, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    ::close(lis);
  }
  ~TcpPair() {
    if (server >= 0) ::close(server);
    if (client >= 0) ::close(client);
  }
  // Reads until the server side closes (or `limit` bytes).
  std::string read_all(size_t limit = SIZE_MAX) const {
    std::string got;
    char buf[8192];
    while (got.size() < limit) {
      const ssize_t n = ::recv(client, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, size_t(n));
    }
    return got;
  }
};

// A source fed by a producer thread, as the scheduler feeds a response: put() then notify().
class QueueSource final : public StreamRelay::Source {
 public:
  void put(std::string s) {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(std::move(s));
  }
  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
  }
  void fail_next_drain() { fail_ = true; }
  bool drain(std::string& out) override {
    if (fail_) throw std::runtime_error("formatter broke");
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& s : q_) out += s;
    q_.clear();
    return closed_;
  }
  void gone(const char* error) override {
    n_gone++;
    gone_error = error ? error : "";
  }
  std::atomic<int> n_gone{0};
  std::string gone_error;

 private:
  std::mutex mu_;
  std::deque<std::string> q_;
  bool closed_ = false;
  std::atomic<bool> fail_{false};
};

// Runs src on the relay in a thread of its own (as an HTTP worker does).
std::future<bool> start(StreamRelay& relay, int fd, EventSignal& sig, QueueSource& src) {
  return std::async(std::launch::async, [&relay, fd, &sig, &src] { return relay.run(fd, sig, src); });
}

bool ready_within(std::future<bool>& f, std::chrono::milliseconds t) {
  return f.wait_for(t) == std::future_status::ready;
}

}  // namespace

TEST_CASE("each of many streams fed by one producer gets exactly its own bytes, in order") {
  StreamRelay relay(std::chrono::milliseconds(5000));
  constexpr int kStreams = 24, kEvents = 200;
  std::vector<std::unique_ptr<TcpPair>> pairs;
  std::vector<std::unique_ptr<EventSignal>> sigs;
  std::vector<std::unique_ptr<QueueSource>> srcs;
  std::vector<std::future<bool>> runs;
  std::vector<std::future<std::string>> reads;
  for (int i = 0; i < kStreams; ++i) {
    pairs.push_back(std::make_unique<TcpPair>());
    sigs.push_back(std::make_unique<EventSignal>());
    srcs.push_back(std::make_unique<QueueSource>());
    runs.push_back(start(relay, pairs[i]->server, *sigs[i], *srcs[i]));
    reads.push_back(std::async(std::launch::async, [p = pairs[i].get()] { return p->read_all(); }));
  }
  // The expected bytes, written down apart from what the relay does with them.
  std::vector<std::string> want(kStreams);
  std::mt19937 rng(7);
  for (int e = 0; e < kEvents; ++e) {  // a "step": one event for each stream, then the next
    for (int i = 0; i < kStreams; ++i) {
      std::string ev = "s" + std::to_string(i) + "e" + std::to_string(e) + std::string(rng() % 300, char('a' + i)) + ";";
      want[size_t(i)] += ev;
      srcs[size_t(i)]->put(ev);
      sigs[size_t(i)]->notify();
    }
    if (e % 20 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (int i = 0; i < kStreams; ++i) {
    srcs[size_t(i)]->close();
    sigs[size_t(i)]->notify();
  }
  for (int i = 0; i < kStreams; ++i) {
    REQUIRE(ready_within(runs[size_t(i)], std::chrono::milliseconds(10000)));
    CHECK(runs[size_t(i)].get());
    ::shutdown(pairs[size_t(i)]->server, SHUT_WR);  // as the HTTP side does after the last chunk
    CHECK(reads[size_t(i)].get() == want[size_t(i)]);
    CHECK(srcs[size_t(i)]->n_gone == 0);
  }
  CHECK(relay.n_streams() == 0);
}

TEST_CASE("a client that stops reading holds up only itself and is dropped after the write timeout") {
  const auto timeout = std::chrono::milliseconds(3000);  // the live stream's 50 events fit well inside, even on 2 loaded cores
  StreamRelay relay(timeout);
  TcpPair stalled(/*small=*/true), live;
  EventSignal sig_stalled, sig_live;
  QueueSource src_stalled, src_live;
  src_stalled.put(std::string(8 << 20, 'x'));  // far more than both socket buffers hold
  src_stalled.close();
  const auto t0 = Clock::now();
  auto run_stalled = start(relay, stalled.server, sig_stalled, src_stalled);
  auto run_live = start(relay, live.server, sig_live, src_live);
  auto read_live = std::async(std::launch::async, [&] { return live.read_all(); });
  std::string want;
  for (int e = 0; e < 50; ++e) {
    const std::string ev = "event " + std::to_string(e) + "\n";
    want += ev;
    src_live.put(ev);
    sig_live.notify();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  src_live.close();
  sig_live.notify();
  REQUIRE(ready_within(run_live, std::chrono::milliseconds(5000)));
  CHECK(run_live.get());
  // The live stream finished while the stalled one still waited for its reader.
  CHECK(!ready_within(run_stalled, std::chrono::milliseconds(0)));
  ::shutdown(live.server, SHUT_WR);
  CHECK(read_live.get() == want);
  REQUIRE(ready_within(run_stalled, std::chrono::milliseconds(10000)));
  CHECK(!run_stalled.get());
  CHECK(Clock::now() - t0 >= timeout);
  CHECK(src_stalled.n_gone == 1);
  CHECK(src_stalled.gone_error.empty());
  CHECK(src_live.n_gone == 0);
}

TEST_CASE("a client that closes its side ends its stream as gone at once") {
  StreamRelay relay(std::chrono::milliseconds(30000));
  TcpPair p;
  EventSignal sig;
  QueueSource src;  // never completes
  auto run = start(relay, p.server, sig, src);
  src.put("first\n");
  sig.notify();
  char buf[6];
  REQUIRE(::recv(p.client, buf, sizeof buf, MSG_WAITALL) == 6);
  const auto t0 = Clock::now();
  ::close(p.client);
  p.client = -1;
  REQUIRE(ready_within(run, std::chrono::milliseconds(2000)));
  CHECK(!run.get());
  CHECK(Clock::now() - t0 < std::chrono::milliseconds(1000));
  CHECK(src.n_gone == 1);
  CHECK(src.gone_error.empty());
  sig.notify();  // the waker was taken off: a late event touches nothing of the ended stream
  CHECK(relay.n_streams() == 0);
}

TEST_CASE("a source that throws ends its stream as gone with the error") {
  StreamRelay relay(std::chrono::milliseconds(30000));
  TcpPair p;
  EventSignal sig;
  QueueSource src;
  auto run = start(relay, p.server, sig, src);
  src.fail_next_drain();
  sig.notify();
  REQUIRE(ready_within(run, std::chrono::milliseconds(2000)));
  CHECK(!run.get());
  CHECK(src.n_gone == 1);
  CHECK(src.gone_error == "formatter broke");
}

TEST_CASE("a relay that stops ends the streams still running as gone") {
  TcpPair a, b;
  EventSignal sa, sb;
  QueueSource qa, qb;
  std::future<bool> ra, rb;
  {
    StreamRelay relay(std::chrono::milliseconds(30000));
    ra = start(relay, a.server, sa, qa);
    rb = start(relay, b.server, sb, qb);
    while (relay.n_streams() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(ready_within(ra, std::chrono::milliseconds(2000)));
  REQUIRE(ready_within(rb, std::chrono::milliseconds(2000)));
  CHECK(!ra.get());
  CHECK(!rb.get());
  CHECK(qa.n_gone == 1);
  CHECK(qb.n_gone == 1);
}
