# GNU Make build. Sources are found by folder, so adding a .c file needs no edit here.
#   make            train, prepare
#   make test       CPU test suite (also compiles every .cu file so CUDA code never rots)
#   make test-gpu   GPU test suite (run on a machine with a GPU)
#   make demo       fetch tokenizer + corpus slice, train configs/tiny.json on the CPU
CC      ?= gcc
CFLAGS  ?= -O2 -g
MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS   := $(shell mpicc --showme:link 2>/dev/null)
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fopenmp -I. $(MPI_CFLAGS)
LDLIBS  := -lcjson -lpcre2-8 -lz -lm -lpthread -fopenmp $(MPI_LIBS)
NVCC    ?= /usr/local/cuda/bin/nvcc
CUDA_ARCH ?= -gencode arch=compute_90a,code=sm_90a
NVFLAGS ?= -O3 -std=c++17 $(CUDA_ARCH) -I. -lineinfo --expt-relaxed-constexpr
CUDA_LIBS := -L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lnccl

BUILD := build
# Host library: everything except program entry points.
CORE_SRCS := $(wildcard runtime/*.c) $(wildcard model/*.c) $(wildcard model/cpu/*.c) \
             $(wildcard attention/*.c) $(wildcard attention/cpu/*.c) \
             $(filter-out data/prepare.c,$(wildcard data/*.c))
CORE_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(CORE_SRCS))
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
CU_SRCS   := $(shell find attention model bench tests -name '*.cu' 2>/dev/null)
CU_OBJS   := $(patsubst %.cu,$(BUILD)/cuda/%.o,$(CU_SRCS))

.PHONY: all test test-gpu gpu-tests cuda demo clean FORCE
all: train prepare

# The commit is stamped into train (log header); the stamp file changes only with the commit.
GIT_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
$(BUILD)/git_commit.txt: FORCE
	@mkdir -p $(BUILD)
	@echo '$(GIT_COMMIT)' | cmp -s - $@ || echo '$(GIT_COMMIT)' > $@
$(BUILD)/obj/train.o: CFLAGS += -DGIT_COMMIT='"$(GIT_COMMIT)"'
$(BUILD)/obj/train.o: $(BUILD)/git_commit.txt

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libcore.a: $(CORE_OBJS)
	@rm -f $@
	ar rcs $@ $^

# train links the CUDA backend and kernels (model/, attention/); bench/ and tests/ .cu files
# are separate programs.
TRAIN_CU_OBJS := $(patsubst %.cu,$(BUILD)/cuda/%.o,$(shell find model attention -name '*.cu' 2>/dev/null))
train: $(BUILD)/obj/train.o $(TRAIN_CU_OBJS) $(BUILD)/libcore.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS) $(CUDA_LIBS) -lstdc++

prepare: $(BUILD)/obj/data/prepare.o $(BUILD)/libcore.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libcore.a tests/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP $< $(BUILD)/libcore.a -o $@ $(LDLIBS)

# Every .cu file is compiled (not linked) by `make test`, so CUDA code keeps building.
$(BUILD)/cuda/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -c $< -o $@

# nvcc is the slow part of `make test`: compile the CUDA objects with one job per core.
cuda:
	@$(MAKE) --no-print-directory -j$(shell nproc) $(CU_OBJS)

test: all $(TEST_BINS) cuda
	bash tests/run_cpu.sh

# GPU test programs: each tests/gpu/test_*.cu linked with the CUDA backend/kernels and libcore
# (the CPU references). Built here by `make gpu-tests`, run on a GPU machine by `make test-gpu`.
GPU_TEST_BINS := $(patsubst tests/gpu/%.cu,$(BUILD)/tests/gpu/%,$(wildcard tests/gpu/test_*.cu))
LIB_CU_OBJS   := $(filter-out $(BUILD)/cuda/model/cuda/device_query.o,$(TRAIN_CU_OBJS)) $(BUILD)/cuda/model/cuda/device_query.o
$(BUILD)/tests/gpu/%: $(BUILD)/cuda/tests/gpu/%.o $(LIB_CU_OBJS) $(BUILD)/libcore.a
	@mkdir -p $(dir $@)
	$(NVCC) $(CUDA_ARCH) $^ -o $@ -Xcompiler -fopenmp $(filter-out -fopenmp,$(LDLIBS)) $(CUDA_LIBS)
gpu-tests: $(GPU_TEST_BINS)

test-gpu: all gpu-tests
	bash tests/gpu/run_gpu.sh

# libscfa: the attention kernels behind the C ABI of attention/api.h, for ctypes / PyTorch
# (bench/scfa.py). Position-independent objects go to build/pic/. The host C files are built
# without OpenMP, so the library needs no libgomp (the plan code it uses runs serially);
# -Bsymbolic binds the library's own symbols (fatal, xmalloc, ...) to its own definitions.
SCFA_CU_SRCS := attention/cuda/api.cu attention/cuda/sparse_attn.cu attention/cuda/flash_attn.cu \
                attention/cuda/plan_cuda.cu
SCFA_C_SRCS  := attention/plan.c attention/plan_cpu.c attention/plan_tiles.c runtime/error.c runtime/rng.c
SCFA_OBJS    := $(patsubst %.cu,$(BUILD)/pic/cuda/%.o,$(SCFA_CU_SRCS)) \
                $(patsubst %.c,$(BUILD)/pic/obj/%.o,$(SCFA_C_SRCS))
$(BUILD)/pic/cuda/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -Xcompiler -fPIC -MMD -MP -c $< -o $@
$(BUILD)/pic/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fopenmp,$(CFLAGS)) -Wno-unknown-pragmas -fPIC -MMD -MP -c $< -o $@
$(BUILD)/libscfa.so: $(SCFA_OBJS)
	$(NVCC) -shared $(CUDA_ARCH) -Xlinker -Bsymbolic $^ -o $@
.PHONY: libscfa
libscfa: $(BUILD)/libscfa.so

demo: all
	bash scripts/demo.sh

clean:
	rm -rf $(BUILD) train prepare libscfa.so

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
