# Sourced by the other scripts: one build directory per machine, outside the clone, so
# RocksDB and librdkafka are compiled once (a clean build takes 25+ minutes on 2 cores)
# and every clone, CI run and benchmark reuses them. Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stream-engine/target}"
# One cargo profile for tests, demo and benchmarks (see Cargo.toml).
export ENGINE_PROFILE_FLAG="--release"
mkdir -p "$CARGO_TARGET_DIR"

# Whether the shared libclang that bindgen (RocksDB's bindings) loads is present under
# ROOT (default /): `libclang.so`, `libclang.so.N` or `libclang-N.so*` in the directories
# clang-sys searches. `libclang-cpp.so.N` (the C++ interface, which some images ship
# without libclang) does not count: bindgen cannot load it.
has_libclang() {
  local root="${1:-}" dir f name
  for dir in "$root"/usr/lib/llvm-*/lib "$root"/usr/lib/x86_64-linux-gnu "$root"/usr/lib/aarch64-linux-gnu \
    "$root"/usr/lib64 "$root"/usr/lib "$root"/usr/local/lib; do
    for f in "$dir"/libclang.so "$dir"/libclang.so.* "$dir"/libclang-[0-9]*.so*; do
      [ -e "$f" ] || continue
      name="${f##*/}"
      case "$name" in libclang-cpp*) continue ;; esac
      return 0
    done
  done
  return 1
}

# Whether program NAME is there: on PATH for the real system (ROOT empty), else in
# ROOT/usr/bin or ROOT/bin.
has_program() {
  local root="$1" name="$2"
  if [ -z "$root" ]; then
    command -v "$name" >/dev/null 2>&1
  else
    [ -x "$root/usr/bin/$name" ] || [ -x "$root/bin/$name" ]
  fi
}

# Prints, one per line, the Debian packages the build and the tests need that are missing
# under ROOT (default /). Each is detected by what the build actually uses.
missing_system_packages() {
  local root="${1:-}"
  has_program "$root" cc || echo build-essential
  has_program "$root" make || echo make
  has_program "$root" pkg-config || echo pkg-config
  has_libclang "$root" || echo libclang-dev
  [ -e "$root/usr/include/openssl/ssl.h" ] || echo libssl-dev
  [ -e "$root/usr/include/zlib.h" ] || echo zlib1g-dev
}

# Installs the system packages the build needs when they are missing and we are root
# (RocksDB's bindings need libclang; librdkafka needs a C toolchain, zlib and OpenSSL);
# otherwise stops at once with the command to run.
ensure_system_packages() {
  local missing
  mapfile -t missing < <(missing_system_packages)
  install_packages "${missing[@]}"
}

# Installs the named Debian packages as root, or stops with the command to run.
install_packages() {
  [ $# -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing system packages: $*; run: sudo apt-get install -y $* (then retry)" >&2
    exit 1
  fi
}

# Installs Java and Maven when missing, as root through install_packages, otherwise stops
# with the apt-get command to run: scripts/kafka resolves a Kafka broker's jars with Maven
# and runs them. A java older than 17 counts as missing (Kafka 4's broker needs 17+).
ensure_java_and_maven() {
  local missing=() major=""
  if command -v java >/dev/null 2>&1; then
    # `openjdk version "17.0.15" ...` -> 17; `java version "1.8.0_402"` -> 8.
    major="$(java -version 2>&1 | sed -n 's/.* version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -n 1)"
  fi
  [ "${major:-0}" -ge 17 ] 2>/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  install_packages "${missing[@]}"
}

# Installs a JDK (javac) when missing, like install_packages: the Java programs built here
# (the Avro oracle of scripts/test, the Kafka Streams reference of scripts/bench) compile.
ensure_jdk() {
  command -v javac >/dev/null 2>&1 || install_packages openjdk-17-jdk-headless
}

# Builds the Java side of the schema-compatibility oracle test (Apache Avro for Java from
# Maven Central; engine/tests/compatibility_oracle.rs) and exports AVRO_ORACLE_CLASSPATH,
# without which that test reports itself skipped.
build_avro_oracle() {
  local dir=engine/tests/java/avro-oracle
  ensure_jdk
  mvn -q -B -f "$dir/pom.xml" package dependency:copy-dependencies -DincludeScope=runtime
  export AVRO_ORACLE_CLASSPATH="$PWD/$dir/target/classes:$PWD/$dir/target/dependency/*"
}

# Installs the Python clients the interoperability tests use (confluent-kafka, fastavro)
# when they are missing.
ensure_python_clients() {
  python3 -c "import confluent_kafka.schema_registry, fastavro, authlib, httpx, cachetools" 2>/dev/null && return 0
  command -v python3 >/dev/null 2>&1 || install_packages python3
  python3 -m pip --version >/dev/null 2>&1 || install_packages python3-pip
  echo "installing the Python clients used by the interoperability tests" >&2
  python3 -m pip install -q -r engine/tests/python/requirements.txt
}

# Builds helm (a Go module, through the Go module proxy) once per machine into a cache
# outside the clone, like the cargo build directory, and exports HELM with its path:
# tests/helm.rs lints and renders the chart in deploy/helm with it, and says it is skipped
# without HELM. The version is in the file name, so changing HELM_VERSION builds it anew.
HELM_VERSION=v3.22.0
ensure_helm() {
  local bin="$HOME/.cache/stream-engine/bin" staging
  if [ ! -x "$bin/helm-$HELM_VERSION" ]; then
    if ! command -v go >/dev/null 2>&1; then
      echo "building helm needs Go 1.21 or later (it fetches the toolchain helm asks for): install it from https://go.dev/dl (then retry)" >&2
      exit 1
    fi
    echo "building helm $HELM_VERSION into $bin (once per machine, about 2 minutes)" >&2
    mkdir -p "$bin"
    staging="$(mktemp -d)"
    GOBIN="$staging" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$staging/helm" "$bin/helm-$HELM_VERSION"
    rm -rf "$staging"
  fi
  export HELM="$bin/helm-$HELM_VERSION"
}
