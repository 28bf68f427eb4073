// main() of MPI test binaries: every rank runs every test; ranks other than 0 print only their
// failures, tagged [rank r]; the verdict is all-reduced so every rank exits alike. A run in which
// every test that ran was skipped (on every rank) exits with kSkippedExitCode, which CTest reports
// as skipped (SKIP_RETURN_CODE in cmake/DnpoTesting.cmake), not as passed.
#include "mpi_test_main.h"

#include <cstdio>
#include <memory>

#include <gtest/gtest.h>

namespace dnpo::test {
namespace {

dist::MpiEnv* g_mpi = nullptr;

// Prints failed assertions of a non-zero rank, nothing else.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed()) {
      std::fprintf(stderr,
                   "[rank %d] %s:%d: failure\n%s\n",
                   rank_,
                   result.file_name() != nullptr ? result.file_name() : "?",
                   result.line_number(),
                   result.summary());
    }
  }

 private:
  int rank_;
};

}  // namespace

const dist::MpiEnv& mpi() {
  return *g_mpi;
}

}  // namespace dnpo::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto env = std::make_unique<dnpo::dist::MpiEnv>(&argc, &argv);
  dnpo::test::g_mpi = env.get();
  if (env->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new dnpo::test::FailurePrinter(env->rank()));
  }
  const int local = RUN_ALL_TESTS();
  const auto& unit = *::testing::UnitTest::GetInstance();
  const bool only_skips =
      unit.test_to_run_count() > 0 && unit.skipped_test_count() == unit.test_to_run_count();
  const bool any_failed = env->any(local != 0);
  const bool all_skipped = !env->any(!only_skips);
  if (any_failed) {
    return 1;
  }
  if (all_skipped) {
    if (env->rank() == 0) {
      std::printf("every test skipped on every rank: exit %d (skipped)\n",
                  dnpo::test::kSkippedExitCode);
    }
    return dnpo::test::kSkippedExitCode;
  }
  return 0;
}
