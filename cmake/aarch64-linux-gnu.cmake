# Cross build for aarch64 (ARMv8-A) with Debian's gcc-aarch64-linux-gnu and the
# arm64 multiarch -dev packages (scripts/cross-aarch64 installs them and the
# arm64 FAISS C API).  ctest runs the tests under qemu-aarch64:
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release
#   cmake --build build-aarch64 -j2 && (cd build-aarch64 && ctest)
# UMG_QEMU_CPU (cache, default "max") is the CPU qemu emulates for the tests:
# "max" has dotprod and bf16, "cortex-a53" is plain ARMv8.0 NEON.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# Multiarch: the arm64 libraries live beside the host's under /usr/lib/aarch64-linux-gnu,
# headers in /usr/include; never pick a host (x86-64) library or .pc file.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# scripts/cross-aarch64 builds the arm64 FAISS C API here (the host's is in /usr/local/lib).
set(FAISS_C_LIBRARY /usr/local/lib/aarch64-linux-gnu/libfaiss_c.so CACHE FILEPATH "arm64 FAISS C API")

set(UMG_QEMU_CPU max CACHE STRING "CPU model qemu-aarch64 emulates for ctest")
# qemu finds the arm64 loader and libraries at their multiarch places (libc6:arm64).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-cpu;${UMG_QEMU_CPU})
