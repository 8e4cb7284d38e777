# bench/server/lib.sh - what bench/server/run and bench/server/latency share
# (sourced, from the repository's root, after setting: build, model, py, work):
# the checkpoint, the cached 100,000-image data directory, starting and
# stopping `umgdb serve` on $work/s.sock.

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# ensure_model: the random-weight ViT-B/32 checkpoint at $model (the one bench/encoder/run
# uses), made if missing or made by another generator; a given UMG_BENCH_MODEL is used as is.
ensure_model() {
  [ -n "${UMG_BENCH_MODEL:-}" ] && return 0
  local want
  want="vit-b-32 f32 seed0 $(stamp_of tools/make_random_clip.py tools/umgclip/safetensors.py)"
  if [ "$(cat "$model/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "bench: generating $model" >&2
    rm -rf "$model"
    $py -m tools.make_random_clip "$model" --preset vit-b-32 --dtype f32 --seed 0
    echo "$want" > "$model/.stamp"
  fi
}

# ensure_data N: sets $data to a data directory of N synthetic images (bench_fill), cached outside
# the repository and the build ($UMG_BENCH_CACHE, default ~/.cache/umgdb-bench) so that a fresh clone
# reuses it; rebuilt when N, bench_fill.c, the index or db code, or the model change (a directory
# trained by older code made a stop retrain for 21 minutes once, docs/storage.md).
ensure_data() {
  local n=$1 cache want
  cache=${UMG_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/umgdb-bench}
  data="$cache/server-data-$n"
  want="$n $(stamp_of bench/server/bench_fill.c index/idx.c db/*.c) $(cat "$model/.stamp" 2>/dev/null || echo custom)"
  if [ "$(cat "$data/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "bench: filling $data with $n synthetic images (bench_fill; ~10 s of writes, then the index training)" >&2
    rm -rf "$data"
    mkdir -p "$cache" "$work"
    # bench_fill creates the directory itself: its report goes beside it first, then in
    "$build/bench/server/bench_fill" "$data" "$model" "$n" > "$work/fill.json"
    mv "$work/fill.json" "$data/fill.json"
    echo "$want" > "$data/.stamp"
  fi
}

server_pid=
# start_server DATA_DIR LOG [SERVE_ARGS...]: umgdb serve on $work/s.sock, wait until it accepts.
start_server() {
  rm -f "$work/s.sock"
  local dir=$1 log=$2; shift 2
  "$build/umgdb" serve --data "$dir" --model "$model" --socket "$work/s.sock" --log-level warn "$@" \
    > "$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 1200); do
    if "$build/umgdb" stats --server "unix:$work/s.sock" --timeout 5 >/dev/null 2>&1; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; echo "bench: the server exited" >&2; exit 1; }
    sleep 0.25
  done
  echo "bench: the server did not come up" >&2; exit 1
}
# stop_server: SIGTERM, and the exit code must be 0.
stop_server() {
  kill -TERM "$server_pid"
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=
  [ "$rc" = 0 ] || { echo "bench: the server exited with $rc on SIGTERM" >&2; exit 1; }
}
# server_cpu_s: the server's CPU seconds (user + system) so far
server_cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$server_pid/stat"; }
