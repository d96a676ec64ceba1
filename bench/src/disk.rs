//! The disk's limit for sequential writes, measured on the filesystem a benchmark writes to.
//!
//! Two figures:
//! * **direct** — raw sequential bandwidth with the page cache bypassed: `fio` (O_DIRECT, 64 KiB
//!   `psync` writes) when it is on PATH or can be installed with `apt-get` (as root); otherwise an
//!   in-process O_DIRECT writer (4096-aligned 64 KiB buffer, sequential writes, one fsync).
//! * **buffered + fsync** — the access pattern `log_store::Log` itself uses: buffered `pwrite`s of
//!   one batch each, `fdatasync` every `fsync_every` bytes and once at the end, for as long as the
//!   benchmark appends (so both touch as much page cache and disk). The log does not use
//!   O_DIRECT, so this is the fair "physical limit" for it. It is measured before the benchmark
//!   and again after it ([`DiskLimit::measure_buffered_again`]) and the higher figure counts: on
//!   a VM, whichever run first touches fresh guest memory is slowed down, and the disk is shared,
//!   so a single measurement could flatter the log.
//!
//! Also [`filesystem_of`], to name the filesystem and device a path lives on,
//! [`device_written_bytes`], what the block device under a path has written so far, and
//! [`wait_until_idle`], for the storage to finish what came before a measurement.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::mib_per_s;

/// Block size of the direct measurement (fio's `--bs=64k`).
const DIRECT_BLOCK: usize = 64 * 1024;
/// Alignment O_DIRECT needs on every common Linux filesystem.
const DIRECT_ALIGN: usize = 4096;

/// What the disk can do, in MiB/s.
#[derive(Clone, Debug)]
pub struct DiskLimit {
    /// Sequential O_DIRECT write bandwidth, if it could be measured.
    pub direct_mib_s: Option<f64>,
    /// How `direct_mib_s` was measured (or why it could not be).
    pub method: String,
    /// Buffered `pwrite` + `fdatasync` every `fsync_every` bytes, the log's own pattern: the
    /// highest of [`DiskLimit::buffered_runs_mib_s`].
    pub buffered_fsync_mib_s: f64,
    /// Every buffered measurement so far, in order.
    pub buffered_runs_mib_s: Vec<f64>,
    /// Anything that went differently than planned (fio install failed, …).
    pub notes: Vec<String>,
}

/// How much to write and how.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    /// Bytes written by the direct measurement.
    pub direct_bytes: u64,
    /// How long the buffered measurement writes (the benchmark's own duration).
    pub buffered_duration: Duration,
    /// Size of each buffered write (the log writes one batch per `pwrite`).
    pub write_bytes: usize,
    /// `fdatasync` after this many buffered bytes (the log's flush interval); 0 = only at the end.
    pub fsync_every: u64,
}

/// Measures both figures with files in `dir`, removing them afterwards.
pub fn measure(dir: &Path, pattern: Pattern) -> Result<DiskLimit> {
    let mut notes = Vec::new();
    let (direct_mib_s, method) = measure_direct(dir, pattern.direct_bytes, &mut notes);
    let buffered_fsync_mib_s = measure_buffered_fsync(&dir.join("disk-buffered.dat"), pattern)?;
    Ok(DiskLimit { direct_mib_s, method, buffered_fsync_mib_s, buffered_runs_mib_s: vec![buffered_fsync_mib_s], notes })
}

impl DiskLimit {
    /// Measures the buffered pattern once more; the limit becomes the highest figure seen.
    pub fn measure_buffered_again(&mut self, dir: &Path, pattern: Pattern) -> Result<f64> {
        let mib_s = measure_buffered_fsync(&dir.join("disk-buffered.dat"), pattern)?;
        self.buffered_runs_mib_s.push(mib_s);
        self.buffered_fsync_mib_s = self.buffered_fsync_mib_s.max(mib_s);
        Ok(mib_s)
    }
}

fn measure_direct(dir: &Path, total_bytes: u64, notes: &mut Vec<String>) -> (Option<f64>, String) {
    let total_bytes = total_bytes.div_ceil(DIRECT_BLOCK as u64) * DIRECT_BLOCK as u64;
    let path = dir.join("disk-direct.dat");
    let fio = if on_path("fio") {
        Some("fio")
    } else if install_fio(notes) {
        Some("fio (installed now with apt-get)")
    } else {
        None
    };
    if let Some(method) = fio {
        let result = run_fio(&path, total_bytes);
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(mib_s) => return (Some(mib_s), method.to_string()),
            Err(error) => notes.push(format!("fio failed ({error:#}); using the in-process O_DIRECT writer")),
        }
    }
    let result = direct_write(&path, total_bytes);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(elapsed) => (Some(mib_per_s(total_bytes, elapsed)), "in-process O_DIRECT writer".to_string()),
        Err(error) => {
            notes.push(format!("O_DIRECT write failed: {error:#}"));
            (None, "unavailable (O_DIRECT not supported here)".to_string())
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `apt-get install -y fio`, quietly, only as root and where apt-get exists (with one
/// `apt-get update` and a retry if the package lists are missing). Returns whether fio is there.
fn install_fio(notes: &mut Vec<String>) -> bool {
    if !is_root() || !on_path("apt-get") {
        notes.push("fio not on PATH and cannot be installed (not root or no apt-get)".to_string());
        return false;
    }
    eprintln!("fio not found; installing it with apt-get…");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let installed =
        apt(&["install", "-y", "-qq", "fio"]) || (apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "fio"]));
    if !installed || !on_path("fio") {
        notes.push("`apt-get install -y fio` failed".to_string());
        return false;
    }
    true
}

fn run_fio(path: &Path, total_bytes: u64) -> Result<f64> {
    let output = Command::new("fio")
        .args([
            "--name=seqwrite",
            "--rw=write",
            "--bs=64k",
            &format!("--size={total_bytes}"),
            "--direct=1",
            "--ioengine=psync",
            "--fsync_on_close=1",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", path.display()))
        .stdin(Stdio::null())
        .output()
        .context("running fio")?;
    if !output.status.success() {
        bail!("fio exited with {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    // fio may print notes before the JSON document.
    let json = stdout.find('{').map(|start| &stdout[start..]).context("no JSON in fio's output")?;
    let parsed: serde_json::Value = serde_json::from_str(json).context("parsing fio's JSON")?;
    let bw_bytes =
        parsed["jobs"][0]["write"]["bw_bytes"].as_f64().context("no jobs[0].write.bw_bytes in fio's JSON")?;
    if bw_bytes <= 0.0 {
        bail!("fio reported {bw_bytes} bytes/s");
    }
    Ok(bw_bytes / (1024.0 * 1024.0))
}

/// A zeroed heap buffer with the alignment O_DIRECT needs.
struct AlignedBuffer {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuffer {
    fn new(len: usize, align: usize) -> AlignedBuffer {
        let layout = Layout::from_size_align(len, align).expect("valid layout");
        assert!(layout.size() > 0);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        AlignedBuffer { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialized (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Writes `total_bytes` sequentially with O_DIRECT in 64 KiB blocks, then fsyncs; returns the time.
fn direct_write(path: &Path, total_bytes: u64) -> Result<Duration> {
    let mut buffer = AlignedBuffer::new(DIRECT_BLOCK, DIRECT_ALIGN);
    fill_pseudo_random(buffer.as_mut_slice(), 0x5eed);
    let _ = std::fs::remove_file(path);
    let start = Instant::now();
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
    let mut position = 0;
    while position < total_bytes {
        file.write_all_at(buffer.as_mut_slice(), position)
            .with_context(|| format!("O_DIRECT write to {}", path.display()))?;
        position += DIRECT_BLOCK as u64;
    }
    file.sync_all().context("fsync")?;
    Ok(start.elapsed())
}

/// The log's own pattern: buffered pwrites of `write_bytes`, fdatasync every `fsync_every`, for
/// `buffered_duration`, then one final fdatasync.
fn measure_buffered_fsync(path: &Path, pattern: Pattern) -> Result<f64> {
    let mut buffer = vec![0u8; pattern.write_bytes.max(1)];
    fill_pseudo_random(&mut buffer, 0xb0ff);
    let _ = std::fs::remove_file(path);
    let start = Instant::now();
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let deadline = start + pattern.buffered_duration;
    let mut position = 0u64;
    let mut since_sync = 0u64;
    while Instant::now() < deadline {
        file.write_all_at(&buffer, position).with_context(|| format!("writing {}", path.display()))?;
        position += buffer.len() as u64;
        since_sync += buffer.len() as u64;
        if pattern.fsync_every > 0 && since_sync >= pattern.fsync_every {
            file.sync_data().context("fdatasync")?;
            since_sync = 0;
        }
    }
    file.sync_data().context("fdatasync")?;
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(mib_per_s(position, elapsed))
}

/// Fills `buffer` with xorshift bytes, so no layer can cheat by spotting zeros or repeats.
pub fn fill_pseudo_random(buffer: &mut [u8], seed: u64) {
    let mut state = seed | 1;
    for chunk in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// The filesystem type and source holding `path`, from /proc/self/mounts (e.g. `ext4 on /dev/vda`).
pub fn filesystem_of(path: &Path) -> String {
    let path: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".to_string();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let mount_point = fields.next()?.replace("\\040", " ");
            let fs_type = fields.next()?;
            path.starts_with(&mount_point)
                .then(|| (mount_point.len(), format!("{fs_type} on {source} (mounted at {mount_point})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_string(), |(_, description)| description)
}

/// Bytes the block device holding `path` has written so far (sectors written, from
/// `/sys/dev/block/<major>:<minor>/stat`): data, metadata and journal, whoever wrote them.
///
/// Not a process's `write_bytes` (`/proc/<pid>/io`): that counts a page each time a write dirties
/// it again, so small writes (a page re-dirtied after each fsync) and overwrites of reused files
/// count many times what reaches the disk. `None` off a block device (tmpfs, overlay).
pub fn device_written_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(device), libc::minor(device));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    // Fields: read I/Os, read merges, read sectors, read ticks, write I/Os, write merges,
    // write sectors, … (Documentation/block/stat.rst); sectors are 512 bytes.
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// Waits, at most `max`, until the machine's storage is idle: less than 2 % of the last 10 s
/// spent with some task waiting for I/O (`/proc/pressure/io`). Deleting a finished run's
/// gigabytes on a filesystem mounted with `discard` keeps the disk busy for tens of seconds,
/// which would slow whatever is measured next. Returns how long it waited; at once without
/// pressure accounting.
pub fn wait_until_idle(max: Duration) -> Duration {
    let began = Instant::now();
    while began.elapsed() < max {
        let busy = std::fs::read_to_string("/proc/pressure/io").ok().and_then(|text| some_avg10(&text));
        match busy {
            Some(percent) if percent >= 2.0 => std::thread::sleep(Duration::from_millis(500)),
            _ => break,
        }
    }
    began.elapsed()
}

/// [`wait_until_idle`] for at most 90 s, saying so when it waited: before a measurement, so
/// that earlier work (a previous run's deletions) does not slow it.
pub fn wait_for_idle_storage() {
    let waited = wait_until_idle(Duration::from_secs(90));
    if waited >= Duration::from_secs(1) {
        println!("   (waited {:.0} s for the disk to go idle)", waited.as_secs_f64());
    }
}

/// The `some avg10=` figure of a pressure file (`some avg10=1.23 avg60=… total=…`).
fn some_avg10(pressure: &str) -> Option<f64> {
    let line = pressure.lines().find(|line| line.starts_with("some "))?;
    line.split_whitespace().find_map(|field| field.strip_prefix("avg10="))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_measurement_writes_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = Pattern {
            direct_bytes: 1 << 20,
            buffered_duration: Duration::from_millis(50),
            write_bytes: 64 * 1024,
            fsync_every: 256 * 1024,
        };
        let mib_s = measure_buffered_fsync(&dir.path().join("f"), pattern).unwrap();
        assert!(mib_s > 0.0);
        assert!(!dir.path().join("f").exists());
    }

    #[test]
    fn io_pressure_is_read_from_the_some_line() {
        let text = "some avg10=44.79 avg60=30.96 avg300=18.17 total=5770505863\nfull avg10=40.91 avg60=25.57 avg300=14.37 total=2910188813\n";
        assert_eq!(some_avg10(text), Some(44.79));
        assert_eq!(some_avg10("full avg10=1.00 avg60=0 avg300=0 total=0\n"), None);
    }

    #[test]
    fn filesystem_of_root_is_known() {
        assert_ne!(filesystem_of(Path::new("/")), "unknown");
    }

    #[test]
    fn a_synced_write_counts_as_written_by_the_device() {
        // Beside the sources, not in /tmp: a tmpfs has no device.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let Some(before) = device_written_bytes(dir.path()) else {
            // A checkout on tmpfs, an overlay or a filesystem with anonymous device numbers
            // (btrfs): there is no device to count, and the bench prints "?".
            eprintln!("no block device under {}: {}", dir.path().display(), filesystem_of(dir.path()));
            return;
        };
        let file = File::create(dir.path().join("f")).unwrap();
        file.write_all_at(&vec![7u8; 1 << 20], 0).unwrap();
        file.sync_data().unwrap();
        assert!(device_written_bytes(dir.path()).unwrap() >= before + (1 << 20));
    }
}
