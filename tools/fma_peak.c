// The machine's fp32 FMA peak: 12 independent accumulator chains per thread, AVX2 (ymm) or,
// with -DWIDE -mavx512f, AVX-512 (zmm). Used for the "% of peak" column of docs/performance.md.
//   gcc -O2 -mavx2 -mfma -fopenmp tools/fma_peak.c -o /tmp/fma_peak && OMP_NUM_THREADS=2 /tmp/fma_peak
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#ifdef WIDE
typedef __m512 V; 
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define LANES 16
#else
typedef __m256 V;
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
#define LANES 8
#endif
int main() {
  long iters = 200000000;
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = omp_get_wtime();
    float sink = 0;
    #pragma omp parallel reduction(+:sink)
    {
      float b = omp_get_thread_num() + 1.0f; V a0=SET(b),a1=SET(b+1),a2=SET(b+2),a3=SET(b+3),a4=SET(b+4),a5=SET(b+5),a6=SET(b+6),a7=SET(b+7),a8=SET(b+8),a9=SET(b+9),a10=SET(b+10),a11=SET(b+11);
      V m=SET(0.9999999f), c=SET(1e-7f);
      for (long i = 0; i < iters / 12; i++) {
        a0=FMA(a0,m,c);a1=FMA(a1,m,c);a2=FMA(a2,m,c);a3=FMA(a3,m,c);a4=FMA(a4,m,c);a5=FMA(a5,m,c);
        a6=FMA(a6,m,c);a7=FMA(a7,m,c);a8=FMA(a8,m,c);a9=FMA(a9,m,c);a10=FMA(a10,m,c);a11=FMA(a11,m,c);
      }
      float o[LANES]; V s = a0+a1+a2+a3+a4+a5+a6+a7+a8+a9+a10+a11;
      #ifdef WIDE
      _mm512_storeu_ps(o, s);
      #else
      _mm256_storeu_ps(o, s);
      #endif
      sink += o[0];
    }
    double t = omp_get_wtime() - t0;
    double gf = (double)omp_get_max_threads() * (iters / 12 * 12) * LANES * 2 / t / 1e9;
    if (gf > best) best = gf;
    if (sink == 42) printf("x");
  }
  printf("%d threads %s: %.1f GFLOP/s\n", omp_get_max_threads(), LANES == 16 ? "AVX-512" : "AVX2", best);
}
