// One thread writes every streaming response. A decode step makes a token for each running
// stream at once; woken per token, a thread per stream cost the server 16 context switches a step
// on two cores. Here each stream's signal marks it ready and wakes one relay thread, which drains
// the ready streams and sends their bytes with non-blocking writes, so a client that stops reading
// holds up only itself. Knows sockets, not HTTP: a Source frames its own bytes.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/request.h"

namespace hyco {

class StreamRelay {
 public:
  // What one stream has to say. Called on the relay thread only, never two at once.
  class Source {
   public:
    virtual ~Source() = default;
    // Appends every byte that is ready now to `out`; true once the stream has nothing more to
    // give (its last bytes included). May throw: the stream then ends as failed (gone() is called).
    virtual bool drain(std::string& out) = 0;
    // The stream ends unfinished: the client closed or reset its side, did not take a byte for the
    // write timeout, or the relay stopped (`error` null); or drain() threw (`error` says what).
    // Cancels the work behind it.
    virtual void gone(const char* error) = 0;
  };

  explicit StreamRelay(std::chrono::milliseconds write_timeout);
  ~StreamRelay();  // ends every stream still running as gone
  StreamRelay(const StreamRelay&) = delete;
  StreamRelay& operator=(const StreamRelay&) = delete;

  // Runs one stream on connected socket `fd` to its end while the calling thread sleeps.
  // `signal` fires whenever `src` may have bytes to drain (its events). True when every byte was
  // written; false when the stream ended as gone. The socket stays open.
  bool run(int fd, EventSignal& signal, Source& src);

  // Streams being relayed now (for tests).
  size_t n_streams() const;

 private:
  struct Stream;
  void loop();
  void wake();
  bool step(Stream& s, short revents, std::chrono::steady_clock::time_point now);  // true: ended
  void end(Stream& s, bool ok, const char* error = nullptr);

  const std::chrono::milliseconds write_timeout_;
  int wake_fd_ = -1;               // eventfd: a stream is ready, a stream was added, stop
  std::atomic<bool> armed_{false};  // a wake is already on its way
  mutable std::mutex mu_;          // guards added_, stop_, n_
  std::vector<std::shared_ptr<Stream>> added_;
  bool stop_ = false;
  size_t n_ = 0;
  std::list<std::shared_ptr<Stream>> streams_;  // relay thread only
  std::thread thread_;
};

}  // namespace hyco
