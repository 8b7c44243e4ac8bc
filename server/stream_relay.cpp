// The relay thread: one poll() over an eventfd (a stream is ready, one was added, stop) and every
// stream's socket (peer closed: POLLRDHUP; room to write when bytes wait: POLLOUT). See the header.
#include "server/stream_relay.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "engine/thread_name.h"

namespace hyco {

using Clock = std::chrono::steady_clock;

struct StreamRelay::Stream {
  int fd = -1;
  EventSignal* signal = nullptr;
  Source* src = nullptr;
  // Set by the signal's waker; starts set, as events may have come before the waker was.
  std::atomic<bool> ready{true};
  std::string out;   // drained bytes; out[sent..] are not yet written
  size_t sent = 0;
  bool complete = false;         // src has given its last bytes
  Clock::time_point progress{};  // when bytes last went out, or began to wait
  // The thread in run(), sleeping until the stream ends.
  std::mutex mu;
  std::condition_variable cv;
  bool ended = false, ok = false;
};

StreamRelay::StreamRelay(std::chrono::milliseconds write_timeout) : write_timeout_(write_timeout) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) throw std::runtime_error(std::string("stream relay: eventfd: ") + std::strerror(errno));
  thread_ = std::thread([this] { loop(); });
}

StreamRelay::~StreamRelay() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
  thread_.join();
  ::close(wake_fd_);
}

size_t StreamRelay::n_streams() const {
  std::lock_guard<std::mutex> lk(mu_);
  return n_;
}

void StreamRelay::wake() {
  // One eventfd write per wake-up of the relay, however many streams become ready meanwhile.
  if (!armed_.exchange(true)) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
  }
}

bool StreamRelay::run(int fd, EventSignal& signal, Source& src) {
  auto s = std::make_shared<Stream>();
  s->fd = fd;
  s->signal = &signal;
  s->src = &src;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) {
      src.gone(nullptr);
      return false;
    }
    // Set under mu_ so that a relay that stops meanwhile finds the stream in added_ and ends it.
    signal.set_waker([this, p = s.get()] {
      p->ready.store(true);  // seq_cst with armed_ below: neither side may miss the other's store
      wake();
    });
    added_.push_back(s);
    ++n_;
    // NOTE: under mu_: a relay being destroyed has either not yet set stop_ (so it is still
    // there for this wake) or was seen stopping above; never this after its eventfd closed.
    wake();
  }
  std::unique_lock<std::mutex> lk(s->mu);
  s->cv.wait(lk, [&] { return s->ended; });
  return s->ok;
}

void StreamRelay::end(Stream& s, bool ok, const char* error) {
  s.signal->set_waker({});  // NOTE: after this no notify touches `s`; the stream may then be freed
  if (!ok) s.src->gone(error);
  {
    std::lock_guard<std::mutex> lk(mu_);
    --n_;
  }
  std::lock_guard<std::mutex> lk(s.mu);
  s.ended = true;
  s.ok = ok;
  s.cv.notify_all();  // the caller of run() may now return and free the source and the signal
}

bool StreamRelay::step(Stream& s, short revents, Clock::time_point now) {
  if (revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {  // the client closed its side, or reset
    end(s, false);
    return true;
  }
  if (!s.complete && s.ready.exchange(false)) {
    const bool was_idle = s.sent == s.out.size();
    try {
      s.complete = s.src->drain(s.out);
    } catch (const std::exception& e) {
      end(s, false, e.what());
      return true;
    }
    if (was_idle && s.sent < s.out.size()) s.progress = now;  // the write timeout counts from here
  }
  if (s.sent < s.out.size()) {
    ssize_t n;
    do n = ::send(s.fd, s.out.data() + s.sent, s.out.size() - s.sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {  // reset, broken pipe
      end(s, false);
      return true;
    }
    if (n > 0) {
      s.sent += size_t(n);
      s.progress = now;
      if (s.sent == s.out.size()) {
        s.out.clear();
        s.sent = 0;
      } else if (s.sent > (64u << 10) && s.sent > s.out.size() / 2) {
        s.out.erase(0, s.sent);
        s.sent = 0;
      }
    } else if (now - s.progress >= write_timeout_) {  // the client stopped reading
      end(s, false);
      return true;
    }
  }
  if (s.complete && s.sent == s.out.size()) {
    end(s, true);
    return true;
  }
  return false;
}

void StreamRelay::loop() {
  name_this_thread("hyco-relay");
  std::vector<pollfd> fds;
  for (;;) {
    fds.assign(1, pollfd{wake_fd_, POLLIN, 0});
    int timeout_ms = -1;
    const auto before = Clock::now();
    for (const auto& s : streams_) {
      short events = POLLRDHUP;
      if (s->sent < s->out.size()) {
        events |= POLLOUT;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(s->progress + write_timeout_ - before).count();
        const int ms = int(std::max<int64_t>(0, std::min<int64_t>(left, 60000)));
        timeout_ms = timeout_ms < 0 ? ms : std::min(timeout_ms, ms);
      }
      fds.push_back(pollfd{s->fd, events, 0});
    }
    int r;
    do r = ::poll(fds.data(), fds.size(), timeout_ms);
    while (r < 0 && errno == EINTR);
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      [[maybe_unused]] ssize_t n = ::read(wake_fd_, &v, sizeof v);
    }
    // Reset before looking at the streams: a waker that runs after this writes the eventfd again.
    armed_.store(false);
    std::vector<std::shared_ptr<Stream>> added;
    bool stop;
    {
      std::lock_guard<std::mutex> lk(mu_);
      added.swap(added_);
      stop = stop_;
    }
    const auto now = Clock::now();
    auto it = streams_.begin();
    for (size_t i = 1; i < fds.size(); ++i) {  // fds[i] is *it: streams_ only changes here
      it = step(**it, stop ? short(POLLHUP) : fds[i].revents, now) ? streams_.erase(it) : std::next(it);
    }
    for (auto& s : added) {
      if (!step(*s, stop ? short(POLLHUP) : 0, now)) streams_.push_back(std::move(s));
    }
    if (stop) return;
  }
}

}  // namespace hyco
