//! Puts the git commit into `udpreach --version` (UDPREACH_GIT_COMMIT).
//! Outside a git checkout (a source tarball, `cargo install` from a registry)
//! the version line is the crate version alone; a packager may set
//! UDPREACH_GIT_COMMIT in the environment instead.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Watches `path` if it exists (cargo would rerun the script every build for a missing one).
fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=UDPREACH_GIT_COMMIT");
    if let Ok(c) = std::env::var("UDPREACH_GIT_COMMIT") {
        if !c.is_empty() {
            println!("cargo:rustc-env=UDPREACH_GIT_COMMIT={c}");
        }
        return;
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=UDPREACH_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it
    // points to (a commit), wherever this worktree keeps them.
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
    }
    watch(git(&["rev-parse", "--git-path", "packed-refs"]));
}
