// The judge server behind `dnpo_judge serve`: OpenAI Chat Completions (POST
// /v1/chat/completions) answered by the rule judge, GET /health, limits on body size and
// connections, and fault injection for tests (faults.h). HTTP, or HTTPS with a certificate and
// key; Boost.Beast stays in server.cpp.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "dnpo/judge/faults.h"

namespace dnpo::judge {

struct ServerOptions {
  std::string host = "127.0.0.1";  ///< address to bind
  int port = 0;                    ///< 0 = any free port (see JudgeServer::port())
  std::string template_path;       ///< the template requests were rendered with
  double imperfection = 0;         ///< rule judge: fraction of scores perturbed
  std::uint64_t seed = 0;          ///< rule judge perturbations (faults have their own seed)
  std::size_t max_body_bytes = 1U << 20U;  ///< larger requests get 413
  int max_connections = 256;               ///< connections beyond this get 503 and are closed
  FaultOptions faults;
  std::string request_log;  ///< "" = none; else one JSON line per POST: t, body, attempt, outcome
  /// "" = no authentication; else requests must carry "Authorization: Bearer <value of this
  /// environment variable>" (401 otherwise). The key is never logged.
  std::string api_key_env;
  /// Both set: serve HTTPS with this PEM certificate chain and private key; both "": plain HTTP.
  std::string tls_cert;
  std::string tls_key;
};

class JudgeServer {
 public:
  /// Binds and listens. Throws JudgeError naming the address or an unusable certificate/key,
  /// ConfigError for a bad template.
  explicit JudgeServer(ServerOptions options);
  ~JudgeServer();
  JudgeServer(const JudgeServer&) = delete;
  JudgeServer& operator=(const JudgeServer&) = delete;

  /// The bound port (the chosen one when options.port was 0).
  int port() const;
  /// Serves until stop() or SIGINT/SIGTERM (one thread per connection). Blocking.
  void run();
  /// Stops accepting; run() returns. Thread-safe.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dnpo::judge
