
// Per-sample time loops of the fused PING engine (see bridge/fast_engine.py).
//
// Every arithmetic operation mirrors, in order and precision, what the eager
// engine's torch operations do, so the forward pass rounds identically:
// scalars are cast to the tensor dtype first, products and sums are separate
// roundings (compiled with -ffp-contract=off), and exp is MKL VML in the
// mode ATen's vml.h uses for torch.exp. The backward pass only has to agree
// within rounding; its products with the weights use explicit FMAs.
//
// One file (about 1050 lines) on purpose: the forward, recompute and adjoint loops, the register-tiled
// products and the shared structs' field lists (which the Python loader reads) are one translation unit, compiled and cached
// as one library (bridge/fused_kernels.py), and they share membrane_step, the one state update.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <string>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define BIOSIM_HAVE_MXCSR 1
#endif
// Products with the recurrent weights (float32): register-tiled panels on AVX-512 (BIOSIM_PANELS 1) or
// AVX2 + FMA (BIOSIM_PANELS 2), MKL's packed GEMM elsewhere (BIOSIM_PANELS 0). Both panel paths sum each
// output in the same order, one FMA per term, so they give the same bits.
#if defined(__AVX512F__)
#define BIOSIM_PANELS 1
#elif defined(__AVX2__) && defined(__FMA__)
#define BIOSIM_PANELS 2
#else
#define BIOSIM_PANELS 0
#endif
#if BIOSIM_PANELS
#include <immintrin.h>
#endif
#include <omp.h>

extern "C" {
void vmsExp(int64_t n, const float* a, float* r, int64_t mode);
void vmdExp(int64_t n, const double* a, double* r, int64_t mode);
// Fortran BLAS from the MKL inside libtorch_cpu. Integers are passed as int64: an LP64 MKL reads
// their low halves (little-endian), an ILP64 one all of them; both see the right values.
void sgemm_(const char* transa, const char* transb, const int64_t* m, const int64_t* n, const int64_t* k,
            const float* alpha, const float* a, const int64_t* lda, const float* b, const int64_t* ldb,
            const float* beta, float* c, const int64_t* ldc);
void dgemm_(const char* transa, const char* transb, const int64_t* m, const int64_t* n, const int64_t* k,
            const double* alpha, const double* a, const int64_t* lda, const double* b, const int64_t* ldb,
            const double* beta, double* c, const int64_t* ldc);
// MKL's packed-matrix GEMM (float32): the recurrent weights are packed once per backward pass instead of
// once per product. Enumerations and integers passed by value as int64 read correctly for LP64 and ILP64.
int MKL_Set_Num_Threads_Local(int n_threads);  // returns the previous setting (0: MKL's global one)
size_t cblas_sgemm_pack_get_size(int64_t identifier, int64_t m, int64_t n, int64_t k);
void cblas_sgemm_pack(int64_t layout, int64_t identifier, int64_t trans, int64_t m, int64_t n, int64_t k,
                      float alpha, const float* src, int64_t ld, float* dest);
void cblas_sgemm_compute(int64_t layout, int64_t transa, int64_t transb, int64_t m, int64_t n, int64_t k,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                         int64_t ldc);
}

namespace {

// VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE, as in ATen/cpu/vml.h.
constexpr int64_t kVmlMode = 0x00000002 | 0x00140000 | 0x00000100;
// CBLAS enumerations (mkl_cblas.h).
constexpr int64_t kColumnMajor = 102, kNoTrans = 111, kTrans = 112, kPacked = 151, kAMatrix = 161;

inline void vector_exp(int64_t n, const float* in, float* out) { vmsExp(n, in, out, kVmlMode); }
inline void vector_exp(int64_t n, const double* in, double* out) { vmdExp(n, in, out, kVmlMode); }

// The structs Python shares, each field declared once, here: BIOSIM_FIELDS_<Struct>(F) lists F(type, name)
// in memory order. The C++ structs are expanded from these lists; bridge/fused_kernels.py reads the same
// lines of this file into its ctypes classes (int64_t, double, a pointer, or a struct above), and
// biosim_struct_fields exports each field's name and offset, which the loader compares with ctypes'. Inside
// a list, comments are /* */ (a // comment would swallow the continuation line).
#define BIOSIM_FIELDS_Population(F)                                                                       \
  F(double, e_exc_over_c) F(double, e_inh_over_c) F(double, leak_drive_over_c) F(double, minus_g_leak_over_c) \
  F(double, one_over_c) F(double, v_threshold) F(double, v_reset) F(int64_t, refractory_steps)

#define BIOSIM_FIELDS_Network(F)                                                                          \
  F(int64_t, batch) F(int64_t, n_steps) F(int64_t, n_e) F(int64_t, n_i) F(int64_t, n_classes)            \
  F(int64_t, chunk) F(int64_t, n_threads)                                                                  \
  F(int64_t, mxcsr)                 /* floating-point control word of the caller (flush-to-zero), x86; -1: leave */ \
  F(double, dt) F(double, decay_ampa) F(double, decay_gaba) F(double, decay_readout)                     \
  F(Population, e) F(Population, i)                                                                        \
  F(int64_t, n_input)                                                                                      \
  F(const uint8_t*, x)              /* (batch, n_steps, n_input) input raster (bool) */                  \
  F(const void*, w_in)              /* (n_input, n_e) */                                                   \
  F(const void*, w_ie)              /* (n_i, n_e) */                                                       \
  F(const void*, w_e_out)           /* (n_e, n_i + n_classes): [w_ei, w_out] */                            \
  F(int64_t, surrogate)             /* sigma' the kernels evaluate (Surrogate below); kNoSurrogate: none */ \
  F(double, surrogate_slope) F(double, surrogate_unit_mv)                                                  \
  F(double, membrane_grad_scale)    /* factor on the membrane adjoint handed to the step before (1: exact) */ \
  F(const void*, w_ee)              /* (n_e, n_e) E -> E onto ge_e, or null: no such block */             \
  F(const void*, w_ii)              /* (n_i, n_i) I -> I onto gi_i, or null: no such block */             \
  F(const void*, w_e_back)          /* (n_e, n_i + n_classes): [w_ei, B], feedback B in the adjoint; null: w_e_out */

// (batch, n) rows; ready = first step at which a neuron integrates again
#define BIOSIM_FIELDS_State(F)                                                                            \
  F(void*, v_e) F(void*, ge_e) F(void*, gi_e) F(int32_t*, ready_e)                                       \
  F(void*, v_i) F(void*, ge_i) F(void*, gi_i) F(int32_t*, ready_i)

#define BIOSIM_FIELDS_ForwardBuffers(F)                                                                   \
  F(State, state)                   /* in: initial state; out: final state */                              \
  F(void*, u) F(void*, score_sum)   /* (batch, n_classes), in/out */                                       \
  F(uint8_t*, raster_e) F(uint8_t*, raster_i) /* (n_steps, batch, n), out */                               \
  F(void*, counts_e) F(void*, counts_i) /* (batch, n): spikes per neuron, zero on entry */                 \
  F(void*, population_e) F(void*, population_i) /* (batch, n_steps): spikes per step, out */               \
  F(State, checkpoints)             /* (n_chunks, batch, n) each; null pointers: not saved */              \
  F(void*, readout_trace)           /* (batch, n_steps, n_classes): u after each step, out */

#define BIOSIM_FIELDS_ChunkBuffers(F)                                                                     \
  F(int64_t, first) F(int64_t, last) /* steps [first, last) */                                             \
  F(State, start)                   /* state at `first`, (batch, n) rows (read only) */                    \
  F(const uint8_t*, raster_e) F(const uint8_t*, raster_i)                                                  \
  /* outputs, (last - first, batch, n): m sigma'(v1 - v_threshold), dv/dv, dv/dge, dv/dgi */               \
  F(void*, s_e) F(void*, cv_e) F(void*, cge_e) F(void*, cgi_e) /* s_e (no surrogate) and cge_e may be null */ \
  F(void*, s_i) F(void*, cv_i) F(void*, cge_i) /* s_i likewise */                                          \
  F(void*, cgi_i)                   /* dv/dgi of I: only with an I -> I block (null otherwise) */

#define BIOSIM_FIELDS_AdjointBuffers(F)                                                                   \
  F(int64_t, first)                 /* the chunk's first step */                                           \
  /* (n, batch, n_pop); s_* null: no surrogate */                                                          \
  F(const void*, s_e) F(const void*, cv_e) F(const void*, cge_e) F(const void*, cgi_e)                     \
  F(const void*, s_i) F(const void*, cv_i) F(const void*, cge_i)                                           \
  F(const uint8_t*, raster_e) F(const uint8_t*, raster_i)                                                  \
  F(void*, ls_e) F(void*, ls_i)     /* (batch, n) spike adjoints of the current step (scratch) */          \
  F(void*, lv_e) F(void*, lv_i)     /* (batch, n) membrane adjoints, in/out */                             \
  F(void*, lgi_e) F(void*, lge_e)   /* (2, batch, n_e): adjoint at time t in ring slot t % 2; lge_e may be null */ \
  F(void*, leo)                     /* (2, batch, n_i + n_classes): [l_ge_i, l_u], ring slots likewise */  \
  F(const void*, g_sum)             /* (batch, n_classes): dL/dscore_sum */                                \
  F(const void*, g_trace)           /* (batch, n_steps, n_classes): dL/du after each step, or null */     \
  F(const void*, cgi_i)             /* (n, batch, n_i) dv/dgi of I, or null: no I -> I block */            \
  F(void*, lgi_i)                   /* (2, batch, n_i) l_gi_i ring slots, or null: no I -> I block */

#define BIOSIM_FIELDS_ChunkExtras(F)                                                                      \
  F(const void*, g_counts_e) F(const void*, g_counts_i) /* (batch, n): dL/dcount, or null */               \
  F(void*, grad_in) F(void*, grad_ie) F(void*, grad_e_out) /* the block's own weight-gradient accumulators, or null */ \
  F(const void*, packed_e) F(const void*, packed_i) /* float32: [w_ei, w_out] and w_ie packed for cblas_sgemm_compute, or null */ \
  F(const void*, g_population_e)    /* (batch, n_steps): dL/d(E spikes of the step), or null */           \
  F(void*, grad_ee) F(void*, grad_ii) /* accumulators of the recurrent blocks' gradients, or null */

#define BIOSIM_DECLARE_FIELD(type, name) type name;
#define BIOSIM_STRUCT(S) \
  struct S {             \
    BIOSIM_FIELDS_##S(BIOSIM_DECLARE_FIELD) \
  };
BIOSIM_STRUCT(Population)
BIOSIM_STRUCT(Network)
BIOSIM_STRUCT(State)
BIOSIM_STRUCT(ForwardBuffers)
BIOSIM_STRUCT(ChunkBuffers)
BIOSIM_STRUCT(AdjointBuffers)
BIOSIM_STRUCT(ChunkExtras)
#undef BIOSIM_STRUCT
#undef BIOSIM_DECLARE_FIELD

// For the guard's lifetime, this thread gets the caller's floating-point control word (flush-to-zero of
// torch.set_flush_denormal) and MKL runs one-threaded in it. Neither setting reaches threads that torch did
// not start (torch.set_num_threads sets MKL's count per thread): without the guard, vmsExp in a worker
// thread starts its own team of threads, and the kernels run several times slower.
struct ThreadSettings {
  int saved_mkl_threads;
#ifdef BIOSIM_HAVE_MXCSR
  unsigned int saved_csr;
  explicit ThreadSettings(const Network& net)
      : saved_mkl_threads(MKL_Set_Num_Threads_Local(1)), saved_csr(_mm_getcsr()) {
    if (net.mxcsr >= 0) _mm_setcsr(static_cast<unsigned int>(net.mxcsr));
  }
  ~ThreadSettings() {
    _mm_setcsr(saved_csr);
    MKL_Set_Num_Threads_Local(saved_mkl_threads);
  }
#else
  explicit ThreadSettings(const Network&) : saved_mkl_threads(MKL_Set_Num_Threads_Local(1)) {}
  ~ThreadSettings() { MKL_Set_Num_Threads_Local(saved_mkl_threads); }
#endif
};

// Runs body(b) for every trial of the batch on the OpenMP team. Trials are handed out one at a time, so a
// thread that another process slows down simply takes fewer of them.
template <typename Body>
void for_each_trial(const Network& net, Body body) {
#pragma omp parallel num_threads(static_cast<int>(net.n_threads))
  {
    const ThreadSettings settings(net);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < net.batch; ++b) body(b);
  }
}

template <typename T>
struct Coefficients {
  T e_exc, e_inh, leak_drive, minus_g_leak, one_over_c, v_threshold, v_reset;
  int32_t refractory_steps;
  explicit Coefficients(const Population& p)
      : e_exc(static_cast<T>(p.e_exc_over_c)),
        e_inh(static_cast<T>(p.e_inh_over_c)),
        leak_drive(static_cast<T>(p.leak_drive_over_c)),
        minus_g_leak(static_cast<T>(p.minus_g_leak_over_c)),
        one_over_c(static_cast<T>(p.one_over_c)),
        v_threshold(static_cast<T>(p.v_threshold)),
        v_reset(static_cast<T>(p.v_reset)),
        refractory_steps(static_cast<int32_t>(p.refractory_steps)) {}
};

// The surrogate derivatives of bridge/surrogates.py (sigma' in 1/mV of x = v1 - v_threshold in mV), with
// the operations of their torch definitions in the same order; tests compare the two.
constexpr int64_t kNoSurrogate = 0, kFastSigmoid = 1, kSigmoid = 2, kAtan = 3, kTriangle = 4;

template <typename T>
struct Surrogate {
  int64_t kind;
  T slope, minus_slope, half_slope, half_pi_slope, unit;
  explicit Surrogate(const Network& net)
      : kind(net.surrogate),
        slope(static_cast<T>(net.surrogate_slope)),
        minus_slope(static_cast<T>(-net.surrogate_slope)),
        half_slope(static_cast<T>(net.surrogate_slope / 2.0)),
        half_pi_slope(static_cast<T>(3.14159265358979311600 / 2.0 * net.surrogate_slope)),
        unit(static_cast<T>(net.surrogate_unit_mv)) {}

  static T sigmoid(T z) { return T(1) / (T(1) + std::exp(-z)); }

  // s[j] = integrating[j] ? sigma'(s[j]) : 0, in place (s holds v1 - v_threshold on entry).
  void masked(int64_t n, T* __restrict s, const uint8_t* __restrict integrating) const {
    switch (kind) {
      case kFastSigmoid:
        for (int64_t j = 0; j < n; ++j) {
          const T d = T(1) + slope * std::abs(s[j] / unit);
          s[j] = integrating[j] ? T(1) / (d * d) / unit : T(0);
        }
        break;
      case kSigmoid:
        for (int64_t j = 0; j < n; ++j) {
          const T y = s[j] / unit;
          s[j] = integrating[j] ? slope * sigmoid(slope * y) * sigmoid(minus_slope * y) / unit : T(0);
        }
        break;
      case kAtan:
        for (int64_t j = 0; j < n; ++j) {
          const T z = half_pi_slope * (s[j] / unit);
          s[j] = integrating[j] ? half_slope / (T(1) + z * z) / unit : T(0);
        }
        break;
      case kTriangle:
        for (int64_t j = 0; j < n; ++j)
          s[j] = integrating[j] ? std::max(T(1) - slope * std::abs(s[j] / unit), T(0)) / unit : T(0);
        break;
      default:
        std::memset(s, 0, sizeof(T) * n);
    }
  }
};

// The per-neuron state update runs on whole vectors of neurons (GCC vector extensions, the width of the
// widest registers -march finds) and on single neurons for the remainder, with the same template code:
// vector arithmetic rounds lane by lane as scalar arithmetic does, so both give the same bits. The
// compiler does not vectorise these loops by itself (the selects and the byte outputs defeat it).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

template <typename T>
struct Single {  // one neuron
  static constexpr int64_t kLanes = 1;
  using Value = T;
  using Mask = bool;
  static Value load(const T* p) { return *p; }
  static void store(T* p, Value x) { *p = x; }
  static Value splat(T x) { return x; }
  static Mask at_or_after(const int32_t* ready, int32_t t) { return *ready <= t; }  // t >= ready
  static void store_bits(uint8_t* p, Mask m) { *p = m; }
};

template <typename T>
struct Lanes {  // kVectorBytes / sizeof(T) neurons
  static constexpr int64_t kLanes = kVectorBytes / sizeof(T);
  using Value [[gnu::vector_size(kVectorBytes)]] = T;
  using Mask [[gnu::vector_size(kVectorBytes)]] = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  using Ready [[gnu::vector_size(4 * kLanes)]] = int32_t;
  using Bytes [[gnu::vector_size(kLanes)]] = uint8_t;
  // The same vectors at their elements' alignment: loads and stores of T (and int32, uint8) arrays at any
  // index, typed, so that the compiler knows they do not alias pointers or constants.
  using Unaligned [[gnu::vector_size(kVectorBytes), gnu::aligned(alignof(T))]] = T;
  using UnalignedReady [[gnu::vector_size(4 * kLanes), gnu::aligned(4)]] = int32_t;
  using UnalignedBytes [[gnu::vector_size(kLanes), gnu::aligned(1)]] = uint8_t;
  static Value load(const T* p) { return *reinterpret_cast<const Unaligned*>(p); }
  static void store(T* p, Value x) { *reinterpret_cast<Unaligned*>(p) = x; }
  static Value splat(T x) { return x - Value{}; }  // x - (+0) is x, -0 included
  static Mask at_or_after(const int32_t* ready, int32_t t) {
    return __builtin_convertvector(*reinterpret_cast<const UnalignedReady*>(ready) <= t, Mask);
  }
  static void store_bits(uint8_t* p, Mask m) {  // lanes of -1 / 0 -> bytes of 1 / 0
    *reinterpret_cast<UnalignedBytes*>(p) = low_bytes(m, std::make_index_sequence<kLanes>{}) & 1;
  }
  // The first byte of every lane, as shuffles (__builtin_convertvector to bytes went lane by lane, through
  // general-purpose registers).
  template <size_t... kLane>
  static Bytes low_bytes(Mask m, std::index_sequence<kLane...>) {
    using AllBytes [[gnu::vector_size(kVectorBytes)]] = uint8_t;
    const AllBytes bytes = reinterpret_cast<AllBytes>(m);
    return __builtin_shufflevector(bytes, bytes, (kLane * sizeof(T))...);
  }
};

// body(L, j) for every neuron j < n: whole vectors L = Lanes<T>, then the remainder one by one, L = Single<T>.
template <typename T, typename Body>
inline void over_neurons(int64_t n, Body body) {
  int64_t j = 0;
  for (; j + Lanes<T>::kLanes <= n; j += Lanes<T>::kLanes) body(Lanes<T>{}, j);
  for (; j < n; ++j) body(Single<T>{}, j);
}

// Indices of the nonzero bytes of flags[0:n], in increasing order; returns their number. Spikes are rare,
// so whole 8-byte words of zeros are skipped.
inline int64_t nonzero_indices(const uint8_t* flags, int64_t n, int64_t* out) {
  int64_t count = 0, k = 0;
  for (; k + 8 <= n; k += 8) {
    uint64_t word;
    std::memcpy(&word, flags + k, sizeof(word));
    if (word == 0) continue;
    for (int64_t m = k; m < k + 8; ++m)
      if (flags[m]) out[count++] = m;
  }
  for (; k < n; ++k)
    if (flags[k]) out[count++] = k;
  return count;
}

// total = -gL/C - (ge/C + gi/C); growth = exp(dt * total)
template <typename T>
void membrane_growth(const Coefficients<T>& k, T dt, int64_t n, const T* __restrict ge, const T* __restrict gi,
                     T* __restrict total, T* __restrict growth) {
  const T minus_g_leak = k.minus_g_leak, one_over_c = k.one_over_c;
  for (int64_t j = 0; j < n; ++j) {
    total[j] = minus_g_leak - (one_over_c * ge[j] + one_over_c * gi[j]);
    growth[j] = dt * total[j];
  }
  vector_exp(n, growth, growth);
}

// Indices of the inputs that spiked in row (b, t) of the raster, in increasing order; returns their number.
inline int64_t input_spikes(const Network& net, int64_t b, int64_t t, int64_t* out) {
  return nonzero_indices(net.x + (b * net.n_steps + t) * net.n_input, net.n_input, out);
}

// out[j] = sum over events of weight[neuron, j], in event order, starting from 0. The loop over the row is
// written in vectors: left to itself, the compiler vectorises across the (one to three) events with
// gathers instead.
template <typename T>
void gather_rows(const T* __restrict weight, int64_t n_post, int64_t stride, const int64_t* __restrict neuron,
                 int64_t count, T* __restrict out) {
  std::memset(out, 0, sizeof(T) * n_post);
  for (int64_t e = 0; e < count; ++e) {
    const T* row = weight + neuron[e] * stride;
    over_neurons<T>(n_post, [=](auto lanes, int64_t j) {
      using L = decltype(lanes);
      L::store(out + j, L::load(out + j) + L::load(row + j));
    });
  }
}

template <typename T>
struct Trial {  // one trial's state, as pointers into (batch, n) rows or private copies
  T *v_e, *ge_e, *gi_e;
  int32_t* ready_e;
  T *v_i, *ge_i, *gi_i;
  int32_t* ready_i;
};

template <typename T>
Trial<T> trial_rows(const State& s, int64_t b, int64_t n_e, int64_t n_i) {
  return Trial<T>{static_cast<T*>(s.v_e) + b * n_e,  static_cast<T*>(s.ge_e) + b * n_e,
                  static_cast<T*>(s.gi_e) + b * n_e, s.ready_e + b * n_e,
                  static_cast<T*>(s.v_i) + b * n_i,  static_cast<T*>(s.ge_i) + b * n_i,
                  static_cast<T*>(s.gi_i) + b * n_i, s.ready_i + b * n_i};
}

template <typename T>
void copy_trial(const Trial<T>& from, const Trial<T>& to, int64_t n_e, int64_t n_i) {
  std::memcpy(to.v_e, from.v_e, sizeof(T) * n_e);
  std::memcpy(to.ge_e, from.ge_e, sizeof(T) * n_e);
  std::memcpy(to.gi_e, from.gi_e, sizeof(T) * n_e);
  std::memcpy(to.ready_e, from.ready_e, sizeof(int32_t) * n_e);
  std::memcpy(to.v_i, from.v_i, sizeof(T) * n_i);
  std::memcpy(to.ge_i, from.ge_i, sizeof(T) * n_i);
  std::memcpy(to.gi_i, from.gi_i, sizeof(T) * n_i);
  std::memcpy(to.ready_i, from.ready_i, sizeof(int32_t) * n_i);
}

// Synaptic propagation of one step (Brian2 order: threshold, propagate, then reset): conductances decay
// and take the summed weight rows of this step's presynaptic spikes.
template <typename T>
struct Propagation {
  std::vector<T> from_input, from_i, from_e, from_ee, from_ii;  // from_ee, from_ii: empty without the blocks
  std::vector<int64_t> spiking_e, spiking_i, spiking_input;
  explicit Propagation(const Network& net)
      : from_input(net.n_e),
        from_i(net.n_e),
        from_e(net.n_i + net.n_classes),
        from_ee(net.w_ee != nullptr ? net.n_e : 0),
        from_ii(net.w_ii != nullptr ? net.n_i : 0),
        spiking_e(net.n_e),
        spiking_i(net.n_i),
        spiking_input(net.n_input) {}

  // ge_e = ge_e * decay + input drive (+ E spikes through w_ee, after the input as in Brian2), gi_e = gi_e *
  // decay + I spikes, ge_i = ge_i * decay + E spikes, gi_i = gi_i * decay (+ I spikes through w_ii),
  // u = u * decay + E spikes (u may be null).
  void apply(const Network& net, const Trial<T>& s, int64_t b, int64_t t, int64_t count_e, int64_t count_i, T* u) {
    const int64_t n_e = net.n_e, n_i = net.n_i, n_classes = net.n_classes, n_eo = n_i + n_classes;
    const T decay_ampa = static_cast<T>(net.decay_ampa), decay_gaba = static_cast<T>(net.decay_gaba);
    const int64_t n_input = input_spikes(net, b, t, spiking_input.data());
    if (n_input > 0) {
      gather_rows(static_cast<const T*>(net.w_in), n_e, n_e, spiking_input.data(), n_input, from_input.data());
      for (int64_t j = 0; j < n_e; ++j) s.ge_e[j] = s.ge_e[j] * decay_ampa + from_input[j];
    } else {
      for (int64_t j = 0; j < n_e; ++j) s.ge_e[j] = s.ge_e[j] * decay_ampa;
    }
    if (net.w_ee != nullptr && count_e > 0) {  // no spike: + 0 is exact, as the eager product's zeros
      gather_rows(static_cast<const T*>(net.w_ee), n_e, n_e, spiking_e.data(), count_e, from_ee.data());
      for (int64_t j = 0; j < n_e; ++j) s.ge_e[j] = s.ge_e[j] + from_ee[j];
    }
    if (count_i > 0) {
      gather_rows(static_cast<const T*>(net.w_ie), n_e, n_e, spiking_i.data(), count_i, from_i.data());
      for (int64_t j = 0; j < n_e; ++j) s.gi_e[j] = s.gi_e[j] * decay_gaba + from_i[j];
    } else {
      for (int64_t j = 0; j < n_e; ++j) s.gi_e[j] = s.gi_e[j] * decay_gaba;
    }
    const T decay_readout = static_cast<T>(net.decay_readout);
    if (count_e > 0) {
      gather_rows(static_cast<const T*>(net.w_e_out), n_eo, n_eo, spiking_e.data(), count_e, from_e.data());
      for (int64_t j = 0; j < n_i; ++j) s.ge_i[j] = s.ge_i[j] * decay_ampa + from_e[j];
      if (u != nullptr)
        for (int64_t c = 0; c < n_classes; ++c) u[c] = u[c] * decay_readout + from_e[n_i + c];
    } else {
      for (int64_t j = 0; j < n_i; ++j) s.ge_i[j] = s.ge_i[j] * decay_ampa;
      if (u != nullptr)
        for (int64_t c = 0; c < n_classes; ++c) u[c] = u[c] * decay_readout;
    }
    if (net.w_ii != nullptr && count_i > 0) {
      gather_rows(static_cast<const T*>(net.w_ii), n_i, n_i, spiking_i.data(), count_i, from_ii.data());
      for (int64_t j = 0; j < n_i; ++j) s.gi_i[j] = s.gi_i[j] * decay_gaba + from_ii[j];
    } else {
      for (int64_t j = 0; j < n_i; ++j) s.gi_i[j] = s.gi_i[j] * decay_gaba;
    }
  }
};

template <typename T>
void reset(const Coefficients<T>& k, int64_t t, const int64_t* spiking, int64_t count, T* v, int32_t* ready) {
  for (int64_t e = 0; e < count; ++e) {
    v[spiking[e]] = k.v_reset;
    ready[spiking[e]] = static_cast<int32_t>(t + k.refractory_steps);
  }
}

// The state update of one neuron (L = Single<T>) or of a vector of neurons (L = Lanes<T>) at step t:
// exponential Euler as Brian2 generates it (the operations of bridge.dynamics.exponential_euler, in the
// same order), v held while refractory (t < ready). total and growth come from membrane_growth. The
// forward pass and the recompute both call it, so the rule is written once here, and the two passes
// compute the same v1 bit for bit.
template <typename L>
struct MembraneStep {
  typename L::Value ba, v1;
  typename L::Mask integrating;
};

template <typename L, typename T>
inline MembraneStep<L> membrane_step(const Coefficients<T>& k, const T* v, const T* ge, const T* gi,
                                     const T* total, const T* growth, const int32_t* ready, int32_t t) {
  const auto ba = (L::splat(k.leak_drive) + (L::splat(k.e_exc) * L::load(ge) + L::splat(k.e_inh) * L::load(gi))) /
                  L::load(total);  // B = (gL EL/C + E_exc/C ge + E_inh/C gi) / A
  const auto v0 = L::load(v);
  const auto v_new = -ba + (ba + v0) * L::load(growth);
  const typename L::Mask integrating = L::at_or_after(ready, t);
  return {ba, integrating ? v_new : v0, integrating};
}

// State update and threshold of one population: v <- v1 (before the reset), raster row, spiking list.
// v_new of a refractory neuron is computed and discarded, as torch.where does.
template <typename T>
int64_t update_and_fire(const Coefficients<T>& k, T dt, int64_t n, int32_t t, T* __restrict v,
                        const T* __restrict ge, const T* __restrict gi, const int32_t* __restrict ready,
                        T* __restrict total, T* __restrict growth, uint8_t* __restrict raster,
                        int64_t* __restrict spiking) {
  membrane_growth(k, dt, n, ge, gi, total, growth);
  over_neurons<T>(n, [=](auto lanes, int64_t j) {
    using L = decltype(lanes);
    const MembraneStep<L> m = membrane_step<L>(k, v + j, ge + j, gi + j, total + j, growth + j, ready + j, t);
    L::store(v + j, m.v1);
    L::store_bits(raster + j, m.integrating & ((m.v1 - L::splat(k.v_threshold)) > L::splat(T(0))));
  });
  return nonzero_indices(raster, n, spiking);
}

template <typename T>
void forward(const Network& net, const ForwardBuffers& buf) {
  const int64_t n_e = net.n_e, n_i = net.n_i, n_classes = net.n_classes, batch = net.batch;
  const Coefficients<T> k_e(net.e), k_i(net.i);
  const T dt = static_cast<T>(net.dt);
  const bool save = buf.checkpoints.v_e != nullptr;
  for_each_trial(net, [&](int64_t b) {
    const Trial<T> s = trial_rows<T>(buf.state, b, n_e, n_i);
    T* u = static_cast<T*>(buf.u) + b * n_classes;
    T* score_sum = static_cast<T*>(buf.score_sum) + b * n_classes;
    T* counts_e = static_cast<T*>(buf.counts_e) + b * n_e;
    T* counts_i = static_cast<T*>(buf.counts_i) + b * n_i;
    T* population_e = static_cast<T*>(buf.population_e) + b * net.n_steps;
    T* population_i = static_cast<T*>(buf.population_i) + b * net.n_steps;
    T* trace = static_cast<T*>(buf.readout_trace) + b * net.n_steps * n_classes;
    std::vector<T> total(n_e), growth(n_e);
    Propagation<T> propagation(net);
    for (int64_t t = 0; t < net.n_steps; ++t) {
      if (save && t % net.chunk == 0) {
        const int64_t offset = (t / net.chunk) * batch;
        copy_trial(s, trial_rows<T>(buf.checkpoints, offset + b, n_e, n_i), n_e, n_i);
      }
      uint8_t* raster_e = buf.raster_e + (t * batch + b) * n_e;
      uint8_t* raster_i = buf.raster_i + (t * batch + b) * n_i;
      const int32_t step = static_cast<int32_t>(t);
      const int64_t count_e = update_and_fire(k_e, dt, n_e, step, s.v_e, s.ge_e, s.gi_e, s.ready_e, total.data(),
                                              growth.data(), raster_e, propagation.spiking_e.data());
      const int64_t count_i = update_and_fire(k_i, dt, n_i, step, s.v_i, s.ge_i, s.gi_i, s.ready_i, total.data(),
                                              growth.data(), raster_i, propagation.spiking_i.data());
      population_e[t] = static_cast<T>(count_e);
      population_i[t] = static_cast<T>(count_i);
      for (int64_t e = 0; e < count_e; ++e) counts_e[propagation.spiking_e[e]] += T(1);
      for (int64_t e = 0; e < count_i; ++e) counts_i[propagation.spiking_i[e]] += T(1);
      propagation.apply(net, s, b, t, count_e, count_i, u);
      reset(k_e, t, propagation.spiking_e.data(), count_e, s.v_e, s.ready_e);
      reset(k_i, t, propagation.spiking_i.data(), count_i, s.v_i, s.ready_i);
      for (int64_t c = 0; c < n_classes; ++c) score_sum[c] = score_sum[c] + u[c];
      std::memcpy(trace + t * n_classes, u, sizeof(T) * n_classes);
    }
  });
}

// Adjoint coefficients of one population at one step (see the Python module docstring), s = m sigma'
// (null: not wanted); also advances v to v1 (the state update before the reset) exactly as the forward
// pass does.
template <typename T>
void coefficients(const Coefficients<T>& k, const Surrogate<T>& surrogate, T dt, int64_t n, int32_t t,
                  T* __restrict v, const T* __restrict ge, const T* __restrict gi, const int32_t* __restrict ready,
                  T* __restrict total, T* __restrict growth, uint8_t* __restrict integrating_out, T* __restrict s,
                  T* __restrict cv, T* __restrict cge, T* __restrict cgi) {
  membrane_growth(k, dt, n, ge, gi, total, growth);
  T* x = s != nullptr ? s : total;  // v1 - v_threshold, for the surrogate (total is spent when s is null)
  over_neurons<T>(n, [=](auto lanes, int64_t j) {
    using L = decltype(lanes);
    const MembraneStep<L> m = membrane_step<L>(k, v + j, ge + j, gi + j, total + j, growth + j, ready + j, t);
    const auto one = L::splat(T(1)), zero = L::splat(T(0)), e = L::load(growth + j);
    const auto growth_minus_one_over_total = (e - one) / L::load(total + j);
    const auto d_total = (m.ba + L::load(v + j)) * e * L::splat(dt) - growth_minus_one_over_total * m.ba;  // dv_new/dA
    const auto one_over_c_d_total = L::splat(k.one_over_c) * d_total;
    L::store_bits(integrating_out + j, m.integrating);
    L::store(cv + j, m.integrating ? e : one);
    L::store(cge + j, m.integrating ? L::splat(k.e_exc) * growth_minus_one_over_total - one_over_c_d_total : zero);
    L::store(cgi + j, m.integrating ? L::splat(k.e_inh) * growth_minus_one_over_total - one_over_c_d_total : zero);
    L::store(x + j, m.v1 - L::splat(k.v_threshold));
    L::store(v + j, m.v1);
  });
  if (s != nullptr) surrogate.masked(n, s, integrating_out);
}

template <typename T>
void recompute(const Network& net, const ChunkBuffers& buf, int64_t b0, int64_t b1) {
  const int64_t n_e = net.n_e, n_i = net.n_i, batch = net.batch;
  const Coefficients<T> k_e(net.e), k_i(net.i);
  const Surrogate<T> surrogate(net);
  const T dt = static_cast<T>(net.dt);
  const ThreadSettings settings(net);
  for (int64_t b = b0; b < b1; ++b) {
    std::vector<T> values(3 * n_e + 3 * n_i);
    std::vector<int32_t> ready(n_e + n_i);
    T* p = values.data();
    const Trial<T> s{p, p + n_e, p + 2 * n_e, ready.data(), p + 3 * n_e, p + 3 * n_e + n_i, p + 3 * n_e + 2 * n_i,
                     ready.data() + n_e};
    copy_trial(trial_rows<T>(buf.start, b, n_e, n_i), s, n_e, n_i);
    std::vector<T> total(n_e), growth(n_e), unused(n_e);  // unused: coefficients nobody reads (gi_i's without I -> I)
    std::vector<uint8_t> integrating(n_e);
    Propagation<T> propagation(net);
    for (int64_t t = buf.first; t < buf.last; ++t) {
      const int64_t e_row = ((t - buf.first) * batch + b) * n_e, i_row = ((t - buf.first) * batch + b) * n_i;
      const int32_t step = static_cast<int32_t>(t);
      auto row = [](void* base, int64_t offset) {
        return base != nullptr ? static_cast<T*>(base) + offset : nullptr;
      };
      T* cge_e = buf.cge_e != nullptr ? static_cast<T*>(buf.cge_e) + e_row : unused.data();
      coefficients(k_e, surrogate, dt, n_e, step, s.v_e, s.ge_e, s.gi_e, s.ready_e, total.data(), growth.data(),
                   integrating.data(), row(buf.s_e, e_row), row(buf.cv_e, e_row), cge_e, row(buf.cgi_e, e_row));
      coefficients(k_i, surrogate, dt, n_i, step, s.v_i, s.ge_i, s.gi_i, s.ready_i, total.data(), growth.data(),
                   integrating.data(), row(buf.s_i, i_row), row(buf.cv_i, i_row), row(buf.cge_i, i_row),
                   buf.cgi_i != nullptr ? static_cast<T*>(buf.cgi_i) + i_row : unused.data());
      // Advance with the saved spikes.
      const uint8_t* raster_e = buf.raster_e + (t * batch + b) * n_e;
      const uint8_t* raster_i = buf.raster_i + (t * batch + b) * n_i;
      const int64_t count_e = nonzero_indices(raster_e, n_e, propagation.spiking_e.data());
      const int64_t count_i = nonzero_indices(raster_i, n_i, propagation.spiking_i.data());
      propagation.apply(net, s, b, t, count_e, count_i, nullptr);
      reset(k_e, t, propagation.spiking_e.data(), count_e, s.v_e, s.ready_e);
      reset(k_i, t, propagation.spiking_i.data(), count_i, s.v_i, s.ready_i);
    }
  }
}

// One population's adjoint step for one trial, in one pass over its neurons:
//   l_v1 = (fired ? 0 : l_v') + s l_s (s = m sigma'),   l_g = decay l_g' + C_g l_v1 (one or two
//   conductances),   l_v = C_v l_v1 (in place of l_v').
template <typename T, bool kSurrogate, bool kSecond>
void population_adjoint(int64_t n, const uint8_t* __restrict fired, const T* __restrict ls, const T* __restrict s,
                        const T* __restrict cv, T* __restrict lv, T decay_1, const T* __restrict next_1,
                        const T* __restrict c_1, T* __restrict out_1, T decay_2, const T* __restrict next_2,
                        const T* __restrict c_2, T* __restrict out_2, T damping) {
  for (int64_t k = 0; k < n; ++k) {
    T lv1 = fired[k] ? T(0) : lv[k];
    if constexpr (kSurrogate) lv1 = lv1 + ls[k] * s[k];
    out_1[k] = next_1[k] * decay_1 + lv1 * c_1[k];
    if constexpr (kSecond) out_2[k] = next_2[k] * decay_2 + lv1 * c_2[k];
    lv[k] = lv1 * cv[k] * damping;  // (lv1 cv) x 1 is exact: undamped gradients are unchanged
  }
}

template <typename T>
void population_adjoint(int64_t n, const uint8_t* fired, const T* ls, const T* s, const T* cv, T* lv, T decay_1,
                        const T* next_1, const T* c_1, T* out_1, T decay_2, const T* next_2, const T* c_2, T* out_2,
                        T damping) {
  if (s != nullptr && out_2 != nullptr)
    population_adjoint<T, true, true>(n, fired, ls, s, cv, lv, decay_1, next_1, c_1, out_1, decay_2, next_2, c_2,
                                      out_2, damping);
  else if (s != nullptr)
    population_adjoint<T, true, false>(n, fired, ls, s, cv, lv, decay_1, next_1, c_1, out_1, decay_2, next_2, c_2,
                                       out_2, damping);
  else if (out_2 != nullptr)
    population_adjoint<T, false, true>(n, fired, ls, s, cv, lv, decay_1, next_1, c_1, out_1, decay_2, next_2, c_2,
                                       out_2, damping);
  else
    population_adjoint<T, false, false>(n, fired, ls, s, cv, lv, decay_1, next_1, c_1, out_1, decay_2, next_2, c_2,
                                        out_2, damping);
}

// grad[c] += lambda[c] over a row: the weight gradient of one presynaptic spike.
template <typename T>
inline void add_row(int64_t n, T* __restrict grad, const T* __restrict lambda) {
  for (int64_t c = 0; c < n; ++c) grad[c] += lambda[c];
}

// One step t = first + j of the adjoint recursion for trial b: from the adjoints at time t + 1 (ring slot
// (t + 1) % 2) to those at time t (slot t % 2), given the spike adjoints ls_e, ls_i of the step. Also adds
// the step's weight gradients dW = s(t)^T l(t + 1) over the presynaptic spikes of the trial; `spiking` is
// scratch for the indices of the step's spikes (max(n_e + n_i, n_input) entries).
template <typename T>
void adjoint_trial(const Network& net, const AdjointBuffers& buf, const ChunkExtras& extra, int64_t j, int64_t b,
                   int64_t* spiking) {
  const int64_t n_e = net.n_e, n_i = net.n_i, n_classes = net.n_classes, n_eo = n_i + n_classes, batch = net.batch;
  const T decay_ampa = static_cast<T>(net.decay_ampa), decay_gaba = static_cast<T>(net.decay_gaba);
  const T decay_readout = static_cast<T>(net.decay_readout);
  const T damping = static_cast<T>(net.membrane_grad_scale);
  const int64_t t = buf.first + j, now = (t & 1) * batch + b, next = ((t + 1) & 1) * batch + b;
  auto at = [](const void* base, int64_t offset) { return static_cast<const T*>(base) + offset; };
  auto at_mutable = [](void* base, int64_t offset) { return static_cast<T*>(base) + offset; };
  const uint8_t* fired_e = buf.raster_e + (t * batch + b) * n_e;
  const uint8_t* fired_i = buf.raster_i + (t * batch + b) * n_i;
  const T* lgi_next = at(buf.lgi_e, next * n_e);
  const T* lge_next = buf.lge_e != nullptr ? at(buf.lge_e, next * n_e) : nullptr;
  const T* leo_next = at(buf.leo, next * n_eo);
  const T* lgi_i_next = buf.lgi_i != nullptr ? at(buf.lgi_i, next * n_i) : nullptr;
  // weight gradients of this step, before slot t % 2 is overwritten
  const int64_t count_e = nonzero_indices(fired_e, n_e, spiking);
  const int64_t count_i = nonzero_indices(fired_i, n_i, spiking + n_e);
  auto add_rows = [](void* grad, int64_t width, const int64_t* neurons, int64_t count, const T* lambda) {
    if (grad != nullptr)
      for (int64_t e = 0; e < count; ++e) add_row(width, static_cast<T*>(grad) + neurons[e] * width, lambda);
  };
  add_rows(extra.grad_e_out, n_eo, spiking, count_e, leo_next);
  add_rows(extra.grad_ie, n_e, spiking + n_e, count_i, lgi_next);
  add_rows(extra.grad_ee, n_e, spiking, count_e, lge_next);  // l_ge_e exists wherever w_ee does
  add_rows(extra.grad_ii, n_i, spiking + n_e, count_i, lgi_i_next);
  if (extra.grad_in != nullptr) {  // the input spikes' indices take the place of the E and I ones
    const int64_t count = input_spikes(net, b, t, spiking);
    add_rows(extra.grad_in, n_e, spiking, count, lge_next);
  }
  // E: gi_e, and ge_e where w_in needs a gradient.
  const int64_t e_row = (j * batch + b) * n_e;
  const bool with_ge = buf.lge_e != nullptr;
  population_adjoint<T>(n_e, fired_e, at(buf.ls_e, b * n_e), buf.s_e != nullptr ? at(buf.s_e, e_row) : nullptr,
                        at(buf.cv_e, e_row), at_mutable(buf.lv_e, b * n_e), decay_gaba, lgi_next,
                        at(buf.cgi_e, e_row), at_mutable(buf.lgi_e, now * n_e), decay_ampa, lge_next,
                        with_ge ? at(buf.cge_e, e_row) : nullptr, with_ge ? at_mutable(buf.lge_e, now * n_e) : nullptr,
                        damping);
  // I: ge_i lives in the first n_i columns of [l_ge_i, l_u]; gi_i only with an I -> I block.
  const int64_t i_row = (j * batch + b) * n_i;
  const bool with_gi = buf.lgi_i != nullptr;
  population_adjoint<T>(n_i, fired_i, at(buf.ls_i, b * n_i), buf.s_i != nullptr ? at(buf.s_i, i_row) : nullptr,
                        at(buf.cv_i, i_row), at_mutable(buf.lv_i, b * n_i), decay_ampa, leo_next,
                        at(buf.cge_i, i_row), at_mutable(buf.leo, now * n_eo), decay_gaba, lgi_i_next,
                        with_gi ? at(buf.cgi_i, i_row) : nullptr, with_gi ? at_mutable(buf.lgi_i, now * n_i) : nullptr,
                        damping);
  // readout: l_u = decay l_u' + dL/dscore_sum (+ dL/du of the trace: u at time t is the one step t - 1 made)
  const T* g_sum = at(buf.g_sum, b * n_classes);
  T* lu = at_mutable(buf.leo, now * n_eo + n_i);
  for (int64_t c = 0; c < n_classes; ++c) lu[c] = leo_next[n_i + c] * decay_readout + g_sum[c];
  if (buf.g_trace != nullptr && t > 0) add_row(n_classes, lu, at(buf.g_trace, (b * net.n_steps + t - 1) * n_classes));
}

inline void gemm(const char* ta, const char* tb, const int64_t* m, const int64_t* n, const int64_t* k,
                 const float* alpha, const float* a, const int64_t* lda, const float* b, const int64_t* ldb,
                 const float* beta, float* c, const int64_t* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(const char* ta, const char* tb, const int64_t* m, const int64_t* n, const int64_t* k,
                 const double* alpha, const double* a, const int64_t* lda, const double* b, const int64_t* ldb,
                 const double* beta, double* c, const int64_t* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#if BIOSIM_PANELS
// float32 products with the recurrent weights, faster than MKL for these shapes (a few trials x hundreds of
// neurons; MKL spends a quarter of its time copying the small operand into panels): the weights are stored
// once per backward pass as panels of kPanel postsynaptic columns, each (depth, kPanel) contiguous, and
// out[b, k] (+)= sum_c l[b, c] w[k, c] runs in register tiles of up to kTileRows trials x kPanel columns.
#if BIOSIM_PANELS == 1
constexpr int64_t kPanel = 64;  // 4 zmm vectors; tiles of 4 x 4 accumulators
constexpr int kTileRows = 4;
#else
constexpr int64_t kPanel = 24;  // 3 ymm vectors; tiles of 4 x 3 accumulators (all 16 registers in use)
constexpr int kTileRows = 4;
#endif

int64_t panel_floats(int64_t n_post, int64_t depth) { return (n_post + kPanel - 1) / kPanel * kPanel * depth; }

// weight (n_post, depth), row-major -> panels (zero beyond n_post)
void to_panels(const float* weight, int64_t n_post, int64_t depth, float* panels) {
  std::memset(panels, 0, sizeof(float) * panel_floats(n_post, depth));
  for (int64_t k = 0; k < n_post; ++k)
    for (int64_t c = 0; c < depth; ++c)
      panels[(k / kPanel) * kPanel * depth + c * kPanel + k % kPanel] = weight[k * depth + c];
}

#if BIOSIM_PANELS == 1
using LaneMask = __mmask16;
constexpr int kVectors = 4;

inline LaneMask lane_mask(int64_t left) {
  return left >= 16 ? LaneMask(0xFFFF) : left > 0 ? LaneMask((1u << left) - 1) : LaneMask(0);
}

template <int kRows, bool kFull>
inline void panel_tile(int64_t depth, const float* __restrict l, int64_t ldl, const float* __restrict panel,
                       float* __restrict out, int64_t ldo, const LaneMask* mask, bool add) {
  __m512 acc[kRows][kVectors];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) {
      const float* at = out + r * ldo + 16 * v;
      acc[r][v] = !add ? _mm512_setzero_ps() : kFull ? _mm512_loadu_ps(at) : _mm512_maskz_loadu_ps(mask[v], at);
    }
  for (int64_t c = 0; c < depth; ++c) {
    __m512 w[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      w[v] = _mm512_loadu_ps(panel + c * kPanel + 16 * v);
      __asm__("" : "+v"(w[v]));  // one load per vector: folded into each FMA it would load kRows times
    }
    for (int r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_set1_ps(l[r * ldl + c]);
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_fmadd_ps(x, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) {
      if constexpr (kFull)
        _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r][v]);
      else
        _mm512_mask_storeu_ps(out + r * ldo + 16 * v, mask[v], acc[r][v]);
    }
}
#else
using LaneMask = __m256i;
constexpr int kVectors = 3;

inline LaneMask lane_mask(int64_t left) {
  alignas(32) int32_t lanes[8];
  for (int i = 0; i < 8; ++i) lanes[i] = i < left ? -1 : 0;
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
}

template <int kRows, bool kFull>
inline void panel_tile(int64_t depth, const float* __restrict l, int64_t ldl, const float* __restrict panel,
                       float* __restrict out, int64_t ldo, const LaneMask* mask, bool add) {
  __m256 acc[kRows][kVectors];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) {
      const float* at = out + r * ldo + 8 * v;
      acc[r][v] = !add ? _mm256_setzero_ps() : kFull ? _mm256_loadu_ps(at) : _mm256_maskload_ps(at, mask[v]);
    }
  for (int64_t c = 0; c < depth; ++c) {
    __m256 w[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      w[v] = _mm256_loadu_ps(panel + c * kPanel + 8 * v);
      __asm__("" : "+x"(w[v]));  // one load per vector, as above
    }
    for (int r = 0; r < kRows; ++r) {
      const __m256 x = _mm256_broadcast_ss(l + r * ldl + c);
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm256_fmadd_ps(x, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) {
      if constexpr (kFull)
        _mm256_storeu_ps(out + r * ldo + 8 * v, acc[r][v]);
      else
        _mm256_maskstore_ps(out + r * ldo + 8 * v, mask[v], acc[r][v]);
    }
}
#endif

template <int kRows, bool kFull>
inline void panel_rows(int64_t rows, int64_t depth, const float* l, int64_t ldl, const float* panel, float* out,
                       int64_t ldo, const LaneMask* mask, bool add) {
  // The remaining rows (fewer than kTileRows) in one tile of their own size.
  if constexpr (kRows > 0) {
    if (rows == kRows) return panel_tile<kRows, kFull>(depth, l, ldl, panel, out, ldo, mask, add);
    panel_rows<kRows - 1, kFull>(rows, depth, l, ldl, panel, out, ldo, mask, add);
  }
}

// One panel of kPanel output columns for all rows; a full panel (kFull) needs no lane masks, which would
// take a register that the AVX2 tile needs for its accumulators.
template <bool kFull>
void panel_column(int64_t rows, int64_t depth, const float* l, int64_t ldl, const float* panel, float* out,
                  int64_t ldo, const LaneMask* mask, bool add) {
  int64_t r = 0;
  for (; r + kTileRows <= rows; r += kTileRows)
    panel_tile<kTileRows, kFull>(depth, l + r * ldl, ldl, panel, out + r * ldo, ldo, mask, add);
  panel_rows<kTileRows - 1, kFull>(rows - r, depth, l + r * ldl, ldl, panel, out + r * ldo, ldo, mask, add);
}

// out[b, :n_post] (+)= l[b, :depth] W^T for `rows` trials (row strides ldl, ldo), W given as panels.
void panel_product(int64_t rows, int64_t n_post, int64_t depth, const float* l, int64_t ldl, const float* panels,
                   float* out, int64_t ldo, bool add) {
  constexpr int64_t kLanes = kPanel / kVectors;
  int64_t k0 = 0;
  for (; k0 + kPanel <= n_post; k0 += kPanel)
    panel_column<true>(rows, depth, l, ldl, panels + k0 * depth, out + k0, ldo, nullptr, add);
  if (k0 < n_post) {
    LaneMask mask[kVectors];
    for (int v = 0; v < kVectors; ++v) mask[v] = lane_mask(n_post - k0 - kLanes * v);
    panel_column<false>(rows, depth, l, ldl, panels + k0 * depth, out + k0, ldo, mask, add);
  }
}
#endif

// Spike adjoints of step first + j for trials [b0, b1):
//   ls_e = [l_ge_i, l_u](slot j + 1) [w_ei, w_out]^T (+ dL/dcount_e) (+ dL/dpopulation_e(t), every neuron)
//          (+ l_ge_e(slot j + 1) w_ee^T),
//   ls_i = l_gi_e(slot j + 1) w_ie^T (+ dL/dcount_i) (+ l_gi_i(slot j + 1) w_ii^T).
// With MKL: row-major (trials, n) blocks are column-major (n, trials): ls^T = W lambda^T, with W stored
// row-major (post, pre), which is column-major (pre, post), hence "T".
// The recurrent blocks' terms of the spike adjoints, added to ls_e / ls_i (rows trials from ring row `next`):
// ls_e += l_ge_e w_ee^T, ls_i += l_gi_i w_ii^T. Nothing without the blocks.
template <typename T>
void recurrent_spike_adjoints(const Network& net, const AdjointBuffers& buf, int64_t next, int64_t rows, T* ls_e,
                              T* ls_i) {
  const int64_t n_e = net.n_e, n_i = net.n_i;
  const T one = T(1);
  if (net.w_ee != nullptr) {
    const T* lge = static_cast<const T*>(buf.lge_e) + next * n_e;
    gemm("T", "N", &n_e, &rows, &n_e, &one, static_cast<const T*>(net.w_ee), &n_e, lge, &n_e, &one, ls_e, &n_e);
  }
  if (net.w_ii != nullptr) {
    const T* lgi = static_cast<const T*>(buf.lgi_i) + next * n_i;
    gemm("T", "N", &n_i, &rows, &n_i, &one, static_cast<const T*>(net.w_ii), &n_i, lgi, &n_i, &one, ls_i, &n_i);
  }
}

// The matrix the E spikes' adjoint reads: [w_ei, w_out] (exact), or [w_ei, B] with a feedback matrix B.
inline const void* adjoint_e_matrix(const Network& net) {
  return net.w_e_back != nullptr ? net.w_e_back : net.w_e_out;
}

// The two products per step with the loop matrices (float32, weights packed by pack_weights), for `rows`
// trials: ls_e (+)= [l_ge_i, l_u] [w_ei, w_out]^T, ls_i (+)= l_gi_e w_ie^T.
void packed_products(const Network& net, int64_t rows, const float* leo, const float* lgi, const float* packed_e,
                     const float* packed_i, float* ls_e, float* ls_i, bool add_e, bool add_i) {
  const int64_t n_e = net.n_e, n_i = net.n_i, n_eo = net.n_i + net.n_classes;
#if BIOSIM_PANELS
  panel_product(rows, n_e, n_eo, leo, n_eo, packed_e, ls_e, n_e, add_e);
  panel_product(rows, n_i, n_e, lgi, n_e, packed_i, ls_i, n_i, add_i);
#else
  cblas_sgemm_compute(kColumnMajor, kPacked, kNoTrans, n_e, rows, n_eo, packed_e, n_eo, leo, n_eo, add_e ? 1.f : 0.f,
                      ls_e, n_e);
  cblas_sgemm_compute(kColumnMajor, kPacked, kNoTrans, n_i, rows, n_e, packed_i, n_e, lgi, n_e, add_i ? 1.f : 0.f,
                      ls_i, n_i);
#endif
}

template <typename T>
void spike_adjoints(const Network& net, const AdjointBuffers& buf, const ChunkExtras& extra, int64_t j, int64_t b0,
                    int64_t b1) {
  const int64_t batch = net.batch, rows = b1 - b0, n_e = net.n_e, n_i = net.n_i, n_eo = net.n_i + net.n_classes;
  const T one = T(1);
  T* ls_e = static_cast<T*>(buf.ls_e) + b0 * n_e;
  T* ls_i = static_cast<T*>(buf.ls_i) + b0 * n_i;
  const bool bias_e = extra.g_counts_e != nullptr || extra.g_population_e != nullptr;
  const T beta_e = bias_e ? T(1) : T(0);
  const T beta_i = extra.g_counts_i != nullptr ? T(1) : T(0);
  if (extra.g_counts_e != nullptr)
    std::memcpy(ls_e, static_cast<const T*>(extra.g_counts_e) + b0 * n_e, sizeof(T) * rows * n_e);
  if (extra.g_population_e != nullptr) {  // the population count is the sum of the step's E spikes
    const T* g_population = static_cast<const T*>(extra.g_population_e);
    for (int64_t r = 0; r < rows; ++r) {
      const T g = g_population[(b0 + r) * net.n_steps + buf.first + j];
      T* row = ls_e + r * n_e;
      if (extra.g_counts_e != nullptr)
        for (int64_t k = 0; k < n_e; ++k) row[k] += g;
      else
        std::fill(row, row + n_e, g);
    }
  }
  if (extra.g_counts_i != nullptr)
    std::memcpy(ls_i, static_cast<const T*>(extra.g_counts_i) + b0 * n_i, sizeof(T) * rows * n_i);
  const int64_t next = ((buf.first + j + 1) & 1) * batch + b0;  // ring slot of time t + 1
  const T* leo = static_cast<const T*>(buf.leo) + next * n_eo;
  const T* lgi = static_cast<const T*>(buf.lgi_e) + next * n_e;
  if constexpr (std::is_same_v<T, float>) {
    if (extra.packed_e != nullptr && extra.packed_i != nullptr) {
      packed_products(net, rows, leo, lgi, static_cast<const float*>(extra.packed_e),
                      static_cast<const float*>(extra.packed_i), ls_e, ls_i, bias_e, extra.g_counts_i != nullptr);
      recurrent_spike_adjoints<T>(net, buf, next, rows, ls_e, ls_i);
      return;
    }
  }
  gemm("T", "N", &n_e, &rows, &n_eo, &one, static_cast<const T*>(adjoint_e_matrix(net)), &n_eo, leo, &n_eo, &beta_e,
       ls_e, &n_e);
  gemm("T", "N", &n_i, &rows, &n_e, &one, static_cast<const T*>(net.w_ie), &n_e, lgi, &n_e, &beta_i, ls_i, &n_i);
  recurrent_spike_adjoints<T>(net, buf, next, rows, ls_e, ls_i);
}

// Bytes of the packed [w_ei, w_out] (or [w_ei, B]) and w_ie (float32), for products with up to `rows` trials: panels on
// AVX-512 and AVX2, MKL's packed format elsewhere.
void packed_sizes(const Network& net, int64_t rows, int64_t* sizes) {
  const int64_t n_eo = net.n_i + net.n_classes;
#if BIOSIM_PANELS
  sizes[0] = static_cast<int64_t>(sizeof(float)) * panel_floats(net.n_e, n_eo);
  sizes[1] = static_cast<int64_t>(sizeof(float)) * panel_floats(net.n_i, net.n_e);
#else
  sizes[0] = static_cast<int64_t>(cblas_sgemm_pack_get_size(kAMatrix, net.n_e, rows, n_eo));
  sizes[1] = static_cast<int64_t>(cblas_sgemm_pack_get_size(kAMatrix, net.n_i, rows, net.n_e));
#endif
}

void pack_weights(const Network& net, int64_t rows, void* packed_e, void* packed_i) {
  const int64_t n_eo = net.n_i + net.n_classes;
#if BIOSIM_PANELS
  to_panels(static_cast<const float*>(adjoint_e_matrix(net)), net.n_e, n_eo, static_cast<float*>(packed_e));
  to_panels(static_cast<const float*>(net.w_ie), net.n_i, net.n_e, static_cast<float*>(packed_i));
#else
  cblas_sgemm_pack(kColumnMajor, kAMatrix, kTrans, net.n_e, rows, n_eo, 1.0f,
                   static_cast<const float*>(adjoint_e_matrix(net)), n_eo, static_cast<float*>(packed_e));
  cblas_sgemm_pack(kColumnMajor, kAMatrix, kTrans, net.n_i, rows, net.n_e, 1.0f, static_cast<const float*>(net.w_ie),
                   net.n_e, static_cast<float*>(packed_i));
#endif
}

// The adjoint recursion for trials [b0, b1) through steps first + j1 - 1 down to first + j0 (slot j1 ->
// slot j0). Trials are independent: the caller runs blocks of trials in parallel threads, each through a
// whole chunk, with no synchronisation per step. Single-threaded; MKL is told so by the caller
// (torch.set_num_threads(1) also sets MKL's threads).
template <typename T>
void adjoint_steps(const Network& net, const AdjointBuffers& buf, const ChunkExtras& extra, int64_t j0, int64_t j1,
                   int64_t b0, int64_t b1) {
  const ThreadSettings settings(net);
  std::vector<int64_t> spiking(std::max(net.n_e + net.n_i, net.n_input));
  for (int64_t j = j1 - 1; j >= j0 && b1 > b0; --j) {
    spike_adjoints<T>(net, buf, extra, j, b0, b1);
    for (int64_t b = b0; b < b1; ++b) adjoint_trial<T>(net, buf, extra, j, b, spiking.data());
  }
}

}  // namespace

extern "C" {
void biosim_forward_f32(const Network* net, const ForwardBuffers* buf) { forward<float>(*net, *buf); }
void biosim_forward_f64(const Network* net, const ForwardBuffers* buf) { forward<double>(*net, *buf); }
void biosim_recompute_f32(const Network* net, const ChunkBuffers* buf, int64_t b0, int64_t b1) {
  recompute<float>(*net, *buf, b0, b1);
}
void biosim_recompute_f64(const Network* net, const ChunkBuffers* buf, int64_t b0, int64_t b1) {
  recompute<double>(*net, *buf, b0, b1);
}
int64_t biosim_control_word() {
#ifdef BIOSIM_HAVE_MXCSR
  return static_cast<int64_t>(_mm_getcsr());
#else
  return -1;
#endif
}
int64_t biosim_product_path() { return BIOSIM_PANELS; }
// Floating-point operations of `iterations` rounds of independent float32 FMA chains in each of `threads`
// threads (the caller times it): the machine's FMA peak at this vector width, for the benchmark's roofline.
double biosim_fma_peak(int64_t iterations, int64_t threads) {
  double total = 0.0;
#pragma omp parallel num_threads(static_cast<int>(threads)) reduction(+ : total)
  {
    constexpr int kChains = 12;  // > FMA latency x FMA ports: the units never wait for a result
#if BIOSIM_PANELS == 1
    __m512 acc[kChains];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(1.0f + k);
    for (int64_t i = 0; i < iterations; ++i)
      for (int k = 0; k < kChains; ++k) acc[k] = _mm512_fmadd_ps(acc[k], x, y);
    float lanes[16];
    for (int k = 1; k < kChains; ++k) acc[0] = _mm512_add_ps(acc[0], acc[k]);
    _mm512_storeu_ps(lanes, acc[0]);
    const double width = 16;
#elif BIOSIM_PANELS == 2
    __m256 acc[kChains];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int k = 0; k < kChains; ++k) acc[k] = _mm256_set1_ps(1.0f + k);
    for (int64_t i = 0; i < iterations; ++i)
      for (int k = 0; k < kChains; ++k) acc[k] = _mm256_fmadd_ps(acc[k], x, y);
    float lanes[8];
    for (int k = 1; k < kChains; ++k) acc[0] = _mm256_add_ps(acc[0], acc[k]);
    _mm256_storeu_ps(lanes, acc[0]);
    const double width = 8;
#else
    float acc[kChains];
    for (int k = 0; k < kChains; ++k) acc[k] = 1.0f + k;
    for (int64_t i = 0; i < iterations; ++i)
      for (int k = 0; k < kChains; ++k) acc[k] = std::fma(acc[k], 0.999999f, 1e-7f);
    float lanes[1] = {acc[0]};
    const double width = 1;
#endif
    volatile float sink = lanes[0];  // keeps the loop from being optimised away
    (void)sink;
    total += 2.0 * width * kChains * static_cast<double>(iterations);
  }
  return total;
}
// The fields of one shared struct, expanded from its BIOSIM_FIELDS_ list: "size;name offset;name offset;..."
// into out (NUL-terminated, at most capacity bytes); returns the length the whole text needs (0: an unknown
// struct). The loader compares it with the ctypes classes it built from the same lists.
int64_t biosim_struct_fields(const char* name, char* out, int64_t capacity) {
  std::string text;
  const std::string wanted(name);
#define BIOSIM_FIELD_TEXT(type, field) text += ";" #field " " + std::to_string(offsetof(Current, field));
#define BIOSIM_DESCRIBE(S)                     \
  if (wanted == #S) {                          \
    using Current = S;                         \
    text = std::to_string(sizeof(S));          \
    BIOSIM_FIELDS_##S(BIOSIM_FIELD_TEXT)       \
  }
  BIOSIM_DESCRIBE(Population)
  BIOSIM_DESCRIBE(Network)
  BIOSIM_DESCRIBE(State)
  BIOSIM_DESCRIBE(ForwardBuffers)
  BIOSIM_DESCRIBE(ChunkBuffers)
  BIOSIM_DESCRIBE(AdjointBuffers)
  BIOSIM_DESCRIBE(ChunkExtras)
#undef BIOSIM_DESCRIBE
#undef BIOSIM_FIELD_TEXT
  if (text.empty()) return 0;
  if (capacity > 0) {
    const size_t n = std::min(text.size(), static_cast<size_t>(capacity - 1));
    std::memcpy(out, text.data(), n);
    out[n] = '\0';
  }
  return static_cast<int64_t>(text.size()) + 1;
}
void biosim_packed_sizes(const Network* net, int64_t rows, int64_t* sizes) { packed_sizes(*net, rows, sizes); }
void biosim_surrogate_f32(const Network* net, int64_t n, float* x, const uint8_t* integrating) {
  Surrogate<float>(*net).masked(n, x, integrating);
}
void biosim_surrogate_f64(const Network* net, int64_t n, double* x, const uint8_t* integrating) {
  Surrogate<double>(*net).masked(n, x, integrating);
}
// Seconds of `repeats` rounds of the adjoint's two float32 products (packed_products) for `rows` trials with
// the network's w_e_out and w_ie, on the calling thread, after one round of warm-up: the benchmark's
// measure of how fast the products alone run.
double biosim_product_seconds(const Network* net, int64_t rows, int64_t repeats) {
  const ThreadSettings settings(*net);
  const int64_t n_e = net->n_e, n_i = net->n_i, n_eo = net->n_i + net->n_classes;
  int64_t sizes[2];
  packed_sizes(*net, rows, sizes);
  std::vector<float> packed_e(sizes[0] / sizeof(float) + 1), packed_i(sizes[1] / sizeof(float) + 1);
  pack_weights(*net, rows, packed_e.data(), packed_i.data());
  std::vector<float> leo(rows * n_eo, 1e-3f), lgi(rows * n_e, 1e-3f), ls_e(rows * n_e), ls_i(rows * n_i);
  auto round = [&] {
    packed_products(*net, rows, leo.data(), lgi.data(), packed_e.data(), packed_i.data(), ls_e.data(), ls_i.data(),
                    false, false);
  };
  round();
  const auto start = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < repeats; ++r) round();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
void biosim_pack_weights(const Network* net, int64_t rows, void* packed_e, void* packed_i) {
  pack_weights(*net, rows, packed_e, packed_i);
}
void biosim_adjoint_steps_f32(const Network* net, const AdjointBuffers* buf, const ChunkExtras* extra, int64_t j0,
                              int64_t j1, int64_t b0, int64_t b1) {
  adjoint_steps<float>(*net, *buf, *extra, j0, j1, b0, b1);
}
void biosim_adjoint_steps_f64(const Network* net, const AdjointBuffers* buf, const ChunkExtras* extra, int64_t j0,
                              int64_t j1, int64_t b0, int64_t b1) {
  adjoint_steps<double>(*net, *buf, *extra, j0, j1, b0, b1);
}
}
