//! The quickstart scripts' checks of the machine: `scripts/env.sh` decides what to
//! install by what the build actually loads, tested against directory trees laid out
//! like real machines.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::path::Path;
use std::process::Command;

/// What `missing_system_packages ROOT` prints, one package per entry.
fn missing_under(root: &Path) -> Vec<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg("source scripts/env.sh && missing_system_packages \"$1\"")
        .arg("env.sh")
        .arg(root)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // Sourcing env.sh creates the build directory; keep it out of the way.
        .env("CARGO_TARGET_DIR", root.join("target"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A root with a C toolchain, OpenSSL and zlib headers, plus `files` (relative paths).
fn machine(files: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for program in ["usr/bin/cc", "usr/bin/make", "usr/bin/pkg-config"] {
        touch(root.path(), program);
        let path = root.path().join(program);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for file in ["usr/include/openssl/ssl.h", "usr/include/zlib.h"]
        .iter()
        .chain(files)
    {
        touch(root.path(), file);
    }
    root
}

fn touch(root: &Path, file: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"").unwrap();
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    // Debian 12's image ships the C++ interface only; bindgen cannot load it.
    let root = machine(&["usr/lib/llvm-14/lib/libclang-cpp.so.14"]);
    assert_eq!(missing_under(root.path()), ["libclang-dev"]);
}

#[test]
fn libclang_is_found_where_bindgen_looks() {
    for file in [
        "usr/lib/llvm-14/lib/libclang.so",
        "usr/lib/llvm-14/lib/libclang-14.so.1",
        "usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6",
        "usr/lib/llvm-16/lib/libclang.so.1",
    ] {
        let root = machine(&["usr/lib/llvm-14/lib/libclang-cpp.so.14", file]);
        assert!(
            missing_under(root.path()).is_empty(),
            "{file} is a libclang bindgen loads"
        );
    }
}

#[test]
fn an_empty_machine_needs_every_package() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(
        missing_under(root.path()),
        [
            "build-essential",
            "make",
            "pkg-config",
            "libclang-dev",
            "libssl-dev",
            "zlib1g-dev"
        ]
    );
}
