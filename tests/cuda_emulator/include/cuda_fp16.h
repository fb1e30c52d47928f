// cuda_fp16.h for the CUDA emulator: __half and its conversions are in cuda_emulator.h,
// which every emulated source includes first.
#pragma once
#include "cuda_emulator.h"
