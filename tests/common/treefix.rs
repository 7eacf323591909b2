//! Generated directory trees for tree fingerprint tests.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

/// What [`generate`] made.
pub struct Generated {
    pub files: usize,
    pub symlinks: usize,
    pub fifos: usize,
    pub unreadable: &'static str,
}

/// `files` regular files spread over 100 directories (small distinct contents), symlinks
/// (relative, absolute, dangling, a two-link loop and a link to `..`), a FIFO and a file
/// with mode 000.
pub fn generate(root: &Path, files: usize) -> Generated {
    fs::create_dir_all(root).unwrap();
    for i in 0..files {
        let d = root.join(format!("d{:03}", i % 100));
        if i < 100 {
            fs::create_dir_all(&d).unwrap();
            // Explicit modes: the unprivileged run must be able to read all but one file,
            // whatever the umask of the test runner.
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let f = d.join(format!("f{i:05}.txt"));
        fs::write(&f, format!("file {i}\n{}", "x".repeat(i % 97))).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let links = root.join("links");
    fs::create_dir_all(&links).unwrap();
    fs::set_permissions(&links, fs::Permissions::from_mode(0o755)).unwrap();
    symlink("../d000/f00000.txt", links.join("relative")).unwrap();
    symlink("/etc/hostname", links.join("absolute")).unwrap();
    symlink("nowhere/at/all", links.join("dangling")).unwrap();
    symlink("loop-b", links.join("loop-a")).unwrap();
    symlink("loop-a", links.join("loop-b")).unwrap();
    symlink("..", links.join("up")).unwrap();
    nix::unistd::mkfifo(
        &root.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let secret = root.join("secret.key");
    fs::write(&secret, "only root may read this").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    Generated {
        files: files + 1,
        symlinks: 6,
        fifos: 1,
        unreadable: "secret.key",
    }
}
