//! Durable state: checkpoints of a run at epoch boundaries, and what `--resume` reads back.
//!
//! A checkpoint at boundary `B` holds the state after every epoch before `B` and nothing of
//! the epochs from `B` on. It lives in `DIR/ckpt-<B>/`: one part per worker ([`part`]: Arrow
//! IPC, every key the worker holds), the Parquet output's footer as of `B` (when the output
//! is Parquet), and `manifest.json`, written last: format version, boundary, the source
//! position, every part's size and CRC-32, how much output and rejects are committed, the
//! counters, and what the state belongs to (model checksum, the pipeline's data layout, the
//! input files). A directory without a manifest is an unfinished checkpoint and is never
//! read. Every file is written to a temporary name, synced and renamed, and the directory
//! synced, so a crash at any instant leaves the previous complete checkpoint usable.
//!
//! Keys are routed through [`crate::record::KEY_GROUPS`] fixed groups, so any worker count
//! can read a checkpoint: each worker keeps the keys whose group it owns.

pub mod part;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::record::PartInfo;
use crate::record::Stats;

/// The manifest's format version; a checkpoint of another version is refused.
pub const FORMAT: u32 = 1;

/// `[checkpoint]` of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// The folder of this pipeline's checkpoints (resolved).
    pub dir: PathBuf,
    /// Wall-clock interval between checkpoints.
    pub every_ms: Option<u64>,
    /// Or: every N epochs (record batches read).
    pub every_epochs: Option<u64>,
    /// Complete checkpoints kept.
    pub keep: usize,
}

/// How much of a file output belongs to the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileCommit {
    /// The file (as the pipeline names it; its `.partial` holds the bytes until the run ends).
    pub path: PathBuf,
    /// Bytes committed.
    pub bytes: u64,
    /// Rows (predictions or rejects) committed.
    pub rows: u64,
    /// Parquet: the footer file (in the checkpoint's folder) that closes the committed bytes.
    pub footer: Option<String>,
    /// CRC-32 of the footer.
    pub footer_crc32: Option<u32>,
    /// Whether the file's keys are integers (a live run resumed before its first key needs
    /// it to continue the file).
    #[serde(default)]
    pub int_keys: Option<bool>,
    /// Parquet: which file the bytes are in. Every resume copies the committed rows into
    /// a new file, one generation up (see `sink::resume_source`).
    #[serde(default)]
    pub generation: u32,
}

/// What a checkpoint is, written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// Every epoch before this one is in the state; none from it on.
    pub boundary: u64,
    /// When it was committed (ms since the Unix epoch).
    pub created_unix_ms: u64,
    /// Workers of the run that wrote it (any count can resume it).
    pub workers: u32,
    /// One per worker.
    pub parts: Vec<PartInfo>,
    /// The predictions committed (none when they go to stdout).
    pub output: Option<FileCommit>,
    /// The rejects committed.
    pub rejects: Option<FileCommit>,
    /// Each view's changelog committed, in view order.
    #[serde(default)]
    pub views: Vec<FileCommit>,
    /// The run's counters up to the boundary.
    pub stats: Stats,
    /// A Kafka source: where each partition goes on from.
    #[serde(default)]
    pub kafka: Option<KafkaOffsets>,
    /// What the state belongs to; a resume compares it with its own.
    pub identity: Identity,
}

impl Manifest {
    /// Whether the keys are integers: from the parts, or the output (`None`: nothing says).
    pub fn int_keys(&self) -> Option<bool> {
        self.parts
            .iter()
            .find_map(|p| p.int_keys)
            .or(self.output.as_ref().and_then(|o| o.int_keys))
    }
}

/// A Kafka source's position at a checkpoint: every record before `next` of each partition
/// is in the state; a resume fetches from there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaOffsets {
    /// The topic read.
    pub topic: String,
    /// Each partition's next offset (and high watermark, when last fetched).
    pub partitions: Vec<crate::record::PartitionOffset>,
}

/// What a checkpoint's state belongs to: the model and the data layout. Each field is
/// compared by name on resume, so a refusal says which one differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// `(name, value)`: model checksum, key, time, features, normalization, NaN policy, emit
    /// mode, batch rows, key type, input files.
    pub fields: Vec<(String, String)>,
}

impl Identity {
    /// The first field that differs from `other` (the pipeline's), as a sentence.
    pub fn difference(&self, other: &Identity) -> Option<String> {
        for (name, theirs) in &self.fields {
            let ours = other
                .fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str());
            if ours != Some(theirs.as_str()) {
                return Some(format!(
                    "it was made with {name} = {theirs}, this run has {}",
                    ours.unwrap_or("nothing")
                ));
            }
        }
        other
            .fields
            .iter()
            .find(|(n, _)| !self.fields.iter().any(|(m, _)| m == n))
            .map(|(n, v)| format!("it has no {n}, this run has {v}"))
    }
}

/// The model's checksum as an identity shows it: CRC-32 of its file and weights file.
pub fn model_checksum(model: &crate::model::Model) -> Result<String> {
    let mut crc = crc32fast::Hasher::new();
    for p in std::iter::once(model.path()).chain(model.weights_path()) {
        crc.update(&crate::outfiles::read_regular(p)?);
    }
    Ok(format!("{:08x}", crc.finalize()))
}

/// Normalization as an identity shows it: every digit, since a statistic that changes in
/// its last bit changes the inputs.
pub fn normalize_text(n: Option<&crate::vocab::Normalize>) -> String {
    match n {
        Some(n) => format!("{{ mean = {:?}, std = {:?} }}", n.mean, n.std),
        None => "none".into(),
    }
}

/// The emit mode as an identity shows it.
pub fn emit_text(emit: crate::vocab::Emit) -> String {
    use crate::vocab::Emit;
    match emit {
        Emit::EveryStep => "\"every_step\"".into(),
        Emit::SequenceEnd { all_steps } => format!("\"sequence_end\" (all_steps = {all_steps})"),
        Emit::Window { size, hop } => format!("\"window\" (size = {size}, hop = {hop})"),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const MANIFEST: &str = "manifest.json";

/// A pipeline's checkpoint folder.
#[derive(Debug, Clone)]
pub struct Store {
    /// The folder.
    pub dir: PathBuf,
}

fn ck_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Syncs a directory, so that the renames inside it survive a power loss.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = crate::outfiles::partial_path(path);
    let mut f = crate::outfiles::create_fresh(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Why a checkpoint cannot be used.
#[derive(Debug)]
pub struct Damage {
    /// The checkpoint's folder.
    pub dir: PathBuf,
    /// What is wrong.
    pub why: String,
}

impl Store {
    /// The store in `dir` (created when the first checkpoint is written).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// The folder of the checkpoint at `boundary`.
    pub fn folder(&self, boundary: u64) -> PathBuf {
        self.dir.join(format!("ckpt-{boundary:020}"))
    }

    /// Where worker `w` writes its part of the checkpoint at `boundary`.
    pub fn part_path(&self, boundary: u64, w: usize) -> PathBuf {
        self.folder(boundary).join(format!("part-{w}.arrow"))
    }

    /// Every checkpoint folder (complete or not), by boundary, oldest first.
    pub fn folders(&self) -> Vec<(u64, PathBuf)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<(u64, PathBuf)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let b = name.strip_prefix("ckpt-")?.parse::<u64>().ok()?;
                e.file_type().ok()?.is_dir().then(|| (b, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    /// Removes every checkpoint (`--fresh`, or a file run that completed).
    pub fn discard_all(&self) -> Result<()> {
        // Manifests first, newest first: a crash part-way leaves the older checkpoints
        // complete (their outputs are prefixes of what is on disk), never a manifest whose
        // parts are half deleted.
        for (_, d) in self.folders().into_iter().rev() {
            match std::fs::remove_file(d.join(MANIFEST)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&d, e)),
                _ => {}
            }
        }
        for (_, d) in self.folders() {
            match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&d, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes the folder of the checkpoint at `boundary`.
    pub fn make_folder(&self, boundary: u64) -> Result<PathBuf> {
        let f = self.folder(boundary);
        std::fs::create_dir_all(&f).map_err(|e| Error::io(&f, e))?;
        Ok(f)
    }

    /// Commits the checkpoint whose parts are written: the footer (if any), then the
    /// manifest; then removes checkpoints beyond the newest `keep` complete ones and the
    /// unfinished ones older than this.
    pub fn commit(&self, m: &Manifest, footer: Option<&[u8]>, keep: usize) -> Result<()> {
        let folder = self.make_folder(m.boundary)?;
        if let (Some(bytes), Some(name)) = (footer, m.output.as_ref().and_then(|o| o.footer.as_ref())) {
            write_durable(&folder.join(name), bytes)?;
        }
        let json = serde_json::to_vec_pretty(m).map_err(|e| ck_err(&folder, e.to_string()))?;
        write_durable(&folder.join(MANIFEST), &json)?;
        sync_dir(&folder)?;
        sync_dir(&self.dir)?;
        let mut complete = 0;
        for (b, d) in self.folders().into_iter().rev() {
            if b > m.boundary {
                continue;
            }
            let done = d.join(MANIFEST).is_file();
            if done {
                complete += 1;
            }
            if (done && complete > keep.max(1)) || (!done && b < m.boundary) {
                let _ = std::fs::remove_dir_all(&d);
            }
        }
        Ok(())
    }

    /// Reads and checks the checkpoint in `folder`: its manifest, and every part's and the
    /// footer's size and checksum.
    pub fn verify(&self, folder: &Path) -> std::result::Result<Manifest, String> {
        let mpath = folder.join(MANIFEST);
        let text = std::fs::read(&mpath).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "it is unfinished: the run stopped before its manifest was written".to_string()
            }
            _ => format!("{}: {e}", mpath.display()),
        })?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST} is not valid: {e}"))?;
        if m.format != FORMAT {
            return Err(format!(
                "it is format {} (this seqflow reads format {FORMAT})",
                m.format
            ));
        }
        let check = |name: &str, bytes: u64, crc: u32| -> std::result::Result<(), String> {
            let p = folder.join(name);
            let (n, c) = part::checksum(&p).map_err(|e| format!("{name}: {e}"))?;
            if n != bytes {
                return Err(format!("{name} is {n} bytes, the manifest says {bytes}"));
            }
            if c != crc {
                return Err(format!(
                    "{name}'s checksum is {c:08x}, the manifest says {crc:08x}"
                ));
            }
            Ok(())
        };
        for p in &m.parts {
            check(&p.file, p.bytes, p.crc32)?;
        }
        if let Some(o) = &m.output {
            if let (Some(f), Some(c)) = (&o.footer, o.footer_crc32) {
                let n = std::fs::metadata(folder.join(f)).map(|m| m.len()).unwrap_or(0);
                check(f, n, c)?;
            }
        }
        Ok(m)
    }

    /// Whether any checkpoint is complete (has its manifest); unfinished ones hold nothing
    /// committed.
    pub fn has_complete(&self) -> bool {
        self.folders().iter().any(|(_, d)| d.join(MANIFEST).is_file())
    }

    /// The newest complete, undamaged checkpoint, and what was wrong with newer ones.
    /// `Ok(None)` when the folder holds no complete checkpoint (none at all, or only
    /// unfinished ones: nothing was committed); an error when it holds complete ones but
    /// none is usable (never a silent fresh start).
    pub fn latest(&self) -> Result<Option<(Manifest, Vec<Damage>)>> {
        if !self.has_complete() {
            return Ok(None);
        }
        let mut damaged = Vec::new();
        for (_, d) in self.folders().iter().rev() {
            match self.verify(d) {
                Ok(m) => return Ok(Some((m, damaged))),
                Err(why) => damaged.push(Damage { dir: d.clone(), why }),
            }
        }
        let list: Vec<String> = damaged
            .iter()
            .map(|d| format!("{}: {}", d.dir.display(), d.why))
            .collect();
        Err(ck_err(
            &self.dir,
            format!(
                "holds no usable checkpoint ({}); run with --fresh to start over",
                list.join("; ")
            ),
        ))
    }

    /// The checkpoint's footer bytes, if it has one.
    pub fn footer(&self, m: &Manifest) -> Result<Option<Vec<u8>>> {
        let Some(name) = m.output.as_ref().and_then(|o| o.footer.clone()) else {
            return Ok(None);
        };
        let p = self.folder(m.boundary).join(name);
        std::fs::read(&p).map(Some).map_err(|e| Error::io(&p, e))
    }
}

/// How a worker writes its part of each checkpoint.
#[derive(Debug, Clone)]
pub struct PartWriter {
    /// The checkpoint folder.
    pub store: Store,
    /// This worker's index (of all processes).
    pub worker: usize,
}

impl PartWriter {
    /// Writes `rows` as this worker's part of the checkpoint at `boundary`.
    pub fn write(&self, boundary: u64, rows: part::StateRows) -> std::result::Result<PartInfo, String> {
        let path = self.store.part_path(boundary, self.worker);
        let file = format!("part-{}.arrow", self.worker);
        let keys = rows.len() as u64;
        let int_keys = (keys > 0).then_some(matches!(rows.keys, crate::record::KeyColumn::Int(_)));
        self.store
            .make_folder(boundary)
            .and_then(|_| part::write_part(&path, rows))
            .map(|(bytes, crc32)| PartInfo {
                file,
                worker: self.worker as u32,
                keys,
                bytes,
                crc32,
                int_keys,
            })
            .map_err(|e| e.to_string())
    }

    /// This worker's keys from the checkpoint `m`: every part is read and the keys whose
    /// group this worker owns (group % `peers` == worker) are kept.
    pub fn restore(&self, m: &Manifest, peers: usize, into: &mut part::StateRows) -> Result<()> {
        let folder = self.store.folder(m.boundary);
        for p in &m.parts {
            part::read_part(&folder.join(&p.file), into, |g| g as usize % peers == self.worker)?;
        }
        Ok(())
    }
}

/// Every checkpoint in a folder, newest first, for `seqflow checkpoint DIR`: each one
/// complete (its manifest), unfinished or damaged (why).
pub struct Listing {
    /// The folder.
    pub dir: PathBuf,
    /// `(folder, manifest or why it cannot be used)`, newest first.
    pub checkpoints: Vec<(PathBuf, std::result::Result<Manifest, String>)>,
}

impl Listing {
    /// Reads every checkpoint of `dir` (verifying sizes and checksums).
    pub fn read(dir: &Path) -> Result<Listing> {
        let m = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !m.is_dir() {
            return Err(ck_err(dir, "is not a folder"));
        }
        let store = Store::new(dir);
        let checkpoints = store
            .folders()
            .into_iter()
            .rev()
            .map(|(_, d)| {
                let v = store.verify(&d);
                (d, v)
            })
            .collect();
        Ok(Listing {
            dir: dir.to_path_buf(),
            checkpoints,
        })
    }
}

/// `2026-11-27 22:15:03 UTC` from ms since the Unix epoch (the proleptic Gregorian
/// calendar, from days since 1970-01-01).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::vocab::{group_digits, human_bytes};
        if self.checkpoints.is_empty() {
            return writeln!(f, "{}: no checkpoint", self.dir.display());
        }
        for (i, (dir, m)) in self.checkpoints.iter().enumerate() {
            let m = match m {
                Ok(m) => m,
                Err(why) => {
                    writeln!(f, "{}: not usable: {why}", dir.display())?;
                    continue;
                }
            };
            let first = self.checkpoints[..i].iter().all(|c| c.1.is_err());
            let use_ = if first {
                " (what --resume continues from)"
            } else {
                ""
            };
            writeln!(f, "{}{use_}", dir.display())?;
            writeln!(f, "  taken       {}", utc(m.created_unix_ms))?;
            let files = m.identity.fields.iter().any(|(n, _)| n == "input files");
            if files {
                let (unit, batch) = (m.boundary >> 32, m.boundary & 0xffff_ffff);
                writeln!(
                    f,
                    "  source      every epoch before unit {unit}, batch {batch} is in it ({} rows read)",
                    group_digits(m.stats.rows_read as usize)
                )?;
            } else {
                writeln!(
                    f,
                    "  source      live: every epoch before {} is in it ({} lines read)",
                    m.boundary,
                    group_digits(m.stats.rows_read as usize)
                )?;
            }
            if let Some(k) = &m.kafka {
                let at: Vec<String> = k
                    .partitions
                    .iter()
                    .map(|p| format!("{}@{}", p.partition, p.next))
                    .collect();
                writeln!(
                    f,
                    "  kafka       topic {}, resumes at partition@offset {}",
                    k.topic,
                    if at.is_empty() {
                        "(none read yet)".into()
                    } else {
                        at.join(" ")
                    }
                )?;
            }
            let keys: u64 = m.parts.iter().map(|p| p.keys).sum();
            let bytes: u64 = m.parts.iter().map(|p| p.bytes).sum();
            writeln!(
                f,
                "  state       {} keys, {} in {} part(s), written by {} worker(s)",
                group_digits(keys as usize),
                human_bytes(bytes),
                m.parts.len(),
                m.workers
            )?;
            for p in &m.parts {
                writeln!(
                    f,
                    "    {:<14} worker {:<3} {:>10} keys {:>10}  crc32 {:08x}",
                    p.file,
                    p.worker,
                    group_digits(p.keys as usize),
                    human_bytes(p.bytes),
                    p.crc32
                )?;
            }
            if let Some(o) = &m.output {
                writeln!(
                    f,
                    "  output      {}: {} rows committed ({})",
                    o.path.display(),
                    group_digits(o.rows as usize),
                    human_bytes(o.bytes)
                )?;
            }
            if let Some(r) = &m.rejects {
                writeln!(
                    f,
                    "  rejects     {}: {} committed",
                    r.path.display(),
                    group_digits(r.rows as usize)
                )?;
            }
            let s = &m.stats;
            writeln!(
                f,
                "  counters    {} steps, {} predictions; late {}, duplicate {}, non-finite {}, malformed {}",
                group_digits(s.steps_processed as usize),
                group_digits(s.outputs as usize),
                group_digits(s.late as usize),
                group_digits(s.duplicate as usize),
                group_digits(s.non_finite as usize),
                group_digits(s.malformed as usize)
            )?;
            if first {
                writeln!(f, "  made with")?;
                for (name, value) in &m.identity.fields {
                    writeln!(f, "    {name}: {value}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_the_calendar() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_817_496_678), "2026-11-27 22:11:36 UTC");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31 23:59:59 UTC");
    }
}
