// Host-side helpers for the launchers: error checks and element-type dispatch.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "gfn_fast/common.cuh"

namespace gfn_fast {

inline void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("gfn_fast: ") + what + " failed: " + cudaGetErrorString(err));
}

inline unsigned int blocks_for(int64_t work_items, int per_block) {
  int64_t blocks = (work_items + per_block - 1) / per_block;
  return static_cast<unsigned int>(blocks > 0 ? blocks : 1);
}

// Calls fn.template operator()<scalar_t, acc_t>() for the element type code.
template <typename Fn>
void dispatch_float(int dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat32: fn.template operator()<float, float>(); break;
    case kFloat64: fn.template operator()<double, double>(); break;
    case kFloat16: fn.template operator()<__half, float>(); break;
    case kBFloat16: fn.template operator()<__nv_bfloat16, float>(); break;
    default: throw std::invalid_argument("gfn_fast: unsupported element type code " + std::to_string(dtype));
  }
}

}  // namespace gfn_fast
