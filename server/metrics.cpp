// Prometheus text rendering of hyco's metrics. See metrics.h.
#include "server/metrics.h"

#include <cstdio>
#include <utility>

namespace hyco {

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lk(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++n_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lk(mu_);
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  char buf[128];
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    std::snprintf(buf, sizeof buf, "%s_bucket{le=\"%g\"} %llu\n", name.c_str(), bounds_[i], (unsigned long long)cum);
    out += buf;
  }
  cum += counts_.back();
  // NOTE: one line per snprintf: the three lines together overflow buf for the longer names.
  std::snprintf(buf, sizeof buf, "%s_bucket{le=\"+Inf\"} %llu\n", name.c_str(), (unsigned long long)cum);
  out += buf;
  std::snprintf(buf, sizeof buf, "%s_sum %.6f\n", name.c_str(), sum_);
  out += buf;
  std::snprintf(buf, sizeof buf, "%s_count %llu\n", name.c_str(), (unsigned long long)n_);
  out += buf;
}

Metrics::Metrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}),
      duration_({0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}) {}

void Metrics::count_request(const std::string& route, int status) {
  std::lock_guard<std::mutex> lk(mu_);
  ++requests_[{route, status}];
}

void Metrics::count_disconnect() {
  std::lock_guard<std::mutex> lk(mu_);
  ++disconnects_;
}

std::string Metrics::render(const SchedulerStats& s, bool ready) const {
  std::string out;
  char buf[256];
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    std::snprintf(buf, sizeof buf, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, (unsigned long long)v);
    out += buf;
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    std::snprintf(buf, sizeof buf, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
    out += buf;
  };
  {
    std::lock_guard<std::mutex> lk(mu_);
    out += "# HELP hyco_requests_total HTTP requests by route and status.\n# TYPE hyco_requests_total counter\n";
    for (const auto& [k, v] : requests_) {
      std::snprintf(buf, sizeof buf, "hyco_requests_total{route=\"%s\",status=\"%d\"} %llu\n", k.first.c_str(), k.second,
                    (unsigned long long)v);
      out += buf;
    }
    counter("hyco_client_disconnects_total", "Responses abandoned by their client before the end.", disconnects_);
  }
  counter("hyco_prompt_tokens_total", "Prompt tokens of admitted requests.", s.n_prompt_tokens);
  counter("hyco_cached_prompt_tokens_total", "Prompt tokens reused from the prefix cache.", s.n_cached_tokens);
  counter("hyco_generated_tokens_total", "Tokens generated.", s.n_generated_tokens);
  counter("hyco_completions_total", "Generations finished, for any reason.", s.n_finished);
  counter("hyco_cancelled_total", "Generations cancelled (client gone, deadline, shutdown).", s.n_cancelled);
  counter("hyco_errors_total", "Generations that ended in an error.", s.n_errors);
  counter("hyco_rejected_total", "Requests refused because the queue was full.", s.n_rejected);
  counter("hyco_prefill_tokens_total", "Prompt tokens computed (the rest of the prompt tokens were reused).",
          s.n_prefill_tokens);
  counter("hyco_scheduler_steps_total", "Forward steps run by the scheduler.", s.n_steps);
  counter("hyco_scheduler_prefill_steps_total", "Forward steps that carried prompt chunks (the rest only decoded).",
          s.n_steps_prefill);
  // Seconds by kind of step (decode-only, or with prompt chunks).
  auto seconds_by_kind = [&](const std::string& name, const char* help, double decode, double prefill) {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " counter\n";
    for (auto [kind, v] : {std::pair<const char*, double>{"decode", decode}, {"prefill", prefill}}) {
      std::snprintf(buf, sizeof buf, "{kind=\"%s\"} %.6f\n", kind, v);
      out += name + buf;
    }
  };
  seconds_by_kind("hyco_scheduler_step_seconds_total", "Seconds in forward steps (forward, sampling, emitting), by kind.",
                  s.step_seconds_decode, s.step_seconds_prefill);
  seconds_by_kind("hyco_scheduler_forward_seconds_total",
                  "Seconds in the model's forward, the part of those steps before sampling, by kind.",
                  s.forward_seconds_decode, s.forward_seconds_prefill);
  gauge("hyco_ready", "1 once the model is loaded.", ready ? 1 : 0);
  gauge("hyco_queue_depth", "Requests waiting for a slot.", s.n_waiting);
  gauge("hyco_running_sequences", "Sequences being generated.", s.n_running);
  gauge("hyco_cached_sequences", "Finished sequences kept for prefix reuse.", s.n_cached_seqs);
  gauge("hyco_kv_bytes_used", "KV cache bytes held by running and cached sequences.", double(s.kv_bytes_used));
  gauge("hyco_kv_bytes_total", "KV cache bytes allocated.", double(s.kv_bytes_total));
  ttft_.render(out, "hyco_time_to_first_token_seconds", "From request arrival to its first generated token.");
  itl_.render(out, "hyco_inter_token_seconds", "Between consecutive generated tokens of a stream.");
  duration_.render(out, "hyco_request_duration_seconds", "Completion requests, arrival to last byte.");
  return out;
}

}  // namespace hyco
