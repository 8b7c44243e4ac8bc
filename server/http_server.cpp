// Routes, auth, limits, streaming and disconnect handling over cpp-httplib. See http_server.h.
// NOTE: the only file that includes httplib.h.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <set>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include "engine/thread_name.h"
#include "server/dialect.h"
#include "server/json_fields.h"
#include "server/stream_relay.h"

namespace hyco {

namespace jf = json_fields;

namespace {

// httplib's pool, its threads named hyco-http (on their first connection).
class NamedThreadPool : public httplib::ThreadPool {
 public:
  using httplib::ThreadPool::ThreadPool;
  void enqueue(std::function<void()> fn) override {
    httplib::ThreadPool::enqueue([fn = std::move(fn)] {
      thread_local bool named = false;
      if (!named) {
        name_this_thread("hyco-http");
        named = true;
      }
      fn();
    });
  }
};

const std::set<std::string> kRoutes = {
    "/health", "/v1/models", "/metrics", "/tokenize", "/detokenize", "/v1/completions", "/v1/fim/completions",
    "/completion", "/completions", "/infill", "/props", "/slots", "/api/generate", "/api/tags", "/api/version", "/api/show"};

// Ollama's way of writing a model's size in its details: "30.4M", "6.7B".
std::string parameter_size(const ModelConfig& c) {
  const double n = double(c.n_params());
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.1fB", n / 1e9);
  else
    std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
  return buf;
}

// The host of a Host header, an origin's authority or --host: lower case, without the port, the
// brackets of an IPv6 literal or a final dot ("[::1]:8012" -> "::1", "LocalHost.:80" -> "localhost").
std::string host_name(std::string h) {
  if (!h.empty() && h.front() == '[') {
    const size_t close = h.find(']');
    h = h.substr(1, close == std::string::npos ? std::string::npos : close - 1);
  } else if (const size_t colon = h.rfind(':'); colon != std::string::npos && colon == h.find(':')) {
    h.resize(colon);  // one colon: a port (an IPv6 literal without brackets has several)
  }
  for (char& c : h) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (!h.empty() && h.back() == '.') h.pop_back();
  return h;
}

std::string route_label(const std::string& path) { return kRoutes.count(path) ? path : "other"; }

ErrorStyle style_for(const std::string& path) {
  if (path.rfind("/api/", 0) == 0) return ErrorStyle::Ollama;
  if (path.rfind("/v1/", 0) == 0) return ErrorStyle::OpenAI;
  return ErrorStyle::LlamaCpp;
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, ErrorStyle style, const ApiError& e) {
  if (e.status == 503) res.set_header("Retry-After", "1");
  send_json(res, e.status, error_body(style, e));
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The socket side of a connection, in place of httplib's: a request must arrive in full (request
// line, headers and body) within `request_limit` of its first byte. httplib's own read timeout
// applies to each read, so a client sending a byte every few seconds (slow-loris) would hold an
// HTTP worker forever; here such a request ends in 408 and the connection is closed.
class DeadlineStream final : public httplib::Stream {
 public:
  using Clock = std::chrono::steady_clock;
  DeadlineStream(socket_t sock, int read_timeout_ms, int write_timeout_ms)
      : sock_(sock), read_timeout_ms_(read_timeout_ms), write_timeout_ms_(write_timeout_ms) {}

  // A new request: it must arrive within `limit`, in at most `max_bytes` (request line, headers
  // and body; httplib checks the body's size only when it has a Content-Length).
  void start_request(Clock::duration limit, size_t max_bytes) {
    deadline_ = Clock::now() + limit;
    timed_out_ = false;
    read_left_ = max_bytes;
    too_large_ = false;
    no_body_ = false;
  }
  // A request with neither Content-Length nor Transfer-Encoding has no body (RFC 9112 6.3);
  // httplib would read one to the end of the connection, holding a worker until the timeout.
  void no_body() { no_body_ = true; }
  void end_request() {  // the handler runs: no read deadline, no size limit
    deadline_ = Clock::time_point::max();
    read_left_ = SIZE_MAX;
  }
  // The body has a Content-Length: httplib checks it, and skips (never buffers) a body over
  // the limit.
  void body_has_length() { read_left_ = SIZE_MAX; }
  bool timed_out() const { return timed_out_; }
  bool too_large() const { return too_large_; }
  bool is_readable_now() const { return buf_pos_ < buf_len_; }
  // After an answer to a request that could not be read whole, the framing of what follows is
  // unknown: the connection closes.
  void close_after_response() { close_ = true; }
  bool must_close() const { return close_ || timed_out_ || too_large_; }

  bool is_readable() const override { return buf_pos_ < buf_len_ || wait(POLLIN, read_budget_ms()) > 0; }
  // While the request is still being read (an error answer to it), the answer goes out even to a
  // peer that half-closed; once its handler runs, a peer that closed its side is gone.
  bool is_writable() const override {
    return wait(POLLOUT, write_timeout_ms_) > 0 && (deadline_ != Clock::time_point::max() || alive());
  }

  // Buffered (httplib reads headers a byte at a time); pipelined bytes stay for the next request.
  ssize_t read(char* ptr, size_t size) override {
    if (no_body_) return 0;  // the body's end (pipelined bytes stay for the next request)
    if (buf_pos_ == buf_len_) {
      bool by_deadline = false;
      const int budget = read_budget_ms(&by_deadline);
      const int r = budget > 0 ? wait(POLLIN, budget) : 0;
      if (r <= 0) {
        if (r == 0 && by_deadline) timed_out_ = true;
        return -1;
      }
      ssize_t n;
      do n = ::recv(sock_, buf_, sizeof(buf_), 0);
      while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      buf_pos_ = 0;
      buf_len_ = size_t(n);
    }
    const size_t n = std::min(size, buf_len_ - buf_pos_);
    if (n > read_left_) {  // the rest stays unread: the answer is 413 and the connection closes
      too_large_ = true;
      return -1;
    }
    if (read_left_ != SIZE_MAX) read_left_ -= n;
    std::memcpy(ptr, buf_ + buf_pos_, n);
    buf_pos_ += n;
    return ssize_t(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n;
    do n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { address(true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { address(false, ip, port); }
  socket_t socket() const override { return sock_; }

 private:
  // Milliseconds a read may wait: the read timeout, or less when the request's deadline is nearer
  // (rounded up, so that a wait that runs out has passed the deadline).
  int read_budget_ms(bool* by_deadline = nullptr) const {
    if (deadline_ == Clock::time_point::max()) return read_timeout_ms_;
    const int64_t left_us = std::chrono::duration_cast<std::chrono::microseconds>(deadline_ - Clock::now()).count();
    const int64_t left = left_us <= 0 ? 0 : (left_us + 999) / 1000;
    if (by_deadline) *by_deadline = left <= read_timeout_ms_;
    return int(std::min<int64_t>(left, read_timeout_ms_));
  }
  int wait(short events, int timeout_ms) const {
    pollfd p{sock_, events, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r > 0 && (p.revents & (POLLERR | POLLNVAL))) return -1;
    return r;
  }
  // A peer that closed (or half-closed) its side while we answer is gone: its request is cancelled.
  bool alive() const {
    if (wait(POLLIN, 0) <= 0) return true;
    char c;
    ssize_t n;
    do n = ::recv(sock_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  }
  void address(bool peer, std::string& ip, int& port) const {
    sockaddr_storage a{};
    socklen_t len = sizeof(a);
    ip.clear();
    port = 0;
    int r = peer ? ::getpeername(sock_, reinterpret_cast<sockaddr*>(&a), &len)
                 : ::getsockname(sock_, reinterpret_cast<sockaddr*>(&a), &len);
    if (r != 0) return;
    char buf[INET6_ADDRSTRLEN] = {};
    if (a.ss_family == AF_INET) {
      auto* v4 = reinterpret_cast<sockaddr_in*>(&a);
      ::inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof(buf));
      port = ntohs(v4->sin_port);
    } else if (a.ss_family == AF_INET6) {
      auto* v6 = reinterpret_cast<sockaddr_in6*>(&a);
      ::inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof(buf));
      port = ntohs(v6->sin6_port);
    }
    ip = buf;
  }

  socket_t sock_;
  int read_timeout_ms_, write_timeout_ms_;
  Clock::time_point deadline_ = Clock::time_point::max();
  bool timed_out_ = false, close_ = false, too_large_ = false, no_body_ = false;
  size_t read_left_ = SIZE_MAX;  // bytes the current request may still take
  char buf_[4096];
  size_t buf_pos_ = 0, buf_len_ = 0;
};

thread_local DeadlineStream* tl_stream = nullptr;  // the worker's current connection

// httplib's server with our connection loop: keep-alive as httplib does it (at most
// keep_alive_max_count requests, keep_alive_timeout idle between them), over a DeadlineStream.
class GuardedServer final : public httplib::Server {
 public:
  std::chrono::milliseconds request_limit{30000};
  int read_timeout_ms = 30000, write_timeout_ms = 30000, idle_ms = 5000;
  size_t request_max_bytes = SIZE_MAX;  // request line, headers and body

  // httplib listens with a backlog of 5: a burst of connections (editors opening files, a load
  // generator's clients) overflows it, and each dropped SYN is retried by the client's kernel only
  // after a second. Listening again on the bound socket widens the queue.
  bool widen_backlog() { return svr_sock_ != INVALID_SOCKET && ::listen(svr_sock_, SOMAXCONN) == 0; }

 private:
  bool process_and_close_socket(socket_t sock) override {
    DeadlineStream strm(sock, read_timeout_ms, write_timeout_ms);
    tl_stream = &strm;
    bool ok = false;
    for (size_t left = keep_alive_max_count_; left > 0 && svr_sock_ != INVALID_SOCKET && wait_for_request(strm); --left) {
      strm.start_request(request_limit, request_max_bytes);
      bool closed = false;
      ok = process_request(strm, left == 1, closed, nullptr);
      if (!ok || closed || strm.must_close()) break;
    }
    tl_stream = nullptr;
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ok;
  }
  // Idle keep-alive: wait for the next request's first byte, noticing a server stop.
  bool wait_for_request(DeadlineStream& strm) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(idle_ms);
    while (svr_sock_ != INVALID_SOCKET) {
      if (strm.is_readable_now()) return true;  // pipelined
      pollfd p{strm.socket(), POLLIN, 0};
      int r = ::poll(&p, 1, 100);
      if (r < 0 && errno != EINTR) return false;
      if (r > 0) return !(p.revents & (POLLERR | POLLNVAL));
      if (std::chrono::steady_clock::now() >= end) return false;
    }
    return false;
  }
};

}  // namespace

struct HttpServer::Impl {
  CompletionService& svc;
  Metrics& metrics;
  HttpOptions opts;
  GuardedServer svr;
  StreamRelay relay;
  std::atomic<uint64_t> next_id{1};
  int bound_port = 0;
  int64_t started = unix_now();

  Impl(CompletionService& s, Metrics& m, const HttpOptions& o)
      : svc(s), metrics(m), opts(o), relay(std::chrono::milliseconds(int64_t(o.read_timeout_s) * 1000)) {}

  ServiceInfo info() const {
    ServiceInfo i;
    i.model_name = svc.model_name();
    i.n_vocab = svc.config().n_vocab;
    i.n_ctx = svc.n_ctx();
    i.tok = &svc.tokenizer();
    i.fim = svc.fim().supported();
    return i;
  }

  void require_ready() const {
    if (!svc.ready()) {
      std::string err = svc.load_error();
      throw ApiError(503, err.empty() ? "the model is loading" : "the model failed to load: " + err, "", "loading");
    }
  }

  // Wraps a handler: every ApiError or unexpected exception becomes the dialect's error body.
  template <class F>
  httplib::Server::Handler guard(F f) {
    return [this, f](const httplib::Request& req, httplib::Response& res) {
      if (tl_stream) tl_stream->end_request();
      const ErrorStyle style = style_for(req.path);
      try {
        // NOTE: cpp-httplib (0.11) enforces the payload limit only on bodies with a
        // Content-Length; a chunked body of any size reaches the handler.
        if (req.body.size() > opts.max_body_bytes)
          throw ApiError(413, "request body too large (over " + std::to_string(opts.max_body_bytes) + " bytes)");
        f(req, res);
      } catch (const ApiError& e) {
        send_error(res, style, e);
      } catch (const TokenizerError& e) {
        send_error(res, style, ApiError(400, e.what()));
      } catch (const json::exception& e) {
        send_error(res, style, ApiError(400, std::string("invalid request: ") + e.what()));
      } catch (const std::exception& e) {
        spdlog::error("{} {}: {}", req.method, req.path, e.what());
        send_error(res, style, ApiError(500, std::string("internal error: ") + e.what()));
      }
    };
  }

  // ---- completions ------------------------------------------------------------------------------

  struct Flow {
    std::vector<std::shared_ptr<RequestHandle>> handles;
    std::shared_ptr<EventSignal> signal = std::make_shared<EventSignal>();  // any handle's event
    std::vector<ChoiceState> states;
    std::unique_ptr<CompletionFormatter> fmt;
    bool stream = false, sse = true;
    std::string id, route;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    std::vector<Clock::time_point> last_chunk;
    Clock::time_point first_token;  // of any choice (the log line of a request cut short)
    size_t n_done = 0;  // choices finished
  };

  template <class Parse>
  void completion(const httplib::Request& req, httplib::Response& res, Parse parse, const std::string& route) {
    require_ready();
    json body = jf::parse_body(req.body);
    ServiceInfo inf = info();
    ParsedCompletion pc = parse(body, inf);
    auto flow = std::make_shared<Flow>();
    flow->id = "req-" + std::to_string(next_id++);
    flow->route = route;
    flow->stream = pc.stream;
    flow->sse = pc.errors != ErrorStyle::Ollama;
    flow->fmt = std::move(pc.formatter);
    if (pc.choices.empty()) {  // Ollama: an empty prompt only loads the model
      // As Ollama answers it: one NDJSON line when streaming (its default), else one object.
      const json load = {{"model", inf.model_name}, {"created_at", rfc3339_now()}, {"response", ""}, {"done", true},
                         {"done_reason", "load"}};
      res.status = 200;
      res.set_content(load.dump() + "\n", pc.stream ? "application/x-ndjson" : "application/json");
      return;
    }
    // More completions than can ever be running or queued at once would only ever get 503.
    const SchedulerConfig& sc = svc.scheduler_config();
    if (int64_t(pc.choices.size()) > int64_t(sc.parallel) + sc.max_queue)
      throw ApiError(400,
                     "this request asks for " + std::to_string(pc.choices.size()) +
                         " completions (prompts x n), more than the server runs and queues at once (" +
                         std::to_string(sc.parallel) + " slots + " + std::to_string(sc.max_queue) + " queued)",
                     "n");
    std::vector<Prepared> preps;
    for (auto& g : pc.choices) {
      g.id = flow->id;
      preps.push_back(svc.prepare(g));
    }
    const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(opts.request_timeout_s * 1000));
    try {
      for (size_t i = 0; i < preps.size(); ++i) {
        preps[i].req.deadline = deadline;
        ChoiceState st;
        st.n_prompt = preps[i].n_prompt;
        st.truncated = preps[i].truncated;
        st.prompt_text = pc.prompt_texts.at(i);
        st.first_prompt_token = preps[i].req.prompt.front();
        flow->states.push_back(std::move(st));
        flow->handles.push_back(svc.submit(std::move(preps[i].req)));
        flow->handles.back()->set_signal(flow->signal, !flow->stream);
      }
    } catch (...) {
      for (auto& h : flow->handles) h->cancel();
      throw;
    }
    flow->last_chunk.assign(flow->handles.size(), Clock::time_point());
    const char* type = !flow->stream ? "application/json" : flow->sse ? "text/event-stream" : "application/x-ndjson";
    if (flow->stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");
    }
    res.set_chunked_content_provider(
        type, [this, flow, &res](size_t, httplib::DataSink& sink) { return pump(*flow, sink, res); });
  }

  using Write = std::function<bool(const std::string&)>;

  // One event, as an SSE "data:" block or an NDJSON line, written at once (one write per event:
  // a token is on its way as soon as it exists).
  static bool write_event(const Flow& f, const Write& write, const json& j) {
    std::string line = f.sse ? "data: " : "";
    line += j.dump(-1, ' ', false, json::error_handler_t::replace);
    line += f.sse ? "\n\n" : "\n";
    return write(line);
  }

  enum class Advance { Idle, Moved, Done, Gone };

  // Takes every event its choices have now, without waiting: streaming, writes each as it comes;
  // once every choice has finished, writes the end (the last events, or the whole body when not
  // streaming). Gone when a write failed.
  Advance advance(Flow& f, const Write& write) {
    bool any = false;
    for (size_t i = 0; i < f.handles.size(); ++i) {
      ChoiceState& st = f.states[i];
      if (st.finish) continue;
      while (auto e = f.handles[i]->try_next()) {
        any = true;
        if (auto* c = std::get_if<Chunk>(&*e)) {
          observe_gaps(f, i, *c);
          st.text += c->text;
          st.tokens.insert(st.tokens.end(), c->tokens.begin(), c->tokens.end());
          st.prompt_tokens.insert(st.prompt_tokens.end(), c->prompt.begin(), c->prompt.end());
          if (f.stream)
            for (const json& j : f.fmt->on_chunk(int(i), *c, st))
              if (!write_event(f, write, j)) return Advance::Gone;
        } else {
          st.finish = std::get<Finish>(*e);
          ++f.n_done;
          if (st.finish->n_generated > 0) metrics.observe_ttft(st.finish->ttft_ms / 1e3);
          if (f.n_done == f.handles.size()) log_request(f);
          if (f.stream)
            for (const json& j : f.fmt->on_finish(int(i), st))
              if (!write_event(f, write, j)) return Advance::Gone;
          break;
        }
      }
    }
    if (f.n_done < f.handles.size()) return any ? Advance::Moved : Advance::Idle;
    if (f.stream) {
      for (const json& j : f.fmt->on_end(f.states))
        if (!write_event(f, write, j)) return Advance::Gone;
      if (f.sse && !write("data: [DONE]\n\n")) return Advance::Gone;
    } else if (!write(f.fmt->full(f.states).dump(-1, ' ', false, json::error_handler_t::replace))) {
      return Advance::Gone;
    }
    return Advance::Done;
  }

  void client_gone(const Flow& f) {
    for (auto& h : f.handles) h->cancel();
    metrics.count_disconnect();
    if (f.n_done < f.handles.size()) log_request(f, "cancelled (client disconnected)");
  }

  void response_failed(const Flow& f, const char* what) {
    for (auto& h : f.handles) h->cancel();
    spdlog::error("{} {}: response failed: {}", f.id, f.route, what);
  }

  // A streaming response as the relay sends it: each drain is one HTTP chunk.
  struct RelayedFlow final : StreamRelay::Source {
    Impl& impl;
    Flow& f;
    RelayedFlow(Impl& i, Flow& fl) : impl(i), f(fl) {}
    bool drain(std::string& out) override {
      std::string body;
      const Advance a = impl.advance(f, [&](const std::string& s) { return body.append(s), true; });
      if (!body.empty()) {
        char size[24];
        const int n = std::snprintf(size, sizeof size, "%zx\r\n", body.size());
        out.append(size, size_t(n)).append(body).append("\r\n");
      }
      return a == Advance::Done;
    }
    void gone(const char* error) override { error ? impl.response_failed(f, error) : impl.client_gone(f); }
  };

  // Runs one response to its end; an exception here would reach std::terminate inside httplib's
  // content provider, so anything unexpected cancels the work and drops the connection.
  bool pump(Flow& f, httplib::DataSink& sink, const httplib::Response& res) {
    try {
      // A stream goes to the relay when its bytes can go to the socket as they are: httplib
      // frames it in chunks and compresses nothing (it never does SSE or NDJSON).
      if (f.stream && tl_stream && res.get_header_value("Transfer-Encoding") == "chunked" &&
          !res.has_header("Content-Encoding")) {
        RelayedFlow src(*this, f);
        if (!relay.run(tl_stream->socket(), *f.signal, src)) return false;
      } else if (!pump_events(f, sink)) {
        return false;
      }
      metrics.observe_duration(seconds_since(f.t0));
      sink.done();
      return true;
    } catch (const std::exception& e) {
      response_failed(f, e.what());
      return false;
    }
  }

  // On this thread: relays events as they come (streaming) or waits for all of them (not
  // streaming), and cancels the work when the client goes away.
  bool pump_events(Flow& f, httplib::DataSink& sink) {
    const Write write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
    for (;;) {
      if (!sink.is_writable()) return client_gone(f), false;
      // Only when no choice had an event does the thread sleep, until any choice has one (not
      // streaming: until one has finished), or 50 ms pass (the client may be gone).
      const uint64_t seen = f.signal->count();
      switch (advance(f, write)) {
        case Advance::Done: return true;
        case Advance::Gone: return client_gone(f), false;
        case Advance::Idle: f.signal->wait(seen, std::chrono::milliseconds(50)); break;
        case Advance::Moved: break;
      }
    }
  }

  void observe_gaps(Flow& f, size_t i, const Chunk& c) {
    if (c.tokens.empty()) return;
    if (f.first_token == Clock::time_point()) f.first_token = c.at;
    if (f.last_chunk[i] != Clock::time_point()) {
      double gap = std::chrono::duration<double>(c.at - f.last_chunk[i]).count() / double(c.tokens.size());
      for (size_t k = 0; k < c.tokens.size(); ++k) metrics.observe_inter_token(gap);
    }
    f.last_chunk[i] = c.at;
  }

  // The request's one log line, when its last choice has finished (or `cut` says why it ended
  // early): id, route, prompt tokens, of them reused from the cache, generated tokens, time to
  // the first token, generation speed and finish reason, summed over its choices (prompts × n).
  void log_request(const Flow& f, const char* cut = nullptr) {
    int64_t prompt = 0, cached = 0, generated = 0;
    double ttft = -1, predict_ms = 0;
    std::string reasons, error;
    for (const ChoiceState& st : f.states) {
      prompt += st.n_prompt;
      if (!st.finish) {
        generated += int64_t(st.tokens.size());
        continue;
      }
      const Finish& fin = *st.finish;
      cached += fin.n_cached;
      generated += fin.n_generated;
      if (fin.n_generated > 0 && (ttft < 0 || fin.ttft_ms < ttft)) ttft = fin.ttft_ms;
      predict_ms = std::max(predict_ms, fin.predict_ms);
      const std::string r = finish_reason_name(fin.reason);
      if (reasons.find(r) == std::string::npos) reasons += (reasons.empty() ? "" : ",") + r;
      if (!fin.error.empty() && error.empty()) error = fin.error;
    }
    if (cut && f.first_token != Clock::time_point()) {  // from the flow's own clock
      const double since_first = std::chrono::duration<double, std::milli>(Clock::now() - f.first_token).count();
      ttft = std::chrono::duration<double, std::milli>(f.first_token - f.t0).count();
      predict_ms = std::max(predict_ms, since_first);
    }
    const double tps = predict_ms > 0 ? 1e3 * double(generated) / predict_ms : 0.0;
    const std::string choices = f.states.size() > 1 ? " choices=" + std::to_string(f.states.size()) : "";
    const std::string ttft_s = ttft < 0 ? "-" : fmt::format("{:.0f}ms", ttft);
    const std::string finish = cut ? std::string(cut) : reasons + (error.empty() ? "" : " (" + error + ")");
    if (!cut && reasons.find(finish_reason_name(FinishReason::Error)) != std::string::npos)
      spdlog::warn("{} {}{} prompt={} cached={} generated={} ttft={} {:.1f} tok/s finish={}", f.id, f.route, choices,
                   prompt, cached, generated, ttft_s, tps, finish);
    else
      spdlog::info("{} {}{} prompt={} cached={} generated={} ttft={} {:.1f} tok/s finish={}", f.id, f.route, choices,
                   prompt, cached, generated, ttft_s, tps, finish);
  }

  // ---- routes -------------------------------------------------------------------------------------

  void routes() {
    svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (svc.draining()) {
        res.set_header("Retry-After", "1");
        send_json(res, 503, error_body(ErrorStyle::LlamaCpp, ApiError(503, "shutting down")));
      } else if (svc.ready()) {
        send_json(res, 200, {{"status", "ok"}});
      } else {
        std::string err = svc.load_error();
        res.set_header("Retry-After", "1");
        send_json(res, 503, error_body(ErrorStyle::LlamaCpp,
                                       ApiError(503, err.empty() ? "Loading model" : "model failed to load: " + err)));
      }
    });
    svr.Get("/v1/models", guard([this](const httplib::Request&, httplib::Response& res) {
              send_json(res, 200,
                        {{"object", "list"},
                         {"data", json::array({{{"id", svc.model_name()}, {"object", "model"}, {"created", started},
                                                {"owned_by", "hyco"}}})}});
            }));
    svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      SchedulerStats s = svc.ready() ? svc.scheduler().stats() : SchedulerStats{};
      res.set_content(metrics.render(s, svc.ready()), "text/plain; version=0.0.4");
    });
    svr.Post("/tokenize", guard([this](const httplib::Request& req, httplib::Response& res) {
               require_ready();
               json b = jf::parse_body(req.body);
               auto content = jf::get_string(b, "content");
               if (!content) throw bad_request("content", "is required (the text to tokenize)");
               auto ids = svc.tokenize(*content, jf::get_bool(b, "add_special").value_or(false));
               json toks = json::array();
               const bool pieces = jf::get_bool(b, "with_pieces").value_or(false);
               for (int32_t id : ids) {
                 if (pieces) toks.push_back({{"id", id}, {"piece", token_text(svc.tokenizer(), id)}});
                 else toks.push_back(id);
               }
               send_json(res, 200, {{"tokens", toks}});
             }));
    svr.Post("/detokenize", guard([this](const httplib::Request& req, httplib::Response& res) {
               require_ready();
               json b = jf::parse_body(req.body);
               const json* t = jf::find(b, "tokens");
               if (!t) throw bad_request("tokens", "is required (a list of token ids)");
               auto ids = jf::to_tokens(*t, "tokens", svc.tokenizer().n_vocab());
               send_json(res, 200, {{"content", svc.detokenize(ids)}});
             }));
    svr.Post("/v1/completions", guard([this](const httplib::Request& q, httplib::Response& r) {
               completion(q, r, parse_openai_completion, "/v1/completions");
             }));
    svr.Post("/v1/fim/completions", guard([this](const httplib::Request& q, httplib::Response& r) {
               completion(q, r, parse_mistral_fim, "/v1/fim/completions");
             }));
    for (const char* path : {"/completion", "/completions"})
      svr.Post(path, guard([this, path](const httplib::Request& q, httplib::Response& r) {
                 completion(q, r, [](const json& b, const ServiceInfo& i) { return parse_llamacpp_completion(b, i, false); },
                            path);
               }));
    svr.Post("/infill", guard([this](const httplib::Request& q, httplib::Response& r) {
               completion(q, r, [](const json& b, const ServiceInfo& i) { return parse_llamacpp_completion(b, i, true); },
                          "/infill");
             }));
    svr.Post("/api/generate", guard([this](const httplib::Request& q, httplib::Response& r) {
               completion(q, r, parse_ollama_generate, "/api/generate");
             }));
    svr.Get("/props", guard([this](const httplib::Request&, httplib::Response& res) {
              require_ready();
              const auto& sc = svc.scheduler().config();
              send_json(res, 200,
                        {{"default_generation_settings", {{"n_ctx", svc.n_ctx()}, {"model", svc.model_name()}}},
                         {"total_slots", sc.parallel},
                         {"model_path", svc.model_dir()},
                         {"model_alias", svc.model_name()},
                         {"n_ctx", svc.n_ctx()},
                         {"fim", fim_family_name(svc.fim().family)},
                         {"attention_pattern", svc.config().pattern_string()},
                         {"backend", svc.backend_name()},
                         {"build_info", "hyco 0.1.0"},
                         {"modalities", {{"vision", false}, {"audio", false}}}});
            }));
    svr.Get("/slots", guard([this](const httplib::Request&, httplib::Response& res) {
              require_ready();
              json out = json::array();
              for (const SlotInfo& s : svc.scheduler().slots())
                out.push_back({{"id", s.id},
                               {"n_ctx", svc.n_ctx()},
                               {"is_processing", s.busy},
                               {"id_task", s.request_id},
                               {"n_prompt_tokens", s.n_prompt},
                               {"n_cached_tokens", s.n_cached},
                               {"n_past", s.n_computed},
                               {"n_decoded", s.n_generated}});
              send_json(res, 200, out);
            }));
    svr.Get("/api/tags", guard([this](const httplib::Request&, httplib::Response& res) {
              json models = json::array();
              if (svc.ready()) {
                const ModelConfig& c = svc.config();
                const std::string size = parameter_size(c);
                models.push_back({{"name", svc.model_name() + ":latest"},
                                  {"model", svc.model_name() + ":latest"},
                                  {"modified_at", "1970-01-01T00:00:00Z"},
                                  {"size", svc.weight_bytes()},
                                  {"digest", ""},
                                  {"details",
                                   {{"parent_model", ""},
                                    {"format", "safetensors"},
                                    {"family", c.family},
                                    {"families", json::array({c.family})},
                                    {"parameter_size", size},
                                    {"quantization_level", std::string(dtype_name(c.dtype))}}}});
              }
              send_json(res, 200, {{"models", models}});
            }));
    // Ollama clients (e.g. Continue) read the template to learn whether the model does FIM.
    svr.Post("/api/show", guard([this](const httplib::Request& req, httplib::Response& res) {
               require_ready();
               json b = jf::parse_body(req.body);
               std::string name = jf::get_string(b, "model").value_or(jf::get_string(b, "name").value_or(""));
               if (!model_name_matches(name, svc.model_name()))
                 throw ApiError(404, "model '" + name + "' not found", "model");
               const ModelConfig& c = svc.config();
               const FimTemplate& f = svc.fim();
               const Tokenizer& tok = svc.tokenizer();
               std::string tmpl = "{{ .Prompt }}";
               if (f.supported()) {
                 auto p = [&](int32_t id) { return tok.piece(id); };
                 tmpl = f.suffix_first
                            ? "{{- if .Suffix }}" + p(f.suffix_id) + "{{ .Suffix }}" + p(f.prefix_id) + "{{ .Prompt }}" +
                                  p(f.middle_id) + "{{- else }}{{ .Prompt }}{{- end }}"
                            : "{{- if .Suffix }}" + p(f.prefix_id) + "{{ .Prompt }}" + p(f.suffix_id) + "{{ .Suffix }}" +
                                  p(f.middle_id) + "{{- else }}{{ .Prompt }}{{- end }}";
               }
               json caps = json::array({"completion"});
               if (f.supported()) caps.push_back("insert");
               send_json(res, 200,
                         {{"modelfile", "# served by hyco\nFROM " + svc.model_dir() + "\n"},
                          {"parameters", ""},
                          {"template", tmpl},
                          {"details",
                           {{"format", "safetensors"}, {"family", c.family}, {"families", json::array({c.family})},
                            {"parameter_size", parameter_size(c)}, {"quantization_level", std::string(dtype_name(c.dtype))}}},
                          {"model_info",
                           {{"general.architecture", c.family},
                            {"general.parameter_count", c.n_params()},
                            {c.family + ".context_length", svc.n_ctx()}}},
                          {"capabilities", caps}});
             }));
    svr.Get("/api/version", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"version", "0.1.0"}});
    });
    svr.Options(R"(.*)", [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
  }

  void middleware() {
    svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      // Runs before the body is read. Only a body without a length (chunked, or read to the end
      // of the connection) is held to --max-body while it arrives.
      if (tl_stream && req.has_header("Content-Length") && !req.has_header("Transfer-Encoding"))
        tl_stream->body_has_length();
      if (tl_stream && !req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) tl_stream->no_body();
      // Every body here is JSON, whatever its Content-Type says. `curl -d` without -H (as in
      // Ollama's own examples) labels it application/x-www-form-urlencoded, and for that type
      // httplib (Debian's build, compiled with its 8 KiB form limit) answers 413 past 8 KiB and
      // splits the body into form fields: relabelled before the body is read, --max-body alone
      // applies. (The request is httplib's own object; this hook only sees it as const.)
      if (req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0) {
        auto& headers = const_cast<httplib::Request&>(req).headers;
        headers.erase("Content-Type");
        headers.emplace("Content-Type", "application/json");
      }
      if (std::string why = refused_by_browser_rules(req); !why.empty()) {
        if (tl_stream) tl_stream->close_after_response();  // the body stays unread
        res.set_header("Connection", "close");
        send_error(res, style_for(req.path), ApiError(403, why, "", "forbidden"));
        return httplib::Server::HandlerResponse::Handled;
      }
      cors(req, res);
      if (req.method == "OPTIONS" || opts.api_key.empty() || req.path == "/health")
        return httplib::Server::HandlerResponse::Unhandled;
      std::string auth = req.get_header_value("Authorization");
      // The scheme is case-insensitive (RFC 7235): "Bearer", "bearer", ...
      const bool bearer = auth.size() > 7 && strncasecmp(auth.c_str(), "bearer ", 7) == 0;
      std::string given = bearer ? auth.substr(7) : std::string();
      if (!constant_time_equal(given, opts.api_key)) {
        res.set_header("WWW-Authenticate", "Bearer");
        // The body stays unread: the connection cannot carry another request.
        if (tl_stream) tl_stream->close_after_response();
        res.set_header("Connection", "close");
        send_error(res, style_for(req.path),
                   ApiError(401, auth.empty() ? "missing API key: send 'Authorization: Bearer <key>'" : "invalid API key",
                            "", "invalid_api_key"));
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    svr.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (tl_stream && tl_stream->too_large()) {
        res.status = 413;
        res.set_header("Connection", "close");
        send_error(res, style_for(req.path),
                   ApiError(413, "request body too large: over " + std::to_string(opts.max_body_bytes) +
                                     " bytes (--max-body); the rest was not read and the connection is closed"));
        return;
      }
      if (tl_stream && tl_stream->timed_out()) {
        res.status = 408;
        res.set_header("Connection", "close");
        send_error(res, style_for(req.path),
                   ApiError(408, "the request did not arrive in full within " + std::to_string(opts.read_timeout_s) +
                                     " s (--read-timeout); the connection is closed", "", "request_timeout"));
        return;
      }
      if (!res.body.empty()) return;
      // httplib's own answers: the request line, headers or body could not be read whole.
      if (tl_stream && res.status != 404 && res.status != 405) {
        tl_stream->close_after_response();
        res.set_header("Connection", "close");
      }
      std::string msg = res.status == 404   ? "no route " + req.method + " " + req.path
                        : res.status == 413 ? "request body too large"
                        : res.status == 405 ? "method not allowed"
                        : res.status == 400 ? "malformed or incomplete HTTP request (request line, headers or body)"
                                            : "request failed";
      send_error(res, style_for(req.path), ApiError(res.status, msg, "", res.status == 404 ? "not_found" : ""));
    });
    svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      metrics.count_request(route_label(req.path), res.status);
      // A refused request's one line: its status and the error message its body carries.
      if (res.status >= 400) {
        std::string msg;
        try {
          const json j = json::parse(res.body);
          const json& e = j.contains("error") ? j["error"] : j;
          msg = e.is_string() ? e.get<std::string>() : e.is_object() && e.contains("message") && e["message"].is_string()
                                                           ? e["message"].get<std::string>()
                                                           : "";
        } catch (const std::exception&) {
        }
        spdlog::info("req-{} {} {} -> {}{}{}", next_id++, req.method, route_label(req.path), res.status,
                     msg.empty() ? "" : ": ", msg);
      }
    });
  }

  // A web page can make the user's browser send a "simple" POST (text/plain or a form) to this
  // server without asking first, and a page whose name was re-pointed at 127.0.0.1 (DNS
  // rebinding) can even read the answers. So a request that a browser marks as coming from a
  // page (Origin) is refused unless that page is on this machine (http(s) on localhost,
  // 127.x.x.x or [::1]), an editor's webview (vscode-webview:, vscode-file:), or named by
  // --cors-origins; and while the server listens on loopback only, the Host it was asked for
  // must be a loopback name. Editors' extension hosts, curl and scripts send no Origin. Returns
  // why a request is refused, or "".
  std::string refused_by_browser_rules(const httplib::Request& req) const {
    const auto host_is_loopback = [](const std::string& host) {
      const std::string h = host_name(host);
      in_addr v4{};
      return h == "localhost" || h == "::1" || (h.size() > 10 && h.compare(h.size() - 10, 10, ".localhost") == 0) ||
             (::inet_pton(AF_INET, h.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127);
    };
    if (req.has_header("Origin")) {
      const std::string origin = req.get_header_value("Origin");
      const auto& allowed = opts.cors_origins;
      const bool listed = std::find(allowed.begin(), allowed.end(), origin) != allowed.end() ||
                          std::find(allowed.begin(), allowed.end(), "*") != allowed.end();
      const size_t sep = origin.find("://");
      const std::string scheme = sep == std::string::npos ? "" : origin.substr(0, sep);
      const bool local = (scheme == "http" || scheme == "https") && host_is_loopback(origin.substr(sep + 3));
      const bool editor = scheme == "vscode-webview" || scheme == "vscode-file";
      if (!listed && !local && !editor)
        return "requests from the web page " + origin +
               " are refused (a page on another site must not drive a local server); allow it with --cors-origins";
    }
    const std::string& bound = opts.host;
    const bool loopback_only = host_is_loopback(bound);
    if (loopback_only && req.has_header("Host") && !host_is_loopback(req.get_header_value("Host"))) {
      const std::string name = host_name(req.get_header_value("Host"));
      const auto& hosts = opts.allowed_hosts;
      const bool allowed = std::find(hosts.begin(), hosts.end(), "*") != hosts.end() ||
                           std::find(hosts.begin(), hosts.end(), name) != hosts.end();
      if (!allowed)
        return "Host '" + req.get_header_value("Host") + "' is not this machine's loopback name: the server listens on " +
               bound + " only (a reverse proxy's name can be allowed with --allowed-hosts)";
    }
    return "";
  }

  void cors(const httplib::Request& req, httplib::Response& res) const {
    if (opts.cors_origins.empty()) return;
    std::string origin = req.get_header_value("Origin");
    if (origin.empty()) return;
    bool any = std::find(opts.cors_origins.begin(), opts.cors_origins.end(), "*") != opts.cors_origins.end();
    if (!any && std::find(opts.cors_origins.begin(), opts.cors_origins.end(), origin) == opts.cors_origins.end()) return;
    res.set_header("Access-Control-Allow-Origin", any ? "*" : origin);
    res.set_header("Vary", "Origin");
    res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
  }
};

HttpServer::HttpServer(CompletionService& svc, Metrics& metrics, const HttpOptions& opts)
    : impl_(std::make_unique<Impl>(svc, metrics, opts)) {
  auto& s = impl_->svr;
  s.set_tcp_nodelay(true);
  // httplib's default sets SO_REUSEPORT on Linux, which lets a second server bind the same port
  // and silently take half the connections; SO_REUSEADDR alone only allows a quick restart.
  s.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
  });
  s.set_payload_max_length(opts.max_body_bytes);
  s.request_max_bytes = opts.max_body_bytes + (64 << 10);  // headers besides (httplib allows 8 KiB a line)
  s.request_limit = std::chrono::milliseconds(int64_t(opts.read_timeout_s) * 1000);
  s.read_timeout_ms = s.write_timeout_ms = opts.read_timeout_s * 1000;
  // And the sockets' own SO_RCVTIMEO/SO_SNDTIMEO (httplib's default is 5 s): a send to a client
  // that stopped reading gives up after the same time.
  s.set_read_timeout(time_t(opts.read_timeout_s), 0);
  s.set_write_timeout(time_t(opts.read_timeout_s), 0);
  s.idle_ms = 5000;  // idle keep-alive
  const int threads = opts.threads > 0 ? opts.threads : 64;
  s.new_task_queue = [threads] { return new NamedThreadPool(size_t(threads)); };
  impl_->middleware();
  impl_->routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::bind() {
  int port = impl_->opts.port;
  bool ok = port == 0 ? (port = impl_->svr.bind_to_any_port(impl_->opts.host)) > 0
                      : impl_->svr.bind_to_port(impl_->opts.host, port);
  if (!ok) {
    const std::string where = impl_->opts.host + ":" + std::to_string(impl_->opts.port);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int gai = ::getaddrinfo(impl_->opts.host.c_str(), nullptr, &hints, &res);
    if (res) ::freeaddrinfo(res);
    if (gai != 0)
      throw std::runtime_error("cannot listen on " + where + ": --host '" + impl_->opts.host +
                               "' is not an address or a name this machine can resolve (" + ::gai_strerror(gai) + ")");
    throw std::runtime_error("cannot listen on " + where + " (address in use, or not an address of this machine)");
  }
  if (!impl_->svr.widen_backlog()) spdlog::warn("could not widen the listen backlog: {}", std::strerror(errno));
  impl_->bound_port = port;
}

int HttpServer::port() const { return impl_->bound_port; }
void HttpServer::run() { impl_->svr.listen_after_bind(); }
void HttpServer::stop() { impl_->svr.stop(); }

}  // namespace hyco
