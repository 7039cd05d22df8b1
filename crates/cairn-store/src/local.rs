//! The local-directory backend: the embedded default.
//!
//! Layout is restic's: `config`, `keys/`, `snapshots/`, `index/`, `locks/`,
//! `data/00`..`data/ff/`, and `tmp/` for writes in progress; cairn's own
//! objects (journals, key revocations) sit under `cairn/`, in directories
//! made on their first write.
//!
//! Every write goes to a fresh file in `tmp/`, is fsynced, then moved into
//! place with `rename` (overwrite) or `link` (create-new, which fails if the
//! name exists), and the target directory is fsynced. A reader therefore
//! never sees a partial object, and a crash leaves at most a stray file in
//! `tmp/`, which restic and cairn both ignore.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use crate::{
    Backend, FileType, Handle, JOURNAL_ROOT, JOURNALS_OUTSIDE_ROOT, ObjectInfo, PutMode, PutOptions,
    StoreError, journal_below_root, journal_dir,
};

/// A repository in a local (or mounted) directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, handle: &Handle) -> PathBuf {
        self.root.join(handle.path())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.expect("storage task panicked")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::from_io(path.display().to_string(), e)
}

fn write_atomically(root: &Path, target: &Path, data: &[u8], mode: PutMode) -> Result<(), StoreError> {
    let tmp_dir = root.join("tmp");
    if !tmp_dir.is_dir() {
        fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    }
    let tmp = tmp_dir.join(format!(".cairn-{:016x}.tmp", rand::thread_rng().r#gen::<u64>()));
    let result = (|| {
        let f = write_new_file(&tmp, data).map_err(io(target))?;
        f.sync_all().map_err(io(target))?;
        // Objects are immutable; read-only files guard against accidents, as restic does.
        f.set_permissions(fs::Permissions::from_mode(0o400)).map_err(io(&tmp))?;
        drop(f);
        let parent = target.parent().expect("object paths have a parent");
        // `cairn/…` directories appear with their first object.
        crate::durable::create_dir_all(parent).map_err(io(parent))?;
        match mode {
            PutMode::Overwrite => fs::rename(&tmp, target).map_err(io(target))?,
            PutMode::CreateNew => {
                fs::hard_link(&tmp, target).map_err(io(target))?;
                let _ = fs::remove_file(&tmp);
            }
        }
        crate::durable::sync_path(parent).map_err(io(parent))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Bytes the O_DIRECT path needs aligned (address, length and offset).
const DIRECT_ALIGN: usize = 4096;

/// Writes `data` into a new file. Large buffers that start 4 KiB-aligned
/// (packs are built that way) go to disk with `O_DIRECT`: copying a pack
/// into the page cache costs as much CPU as hashing it, and nothing reads
/// it back soon. The unaligned tail, small objects, and file systems
/// without `O_DIRECT` (tmpfs) use ordinary writes.
fn write_new_file(path: &Path, data: &[u8]) -> std::io::Result<File> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let aligned = (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
    let direct_len =
        if aligned && data.len() >= (1 << 20) { data.len() / DIRECT_ALIGN * DIRECT_ALIGN } else { 0 };
    if direct_len > 0 {
        let direct = OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(path);
        match direct {
            Ok(f) => {
                match f.write_all_at(&data[..direct_len], 0) {
                    Ok(()) => {
                        drop(f);
                        let f = OpenOptions::new().write(true).open(path)?;
                        f.write_all_at(&data[direct_len..], direct_len as u64)?;
                        return Ok(f);
                    }
                    // A short direct write leaves a misaligned remainder; redo it buffered.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => fs::remove_file(path)?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(data)?;
    Ok(f)
}

/// Reads `range` of a file with `O_DIRECT` into an aligned buffer. Restores
/// and checks read whole packs once; passing them through the page cache
/// costs CPU and evicts what is worth caching. `Ok(None)` when the file
/// system does not support it (the caller reads normally).
fn read_direct(path: &Path, range: Range<u64>) -> std::io::Result<Option<Bytes>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const A: u64 = DIRECT_ALIGN as u64;
    let f = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    let aligned_start = range.start / A * A;
    let want = (range.end.div_ceil(A) * A - aligned_start) as usize;
    let mut buf = vec![0u8; want + DIRECT_ALIGN];
    let pad = (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
    let mut got = 0usize;
    while got < want {
        match f.read_at(&mut buf[pad + got..pad + want], aligned_start + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if n % DIRECT_ALIGN != 0 {
                    break; // end of file
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let from = pad + (range.start - aligned_start) as usize;
    let to = from + (range.end - range.start) as usize;
    if pad + got < to {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    Ok(Some(Bytes::from(buf).slice(from..to)))
}

/// Reads at least this much with `O_DIRECT`.
const DIRECT_READ_MIN: u64 = 256 << 10;

fn read_range(path: &Path, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
    let mut f = File::open(path).map_err(io(path))?;
    let size = f.metadata().map_err(io(path))?.len();
    let wanted = range.clone().unwrap_or(0..size);
    if wanted.end <= size && wanted.start <= wanted.end && wanted.end - wanted.start >= DIRECT_READ_MIN {
        match read_direct(path, wanted) {
            Ok(Some(b)) => return Ok(b),
            Ok(None) => {}
            Err(e) => return Err(StoreError::from_io(path.display().to_string(), e)),
        }
    }
    match range {
        None => {
            let mut buf = Vec::with_capacity(f.metadata().map(|m| m.len() as usize).unwrap_or(0));
            f.read_to_end(&mut buf).map_err(io(path))?;
            Ok(buf.into())
        }
        Some(r) => {
            if r.end > size || r.start > r.end {
                return Err(StoreError::ShortRead {
                    path: path.display().to_string(),
                    start: r.start,
                    end: r.end,
                    actual: size,
                });
            }
            f.seek(SeekFrom::Start(r.start)).map_err(io(path))?;
            // read_to_end into reserved capacity: no zero-filling of a buffer
            // that is about to be overwritten.
            let len = (r.end - r.start) as usize;
            let mut buf = Vec::with_capacity(len);
            f.take(len as u64).read_to_end(&mut buf).map_err(io(path))?;
            if buf.len() != len {
                return Err(StoreError::ShortRead {
                    path: path.display().to_string(),
                    start: r.start,
                    end: r.end,
                    actual: r.start + buf.len() as u64,
                });
            }
            Ok(buf.into())
        }
    }
}

fn list_dir(dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<(), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::from_io(dir.display().to_string(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let meta = entry.metadata().map_err(io(dir))?;
        if !meta.is_file() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if name.starts_with('.') {
            continue;
        }
        out.push(ObjectInfo { name, size: meta.len(), modified: meta.modified().ok() });
    }
    Ok(())
}

/// Every journal's entries, named `<journal>/<entry>`: the journals outside
/// the root, then each directory below `cairn/journal/`.
fn list_journals(root: &Path, out: &mut Vec<ObjectInfo>) -> Result<(), StoreError> {
    let mut journals: Vec<String> = JOURNALS_OUTSIDE_ROOT.iter().map(|j| j.to_string()).collect();
    let below = root.join(JOURNAL_ROOT);
    match fs::read_dir(&below) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io(&below))?;
                if !entry.file_type().map_err(io(&below))?.is_dir() {
                    continue;
                }
                if let Some(name) = entry.file_name().to_str().filter(|n| journal_below_root(n)) {
                    journals.push(name.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::from_io(below.display().to_string(), e)),
    }
    for journal in journals {
        let mut entries = Vec::new();
        list_dir(&root.join(journal_dir(&journal)), &mut entries)?;
        out.extend(entries.into_iter().map(|o| ObjectInfo { name: format!("{journal}/{}", o.name), ..o }));
    }
    Ok(())
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        blocking(move || {
            let config = root.join("config");
            if config.exists() {
                return Err(StoreError::AlreadyExists { path: config.display().to_string() });
            }
            for kind in [FileType::Key, FileType::Snapshot, FileType::Index, FileType::Lock] {
                let d = root.join(kind.dir());
                fs::create_dir_all(&d).map_err(io(&d))?;
            }
            for i in 0..=255u8 {
                let d = root.join("data").join(format!("{i:02x}"));
                fs::create_dir_all(&d).map_err(io(&d))?;
            }
            let tmp = root.join("tmp");
            fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            Ok(())
        })
        .await
    }

    async fn get(&self, handle: &Handle, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
        let path = self.path_of(handle);
        blocking(move || read_range(&path, range)).await
    }

    async fn put(&self, handle: &Handle, data: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        let root = self.root.clone();
        let target = self.path_of(handle);
        blocking(move || write_atomically(&root, &target, &data, opts.mode)).await
    }

    async fn stat(&self, handle: &Handle) -> Result<ObjectInfo, StoreError> {
        let path = self.path_of(handle);
        let name = handle.name.clone();
        blocking(move || {
            let meta = fs::metadata(&path).map_err(io(&path))?;
            Ok(ObjectInfo { name, size: meta.len(), modified: meta.modified().ok() })
        })
        .await
    }

    async fn list(&self, kind: FileType) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            match kind {
                FileType::Config => {
                    if let Ok(meta) = fs::metadata(root.join("config")) {
                        out.push(ObjectInfo {
                            name: "config".into(),
                            size: meta.len(),
                            modified: meta.modified().ok(),
                        });
                    }
                }
                FileType::Pack => {
                    let data = root.join("data");
                    let subdirs = match fs::read_dir(&data) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                        Err(e) => return Err(StoreError::from_io(data.display().to_string(), e)),
                    };
                    for sub in subdirs {
                        let sub = sub.map_err(io(&data))?;
                        if sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            list_dir(&sub.path(), &mut out)?;
                        }
                    }
                }
                FileType::Journal => list_journals(&root, &mut out)?,
                kind => list_dir(&root.join(kind.dir()), &mut out)?,
            }
            Ok(out)
        })
        .await
    }

    async fn delete(&self, handle: &Handle) -> Result<(), StoreError> {
        let path = self.path_of(handle);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io(path.display().to_string(), e)),
        })
        .await
    }
}

impl LocalBackend {
    /// Removes write-in-progress files older than `max_age` from `tmp/`: what
    /// a killed run leaves behind. Returns how many were removed.
    pub async fn clean_tmp(&self, max_age: std::time::Duration) -> Result<usize, StoreError> {
        let tmp = self.root.join("tmp");
        blocking(move || {
            let mut removed = 0;
            let Ok(entries) = fs::read_dir(&tmp) else { return Ok(0) };
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > max_age)
                    .unwrap_or(false);
                if old && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_backend_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let be = LocalBackend::new(dir.path().join("repo"));
        conformance::run_all(&be).await;
        conformance::create_new_race(std::sync::Arc::new(be)).await;
    }

    #[test]
    fn direct_and_buffered_writes_store_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        // An aligned region inside a larger buffer, with an unaligned length.
        let mut buf = vec![0u8; (3 << 20) + 2 * DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let aligned = &buf[start..start + (3 << 20) + 123];
        let unaligned = &buf[start + 1..start + 1 + (2 << 20)];
        for (name, data) in [("aligned", aligned), ("unaligned", unaligned), ("small", &buf[..100])] {
            let p = dir.path().join(name);
            write_new_file(&p, data).unwrap().sync_all().unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), data, "{name}");
        }
    }

    #[test]
    fn direct_reads_return_exact_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("obj");
        let data: Vec<u8> = (0..(1usize << 20) + 777).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        for (a, b) in [(0, data.len()), (1, data.len()), (4095, 300_000), (5000, data.len() - 3)] {
            let got = read_range(&p, Some(a as u64..b as u64)).unwrap();
            assert_eq!(&got[..], &data[a..b], "{a}..{b}");
        }
        assert_eq!(&read_range(&p, None).unwrap()[..], &data[..]);
        assert!(read_range(&p, Some(0..data.len() as u64 + 1)).is_err());
    }

    #[tokio::test]
    async fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let be = LocalBackend::new(dir.path());
        be.create().await.unwrap();
        // A directory where the object should go makes the final rename fail.
        let h = Handle::new(FileType::Snapshot, "ab".repeat(32));
        std::fs::create_dir_all(dir.path().join(h.path()).join("occupied")).unwrap();
        assert!(be.put(&h, Bytes::from_static(b"x"), PutOptions::default()).await.is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
