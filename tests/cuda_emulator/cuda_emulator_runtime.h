// cuda_emulator_runtime.h -- the launch side of the CUDA emulator: threads, blocks, shared
// memory regions, fault catching, and the C functions the Python stand-in calls (ctypes).
// Included once, at the end of a wrapper translation unit (see cuda_emulator.h).
#pragma once

#include <sys/mman.h>

#include "cuda_emulator.h"

extern "C" emu::SharedRegion emu_shared_regions[];
extern "C" const int emu_shared_region_count;

namespace emu {

inline struct sigaction previous_actions[3];
constexpr int CAUGHT_SIGNALS[3] = {SIGSEGV, SIGBUS, SIGFPE};

// A fault inside kernel code returns to the thread's entry (sigsetjmp) and fails the launch;
// any other fault goes to the handler that was there before.
inline void on_fault(int signal, siginfo_t* info, void*) {
    Thread* t = self;
    if (t != nullptr && t->in_kernel) {
        t->fault_address = info->si_addr;
        t->fault_signal = signal;
        siglongjmp(t->fault_return, 1);
    }
    for (int i = 0; i < 3; ++i)
        if (CAUGHT_SIGNALS[i] == signal) sigaction(signal, &previous_actions[i], nullptr);   // fault again, theirs
}

inline void catch_faults(bool on) {
    for (int i = 0; i < 3; ++i) {
        if (on) {
            struct sigaction action {};
            action.sa_sigaction = on_fault;
            action.sa_flags = SA_SIGINFO | SA_NODEFER;
            sigemptyset(&action.sa_mask);
            sigaction(CAUGHT_SIGNALS[i], &action, &previous_actions[i]);
        } else {
            sigaction(CAUGHT_SIGNALS[i], &previous_actions[i], nullptr);
        }
    }
}

inline const char* signal_text(int signal) {
    return signal == SIGFPE ? "arithmetic fault (integer division by zero?)" : "invalid memory access";
}

// A thread leaves the block: it must not leave others waiting for it.
inline void thread_exits(Thread& me) {
    Launch& L = *current_launch;
    me.state = State::exited;
    --L.live;
    if (!L.aborted && L.barrier_arrived > 0)
        record_error(thread_name(me) + " exited while other threads wait at __syncthreads at " +
                     describe(L.barrier_where) + " (every thread that has not exited must reach it)");
    const WarpExchange& w = L.warps[me.index / 32];
    if (!L.aborted && w.arrived > 0 && (w.mask >> (me.index % 32) & 1u))
        record_error(thread_name(me) + " exited while the other lanes of its mask wait in " + w.what + " at " +
                     describe(w.where));
    Thread* next = pick_next();
    if (next == nullptr && L.live > 0) {                    // the others wait for each other
        record_error("deadlock: no thread can continue" + waiting_threads());
        next = pick_next();
    }
    if (next != nullptr) next->go.release();
    else L.main_go.release();                               // the block is done
}

inline void run_thread(Thread* me) {
    Launch& L = *current_launch;
    self = me;
    for (;;) {
        me->go.acquire();
        if (L.finished) return;
        threadIdx = me->idx;
        blockIdx = L.block;
        blockDim = L.dim;
        gridDim = L.grid;
        if (!L.aborted) {
            if (sigsetjmp(me->fault_return, 1) == 0) {
                me->in_kernel = true;
                try {
                    L.kernel(L.args);
                } catch (const Abort&) {
                }
                me->in_kernel = false;
            } else {
                me->in_kernel = false;
                if (!L.aborted) L.fault_address = me->fault_address;
                record_error(std::string(signal_text(me->fault_signal)) + " by " + thread_name(*me));
            }
        }
        thread_exits(*me);
    }
}

inline void fill_shared_memory() {
    for (int i = 0; i < emu_shared_region_count; ++i)
        std::memset(emu_shared_regions[i].memory, SHARED_FILL, SHARED_CAPACITY);
}

inline void check_shared_memory(std::size_t dynamic_bytes) {
    for (int i = 0; i < emu_shared_region_count; ++i) {
        const SharedRegion& region = emu_shared_regions[i];
        if (!region.dynamic) continue;
        for (std::size_t b = dynamic_bytes; b < SHARED_CAPACITY; ++b)
            if (region.memory[b] != SHARED_FILL) {
                record_error("a thread wrote byte " + std::to_string(b) + " of the dynamic shared array '" +
                             region.name + "', past the " + std::to_string(dynamic_bytes) +
                             " bytes the launch gave it");
                return;
            }
    }
}

}  // namespace emu

// ============================================================================ the C interface
extern "C" __attribute__((visibility("default"))) int emu_kernel_count() { return (int)emu::registry().size(); }

extern "C" __attribute__((visibility("default"))) const char* emu_kernel_name(int i) {
    return emu::registry()[i].name.c_str();
}

extern "C" __attribute__((visibility("default"))) const char* emu_kernel_signature(int i) {
    return emu::registry()[i].signature.c_str();
}

extern "C" __attribute__((visibility("default"))) int emu_kernel_max_threads(int i) {
    return emu::registry()[i].max_threads;
}

extern "C" __attribute__((visibility("default"))) unsigned long long emu_shared_capacity() {
    return emu::SHARED_CAPACITY;
}

// Run kernel `index` over grid x block with `args` (pointers to each argument's value, as
// cuLaunchKernel takes them). Returns 0, or 1 with a message (and the faulting address,
// if any). `order_seed` shuffles the order of the blocks; `catch_faults` installs the fault
// handler (off under AddressSanitizer).
extern "C" __attribute__((visibility("default"))) int emu_launch(int index, const unsigned* grid,
                                                                 const unsigned* block, unsigned long long shared_bytes,
                                                                 void* const* args, unsigned long long order_seed,
                                                                 int catch_faults, char* message,
                                                                 unsigned long long message_size,
                                                                 void** fault_address) {
    using namespace emu;
    Launch L;
    L.kernel = registry()[index].invoke;
    L.args = args;
    L.grid = dim3{grid[0], grid[1], grid[2]};
    L.dim = dim3{block[0], block[1], block[2]};
    const int n = (int)(block[0] * block[1] * block[2]);
    for (int i = 0; i < n; ++i) {
        auto t = std::make_unique<Thread>();
        t->index = i;
        t->idx = uint3{i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
        L.threads.push_back(std::move(t));
    }
    L.warps.resize((n + 31) / 32);

    std::vector<uint3> order;
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) order.push_back(uint3{x, y, z});
    std::mt19937_64 shuffler(order_seed);
    std::shuffle(order.begin(), order.end(), shuffler);

    current_launch = &L;
    if (catch_faults) emu::catch_faults(true);
    for (auto& t : L.threads) t->os_thread = std::thread(run_thread, t.get());
    for (const uint3& b : order) {
        L.block = b;
        L.live = n;
        L.barrier_arrived = 0;
        for (auto& t : L.threads) t->state = State::runnable;
        for (auto& w : L.warps) w = WarpExchange{};
        fill_shared_memory();
        L.threads[0]->go.release();
        L.main_go.acquire();
        if (!L.aborted) check_shared_memory(shared_bytes);
        if (L.aborted) break;
    }
    L.finished = true;
    for (auto& t : L.threads) t->go.release();
    for (auto& t : L.threads) t->os_thread.join();
    if (catch_faults) emu::catch_faults(false);
    current_launch = nullptr;

    if (!L.aborted) return 0;
    std::snprintf(message, message_size, "%s", L.error.c_str());
    *fault_address = L.fault_address;
    return 1;
}
