// TLS contexts and checks for the judge (see tls.h).
#include "tls.h"

#include <fstream>

#include <boost/asio/ip/address.hpp>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "dnpo/common/error.h"

namespace dnpo::judge::tls {
namespace ssl = boost::asio::ssl;

ssl::context client_context(bool verify, const std::string& ca_file) {
  ssl::context ctx(ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
  if (!verify) {
    ctx.set_verify_mode(ssl::verify_none);
    return ctx;
  }
  ctx.set_verify_mode(ssl::verify_peer);
  boost::system::error_code ec;
  if (ca_file.empty()) {
    ctx.set_default_verify_paths(ec);
    DNPO_CHECK_WITH(ConfigError,
                    !ec,
                    "judge: cannot load the system's CA certificates: {}; hint: set judge.ca_file "
                    "to a PEM file of the CA that signed the judge's certificate",
                    ec.message());
    return ctx;
  }
  DNPO_CHECK_WITH(ConfigError,
                  std::ifstream(ca_file).good(),
                  "judge.ca_file = \"{}\": cannot read that file",
                  ca_file);
  ctx.load_verify_file(ca_file, ec);
  DNPO_CHECK_WITH(ConfigError,
                  !ec,
                  "judge.ca_file = \"{}\": no PEM CA certificate in it ({})",
                  ca_file,
                  ec.message());
  return ctx;
}

ssl::context server_context(const std::string& cert_file, const std::string& key_file) {
  ssl::context ctx(ssl::context::tls_server);
  SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
  boost::system::error_code ec;
  ctx.use_certificate_chain_file(cert_file, ec);
  DNPO_CHECK_WITH(JudgeError,
                  !ec,
                  "--tls-cert {}: cannot use it as a PEM certificate chain ({})",
                  cert_file,
                  ec.message());
  ctx.use_private_key_file(key_file, ssl::context::pem, ec);
  DNPO_CHECK_WITH(JudgeError,
                  !ec,
                  "--tls-key {}: cannot use it as the PEM private key of {} ({})",
                  key_file,
                  cert_file,
                  ec.message());
  return ctx;
}

bool prepare_client(SSL* ssl, const std::string& host, bool verify) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(host, ec);
  const bool is_ip = !ec;
  if (!is_ip && SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) {
    return false;
  }
  if (!verify) {
    return true;
  }
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (is_ip) {
    return X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) == 1;
  }
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size()) == 1;
}

std::string certificate_problem(SSL* ssl) {
  const long result = SSL_get_verify_result(ssl);
  return result == X509_V_OK ? std::string() : X509_verify_cert_error_string(result);
}

}  // namespace dnpo::judge::tls
