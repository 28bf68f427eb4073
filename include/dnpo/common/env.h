// dnpo's own environment variables, each declared once here with what it does.
#pragma once

#include <optional>
#include <string>

namespace dnpo::env {

/// DNPO_LOG_LEVEL: trace|debug|info|warn|error (default info).
inline constexpr const char* kLogLevel = "DNPO_LOG_LEVEL";
/// DNPO_NUM_THREADS: intra-op threads per rank (overrides run.threads).
inline constexpr const char* kNumThreads = "DNPO_NUM_THREADS";
/// DNPO_PROGRESS: 1 forces progress lines even when stderr is not a terminal, 0 disables the bar.
inline constexpr const char* kProgress = "DNPO_PROGRESS";

/// DNPO_SPM_SHIM: path of libdnpo_spm_shim.so (default: <executable dir>/../lib, then the build).
inline constexpr const char* kSpmShim = "DNPO_SPM_SHIM";

/// DNPO_TEST_GRAD_SCALE: tests only — multiplies every reduce-scattered gradient (a deliberately
/// wrong reduction that the world-size equivalence tests must catch).
inline constexpr const char* kTestGradScale = "DNPO_TEST_GRAD_SCALE";
/// DNPO_TEST_FAIL: tests only — "RANK:STEP" makes that rank throw at the start of that step.
inline constexpr const char* kTestFail = "DNPO_TEST_FAIL";

/// DNPO_TEST_CKPT_FAIL: tests only — "before_rename" makes ckpt::save() stop (throw) after the
/// temporary file is complete, as if the process died before the atomic rename;
/// "no_space_check" skips its check for room, as if another process filled the disk after it.
inline constexpr const char* kTestCkptFail = "DNPO_TEST_CKPT_FAIL";

/// The value of a variable, or nullopt when it is unset or empty.
std::optional<std::string> get(const char* name);

}  // namespace dnpo::env
