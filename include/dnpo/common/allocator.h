// Process-wide heap settings for a trainer that allocates and frees many large tensors.
#pragma once

#include <cstddef>
#include <string>

namespace dnpo {

/// Which malloc serves this process and how it is set up, in one line for the start-up log.
/// With tcmalloc linked in (DNPO_HEAP, cmake/DnpoDependencies.cmake) nothing needs setting: it
/// reuses freed large spans without page-faulting them in again. Under glibc it fixes the mmap
/// threshold (use_fixed_mmap_threshold). Call once at start-up, before any thread is created.
std::string configure_heap();

/// The name of the malloc in this process: "tcmalloc <version>" or "glibc".
std::string heap_name();

/// glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
/// blocks of up to that size come from the heap and stay resident when freed: gathered FSDP units
/// then pile up in RSS. A fixed threshold keeps every larger block mmap-ed and returned on free,
/// at the cost of page faults on every reuse. No-op on other C libraries.
void use_fixed_mmap_threshold(std::size_t bytes = std::size_t{4} << 20);

}  // namespace dnpo
