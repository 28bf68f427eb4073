# dnpo_target_warnings(target): the project's warning set, on our own targets only.
function(dnpo_target_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-qual
    -Wmissing-declarations -Wformat=2)
  if(DNPO_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  set(san "")
  if(DNPO_SANITIZE_ADDRESS)
    list(APPEND san address)
  endif()
  if(DNPO_SANITIZE_UNDEFINED)
    list(APPEND san undefined)
  endif()
  if(DNPO_SANITIZE_THREAD)
    list(APPEND san thread)
  endif()
  if(san)
    list(JOIN san "," san_list)
    target_compile_options(${target} PRIVATE -fsanitize=${san_list} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${san_list})
  endif()
  if(DNPO_FUZZ)
    # coverage for libFuzzer in every library a fuzz target links; undefined behaviour aborts
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer-no-link
                                             -fno-sanitize-recover=all)
  endif()
endfunction()
