# Cross build for aarch64 (ARMv8-A) with Debian's gcc-aarch64-linux-gnu and the
# arm64 multiarch -dev packages (scripts/cross-aarch64 installs them and the
# arm64 FAISS C API).  ctest runs the tests under qemu-aarch64:
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release
#   cmake --build build-aarch64 -j2 && (cd build-aarch64 && ctest)
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

# libhttp-parser-dev cannot sit beside amd64's (not Multi-Arch: same); its header is
# architecture-independent, arm64 has the runtime library (scripts/cross-aarch64).
set(HTTP_PARSER_LIBRARY /usr/lib/aarch64-linux-gnu/libhttp_parser.so.2.9 CACHE FILEPATH "arm64 http_parser")

# qemu finds the arm64 loader and libraries at their multiarch places (libc6:arm64).
# The CPU it emulates comes from the environment, QEMU_CPU (qemu-user's own variable;
# unset: "max", which has dotprod), so one build runs the suite on several CPUs:
#   QEMU_CPU=cortex-a72 ctest     ARMv8.0 NEON, no dotprod (Raspberry Pi 4)
# The tests pass it on to the umgdb they start (tests/CMakeLists.txt).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
