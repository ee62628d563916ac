//! Link the release `bg-agent` with its functions in the order they run.
//!
//! `symbol-order.txt` (written by `tests/scripts/symbol-order.sh`) lists
//! the functions that run while serving (plain HTTP/1.1, TLS, h2c) and
//! then those of start-up. Laid out together, they fill a few MiB of
//! contiguous code instead of touching pages all over the 13 MB text; the
//! kernel maps file pages in large runs around each first touch, so the
//! scattered layout made most of the binary resident. Once ready, the
//! agent drops the pages start-up mapped (`src/resident.rs`), and serving
//! faults back the run at the start. Packed relative relocations
//! (`DT_RELR`) shrink the relocation table the loader reads at start from
//! 0.6 MB to 10 KB.
//!
//! Both are linker options of rust-lld, the default linker of
//! `x86_64-unknown-linux-gnu` since Rust 1.90; `DT_RELR` also needs glibc
//! 2.36 where the binary runs. This build script applies them only to a
//! native release build where those hold; `BG_DEFAULT_LAYOUT=1` turns
//! them off. A name the file lists that the build does not define (a
//! toolchain or dependency update changes the hashes in mangled names) is
//! skipped; edits of this crate and `bg-proxy` keep their names, which
//! build as one codegen unit each (no `.llvm.N` suffixes, see Cargo.toml).

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=BG_DEFAULT_LAYOUT");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let target = var("TARGET");
    if var("PROFILE") != "release"
        || target != "x86_64-unknown-linux-gnu"
        || var("HOST") != target
        || env::var_os("BG_DEFAULT_LAYOUT").is_some_and(|v| v != "0")
        || var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        || !rustc_links_with_lld(&var("RUSTC"))
    {
        return;
    }
    let order = format!("{}/symbol-order.txt", var("CARGO_MANIFEST_DIR"));
    for arg in [format!("--symbol-ordering-file={order}"), "--no-warn-symbol-ordering".into()] {
        println!("cargo:rustc-link-arg-bin=bg-agent=-Wl,{arg}");
    }
    if glibc_has_relr() {
        println!("cargo:rustc-link-arg-bin=bg-agent=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether `rustc` is 1.90 or later, which links this target with rust-lld.
fn rustc_links_with_lld(rustc: &str) -> bool {
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    version_at_least(if rustc.is_empty() { "rustc" } else { rustc }, &["--version"], (1, 90))
}

/// Whether this host's glibc (where a native build runs) reads `DT_RELR`:
/// 2.36 or later.
fn glibc_has_relr() -> bool {
    // "glibc 2.36"
    version_at_least("getconf", &["GNU_LIBC_VERSION"], (2, 36))
}

/// Whether `program args` prints a second word `MAJOR.MINOR[.…]` at least `min`.
fn version_at_least(program: &str, args: &[&str], min: (u32, u32)) -> bool {
    let Ok(out) = Command::new(program).args(args).output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text.split_whitespace().nth(1).unwrap_or("").split(['.', '-']).map(|p| p.parse::<u32>().ok());
    matches!((v.next().flatten(), v.next().flatten()), (Some(major), Some(minor)) if (major, minor) >= min)
}
