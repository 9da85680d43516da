// Device helpers shared by every gfn_fast CUDA kernel: element types, losses, index clamps.
// Framework-free: raw pointers, sizes and strides only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace gfn_fast {

// Element type codes shared with the Python side (gfn_fast/cuda/_ext.py).
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Regression loss ids shared with gfn_fast/reference/losses.py.
enum Loss : int { kSquared = 0, kHalfSquared = 1, kAbsolute = 2, kHuber = 3, kShiftedCosh = 4, kLinex = 5 };

template <typename acc_t> __device__ __forceinline__ acc_t to_acc(float x) { return static_cast<acc_t>(x); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(double x) { return static_cast<acc_t>(x); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__half x) { return static_cast<acc_t>(__half2float(x)); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__nv_bfloat16 x) {
  return static_cast<acc_t>(__bfloat162float(x));
}

template <typename scalar_t> __device__ __forceinline__ scalar_t from_acc(float x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename scalar_t> __device__ __forceinline__ scalar_t from_acc(double x);
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }

template <typename acc_t> __device__ __forceinline__ acc_t sign_of(acc_t d) {
  return d > acc_t(0) ? acc_t(1) : (d < acc_t(0) ? acc_t(-1) : acc_t(0));
}

template <typename acc_t> __device__ __forceinline__ acc_t rho(acc_t d, int loss, acc_t param) {
  switch (loss) {
    case kSquared: return d * d;
    case kHalfSquared: return acc_t(0.5) * d * d;
    case kAbsolute: return fabs(d);
    case kHuber: {
      acc_t a = fabs(d);
      return a <= param ? acc_t(0.5) * d * d : param * (a - acc_t(0.5) * param);
    }
    case kShiftedCosh: return exp(d) + exp(-d) - acc_t(2);
    default: {
      acc_t ad = param * d;
      return (exp(ad) - ad - acc_t(1)) / (param * param);
    }
  }
}

template <typename acc_t> __device__ __forceinline__ acc_t rho_grad(acc_t d, int loss, acc_t param) {
  switch (loss) {
    case kSquared: return acc_t(2) * d;
    case kHalfSquared: return d;
    case kAbsolute: return sign_of(d);
    case kHuber: return fabs(d) <= param ? d : param * sign_of(d);
    case kShiftedCosh: return exp(d) - exp(-d);
    default: return expm1(param * d) / param;
  }
}

// max(reward, clip) that keeps NaN (fmax would drop it).
template <typename acc_t> __device__ __forceinline__ acc_t clip_below(acc_t reward, acc_t clip) {
  return reward < clip ? clip : reward;
}

}  // namespace gfn_fast
