// TLS for the judge client and server (private to judge/): OpenSSL contexts built from the
// config, peer-name checks, and handshake errors a user can act on. Asio's SSL headers stay here
// and in client.cpp / server.cpp.
#pragma once

#include <string>

#include <boost/asio/ssl.hpp>

namespace dnpo::judge::tls {

/// A client context: TLS 1.2 or newer; with `verify`, the peer's chain must lead to a CA in
/// `ca_file` (PEM), or in the system's store when `ca_file` is empty. Throws ConfigError naming
/// the file when it cannot be read.
boost::asio::ssl::context client_context(bool verify, const std::string& ca_file);

/// A server context from a PEM certificate chain and private key. Throws JudgeError naming the
/// file that could not be used.
boost::asio::ssl::context server_context(const std::string& cert_file, const std::string& key_file);

/// Prepares a client connection to `host`: SNI (for names), and with verification on, a check
/// that the certificate names `host` (DNS name or IP address). Returns false when OpenSSL
/// refuses (out of memory).
bool prepare_client(SSL* ssl, const std::string& host, bool verify);

/// Why a handshake failed, when the peer's certificate was refused ("" otherwise): OpenSSL's
/// verify result in words, e.g. "unable to get local issuer certificate".
std::string certificate_problem(SSL* ssl);

}  // namespace dnpo::judge::tls
