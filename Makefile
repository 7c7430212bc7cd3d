# retune — build, test and install dependencies.
#   make            build/retune (CPU backend: BLAS)
#   make CUDA=1     also the CUDA backend (nvcc, cuBLAS)
#   make test       build and run every test (unit, numerical, end-to-end)
#   make san-test   every test under AddressSanitizer + UndefinedBehaviorSanitizer
#   make tsan-test  the concurrent tests under ThreadSanitizer (any report fails)
#   make deps       install the Debian packages the build and tests need

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
CFLAGS  ?=
CFLAGS  += -std=c11 -Wall -Wextra -Werror $(OPT) -g -D_GNU_SOURCE -I. -I$(BUILD)/gen \
           -I/usr/include/x86_64-linux-gnu/openblas-pthread -isystem /usr/include/postgresql -pthread
LDLIBS  += -lmicrohttpd -lcjson -lsqlite3 -lpq -lpcre2-8 -lutf8proc \
           -L/usr/lib/x86_64-linux-gnu/openblas-pthread -lopenblas -lm -lpthread

ifeq ($(SAN),1)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(TSAN),1)
  CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=thread
endif

CUDA_HOME ?= /usr/local/cuda
ifeq ($(CUDA),1)
  NVCC      ?= $(CUDA_HOME)/bin/nvcc
  NVCCFLAGS ?= -O2 -std=c++17 -I. -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
               -Xcompiler -Wall,-Wextra -Werror all-warnings
  CFLAGS    += -DRT_WITH_CUDA -I$(CUDA_HOME)/include
  LDLIBS    += -L$(CUDA_HOME)/lib64 -lcudart -lcublas -lstdc++ -Wl,-rpath,$(CUDA_HOME)/lib64
  CU_SRC    := $(wildcard kernels/cuda/*.cu)
  CUDA_C_SRC := $(wildcard kernels/cuda/*.c)
  # NCCL (the toolkit's), for data-parallel training on GPUs: server/nccl_comm.c
  # alone calls it, linked only into the programs that do (--as-needed)
  LDLIBS    += -Wl,--as-needed -lnccl -Wl,--no-as-needed
else
  NO_CUDA_SRC := server/nccl_comm.c
endif

# MPI, for data-parallel training (`mpirun -np N retune train`): Debian's Open
# MPI when it is installed (make deps), compiled into server/mpi_comm.c alone;
# its headers as system headers (their warnings are not ours), and libmpi
# linked only into the programs that call it (--as-needed). Without it the
# build still works and refuses an mpirun launch.
MPICC      ?= mpicc
MPI_CFLAGS := $(patsubst -I%,-isystem %,$(shell $(MPICC) --showme:compile 2>/dev/null))
MPI_LIBS   := $(shell $(MPICC) --showme:link 2>/dev/null)
ifneq ($(MPI_LIBS),)
  $(BUILD)/obj/server/mpi_comm.o: CFLAGS += -DRT_WITH_MPI $(MPI_CFLAGS)
  LDLIBS += -Wl,--as-needed $(MPI_LIBS) -Wl,--no-as-needed
endif

LIB_DIRS  := common storage engine kernels kernels/cpu api server
LIB_SRC   := $(filter-out server/main.c $(NO_CUDA_SRC),$(wildcard $(addsuffix /*.c,$(LIB_DIRS)))) $(CUDA_C_SRC)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/migrations_embedded.o \
             $(BUILD)/obj/gen/dashboard_embedded.o $(CU_SRC:%.cu=$(BUILD)/obj/%.cu.o)
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
MIGRATIONS := $(sort $(wildcard migrations/*.sql))
MIGRATIONS_PG := $(wildcard migrations/postgres/*.sql)
DASHBOARD  := $(sort $(wildcard api/dashboard/*))

.PHONY: all test unit-test san-test tsan-test deps clean bench print-ldlibs
all: $(BUILD)/retune $(TEST_BIN) $(BENCH_BIN)

$(BUILD)/retune: $(BUILD)/obj/server/main.o $(BUILD)/libretune.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libretune.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/obj/%.o: %.c $(BUILD)/gen/migrations_embedded.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/obj/gen/migrations_embedded.o: $(BUILD)/gen/migrations_embedded.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/gen/migrations_embedded.c: $(MIGRATIONS) $(MIGRATIONS_PG) tools/embed_migrations.sh
	@mkdir -p $(dir $@)
	sh tools/embed_migrations.sh $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/dashboard_embedded.o: $(BUILD)/gen/dashboard_embedded.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# The web dashboard's files (api/dashboard/), served by api/dashboard.c.
$(BUILD)/gen/dashboard_embedded.c: $(DASHBOARD) tools/embed_files.sh
	@mkdir -p $(dir $@)
	sh tools/embed_files.sh rt_dashboard_files $(DASHBOARD) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libretune.a tests/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libretune.a $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libretune.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libretune.a $(LDLIBS)

# Every test: C unit/numerical tests, then end-to-end tests on a real server.
test: all
	sh tests/run.sh $(BUILD)

unit-test: all
	sh tests/run.sh $(BUILD) unit

# Unit tests, then the end-to-end tests against the sanitized server.
san-test:
	$(MAKE) BUILD=build-san SAN=1 OPT=-O1 all
	ASAN_OPTIONS=detect_leaks=1 sh tests/run.sh build-san

# The tests where threads meet (the engine's batcher, concurrent HTTP requests,
# training beside serving) under ThreadSanitizer; a report stops the process
# (halt_on_error), which fails its test. tests/tsan.supp names the one library
# it cannot see into (OpenBLAS's own threads).
TSAN_TESTS := tests/e2e_serve.py tests/e2e_jobs.py
tsan-test:
	$(MAKE) BUILD=build-tsan TSAN=1 OPT=-O1 build-tsan/retune build-tsan/tests/test_infer
	TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$(CURDIR)/tests/tsan.supp" sh tests/run.sh build-tsan build-tsan/tests/test_infer $(TSAN_TESTS)

# What building and every test needs: Debian's packages (chromium included),
# then the npm packages of the SDK and browser tests (where npm is missing or
# offline those tests say so, and fail under CI), and of the serving
# benchmark's llama.cpp side (bench/node, not needed by any test).
deps:
	sh tools/install_deps.sh
	-cd tests/sdk && npm install --no-audit --no-fund --loglevel=error
	-cd tests/browser && npm install --no-audit --no-fund --loglevel=error
	-cd bench/node && npm install --no-audit --no-fund --loglevel=error

# The libraries a program linked against libretune.a needs (kernels/cuda/emu/run.sh).
print-ldlibs:
	@echo $(LDLIBS)

clean:
	rm -rf $(BUILD) build-san build-tsan

-include $(LIB_OBJ:.o=.d) $(BUILD)/obj/server/main.d
