# Test helpers (docs/develop.md, "Tests"). Labels: unit, golden, mpi, integration, fault, gpu, slow.
find_package(GTest REQUIRED)
include(GoogleTest)

# dnpo_add_test(NAME SRCS a.cpp... DEPS lib... LABELS unit... [FIXTURES fixture...] [TIMEOUT s])
# FIXTURES: CTest fixtures every discovered test requires (FIXTURES_REQUIRED), e.g. the golden
# data a setup test writes.
function(dnpo_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SRCS;DEPS;LABELS;FIXTURES" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  # dnpo_heap: tests run on the malloc dnpo_dist ships with.
  target_link_libraries(${name} PRIVATE dnpo_heap ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/common)
  target_compile_definitions(${name} PRIVATE
    DNPO_SOURCE_DIR="${PROJECT_SOURCE_DIR}" DNPO_BINARY_DIR="${PROJECT_BINARY_DIR}")
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  dnpo_target_warnings(${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set(fixture_properties)
  if(ARG_FIXTURES)
    set(fixture_properties FIXTURES_REQUIRED "${ARG_FIXTURES}")
  endif()
  gtest_discover_tests(${name}
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT} ${fixture_properties}
    DISCOVERY_TIMEOUT 60)
endfunction()

set(DNPO_TEST_TIME_SCALE 1 CACHE STRING
    "dnpo: multiplies the script tests' time limits and their own time bounds (an integer >= 1)")
if(NOT DNPO_TEST_TIME_SCALE MATCHES "^[1-9][0-9]*$")
  message(FATAL_ERROR "DNPO_TEST_TIME_SCALE must be an integer >= 1, not '${DNPO_TEST_TIME_SCALE}'")
endif()

# dnpo_add_script_test(NAME COMMAND cmd... LABELS ...): a test that runs a command (CLI, python).
function(dnpo_add_script_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "COMMAND;LABELS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  # Under AddressSanitizer every process starts and runs a few times slower: the limits (and the
  # scripts' own bounds, through DNPO_TIME_SCALE) grow with it, and with DNPO_TEST_TIME_SCALE (a
  # slow or busy machine).
  set(time_scale ${DNPO_TEST_TIME_SCALE})
  if(DNPO_SANITIZE_ADDRESS)
    math(EXPR time_scale "${time_scale} * 4")
  endif()
  math(EXPR ARG_TIMEOUT "${ARG_TIMEOUT} * ${time_scale}")
  add_test(NAME ${name} COMMAND ${ARG_COMMAND})
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT
    "DNPO_BIN=${PROJECT_BINARY_DIR}/bin;DNPO_SOURCE_DIR=${PROJECT_SOURCE_DIR};DNPO_TIME_SCALE=${time_scale}")
endfunction()

# dnpo_add_mpi_test(NAME NPROC n SRCS ... DEPS ... [TIMEOUT s] [TEST_NAME t] [ARGS arg...]): one
# gtest binary run under mpirun with n ranks (tests/mpi/mpi_test_main.cpp all-reduces the verdict),
# as the CTest test <t>_np<n> (t defaults to NAME) with ARGS (e.g. a --gtest_filter) after it.
# A run in which every test was skipped exits 77 and is reported as skipped. Label mpi.
function(dnpo_add_mpi_test name)
  cmake_parse_arguments(ARG "" "NPROC;TIMEOUT;TEST_NAME" "SRCS;DEPS;ARGS" ${ARGN})
  if(NOT TARGET ${name})
    add_executable(${name} ${ARG_SRCS} ${PROJECT_SOURCE_DIR}/tests/mpi/mpi_test_main.cpp)
    target_link_libraries(${name} PRIVATE dnpo_heap ${ARG_DEPS} dnpo_dist_lib GTest::gtest)
    target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/mpi
                                              ${PROJECT_SOURCE_DIR}/tests/common)
    set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
    dnpo_target_warnings(${name})
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  if(NOT ARG_TEST_NAME)
    set(ARG_TEST_NAME ${name})
  endif()
  set(test ${ARG_TEST_NAME}_np${ARG_NPROC})
  add_test(NAME ${test}
           COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ARG_NPROC} --oversubscribe
                   ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${name}> ${MPIEXEC_POSTFLAGS} ${ARG_ARGS})
  # 77: tests/mpi/mpi_test_main.h kSkippedExitCode
  set_tests_properties(${test} PROPERTIES LABELS mpi PROCESSORS ${ARG_NPROC}
    TIMEOUT ${ARG_TIMEOUT} SKIP_RETURN_CODE 77
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
endfunction()
