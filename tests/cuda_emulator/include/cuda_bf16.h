// cuda_bf16.h for the CUDA emulator: bfloat16 (the top 16 bits of a float) and its
// conversions, round to nearest even as on the GPU.
#pragma once
#include "cuda_emulator.h"

struct __nv_bfloat16 {
    unsigned short bits;
};

__forceinline__ float __bfloat162float(__nv_bfloat16 h) { return std::bit_cast<float>((unsigned)h.bits << 16); }

__forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) {
    const unsigned x = std::bit_cast<unsigned>(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return __nv_bfloat16{(unsigned short)((x >> 16) | 0x40u)};   // NaN
    const unsigned rounded = x + 0x7FFFu + ((x >> 16) & 1u);                                            // ties to even
    return __nv_bfloat16{(unsigned short)(rounded >> 16)};
}

__forceinline__ __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
