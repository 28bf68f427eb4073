// dnpo's one CUDA kernel: the uniforms of counter-based normals (common/counter_rng.h) on the GPU,
// one thread per Box–Muller pair. Plain pointers and a cudaStream_t, so this header and the .cu
// need no LibTorch. Built only with DNPO_CUDA_KERNELS (a CUDA build with nvcc).
#pragma once

#include <cstdint>

namespace dnpo::model::gpu {

/// u1[r·pairs + p] in (0, 1] and u2[r·pairs + p] in [0, 1) from draws 2p and 2p + 1 of keys[r],
/// bit for bit box_muller_uniforms(keys[r], p). Device pointers; queued on `stream` (a
/// cudaStream_t). Returns the CUDA error code of the launch (0 = success).
int counter_uniforms(const std::int64_t* keys,
                     std::int64_t rows,
                     std::int64_t pairs,
                     float* u1,
                     float* u2,
                     void* stream);

}  // namespace dnpo::model::gpu
