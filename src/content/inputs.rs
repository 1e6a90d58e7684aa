//! Content hashes of `CacheInputs` (SPEC 4), computed off the async
//! runtime and bounded: hashing runs on the blocking pool, reads regular
//! files and directories only (a FIFO, a device such as `/dev/zero`, a
//! socket are refused before anything is opened), stops after
//! `worker.cache_input_max_bytes` bytes, and a hashing still running after
//! `worker.cache_input_timeout_seconds` fails the step instead of holding
//! it (a hung network mount).
//!
//! Relative paths are resolved against the step's `WorkingDirectory`. A
//! step without one runs in a fresh, empty directory that does not exist
//! yet when the key is computed, so a relative path there is refused with a
//! message that says so.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// How much hashing one step may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// Hashes every input, keyed by the path as written. Errors name the input
/// and what is wrong with it.
pub async fn hash_inputs(
    working_directory: Option<&str>,
    inputs: &[String],
    limits: Limits,
) -> Result<BTreeMap<String, String>, String> {
    let mut resolved = Vec::with_capacity(inputs.len());
    for input in inputs {
        resolved.push((input.clone(), resolve(working_directory, input)?));
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let budget = Budget {
        remaining: limits.max_bytes,
        max_bytes: limits.max_bytes,
        deadline: Instant::now() + limits.timeout,
        timeout: limits.timeout,
        cancelled: cancelled.clone(),
    };
    let task = tokio::task::spawn_blocking(move || {
        let mut budget = budget;
        let mut hashes = BTreeMap::new();
        for (input, path) in resolved {
            hashes.insert(input, hash_input(&path, &mut budget)?);
        }
        Ok(hashes)
    });
    match tokio::time::timeout(limits.timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("hashing CacheInputs failed: {e}")),
        Err(_) => {
            // A read stuck in the kernel cannot be interrupted; the thread
            // stops at its next check, the step does not wait for it.
            cancelled.store(true, Ordering::SeqCst);
            Err(timed_out(limits.timeout))
        }
    }
}

fn timed_out(timeout: Duration) -> String {
    format!(
        "hashing CacheInputs took longer than {}s (worker.cache_input_timeout_seconds)",
        timeout.as_secs()
    )
}

/// The path an input names: absolute as written, relative to the step's
/// `WorkingDirectory`.
pub fn resolve(working_directory: Option<&str>, input: &str) -> Result<PathBuf, String> {
    let path = Path::new(input);
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    match working_directory {
        Some(dir) if Path::new(dir).is_absolute() => Ok(Path::new(dir).join(path)),
        Some(dir) => Err(format!(
            "cache input {input:?} is relative and WorkingDirectory {dir:?} is not absolute"
        )),
        None => Err(format!(
            "cache input {input:?} is relative and the step has no WorkingDirectory; relative \
             CacheInputs are resolved against WorkingDirectory (without one the step runs in a \
             fresh, empty directory), so set WorkingDirectory or give an absolute path"
        )),
    }
}

/// What hashing may still spend.
pub struct Budget {
    remaining: u64,
    max_bytes: u64,
    deadline: Instant,
    timeout: Duration,
    cancelled: Arc<AtomicBool>,
}

impl Budget {
    pub fn new(max_bytes: u64, timeout: Duration) -> Budget {
        Budget {
            remaining: max_bytes,
            max_bytes,
            deadline: Instant::now() + timeout,
            timeout,
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check_time(&self) -> Result<(), String> {
        if self.cancelled.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return Err(timed_out(self.timeout));
        }
        Ok(())
    }

    fn spend(&mut self, bytes: u64, path: &Path) -> Result<(), String> {
        if bytes > self.remaining {
            return Err(format!(
                "CacheInputs hold more than {} bytes (worker.cache_input_max_bytes), reached at {}",
                self.max_bytes,
                path.display()
            ));
        }
        self.remaining -= bytes;
        Ok(())
    }
}

fn read_err(p: &Path, e: io::Error) -> String {
    format!("cannot read cache input {}: {e}", p.display())
}

/// Refuses anything but a regular file or a directory (and, inside a tree,
/// a symlink, hashed as its target text): reading a FIFO blocks, a device
/// may never end.
fn check_kind(path: &Path, kind: fs::FileType) -> Result<(), String> {
    if kind.is_file() || kind.is_dir() || kind.is_symlink() {
        return Ok(());
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(format!(
        "cache input {} is {what}; only regular files and directories can be hashed",
        path.display()
    ))
}

/// Content hash (hex SHA-256) of a file or a directory tree. A directory is
/// hashed over its entries sorted by relative path: each entry contributes its
/// kind, its relative path and its content (a file's bytes, also for a
/// symlink to a regular file; for any other symlink its target text: links
/// to directories are not followed, so a link cycle cannot loop). Names and bytes are hashed, never timestamps or permissions, so
/// touching a file does not change the hash. `path` itself is followed when it
/// is a symlink: `CacheInputs` naming a link means its target's content.
/// Errors name the path that could not be read.
pub fn hash_input(path: &Path, budget: &mut Budget) -> Result<String, String> {
    let meta = fs::metadata(path).map_err(|e| read_err(path, e))?;
    check_kind(path, meta.file_type())?;
    let mut outer = Sha256::new();
    if !meta.is_dir() {
        entry(&mut outer, b'F', b"", &file_digest(path, budget)?);
        return Ok(hex::encode(outer.finalize()));
    }
    // Collect then sort: `read_dir` order is filesystem-dependent.
    let mut entries: Vec<(Vec<u8>, PathBuf, fs::FileType)> = Vec::new();
    let mut pending = vec![(Vec::new(), path.to_path_buf())];
    while let Some((rel, dir)) = pending.pop() {
        for item in fs::read_dir(&dir).map_err(|e| read_err(&dir, e))? {
            budget.check_time()?;
            let item = item.map_err(|e| read_err(&dir, e))?;
            let full = item.path();
            let kind = item.file_type().map_err(|e| read_err(&full, e))?;
            check_kind(&full, kind)?;
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(item.file_name().as_encoded_bytes());
            if kind.is_dir() {
                pending.push((child.clone(), full.clone()));
            }
            entries.push((child, full, kind));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, full, kind) in entries {
        if kind.is_dir() {
            entry(&mut outer, b'D', &rel, b"");
        } else if kind.is_symlink() && fs::metadata(&full).is_ok_and(|m| m.is_file()) {
            // A file linked into the tree (a shared module): its content is
            // what the step reads, so its content is hashed.
            entry(&mut outer, b'F', &rel, &file_digest(&full, budget)?);
        } else if kind.is_symlink() {
            let target = fs::read_link(&full).map_err(|e| read_err(&full, e))?;
            entry(&mut outer, b'L', &rel, target.as_os_str().as_encoded_bytes());
        } else {
            entry(&mut outer, b'F', &rel, &file_digest(&full, budget)?);
        }
    }
    Ok(hex::encode(outer.finalize()))
}

/// Feeds one length-prefixed entry to `h`, so no two different trees produce
/// the same byte stream.
fn entry(h: &mut Sha256, kind: u8, rel: &[u8], content: &[u8]) {
    h.update([kind]);
    h.update((rel.len() as u64).to_be_bytes());
    h.update(rel);
    h.update((content.len() as u64).to_be_bytes());
    h.update(content);
}

/// SHA-256 of a regular file's bytes, streamed. Opened non-blocking and
/// checked again once open, in case it was replaced by a FIFO after the
/// type check.
fn file_digest(path: &Path, budget: &mut Budget) -> Result<Vec<u8>, String> {
    let mut f: File = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| read_err(path, e))?;
    let meta = f.metadata().map_err(|e| read_err(path, e))?;
    check_kind(path, meta.file_type())?;
    if !meta.is_file() {
        return Err(format!("cache input {} is not a regular file", path.display()));
    }
    budget.spend(meta.len(), path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        budget.check_time()?;
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(path, e)),
        };
        read += n as u64;
        if read > meta.len() {
            // It grew while being read.
            budget.spend(n as u64, path)?;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(path: &Path) -> Result<String, String> {
        hash_input(path, &mut Budget::new(u64::MAX, Duration::from_secs(60)))
    }

    #[test]
    fn hash_input_of_a_directory_follows_content_not_mtime() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        fs::write(dir.path().join("a.txt"), "alpha").unwrap();
        fs::write(dir.path().join("sub/b.txt"), "beta").unwrap();
        let first = hash(dir.path()).unwrap();
        assert_eq!(first.len(), 64);

        // Rewriting the same bytes changes the mtime, not the hash.
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("a.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        assert_eq!(hash(dir.path()).unwrap(), first);

        fs::write(dir.path().join("sub/b.txt"), "BETA").unwrap();
        let changed = hash(dir.path()).unwrap();
        assert_ne!(changed, first);
        fs::write(dir.path().join("sub/b.txt"), "beta").unwrap();
        assert_eq!(hash(dir.path()).unwrap(), first);

        // A rename with the same content is a different tree.
        fs::rename(dir.path().join("sub/b.txt"), dir.path().join("sub/c.txt")).unwrap();
        assert_ne!(hash(dir.path()).unwrap(), first);
        // So is a new empty directory.
        fs::rename(dir.path().join("sub/c.txt"), dir.path().join("sub/b.txt")).unwrap();
        fs::create_dir(dir.path().join("empty")).unwrap();
        assert_ne!(hash(dir.path()).unwrap(), first);
    }

    #[test]
    fn hash_input_of_a_file_and_of_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.bin");
        fs::write(&file, [0u8, 1, 2]).unwrap();
        let h = hash(&file).unwrap();
        let other = dir.path().join("g.bin");
        fs::write(&other, [0u8, 1, 2]).unwrap();
        // A file's hash is its content, whatever its name.
        assert_eq!(hash(&other).unwrap(), h);
        fs::write(&other, [0u8, 1, 3]).unwrap();
        assert_ne!(hash(&other).unwrap(), h);

        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink("../f.bin", tree.join("link")).unwrap();
        let linked = hash(&tree).unwrap();
        // Inside a tree a symlink to a file is the file's bytes: editing
        // the file it links to changes the hash, pointing it at another
        // file with the same bytes does not.
        fs::write(&file, [9u8]).unwrap();
        let edited = hash(&tree).unwrap();
        assert_ne!(edited, linked);
        fs::write(&other, [9u8]).unwrap();
        fs::remove_file(tree.join("link")).unwrap();
        std::os::unix::fs::symlink("../g.bin", tree.join("link")).unwrap();
        assert_eq!(hash(&tree).unwrap(), edited);
        // A symlink to a directory (or a dangling one) is its target text,
        // not followed: a link cycle cannot loop.
        fs::remove_file(tree.join("link")).unwrap();
        std::os::unix::fs::symlink("..", tree.join("link")).unwrap();
        let to_dir = hash(&tree).unwrap();
        std::os::unix::fs::symlink("missing", tree.join("dangling")).unwrap();
        assert_ne!(hash(&tree).unwrap(), to_dir);
        // A symlink named directly is followed.
        let top = dir.path().join("top");
        std::os::unix::fs::symlink(&file, &top).unwrap();
        assert_eq!(hash(&top).unwrap(), hash(&file).unwrap());
    }

    #[test]
    fn hash_input_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = hash(&missing).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.starts_with("cannot read cache input"), "{e}");
    }

    #[test]
    fn devices_fifos_and_sockets_are_refused_without_reading() {
        let e = hash(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("/dev/zero is a character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Opening it would block for ever: it is refused before that.
        let e = hash(&fifo).unwrap_err();
        assert!(e.contains("is a FIFO"), "{e}");
        let e = hash(dir.path()).unwrap_err();
        assert!(e.contains("is a FIFO"), "{e}");
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let e = hash(&dir.path().join("sock")).unwrap_err();
        assert!(e.contains("is a socket"), "{e}");
    }

    #[test]
    fn size_and_time_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 1000]).unwrap();
        fs::write(dir.path().join("b"), vec![2u8; 1000]).unwrap();
        let e = hash_input(dir.path(), &mut Budget::new(1500, Duration::from_secs(60))).unwrap_err();
        assert!(e.contains("more than 1500 bytes (worker.cache_input_max_bytes)"), "{e}");
        assert!(hash_input(dir.path(), &mut Budget::new(2000, Duration::from_secs(60))).is_ok());
        let e = hash_input(dir.path(), &mut Budget::new(2000, Duration::ZERO)).unwrap_err();
        assert!(e.contains("took longer than 0s"), "{e}");
    }

    #[test]
    fn relative_inputs_resolve_against_the_working_directory() {
        assert_eq!(resolve(Some("/w"), "data/x").unwrap(), PathBuf::from("/w/data/x"));
        assert_eq!(resolve(None, "/abs/x").unwrap(), PathBuf::from("/abs/x"));
        assert_eq!(resolve(Some("/w"), "/abs/x").unwrap(), PathBuf::from("/abs/x"));
        let e = resolve(None, "data/x").unwrap_err();
        assert!(e.contains("has no WorkingDirectory"), "{e}");
        assert!(resolve(Some("rel"), "data/x").is_err());
    }

    #[tokio::test]
    async fn hashing_runs_off_the_runtime_and_reports_per_input() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "alpha").unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(60),
        };
        let wd = dir.path().to_str().unwrap();
        let hashes = hash_inputs(Some(wd), &["a".to_string()], limits).await.unwrap();
        assert_eq!(hashes["a"], hash(&dir.path().join("a")).unwrap());
        let e = hash_inputs(Some(wd), &["/dev/zero".to_string()], limits)
            .await
            .unwrap_err();
        assert!(e.contains("character device"), "{e}");
    }
}
