// A C model of cpu-gemm's AVX-512 register tile (4 zmm x 6 samples, the packed weight's 64-float
// column blocks) on hifigan_v1_up1's GEMM (256 input channels, m = 2048), to tell what the loop
// order and the operands' layout allow on this machine apart from what TVM generates from them.
//   gcc -O3 -march=native -fopenmp tools/gemm_model.c -o /tmp/gemm_model
//   OMP_NUM_THREADS=2 /tmp/gemm_model LENGTH ORDER [BLOCK [CHANNEL_BLOCK]]
//   (-DCI=512 -DM=4096 for hifigan_v1_up0's GEMM)
// ORDER: weight   parallel over column blocks, every tile of samples under each (weight-outer),
//                 in passes of CHANNEL_BLOCK input channels (default: all);
//        samples  parallel over blocks of BLOCK tiles, each walking every column block;
// either with x as it is (rows LENGTH floats apart) or, with the suffix -packed, x copied as
// (tile, channel, 6 samples) as the rule now does; samples...-local writes each block's col rows
// into one buffer per thread, as a gather inside the block would leave col in L2.
// Prints the median and best GFLOP/s of 15 runs.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef CI  // input channels; -DCI=512 -DM=4096 is hifigan_v1_up0's GEMM
#define CI 256
#endif
#ifndef M
#define M 2048
#endif
#define BLOCKS (M / 64)
#define ROW (M + 16)  // col's padded row, as _pad_col_rows makes it

static int CB = CI;  // input channels per pass over the samples (the weight-outer order)

// Accumulate channels [c0, c0 + CB) of one tile, from the partial sums in out when c0 > 0.
static void tile(const float* w, const float* x, long x_stride, float* out, int c0) {
  __m512 a[6][4];
  for (int r = 0; r < 6; r++)
    for (int v = 0; v < 4; v++) a[r][v] = c0 ? _mm512_loadu_ps(out + r * ROW + v * 16) : _mm512_setzero_ps();
  for (int c = c0; c < c0 + CB; c++) {
    __m512 w0 = _mm512_loadu_ps(w + c * 64), w1 = _mm512_loadu_ps(w + c * 64 + 16);
    __m512 w2 = _mm512_loadu_ps(w + c * 64 + 32), w3 = _mm512_loadu_ps(w + c * 64 + 48);
#pragma GCC unroll 6
    for (int r = 0; r < 6; r++) {
      __m512 b = _mm512_set1_ps(x[c * x_stride + r]);
      a[r][0] = _mm512_fmadd_ps(w0, b, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(w1, b, a[r][1]);
      a[r][2] = _mm512_fmadd_ps(w2, b, a[r][2]);
      a[r][3] = _mm512_fmadd_ps(w3, b, a[r][3]);
    }
  }
  for (int r = 0; r < 6; r++)
    for (int v = 0; v < 4; v++) _mm512_storeu_ps(out + r * ROW + v * 16, a[r][v]);
}

static int cmp(const void* a, const void* b) {
  double d = *(const double*)a - *(const double*)b;
  return (d > 0) - (d < 0);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s LENGTH weight|samples[-packed][-local] [BLOCK [CHANNEL_BLOCK]]\n", argv[0]);
    return 2;
  }
  long length = atol(argv[1]), tiles = length / 6;
  int samples_outer = strncmp(argv[2], "samples", 7) == 0;
  int packed = strstr(argv[2], "-packed") != NULL;
  int local = strstr(argv[2], "-local") != NULL;
  long block = argc > 3 ? atol(argv[3]) : 7;
  if (argc > 4) CB = atoi(argv[4]);
  if (CB <= 0 || CI % CB) {
    fprintf(stderr, "CHANNEL_BLOCK must divide %d\n", CI);
    return 2;
  }
  float* w = aligned_alloc(64, (long)CI * M * 4);  // packed: (column block, channel, 64)
  float* x = aligned_alloc(64, (long)CI * length * 4 + 256);
  float* col = aligned_alloc(64, (long)length * ROW * 4);
  for (long i = 0; i < (long)CI * M; i++) w[i] = 1e-3f;
  for (long i = 0; i < (long)CI * length; i++) x[i] = 1e-3f;
  memset(col, 0, (long)length * ROW * 4);
  double times[15];
  for (int run = 0; run < 15; run++) {
    double t0 = omp_get_wtime();
    if (samples_outer) {
#pragma omp parallel for schedule(static)
      for (long jb = 0; jb < tiles / block; jb++)
        for (int mb = 0; mb < BLOCKS; mb++)
          for (long jt = 0; jt < block; jt++) {
            long j = jb * block + jt;
            const float* xt = packed ? x + j * CI * 6 : x + j * 6;
            float* dst = local ? col + (long)omp_get_thread_num() * block * 6 * ROW + jt * 6 * ROW
                               : col + j * 6 * ROW;
            tile(w + (long)mb * CI * 64, xt, packed ? 6 : length, dst + mb * 64, 0);
          }
    } else {
#pragma omp parallel for schedule(static)
      for (int mb = 0; mb < BLOCKS; mb++)
        for (int c0 = 0; c0 < CI; c0 += CB)
          for (long j = 0; j < tiles; j++) {
            const float* xt = packed ? x + j * CI * 6 : x + j * 6;
            tile(w + (long)mb * CI * 64, xt, packed ? 6 : length, col + j * 6 * ROW + mb * 64, c0);
          }
    }
    times[run] = omp_get_wtime() - t0;
  }
  qsort(times, 15, sizeof(double), cmp);
  long done = samples_outer ? tiles / block * block : tiles;
  double flops = 2.0 * CI * M * done * 6;
  printf("length %ld, %s, block %ld: median %.2f ms, %.1f GFLOP/s (best %.1f)\n", length, argv[2],
         samples_outer ? block : 0, times[7] * 1e3, flops / times[7] / 1e9, flops / times[0] / 1e9);
  return 0;
}
