# Sourced by the other scripts: one build directory per machine, outside the clone, so
# RocksDB and librdkafka are compiled once (a clean build takes 25+ minutes on 2 cores)
# and every clone, CI run and benchmark reuses them. Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stream-engine/target}"
# One cargo profile for tests, demo and benchmarks (see Cargo.toml).
export ENGINE_PROFILE_FLAG="--release"
mkdir -p "$CARGO_TARGET_DIR"

# Installs the system packages the build needs when they are missing and we are root
# (RocksDB's bindings need libclang; librdkafka needs a C toolchain, zlib and OpenSSL).
ensure_system_packages() {
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
  [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and retry" >&2
    return 1
  fi
}

# Installs the Python clients the interoperability tests use (confluent-kafka, fastavro)
# when they are missing.
ensure_python_clients() {
  python3 -c "import confluent_kafka.schema_registry, fastavro, authlib, httpx, cachetools" 2>/dev/null && return 0
  echo "installing the Python clients used by the interoperability tests" >&2
  python3 -m pip install -q -r engine/tests/python/requirements.txt
}
