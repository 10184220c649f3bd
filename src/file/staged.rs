//! An output file that appears under its name only once it is complete. On Linux
//! it is written unnamed (`O_TMPFILE`) and linked into place on success, so nothing
//! readable is left behind even if the process is killed with SIGKILL; where the
//! file system lacks `O_TMPFILE` it is a hidden temporary file next to the output,
//! removed when dropped (errors, interruption by SIGINT/SIGTERM). Created 0600.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rand::RngCore;

/// A file being written for `persist`.
pub struct Staged {
    file: File,
    named: Option<tempfile::TempPath>,
    dir: PathBuf,
}

impl Staged {
    /// A new empty output file in `dir` (the output's directory, so that linking
    /// or renaming it into place never crosses file systems).
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{Mode, OFlags};
            match rustix::fs::open(
                dir,
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    return Ok(Staged {
                        file: File::from(fd),
                        named: None,
                        dir: dir.to_path_buf(),
                    })
                }
                // Not supported here (file system or kernel): fall back to a name.
                Err(e)
                    if e == rustix::io::Errno::OPNOTSUPP
                        || e == rustix::io::Errno::ISDIR
                        || e == rustix::io::Errno::INVAL => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (file, path) = tempfile::Builder::new()
            .prefix(".fieldcrypt-")
            .tempfile_in(dir)?
            .into_parts();
        Ok(Staged {
            file,
            named: Some(path),
            dir: dir.to_path_buf(),
        })
    }

    /// Does the file have no name until [`persist`](Self::persist)?
    pub fn is_unnamed(&self) -> bool {
        self.named.is_none()
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Flushes the file to disk and gives it the name `dest` (replacing a file
    /// there). An unnamed file is linked under a hidden name and renamed over
    /// `dest`, so `dest` is always either the old file or the whole new one.
    pub fn persist(self, dest: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        match self.named {
            Some(path) => path.persist(dest).map_err(|e| e.error),
            None => {
                let mut r = [0u8; 8];
                rand::rng().fill_bytes(&mut r);
                let hidden = self.dir.join(format!(".fieldcrypt-{}.tmp", hex::encode(r)));
                link_unnamed(&self.file, &hidden)?;
                std::fs::rename(&hidden, dest).inspect_err(|_| {
                    let _ = std::fs::remove_file(&hidden);
                })
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD};
    use std::os::fd::AsRawFd;
    // Through /proc (any user), else AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH).
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    match rustix::fs::linkat(CWD, proc.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(()),
        Err(_) => rustix::fs::linkat(file, "", CWD, to, AtFlags::EMPTY_PATH).map_err(Into::into),
    }
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_file: &File, _to: &Path) -> io::Result<()> {
    Err(io::Error::other("unnamed files are Linux-only"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_is_visible_until_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staged::new_in(dir.path()).unwrap();
        s.file_mut().write_all(b"secret").unwrap();
        let visible: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        if s.is_unnamed() {
            assert!(visible.is_empty(), "an O_TMPFILE file has no name");
        }
        let dest = dir.path().join("out.avro");
        std::fs::write(&dest, b"old").unwrap();
        s.persist(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"secret");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.avro")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_dropped_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staged::new_in(dir.path()).unwrap();
        s.file_mut().write_all(b"secret").unwrap();
        drop(s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
