//! Replacing the configuration file so that a crash, a full disk or a planted
//! link never leaves it half-written, owned by someone else, or elsewhere.
//!
//! A change is written in two steps: [`stage`] writes the new text to a
//! temporary file beside the old one and syncs it (this is where a full or
//! read-only disk fails, before anything else has changed), and
//! [`Staged::commit`] renames it over the old file and syncs the directory.
//! A staged file that is dropped uncommitted is removed.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a configuration file the daemon creates: only root (the daemon's
/// user, and the only one who may use the control socket, which is 0600)
/// reads it. An operator who wants more gives the file another mode or group:
/// both are kept on every save.
pub const NEW_FILE_MODE: u32 = 0o600;

/// A new version written and synced beside the file it replaces.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

/// Writes `text` to a new temporary file in `path`'s directory, with the
/// owner and mode of the file it is to replace, and syncs it.
///
/// The temporary is created exclusively and without following links
/// (`O_CREAT | O_EXCL | O_NOFOLLOW`), so nothing planted under its name is
/// written through. `path` itself must not be a symbolic link: renaming over
/// one would silently replace the link by a file, and following it would
/// write wherever it points; the daemon refuses and names the file to give
/// it instead.
pub fn stage(path: &Path, text: &[u8]) -> io::Result<Staged> {
    let dir = directory(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    std::fs::create_dir_all(&dir)?;
    let old = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(path).unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link (to {}): it is not written through; give the daemon the file's own path",
                    path.display(),
                    to.display()
                ),
            ));
        }
        Ok(m) if !m.file_type().is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ))
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let (file, tmp) = create_exclusive(&dir, name)?;
    // From here the temporary is removed on any failure (Drop).
    let staged = Staged {
        tmp,
        path: path.to_path_buf(),
        committed: false,
    };
    fill(&file, text, old.as_ref())?;
    Ok(staged)
}

impl Staged {
    /// Renames the new version over the old one and syncs the directory, so
    /// the rename survives a crash.
    ///
    /// Once the rename is done the new text is what the file holds, whatever
    /// follows: a failure to sync the directory then is reported by the
    /// caller as a warning, not as a failed change.
    pub fn commit(mut self) -> Result<(), CommitError> {
        std::fs::rename(&self.tmp, &self.path).map_err(CommitError::Rename)?;
        self.committed = true;
        File::open(directory(&self.path))
            .and_then(|d| d.sync_all())
            .map_err(CommitError::SyncDirectory)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Nothing changed: the old file is in place.
    #[error("renaming the new version into place: {0}")]
    Rename(io::Error),
    /// The new file is in place but may not survive a crash.
    #[error("syncing the directory after the rename (the new version is in place but may not survive a crash): {0}")]
    SyncDirectory(io::Error),
}

impl From<CommitError> for io::Error {
    fn from(e: CommitError) -> io::Error {
        match e {
            CommitError::Rename(e) | CommitError::SyncDirectory(e) => e,
        }
    }
}

fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.tmp.PID.N`: hidden, beside the file; a name that exists already
/// (someone else's, or a link) is skipped, never opened.
fn create_exclusive(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(File, PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{}.{n}.{nanos:x}", std::process::id()));
        let tmp = dir.join(tmp_name);
        match open_new(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

fn open_new(tmp: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
}

/// Owner and mode of the old file (the umask does not decide them), the
/// text, and a sync.
fn fill(mut file: &File, text: &[u8], old: Option<&std::fs::Metadata>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(old) = old {
        let now = file.metadata()?;
        if (now.uid(), now.gid()) != (old.uid(), old.gid()) {
            // SAFETY: fchown on a descriptor this function borrows.
            if unsafe { libc::fchown(file.as_raw_fd(), old.uid(), old.gid()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // After the chown, which may clear set-id bits.
        file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
    } else {
        // The umask may have taken bits away; never added any.
        file.set_permissions(std::fs::Permissions::from_mode(NEW_FILE_MODE))?;
    }
    file.write_all(text)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("balancer-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_new_file_is_private_whatever_the_umask() {
        let d = scratch("new");
        let p = d.join("c.toml");
        stage(&p, b"a = 1\n").unwrap().commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a = 1\n");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, NEW_FILE_MODE);
        assert!(leftovers(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn owner_and_mode_of_the_old_file_are_kept() {
        let d = scratch("keep");
        let p = d.join("c.toml");
        std::fs::write(&p, "old\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let me = unsafe { libc::geteuid() };
        if me == 0 {
            // Root can give the file away: the new version must follow.
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        }
        let before = std::fs::metadata(&p).unwrap();
        stage(&p, b"new\n").unwrap().commit().unwrap();
        let after = std::fs::metadata(&p).unwrap();
        assert_ne!(before.ino(), after.ino(), "replaced, not rewritten");
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlinked_target_is_refused_and_left_alone() {
        let d = scratch("link");
        let real = d.join("real.toml");
        std::fs::write(&real, "real\n").unwrap();
        let p = d.join("c.toml");
        std::os::unix::fs::symlink(&real, &p).unwrap();
        let e = stage(&p, b"new\n").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"real\n");
        assert!(leftovers(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_dropped_stage_leaves_nothing_and_the_old_file_as_it_was() {
        let d = scratch("drop");
        let p = d.join("c.toml");
        std::fs::write(&p, "old\n").unwrap();
        let s = stage(&p, b"new\n").unwrap();
        assert_eq!(leftovers(&d).len(), 1);
        drop(s);
        assert!(leftovers(&d).is_empty());
        assert_eq!(std::fs::read(&p).unwrap(), b"old\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_planted_link_under_a_temporary_name_is_never_written_through() {
        let d = scratch("plant");
        let victim = d.join("victim");
        std::fs::write(&victim, "victim\n").unwrap();
        let planted = d.join(".c.toml.tmp.1.0.0");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = open_new(&planted).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim\n");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
