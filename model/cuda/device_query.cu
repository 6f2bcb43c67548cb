/* Lets host C code ask whether a usable GPU is present without touching any other CUDA state
 * (train.c picks its default device with it). */
#include <cuda_runtime.h>

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}
