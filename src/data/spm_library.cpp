// Finds and dlopens the SentencePiece shim in its own symbol scope; see spm_shim.cpp for why.
#include "spm_library.h"

#include <filesystem>
#include <string>
#include <vector>

#include <dlfcn.h>

#include "dnpo/common/env.h"
#include "dnpo/common/error.h"

#ifndef DNPO_SPM_SHIM_BUILD_PATH
#define DNPO_SPM_SHIM_BUILD_PATH ""
#endif

namespace dnpo::data::detail {
namespace {

// RTLD_DEEPBIND keeps the shim's SentencePiece bound to its own protobuf; the sanitizers' runtimes
// cannot interpose under it, so sanitizer builds (launch/test --sanitize) load it plainly.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL;
#else
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif
#else
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif

constexpr const char* kShimName = "libdnpo_spm_shim.so";

// $DNPO_SPM_SHIM, then <executable dir>/../lib, then where the build put it.
std::vector<std::string> candidate_paths() {
  std::vector<std::string> paths;
  if (const auto forced = env::get(env::kSpmShim)) {
    paths.push_back(*forced);
  }
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    paths.push_back((exe.parent_path().parent_path() / "lib" / kShimName).string());
  }
  if (!std::string(DNPO_SPM_SHIM_BUILD_PATH).empty()) {
    paths.emplace_back(DNPO_SPM_SHIM_BUILD_PATH);
  }
  return paths;
}

template <typename Fn>
void bind(void* lib, const char* name, Fn& fn) {
  fn = reinterpret_cast<Fn>(dlsym(lib, name));
  DNPO_CHECK_WITH(DataError, fn != nullptr, "SentencePiece shim lacks symbol '{}'", name);
}

SpmLibrary load() {
  std::string tried;
  for (const auto& path : candidate_paths()) {
    if (!std::filesystem::exists(path)) {
      tried += "\n  " + path + " (missing)";
      continue;
    }
    void* lib = dlopen(path.c_str(), kDlopenFlags);
    if (lib == nullptr) {
      tried += "\n  " + path + " (" + dlerror() + ")";
      continue;
    }
    SpmLibrary spm;
    bind(lib, "dnpo_spm_open", spm.open);
    bind(lib, "dnpo_spm_close", spm.close);
    bind(lib, "dnpo_spm_info", spm.info);
    bind(lib, "dnpo_spm_is_control", spm.is_control);
    bind(lib, "dnpo_spm_encode", spm.encode);
    bind(lib, "dnpo_spm_decode", spm.decode);
    return spm;  // never dlclosed: tokenizers may live until exit
  }
  DNPO_FAIL(
      DataError,
      "cannot load the SentencePiece shim {}; tried:{}\nhint: set {} to its path (build/lib/{})",
      kShimName,
      tried,
      env::kSpmShim,
      kShimName);
  return {};
}

}  // namespace

const SpmLibrary& spm_library() {
  static const SpmLibrary library = load();
  return library;
}

}  // namespace dnpo::data::detail
