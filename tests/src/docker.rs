//! The Docker gate for tests: with `BG_DOCKER_TESTS=1` a missing engine
//! fails the test; without it, the test says why it does not run and
//! returns (the README documents this).

use std::process::Command;

/// Whether Docker tests run here. Panics when they are required
/// (`BG_DOCKER_TESTS=1`) and the engine does not answer.
pub fn docker_available(test: &str) -> bool {
    let required = std::env::var("BG_DOCKER_TESTS").is_ok_and(|v| v == "1");
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    assert!(
        !required,
        "{test}: BG_DOCKER_TESTS=1 but the Docker engine does not answer (`docker version` failed)"
    );
    eprintln!("{test}: not run: no Docker engine answers and BG_DOCKER_TESTS is not 1");
    false
}

/// [`docker_available`], then make sure the `websample:TAG` images exist
/// (built locally when missing). `false` when the test does not run here.
pub fn docker_with_images(test: &str, tags: &[&str]) -> bool {
    if !docker_available(test) {
        return false;
    }
    for tag in tags {
        crate::websample::ensure_image(tag).unwrap_or_else(|e| panic!("{test}: websample:{tag} image: {e}"));
    }
    true
}
