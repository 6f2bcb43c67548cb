// Host emulation of hash_center's two-phase centring kernels (attention/cuda/plan_hash.cuh),
// written while no GPU could be had: it runs the kernel bodies as plain C++ over every thread
// index and compares the centred floats with the one-pass fold of attention/plan.c, bit for
// bit. It checks the index arithmetic and the resumed fold, not CUDA itself.
//   sed -n '/constexpr int CENTRE_CHUNK/,/^__global__ void centre_rows_kernel/{p}' ... is not
//   enough (the second kernel is needed whole), so: build with
//   awk '/constexpr int CENTRE_CHUNK/{p=1} /The CPU.s bucket, in its arithmetic/{p=0} p' \
//       attention/cuda/plan_hash.cuh | sed 's/__nv_bfloat162/nvbf162/g' > /tmp/twophase.cuh
//   g++ -O1 -std=c++17 -ffp-contract=off -o /tmp/emu bench/plan/centre_emulation.cpp && /tmp/emu
// Session 6: 0 differences on 8 shapes (T = 1, 256, 257, 333, 512, 1000, 2049, 16379); a
// mutant starting each chunk's fold at 0 gives differences.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <cmath>
#include <vector>
#include <algorithm>
typedef uint16_t bf16;
static float b2f(bf16 x){uint32_t u=(uint32_t)x<<16; float f; memcpy(&f,&u,4); return f;}
static bf16 f2b(float f){uint32_t u; memcpy(&u,&f,4); u+=0x7fff+((u>>16)&1); return u>>16;}
struct float2_{float x,y;};
#define __global__
#define __restrict__
#define __host__
#define __device__
static double __dadd_rn(double a,double b){return a+b;}
static double __dsub_rn(double a,double b){return a-b;}
static double __ddiv_rn(double a,double b){return a/b;}
static float __double2float_rn(double a){return (float)a;}
static float __bfloat162float(bf16 x){return b2f(x);}
struct nvbf162 { bf16 x, y; };
static float2_ __bfloat1622float2(nvbf162 v){return {b2f(v.x),b2f(v.y)};}
static float2_ make_float2(float a,float b){return {a,b};}
#define float2 float2_
using std::min;
struct dim3_{long x;}; static dim3_ blockIdx, blockDim, threadIdx;
#include "/tmp/twophase.cuh"
int main(){
  int shapes[][4]={{2,1000,3,64},{1,1,2,128},{3,2049,2,128},{1,333,5,64},{1,512,2,64},{2,16379,1,64},{1,256,1,64},{1,257,1,64}};
  int bad=0;
  for(auto &sh: shapes){
    int B=sh[0],T=sh[1],H=sh[2],D=sh[3],HD=H*D; long stride=3L*HD;
    std::vector<bf16> x((size_t)B*T*stride);
    for(size_t i=0;i<x.size();i++) x[i]=f2b((float)((rand()%20001)-10000)/997.0f);
    // reference: CPU plan formula
    std::vector<float> ref((size_t)B*T*HD), got((size_t)B*T*HD, NAN);
    for(int b=0;b<B;b++) for(int c=0;c<HD;c++){ double s=0; for(int t=0;t<T;t++){ float v=b2f(x[((size_t)b*T+t)*stride+c]); s+=v; ref[((size_t)b*T+t)*HD+c]=(float)(v - s/(t+1)); } }
    int nch=centre_chunks(T);
    std::vector<double> starts((size_t)B*nch*HD, NAN);
    blockDim.x=32;
    long n1=(long)B*HD/2; for(long i=0;i<(n1+31)/32*32;i++){blockIdx.x=i/32; threadIdx.x=i%32; centre_chunk_starts_kernel(x.data(),stride,B,T,HD,starts.data());}
    blockDim.x=128;
    long n2=(long)B*nch*HD; for(long i=0;i<(n2+127)/128*128;i++){blockIdx.x=i/128; threadIdx.x=i%128; centre_rows_kernel(x.data(),stride,B,T,HD,starts.data(),got.data());}
    long diff=0; for(size_t i=0;i<ref.size();i++) if(memcmp(&ref[i],&got[i],4)) diff++;
    printf("B%d T%d H%d D%d: %ld of %zu differ\n",B,T,H,D,diff,ref.size()); bad+=diff!=0;
  }
  printf("%s\n", bad? "FAIL":"ok"); return bad;
}
