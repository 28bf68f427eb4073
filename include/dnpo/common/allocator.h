// Process-wide heap settings for a trainer that allocates and frees many large tensors.
#pragma once

#include <cstddef>

namespace dnpo {

/// glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
/// blocks of up to that size come from the heap and stay resident when freed: gathered FSDP units
/// then pile up in RSS. A fixed threshold keeps every larger block mmap-ed and returned on free.
/// Call once at start-up, before any thread is created. No-op on other C libraries.
void use_fixed_mmap_threshold(std::size_t bytes = std::size_t{4} << 20);

}  // namespace dnpo
