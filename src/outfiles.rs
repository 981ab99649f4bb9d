//! Writing files without destroying anything: every file seqflow writes is created as
//! `PATH.partial` (`O_CREAT | O_EXCL | O_NOFOLLOW`: never through a planted link, never over
//! another file) and renamed to `PATH` only when the whole run succeeded, so an interrupted
//! run leaves nothing at `PATH` that looks complete. `PATH` itself may only be a regular file
//! (or a link, which the rename replaces, not its target): a device, FIFO or directory is
//! refused. And before anything is opened, [`check_distinct`] refuses a run whose outputs
//! would overwrite one of its inputs or each other. Inputs are read only from regular files
//! ([`check_regular`]): a FIFO would block forever and `/dev/zero` never ends.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// `O_NOFOLLOW` (Linux): fail rather than open through a symbolic link.
const O_NOFOLLOW: i32 = 0o400_000;

/// `PATH.partial`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

fn refuse(path: &Path, msg: impl Into<String>) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// What kind of thing is at `path`, for messages.
fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Creates `PATH.partial` for writing (and `PATH`'s directory). A stale `PATH.partial` of an
/// earlier run, or a link planted there, is removed first (unlinking never touches a link's
/// target); anything else there, or at `PATH`, that is not a regular file is refused.
fn create_partial(path: &Path) -> Result<(File, PathBuf)> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !(m.is_file() || m.file_type().is_symlink()) {
            return Err(refuse(
                path,
                format!("is {}; seqflow writes only regular files", kind(&m)),
            ));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = partial_path(path);
    match std::fs::symlink_metadata(&tmp) {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => {
            std::fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e))?
        }
        Ok(m) => return Err(refuse(&tmp, format!("is {} in the way of the output", kind(&m)))),
        Err(_) => {}
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    Ok((f, tmp))
}

/// Creates `path` for writing, new: a file or link already there (a stale temporary) is
/// unlinked first, and the open neither follows a link nor shares the name
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`). For seqflow's own temporary files (checkpoint parts and
/// manifests).
pub fn create_fresh(path: &Path) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(O_NOFOLLOW)
        .open(path)
}

/// Every partial file not yet committed or discarded, process-wide: what [`discard_all`]
/// removes when the process must end at once.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live(f: impl FnOnce(&mut Vec<PathBuf>)) {
    if let Ok(mut l) = LIVE.lock() {
        f(&mut l)
    }
}

/// Removes every partial file this process has open: for an exit that cannot unwind (the
/// binary's panic hook, when a cluster peer is lost and timely's threads are failing).
pub fn discard_all() {
    live(|l| {
        for p in l.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    });
}

/// The files a run writes: created as `.partial`, committed together when the run succeeds,
/// removed when it fails. Clones share the list (the writers run on worker threads).
#[derive(Debug, Clone, Default)]
pub struct Outputs(Arc<Mutex<Vec<(PathBuf, PathBuf)>>>, bool, bool);

impl Outputs {
    /// The files of a checkpointed run: a failed or stopped run keeps its partial files
    /// (a checkpoint commits a prefix of them, which `--resume` continues), and so does an
    /// abrupt exit.
    pub fn durable() -> Outputs {
        Outputs(Arc::default(), true, false)
    }

    /// [`Outputs::durable`] for a live run, whose outputs go on across restarts: a run that
    /// stopped well renamed them into place, and a resume takes them up again.
    pub fn durable_live() -> Outputs {
        Outputs(Arc::default(), true, true)
    }

    /// Whether a resume may take up a completed `PATH` (live runs).
    pub fn reclaims(&self) -> bool {
        self.2
    }

    /// Creates `path`'s partial file and registers it (once: creating it again starts it
    /// over, as a live run does when its first line decides the output's key type).
    pub fn create(&self, path: &Path) -> Result<File> {
        let (f, tmp) = create_partial(path)?;
        if !self.1 {
            live(|l| l.push(tmp.clone()));
        }
        let mut list = self.0.lock().expect("outputs");
        list.retain(|(_, p)| p != path);
        list.push((tmp, path.to_path_buf()));
        Ok(f)
    }

    /// Takes up `path`'s partial file left by an interrupted run, cut back to its first
    /// `len` bytes (what a checkpoint committed), for writing on at its end.
    pub fn adopt(&self, path: &Path, len: u64) -> Result<File> {
        let f = reopen_partial(path, len, self.2)?;
        let tmp = partial_path(path);
        let mut list = self.0.lock().expect("outputs");
        list.retain(|(_, p)| p != path);
        list.push((tmp, path.to_path_buf()));
        Ok(f)
    }

    /// Renames every partial file into place, in the order they were created.
    pub fn commit(&self) -> Result<()> {
        for (tmp, path) in self.0.lock().expect("outputs").drain(..) {
            live(|l| l.retain(|p| p != &tmp));
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Removes every partial file, durable or not.
    pub fn remove_all(&self) {
        for (tmp, _) in self.0.lock().expect("outputs").drain(..) {
            live(|l| l.retain(|p| p != &tmp));
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Removes every partial file (the run failed), unless they are [`Outputs::durable`].
    pub fn discard(&self) {
        for (tmp, _) in self.0.lock().expect("outputs").drain(..) {
            live(|l| l.retain(|p| p != &tmp));
            if !self.1 {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
}

/// Opens `path`'s partial file left by an interrupted run, cut back to its first `len`
/// bytes and positioned at its end. Refused when it is missing, not a regular file, or
/// shorter than `len` (then it is not the file the checkpoint was taken with).
/// `reclaim`: a live run's completed `PATH` (renamed into place when it stopped well) is
/// taken up again when there is no partial file; a file run never touches `PATH`.
pub fn reopen_partial(path: &Path, len: u64, reclaim: bool) -> Result<File> {
    use std::io::{Seek, SeekFrom};
    let tmp = partial_path(path);
    if reclaim
        && std::fs::symlink_metadata(&tmp).is_err()
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
    {
        std::fs::rename(path, &tmp).map_err(|e| Error::io(path, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => refuse(
                &tmp,
                "is gone, so the checkpoint's output cannot be continued; run with --fresh to start over",
            ),
            _ => Error::io(&tmp, e),
        })?;
    let m = f.metadata().map_err(|e| Error::io(&tmp, e))?;
    if !m.is_file() {
        return Err(refuse(&tmp, format!("is {}", kind(&m))));
    }
    if m.len() < len {
        return Err(refuse(
            &tmp,
            format!(
                "holds {} bytes but the checkpoint committed {len}: it is not the file the checkpoint \
                 was taken with; run with --fresh to start over",
                m.len()
            ),
        ));
    }
    f.set_len(len).map_err(|e| Error::io(&tmp, e))?;
    f.seek(SeekFrom::End(0)).map_err(|e| Error::io(&tmp, e))?;
    Ok(f)
}

/// Writes one whole file atomically: `.partial`, `write`, synced, rename.
pub fn write_file(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let outputs = Outputs::default();
    write_partial(&outputs, path, write)?;
    outputs.commit()
}

/// Writes several whole files that belong together (a model file and its weights): each as
/// `.partial`, written and synced, and only when all are complete renamed one after the
/// other. A failure before the renames (creating, writing, syncing any of them) removes
/// every partial and leaves no file at any path.
pub fn write_files(files: &[(&Path, &[u8])]) -> Result<()> {
    use std::io::Write as _;
    let outputs = Outputs::default();
    for &(path, data) in files {
        write_partial(&outputs, path, |f| f.write_all(data))?;
    }
    outputs.commit()
}

/// `path`'s partial in `outputs`, written by `write` and synced; on a failure every partial
/// of `outputs` is removed.
fn write_partial(
    outputs: &Outputs,
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let written = outputs.create(path).and_then(|mut f| {
        write(&mut f)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(path, e))
    });
    if written.is_err() {
        outputs.discard();
    }
    written
}

/// The identity of a path for comparisons: its canonical form (the directory resolved when
/// the file does not exist yet) and, for an existing file, its device and inode (which also
/// catches hard links).
fn identity(p: &Path) -> (PathBuf, Option<(u64, u64)>) {
    let meta = std::fs::metadata(p).ok();
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        dir.join(p.file_name().unwrap_or_default())
    });
    (canon, meta.map(|m| (m.dev(), m.ino())))
}

/// Refuses a run whose outputs would overwrite one of its inputs (data files, model and
/// weights, the pipeline file, side tables) or each other. Each item is `(what, path)`, as
/// messages name it: `("output", "out/x.csv")`, `("input", "in/x.csv")`.
pub fn check_distinct(inputs: &[(String, PathBuf)], outputs: &[(String, PathBuf)]) -> Result<()> {
    let ids: Vec<_> = outputs.iter().map(|(_, p)| identity(p)).collect();
    let same = |a: &(PathBuf, Option<(u64, u64)>), b: &(PathBuf, Option<(u64, u64)>)| {
        a.0 == b.0 || (a.1.is_some() && a.1 == b.1)
    };
    for (i, (what, p)) in outputs.iter().enumerate() {
        for (j, (other, q)) in outputs.iter().enumerate().skip(i + 1) {
            if same(&ids[i], &ids[j]) {
                return Err(refuse(
                    p,
                    format!(
                        "the {what} and the {other} ({}) are the same file; each output needs a path of its own",
                        q.display()
                    ),
                ));
            }
        }
        for (other, q) in inputs {
            if same(&ids[i], &identity(q)) {
                return Err(refuse(
                    p,
                    format!(
                        "the {what} would overwrite the {other} {}; seqflow never writes over its inputs",
                        q.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses to read `path` unless it is a regular file (after links): opening a FIFO blocks
/// until a writer appears, and a device may never end.
pub fn check_regular(path: &Path) -> Result<()> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if m.is_file() {
        Ok(())
    } else {
        Err(Error::Data {
            path: path.to_path_buf(),
            msg: format!("is {}; seqflow reads regular files", kind(&m)),
        })
    }
}

/// The bytes of a regular file ([`check_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// The text of a regular file ([`check_regular`]).
pub fn read_regular_string(path: &Path) -> Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Whether an error is a closed pipe (a reader such as `head` went away): a normal end of
/// output, not a failure.
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::BrokenPipe
}

/// Starts writing `len` bytes of `file` from `from` to disk, without waiting for them. A
/// failure is not reported here: this only moves work earlier (an I/O error surfaces where
/// it would have).
pub fn send_to_disk(file: &File, from: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call reads no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), from as _, len as _, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, len);
}
