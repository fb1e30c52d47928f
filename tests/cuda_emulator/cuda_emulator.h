// cuda_emulator.h -- the CUDA built-ins for compiling a kernel source with g++ and running
// it on the CPU, for the tests (see tests/cuda_emulator/__init__.py).
//
// A wrapper translation unit includes this header, then the .cu file unchanged, then one
// EMU_KERNEL line per kernel it exports. The execution model:
//
// * one OS thread per CUDA thread; the blocks of a launch run one at a time, in an order
//   shuffled per launch (a result must not depend on it);
// * exactly one thread runs at any moment. A thread runs until it reaches a synchronisation
//   point (__syncthreads, a warp shuffle or vote, __syncwarp) or exits; then the runnable
//   thread with the lowest index runs next. A warp therefore runs as far ahead of the
//   others as the kernel's barriers allow, which is the schedule that exposes a missing
//   barrier (a read of shared memory another warp has not written yet, or a write over data
//   another warp still reads). The schedule is deterministic.
// * __syncthreads is a barrier of every thread of the block that has not exited; all of
//   them must reach the same call site: the same file, line, column and function (two
//   template instances of a helper are two sites). A thread that exits while others wait at
//   a barrier is an error, and so is a deadlock.
// * shuffles and votes go through a per-warp exchange: every lane named in the mask must
//   exist, must not have exited and must call the same intrinsic at the same call site
//   with the same mask; a shuffle may read only lanes named in the mask.
// * shared memory (static __shared__ arrays and the dynamic extern __shared__ array) is
//   filled with 0xFF bytes, a NaN in float, before every block, so a read before a write
//   shows; a write past the launch's dynamic shared memory size is reported.
// * tensor-core products (nvcuda::wmma, include/mma.h) are warp-wide calls with the same
//   checks, computed in float on every lane;
// * an invalid memory access (the Python stand-in puts every array against a guard page)
//   is caught and reported instead of crashing the process (not under AddressSanitizer,
//   which reports such accesses itself).
#pragma once

#include <linux/futex.h>
#include <math.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <csetjmp>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <source_location>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

// ============================================================================ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// A __shared__ array becomes a declaration of an external array with "internal" ELF
// visibility, whether the kernel wrote `__shared__ float a[8];` or `extern __shared__
// float a[];`. The builder finds these undefined symbols in the object file and defines each
// as a region of emu::SHARED_CAPACITY bytes that the runtime refills before every block.
// (The leading unused int ends the declaration that `extern` may have begun.)
#define EMU_CONCAT_(a, b) a##b
#define EMU_CONCAT(a, b) EMU_CONCAT_(a, b)
#define __shared__                                                       \
    __attribute__((unused)) int EMU_CONCAT(emu_shared_marker_, __COUNTER__); \
    extern __attribute__((visibility("internal")))

// ============================================================================ thread indices
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

constexpr std::size_t SHARED_CAPACITY = 256 * 1024;   // bytes per shared array region
constexpr unsigned char SHARED_FILL = 0xFF;            // 0xFFFFFFFF is a NaN in float

// The shared-memory regions, defined by the builder's second translation unit: one per
// __shared__ array of the kernel source; `dynamic` marks `extern __shared__ T a[]`.
struct SharedRegion {
    unsigned char* memory;
    const char* name;
    int dynamic;
};

struct Abort {};                                       // unwinds a thread after an error

// A one-shot wake-up for one waiting thread: release() lets one acquire() through. A bare
// futex, the cheapest hand-over the kernel offers from one thread to another.
class Baton {
  public:
    void release() {
        flag_.store(1, std::memory_order_release);
        syscall(SYS_futex, reinterpret_cast<int*>(&flag_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }
    void acquire() {
        while (flag_.exchange(0, std::memory_order_acquire) == 0)
            syscall(SYS_futex, reinterpret_cast<int*>(&flag_), FUTEX_WAIT_PRIVATE, 0, nullptr, nullptr, 0);
    }

  private:
    std::atomic<int> flag_{0};
};

enum class State { runnable, at_barrier, at_exchange, exited };

struct Thread {
    int index = 0;                                     // linear index in the block
    uint3 idx{};
    State state = State::runnable;
    Baton go;                       // released when this thread may run
    bool in_kernel = false;
    sigjmp_buf fault_return;
    void* fault_address = nullptr;
    int fault_signal = 0;
    std::source_location waits_at;                     // where it waits, for messages
    const char* waits_in = "";
    std::thread os_thread;
};

struct WarpExchange {
    int arrived = 0;
    unsigned mask = 0;
    const char* what = "";
    std::source_location where;
    unsigned long long generation = 0;
    unsigned long long values[2][32] = {};             // double-buffered by generation
};

using Invoker = void (*)(void* const* args);

struct Launch {
    std::vector<std::unique_ptr<Thread>> threads;
    std::vector<WarpExchange> warps;
    Invoker kernel = nullptr;
    void* const* args = nullptr;
    uint3 block{};
    dim3 grid, dim;
    int live = 0;                                      // threads of the block not exited
    int barrier_arrived = 0;
    std::source_location barrier_where;
    bool aborted = false;
    bool finished = false;
    std::string error;
    void* fault_address = nullptr;
    Baton main_go;                  // released when the block is done
};

inline Launch* current_launch = nullptr;
inline thread_local Thread* self = nullptr;

inline std::string describe(const std::source_location& where) {
    return std::string(where.file_name()) + ":" + std::to_string(where.line()) + " (" + where.function_name() + ")";
}

inline std::string thread_name(const Thread& t) {
    const Launch& L = *current_launch;
    return "thread (" + std::to_string(t.idx.x) + "," + std::to_string(t.idx.y) + "," + std::to_string(t.idx.z) +
           ") of block (" + std::to_string(L.block.x) + "," + std::to_string(L.block.y) + "," +
           std::to_string(L.block.z) + ")";
}

// Record the first error of the launch; every thread then unwinds.
inline void record_error(const std::string& message) {
    Launch& L = *current_launch;
    if (!L.aborted) {
        L.aborted = true;
        L.error = message;
    }
}

[[noreturn]] inline void fail(const std::string& message) {
    record_error(message);
    throw Abort{};
}

// The thread to run next: the runnable thread with the lowest index (while unwinding after
// an error: any thread not yet exited). nullptr when none is left.
inline Thread* pick_next() {
    Launch& L = *current_launch;
    for (auto& t : L.threads)
        if (L.aborted ? t->state != State::exited : t->state == State::runnable) return t.get();
    return nullptr;
}

inline std::string waiting_threads() {
    std::string text;
    for (auto& t : current_launch->threads)
        if (t->state == State::at_barrier || t->state == State::at_exchange) {
            text += "\n  " + thread_name(*t) + " waits in " + t->waits_in + " at " + describe(t->waits_at);
            if (text.size() > 2000) return text + "\n  ...";
        }
    return text;
}

// Called by the running thread once it is blocked: run the next thread, and return when
// this one is scheduled again (throwing Abort if the launch failed meanwhile).
inline void yield_to_next() {
    Launch& L = *current_launch;
    Thread* me = self;
    Thread* next = pick_next();
    if (next == nullptr) {                             // nobody can run: a deadlock
        record_error("deadlock: no thread can continue" + waiting_threads());
        next = pick_next();
    }
    if (next == me) {
        if (L.aborted) throw Abort{};
        return;
    }
    next->go.release();
    me->go.acquire();
    if (L.aborted) throw Abort{};
}

// ---------------------------------------------------------------- __syncthreads
// Two call sites are the same when they are the same place in the source, in the same function.
inline bool same_site(const std::source_location& a, const std::source_location& b) {
    return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0 &&
           std::strcmp(a.function_name(), b.function_name()) == 0;
}

inline void block_barrier(std::source_location where) {
    Launch& L = *current_launch;
    Thread& me = *self;
    if (L.aborted) throw Abort{};
    if (L.barrier_arrived == 0) {
        L.barrier_where = where;
    } else if (!same_site(where, L.barrier_where)) {
        fail("__syncthreads: " + thread_name(me) + " reached the barrier at " + describe(where) +
             " while other threads wait at the barrier at " + describe(L.barrier_where));
    }
    me.state = State::at_barrier;
    me.waits_in = "__syncthreads";
    me.waits_at = where;
    if (++L.barrier_arrived == L.live) {
        for (auto& t : L.threads)
            if (t->state == State::at_barrier) t->state = State::runnable;
        L.barrier_arrived = 0;
    }
    yield_to_next();
}

// ---------------------------------------------------------------- warp exchange
// Every lane of `mask` deposits a value; returns the 32 deposited values once all have.
inline const unsigned long long* warp_exchange(const char* what, unsigned mask, unsigned long long value,
                                               std::source_location where) {
    Launch& L = *current_launch;
    Thread& me = *self;
    if (L.aborted) throw Abort{};
    const int lane = me.index % 32, warp = me.index / 32;
    WarpExchange& w = L.warps[warp];
    auto who = [&] { return std::string(what) + " at " + describe(where) + ": " + thread_name(me); };
    if (!(mask >> lane & 1u)) fail(who() + " is lane " + std::to_string(lane) + ", not in its mask " + std::to_string(mask));
    if (w.arrived == 0) {
        for (int l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            const int index = warp * 32 + l;
            if (index >= (int)L.threads.size())
                fail(who() + " names lane " + std::to_string(l) + " in its mask, which does not exist (the block has " +
                     std::to_string(L.threads.size()) + " threads)");
            if (L.threads[index]->state == State::exited)
                fail(who() + " names lane " + std::to_string(l) + " in its mask, which has exited");
        }
        w.mask = mask;
        w.what = what;
        w.where = where;
    } else if (!same_site(where, w.where) || mask != w.mask) {
        fail(who() + " (mask " + std::to_string(mask) + ") does not meet the other lanes of its warp, which wait in " +
             w.what + " at " + describe(w.where) + " (mask " + std::to_string(w.mask) + ")");
    }
    const int slot = (int)(w.generation & 1u);
    w.values[slot][lane] = value;
    me.state = State::at_exchange;
    me.waits_in = what;
    me.waits_at = where;
    if (++w.arrived == std::popcount(mask)) {
        for (int l = 0; l < 32; ++l)
            if (mask >> l & 1u) L.threads[warp * 32 + l]->state = State::runnable;
        w.arrived = 0;
        ++w.generation;
    }
    yield_to_next();
    return w.values[slot];
}

template <typename T>
inline unsigned long long to_bits(T value) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move values of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <typename T>
inline T from_bits(unsigned long long bits) {
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

// The lane a shuffle reads, or -1 for "its own value" (a source outside its width segment).
enum class ShuffleKind { index, up, down, xor_ };

inline int shuffle_source(ShuffleKind kind, int lane, int operand, int width) {
    const int first = lane / width * width;             // the lane's segment: [first, first + width)
    switch (kind) {
        case ShuffleKind::index: return first + ((operand % width) + width) % width;
        case ShuffleKind::up: return lane - operand >= first ? lane - operand : -1;
        case ShuffleKind::down: return lane + operand < first + width ? lane + operand : -1;
        case ShuffleKind::xor_: {
            const int source = lane ^ operand;
            return source < first + width ? source : -1;
        }
    }
    return -1;
}

template <typename T>
__forceinline__ T shuffle(const char* what, ShuffleKind kind, unsigned mask, T value, int operand, int width,
                          std::source_location where) {
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail(std::string(what) + " at " + describe(where) + ": width " + std::to_string(width) +
             " is not a power of two up to 32");
    const unsigned long long* values = warp_exchange(what, mask, to_bits(value), where);
    const int lane = self->index % 32;
    const int source = shuffle_source(kind, lane, operand, width);
    if (source < 0) return value;
    if (!(mask >> source & 1u))
        fail(std::string(what) + " at " + describe(where) + ": lane " + std::to_string(lane) + " reads lane " +
             std::to_string(source) + ", which is not in the mask " + std::to_string(mask));
    return from_bits<T>(values[source]);
}

// ---------------------------------------------------------------- the kernel registry
inline std::string type_code_of_value(const char* kind, std::size_t size) {
    return std::string(kind) + std::to_string(size);
}

// "f4" float, "i8" long long, "u4" unsigned int, "b1" bool, "x2" a 2-byte struct (half);
// a pointer is "*" followed by the code of what it points to ("*v" for void).
template <typename T>
std::string type_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        using P = std::remove_cv_t<std::remove_pointer_t<U>>;
        if constexpr (std::is_void_v<P>) return "*v";
        else return "*" + type_code<P>();
    } else if constexpr (std::is_same_v<U, bool>) {
        return "b1";
    } else if constexpr (std::is_floating_point_v<U>) {
        return type_code_of_value("f", sizeof(U));
    } else if constexpr (std::is_integral_v<U>) {
        return type_code_of_value(std::is_signed_v<U> ? "i" : "u", sizeof(U));
    } else {
        return type_code_of_value("x", sizeof(U));
    }
}

template <typename... A, std::size_t... I>
void call_kernel(void (*kernel)(A...), void* const* args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <auto Kernel>
void invoke(void* const* args) {
    [&]<typename... A>(void (*kernel)(A...)) {
        call_kernel(kernel, args, std::index_sequence_for<A...>{});
    }(Kernel);
}

template <typename... A>
std::string signature_of(void (*)(A...)) {
    std::string codes;
    ((codes += (codes.empty() ? "" : " ") + type_code<A>()), ...);
    return codes;
}

struct KernelEntry {
    std::string name;
    Invoker invoke;
    std::string signature;
    int max_threads;                                   // its __launch_bounds__, or 1024
};

inline std::vector<KernelEntry>& registry() {
    static std::vector<KernelEntry> entries;
    return entries;
}

struct Registration {
    Registration(const char* name, Invoker invoker, std::string signature, int max_threads) {
        registry().push_back({name, invoker, std::move(signature), max_threads});
    }
};

}  // namespace emu

// One line per exported kernel in the wrapper:
//   EMU_KERNEL("name as asked for", its maximum threads per block, the kernel's expression)
#define EMU_KERNEL(name, max_threads, ...)                                                 \
    static ::emu::Registration EMU_CONCAT(emu_registration_, __COUNTER__)(               \
        name, &::emu::invoke<&__VA_ARGS__>, ::emu::signature_of(&__VA_ARGS__), max_threads);

// ============================================================================ synchronisation
// Each intrinsic takes its call site as a defaulted std::source_location argument.
namespace emu {
template <typename T>
T shuffle_at(const char* what, ShuffleKind kind, unsigned mask, T value, int operand, int width,
             std::source_location where) {
    return shuffle(what, kind, mask, value, operand, width, where);
}

inline unsigned vote_at(const char* what, unsigned mask, int predicate, std::source_location where) {
    const unsigned long long* values = warp_exchange(what, mask, predicate != 0, where);
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && values[l]) ballot |= 1u << l;
    return ballot;
}
}  // namespace emu

__forceinline__ void __syncthreads(std::source_location where = std::source_location::current()) {
    emu::block_barrier(where);
}

__forceinline__ void __syncwarp(unsigned mask = 0xffffffffu,
                                std::source_location where = std::source_location::current()) {
    emu::vote_at("__syncwarp", mask, 1, where);
}

template <typename T>
__forceinline__ T __shfl_sync(unsigned mask, T value, int lane, int width = 32,
                              std::source_location where = std::source_location::current()) {
    return emu::shuffle_at("__shfl_sync", emu::ShuffleKind::index, mask, value, lane, width, where);
}

template <typename T>
__forceinline__ T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32,
                                 std::source_location where = std::source_location::current()) {
    return emu::shuffle_at("__shfl_up_sync", emu::ShuffleKind::up, mask, value, (int)delta, width, where);
}

template <typename T>
__forceinline__ T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32,
                                   std::source_location where = std::source_location::current()) {
    return emu::shuffle_at("__shfl_down_sync", emu::ShuffleKind::down, mask, value, (int)delta, width, where);
}

template <typename T>
__forceinline__ T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32,
                                  std::source_location where = std::source_location::current()) {
    return emu::shuffle_at("__shfl_xor_sync", emu::ShuffleKind::xor_, mask, value, lane_mask, width, where);
}

__forceinline__ unsigned __ballot_sync(unsigned mask, int predicate,
                                       std::source_location where = std::source_location::current()) {
    return emu::vote_at("__ballot_sync", mask, predicate, where);
}

__forceinline__ int __all_sync(unsigned mask, int predicate,
                               std::source_location where = std::source_location::current()) {
    return emu::vote_at("__all_sync", mask, predicate, where) == mask;
}

__forceinline__ int __any_sync(unsigned mask, int predicate,
                               std::source_location where = std::source_location::current()) {
    return emu::vote_at("__any_sync", mask, predicate, where) != 0;
}

// ============================================================================ atomics
// One thread runs at a time, so these need no hardware atomics; std::atomic_ref keeps them
// correct all the same.
template <typename T>
__forceinline__ T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
__forceinline__ T atomicSub(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_sub(value);
}

template <typename T>
__forceinline__ T atomicExch(T* address, T value) {
    return std::atomic_ref<T>(*address).exchange(value);
}

template <typename T>
__forceinline__ T atomicCAS(T* address, T expected, T desired) {
    std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired);
    return expected;
}

template <typename T>
__forceinline__ T atomicMax(T* address, T value) {
    const T old = *address;
    if (value > old) *address = value;
    return old;
}

template <typename T>
__forceinline__ T atomicMin(T* address, T value) {
    const T old = *address;
    if (value < old) *address = value;
    return old;
}

// ============================================================================ math
__forceinline__ float __int_as_float(int x) { return std::bit_cast<float>(x); }
__forceinline__ int __float_as_int(float x) { return std::bit_cast<int>(x); }
__forceinline__ float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
__forceinline__ unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
__forceinline__ double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
__forceinline__ long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }

// The _rn arithmetic intrinsics round their one operation and are never contracted into a
// fused multiply-add by the CUDA compiler; the empty asm keeps g++ from contracting them.
__forceinline__ float __fmul_rn(float a, float b) {
    float r = a * b;
    asm("" : "+x"(r));
    return r;
}
__forceinline__ float __fadd_rn(float a, float b) {
    float r = a + b;
    asm("" : "+x"(r));
    return r;
}
__forceinline__ float __fsub_rn(float a, float b) {
    float r = a - b;
    asm("" : "+x"(r));
    return r;
}
__forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
__forceinline__ float __fdividef(float a, float b) { return a / b; }
__forceinline__ float __expf(float x) { return expf(x); }
__forceinline__ float __logf(float x) { return logf(x); }
__forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
__forceinline__ float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// ============================================================================ __half
// IEEE binary16, converted in software (round to nearest even), as cuda_fp16.h's
// __float2half_rn and __half2float do on the GPU.
struct __half {
    unsigned short bits;
};

namespace emu {
inline float half_bits_to_float(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16;
    const unsigned exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));   // inf, NaN
    if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
    const float magnitude = (float)mantissa * 0x1p-24f;                    // subnormal or zero: exact
    return std::bit_cast<float>(sign | std::bit_cast<unsigned>(magnitude));
}

inline unsigned short float_to_half_bits(float f) {
    const unsigned x = std::bit_cast<unsigned>(f);
    const unsigned short sign = (unsigned short)((x >> 16) & 0x8000u);
    const unsigned magnitude = x & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u) return sign | 0x7E00u;                    // NaN
    if (magnitude >= 0x477FF000u) return sign | 0x7C00u;                   // rounds to infinity
    if (magnitude < 0x38800000u) {                                         // below 2^-14: subnormal half
        const float scaled = std::bit_cast<float>(magnitude) * 0x1p24f;    // exact: units of 2^-24
        return sign | (unsigned short)std::nearbyint(scaled);              // ties to even
    }
    const unsigned rebiased = magnitude - (112u << 23);                    // exponent 127 -> 15
    const unsigned kept = rebiased >> 13, dropped = rebiased & 0x1FFFu;
    const unsigned rounded = kept + (dropped > 0x1000u || (dropped == 0x1000u && (kept & 1u)));
    return sign | (unsigned short)rounded;
}
}  // namespace emu

__forceinline__ float __half2float(__half h) { return emu::half_bits_to_float(h.bits); }
__forceinline__ __half __float2half_rn(float f) { return __half{emu::float_to_half_bits(f)}; }
__forceinline__ __half __float2half(float f) { return __float2half_rn(f); }
__forceinline__ unsigned short __half_as_ushort(__half h) { return h.bits; }
__forceinline__ __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
