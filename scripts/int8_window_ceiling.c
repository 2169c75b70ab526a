// The instruction ceiling of the int8 window kernels (lightning_srigl/kernels/cpu/csrc/int8_window.h): their
// inner loops, one step (a record of offsets and weights, one window per sample) for 8 samples at a time, on
// data that stays in L1 (8 activation rows of 1 KiB, 128 steps of records), without the activation
// quantization, the epilogue or any cache miss. Prints nanoseconds per step and sample (CPU time, 1 thread),
// to compare with scripts/int8_speed.py's "ns per step and row" of the real kernels (all costs included).
//
//   gcc -O2 scripts/int8_window_ceiling.c -o /tmp/int8_window_ceiling && /tmp/int8_window_ceiling
//
// Needs a CPU with AVX-512 VBMI + VNNI and AVX-VNNI (it runs all three loops).
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

enum { kSamples = 8, kSteps = 128, kRow = 1024 + 256 };
static uint8_t rows[kSamples][kRow] __attribute__((aligned(64)));
static uint8_t records[kSteps * 128] __attribute__((aligned(64)));
static int32_t starts[kSteps];

static double cpu_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// AVX-512: 2 loads, vpermi2b, vpdpbusd per step and sample; 2 accumulators per sample (window_step512).
__attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vnni"), noinline)) void avx512_window(long reps,
                                                                                               int32_t* out) {
  __m512i acc[kSamples][2];
  for (int b = 0; b < kSamples; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_si512();
  for (long r = 0; r < reps; ++r) {
    for (int t = 0; t < kSteps; t += 2) {
      for (int u = 0; u < 2; ++u) {
        const uint8_t* record = records + (t + u) * 128;
        const __m512i offsets = _mm512_loadu_si512(record), weights = _mm512_loadu_si512(record + 64);
        const int64_t start = starts[t + u];
        for (int b = 0; b < kSamples; ++b) {
          const __m512i bytes = _mm512_permutex2var_epi8(_mm512_loadu_si512(rows[b] + start), offsets,
                                                         _mm512_loadu_si512(rows[b] + start + 64));
          acc[b][u] = _mm512_dpbusd_epi32(acc[b][u], bytes, weights);
        }
      }
    }
  }
  for (int b = 0; b < kSamples; ++b) _mm512_storeu_si512(out + 16 * b, _mm512_add_epi32(acc[b][0], acc[b][1]));
}

// AVX2: two 16-byte broadcasts, two vpshufb, vpor, then one vpdpbusd (vnni) or two vpmaddwd on the even and
// odd bytes (window_group_vnni, window_group_madd).
__attribute__((target("avx2,avxvnni"), noinline)) void avx2_window(long reps, int vnni, int32_t* out) {
  __m256i acc[kSamples];
  for (int b = 0; b < kSamples; ++b) acc[b] = _mm256_setzero_si256();
  const __m256i low_byte = _mm256_set1_epi16(0xff);
  for (long r = 0; r < reps; ++r) {
    for (int t = 0; t < kSteps; ++t) {
      const uint8_t* record = records + t * 64;
      const __m256i offsets = _mm256_loadu_si256((const __m256i*)record);
      const __m256i weights = _mm256_loadu_si256((const __m256i*)(record + 32));
      const __m256i offsets_high = _mm256_xor_si256(offsets, _mm256_set1_epi8((char)0x80));
      const __m256i w_even = _mm256_srai_epi16(_mm256_slli_epi16(weights, 8), 8);
      const __m256i w_odd = _mm256_srai_epi16(weights, 8);
      const int64_t start = starts[t] / 4;
      for (int b = 0; b < kSamples; ++b) {
        const __m256i low = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(rows[b] + start)));
        const __m256i high = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(rows[b] + start + 16)));
        const __m256i bytes =
            _mm256_or_si256(_mm256_shuffle_epi8(low, offsets), _mm256_shuffle_epi8(high, offsets_high));
        if (vnni) {
          acc[b] = _mm256_dpbusd_avx_epi32(acc[b], bytes, weights);
        } else {
          const __m256i even = _mm256_madd_epi16(_mm256_and_si256(bytes, low_byte), w_even);
          const __m256i odd = _mm256_madd_epi16(_mm256_srli_epi16(bytes, 8), w_odd);
          acc[b] = _mm256_add_epi32(acc[b], _mm256_add_epi32(even, odd));
        }
      }
    }
  }
  for (int b = 0; b < kSamples; ++b) _mm256_storeu_si256((__m256i*)(out + 8 * b), acc[b]);
}

int main(void) {
  int32_t out[kSamples * 16];
  for (int t = 0; t < kSteps; ++t) starts[t] = (t * 37 % 14) * 64;  // windows move along the rows
  for (int i = 0; i < kSteps * 128; ++i) records[i] = (uint8_t)((i * 7) & 0x7f);
  const long reps = 100000;
  const double per = 1e9 / ((double)reps * kSteps * kSamples);
  double t = cpu_seconds();
  avx512_window(reps, out);
  printf("avx512_vbmi_vnni_window: %.3f ns per step and sample\n", (cpu_seconds() - t) * per);
  t = cpu_seconds();
  avx2_window(reps, 1, out);
  printf("avx_vnni_window:         %.3f ns per step and sample\n", (cpu_seconds() - t) * per);
  t = cpu_seconds();
  avx2_window(reps, 0, out);
  printf("avx2_window (vpmaddwd):  %.3f ns per step and sample\n", (cpu_seconds() - t) * per);
  return out[0] == 12345;  // keeps the sums live
}
