//! Making writes to a local file system durable.
//!
//! A write is durable once its data and inode are on stable storage (an
//! `fsync` of the file) and so is the directory entry that names it (an
//! `fsync` of the directory). Without both, a crash can leave a complete-
//! looking name over missing data, or no name at all. These helpers are
//! shared by the local backend, restores and the WAL commands, so every
//! place that promises durability does it the same way.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Makes a file's data and inode durable; for a directory, its entries.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Creates directory `dir` and whatever of its parents is missing, each
/// named durably in its parent (a new directory is an entry of its parent
/// like any file), so that a file later made durable in `dir` cannot
/// vanish with a directory a crash forgot.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_dir(dir);
    create_dir_all(parent)?;
    if let Err(e) = std::fs::create_dir(dir) {
        // Made by a concurrent writer, whose fsync of the parent may not
        // have happened yet: this one's is still needed.
        if !(e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir()) {
            return Err(e);
        }
    }
    sync_path(parent)
}

/// Writes `content` to `dest` so that a crash leaves either the old file or
/// the whole new one: written under `temp` (same directory) with `mode`
/// (before the umask), fsynced, renamed over `dest`, and the directory
/// fsynced. `temp` is removed if anything fails.
pub fn replace_file(temp: &Path, dest: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let written = (|| {
        let mut file =
            std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(temp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(temp, dest)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    written?;
    sync_path(parent_dir(dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_dir_all_makes_what_is_missing_and_accepts_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("cairn/journal/oplog");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(create_dir_all(&dir.path().join("file/sub")).is_err(), "a file is not a directory");
    }

    #[test]
    fn replace_file_swaps_content_whole_and_cleans_up_after_failure() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        replace_file(&dir.path().join(".f.tmp"), &dest, b"new content", 0o600).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new content");
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join(".f.tmp").exists());

        // Renaming over a directory fails: the old entry stays, the temp file goes.
        let blocked = dir.path().join("d");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        assert!(replace_file(&dir.path().join(".d.tmp"), &blocked, b"y", 0o600).is_err());
        assert!(blocked.join("x").exists());
        assert!(!dir.path().join(".d.tmp").exists());
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("RECOVERYXLOG")), Path::new("."));
        assert_eq!(parent_dir(Path::new("pg_wal/RECOVERYXLOG")), Path::new("pg_wal"));
    }
}
