# Sourced by scripts/install-deps (the host's FAISS C API) and scripts/cross-aarch64
# (arm64's): libfaiss-dev ships the headers and a static libfaiss.a but not the
# compiled C API, so it is built from Debian's faiss source package (the same
# source version: header-compatible) against the installed libfaiss.
#
# faiss_capi_build CXX WORK: unpacks the source into WORK/src, compiles its
# c_api/*.cpp with CXX (e.g. g++, aarch64-linux-gnu-g++) and links
# WORK/libfaiss_c.so against the libfaiss.a that CXX finds by default (the
# host's in /usr/lib/x86_64-linux-gnu, arm64's in /usr/lib/aarch64-linux-gnu).
# Needs deb-src entries (scripts/install-deps adds them).  Exits the shell on error
# (the callers run under set -e).
faiss_capi_build() {
  local cxx=$1 work=$2
  ( cd "$work" && apt-get source -qq --download-only faiss >/dev/null && dpkg-source -x --no-check faiss_*.dsc src >/dev/null )
  local src="$work/src"
  mkdir -p "$work/obj"
  local objs=() f o
  for f in "$src"/c_api/*.cpp "$src"/c_api/impl/*.cpp; do
    [ -f "$f" ] || continue
    o="$work/obj/$(basename "${f%.cpp}").o"
    "$cxx" -O2 -fPIC -std=c++17 -I"$src" -c "$f" -o "$o" &
    objs+=("$o")
    # two cores: keep two compilers running
    while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n; done
  done
  # a failed compile fails here (wait -n above only paces)
  local pid
  for pid in $(jobs -rp); do wait "$pid"; done
  for o in "${objs[@]}"; do
    [ -f "$o" ] || { echo "faiss_capi_build: $o was not built" >&2; return 1; }
  done
  # Debian ships libfaiss as a static archive: pull what the C API needs into the
  # shared library, with its OpenMP and BLAS/LAPACK dependencies resolved here.
  "$cxx" -shared -o "$work/libfaiss_c.so" "${objs[@]}" -Wl,-soname,libfaiss_c.so -Wl,--no-undefined \
    -lfaiss -fopenmp -lopenblas -llapack
}
