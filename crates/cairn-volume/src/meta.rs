//! File metadata in both directions: `lstat` results into tree [`Node`]s
//! (backup), and nodes back onto the file system (restore).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use cairn_repo::tree::{ExtendedAttribute, Node, NodeType, go_mode};
use chrono::{DateTime, FixedOffset, TimeZone};

/// Caches uid→name and gid→name lookups (one `getpwuid` per owner, not per file).
#[derive(Default)]
pub struct NameCache {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

impl NameCache {
    pub fn user(&self, uid: u32) -> String {
        self.users
            .lock()
            .expect("name cache")
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name).unwrap_or_default()
            })
            .clone()
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups
            .lock()
            .expect("name cache")
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name).unwrap_or_default()
            })
            .clone()
    }
}

fn local_time(secs: i64, nanos: i64) -> DateTime<FixedOffset> {
    let nanos = nanos.clamp(0, 999_999_999) as u32;
    chrono::Local
        .timestamp_opt(secs, nanos)
        .single()
        .map(|t| t.fixed_offset())
        .unwrap_or_else(|| DateTime::from_timestamp(secs, nanos).unwrap_or_default().fixed_offset())
}

/// The node type for a file-type mode.
pub fn node_type(meta: &Metadata) -> NodeType {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeType::Dir
    } else if ft.is_symlink() {
        NodeType::Symlink
    } else if ft.is_file() {
        NodeType::File
    } else if ft.is_fifo() {
        NodeType::Fifo
    } else if ft.is_socket() {
        NodeType::Socket
    } else if ft.is_char_device() {
        NodeType::Chardev
    } else if ft.is_block_device() {
        NodeType::Dev
    } else {
        NodeType::Unknown
    }
}

/// Builds a node (without content or subtree) from `lstat` metadata.
pub fn node_from_metadata(
    name: &OsStr,
    path: &Path,
    meta: &Metadata,
    names: &NameCache,
    xattrs: bool,
) -> Node {
    let node_type = node_type(meta);
    let mut node = Node {
        name: name.as_bytes().to_vec(),
        node_type,
        mode: go_mode::from_unix(meta.mode()),
        mtime: local_time(meta.mtime(), meta.mtime_nsec()),
        atime: local_time(meta.atime(), meta.atime_nsec()),
        ctime: local_time(meta.ctime(), meta.ctime_nsec()),
        uid: meta.uid(),
        gid: meta.gid(),
        user: names.user(meta.uid()),
        group: names.group(meta.gid()),
        inode: meta.ino(),
        device_id: meta.dev(),
        size: if node_type == NodeType::File { meta.size() } else { 0 },
        links: meta.nlink(),
        linktarget: String::new(),
        linktarget_raw: None,
        extended_attributes: Vec::new(),
        device: if matches!(node_type, NodeType::Chardev | NodeType::Dev) { meta.rdev() } else { 0 },
        content: None,
        subtree: None,
        error: String::new(),
    };
    if node_type == NodeType::Symlink
        && let Ok(target) = std::fs::read_link(path)
    {
        node.set_link_target(target.as_os_str().as_bytes());
    }
    if xattrs {
        node.extended_attributes = read_xattrs(path);
    }
    node
}

fn read_xattrs(path: &Path) -> Vec<ExtendedAttribute> {
    let Ok(names) = xattr::list(path) else { return Vec::new() };
    let mut out: Vec<ExtendedAttribute> = names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some(ExtendedAttribute { name: name.to_string_lossy().into_owned(), value })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether a file is unchanged since the parent snapshot recorded it, so its
/// content can be reused without reading it (restic's rule: type, size,
/// mtime, ctime and inode all equal).
pub fn unchanged(current: &Node, previous: &Node) -> bool {
    previous.node_type == NodeType::File
        && current.size == previous.size
        && current.mtime == previous.mtime
        && current.ctime == previous.ctime
        && current.inode == previous.inode
        && previous.content.is_some()
}

/// Applies ownership (when running as root), mode, xattrs and times to an
/// open regular file or directory: the same as [`apply_metadata`] without
/// path lookups, and on the descriptor the restore then fsyncs.
pub fn apply_file_metadata(file: &std::fs::File, node: &Node, is_root: bool) -> Result<(), String> {
    use xattr::FileExt as _;
    if is_root {
        std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid)).map_err(|e| format!("chown: {e}"))?;
    }
    let perms = std::fs::Permissions::from_mode(go_mode::to_unix_permissions(node.mode));
    file.set_permissions(perms).map_err(|e| format!("chmod: {e}"))?;
    for xa in &node.extended_attributes {
        if let Err(e) = file.set_xattr(&xa.name, &xa.value) {
            tracing::debug!(attr = %xa.name, error = %e, "extended attribute not restored");
        }
    }
    let to_st = |t: &DateTime<FixedOffset>| {
        std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::new(t.timestamp().max(0) as u64, t.timestamp_subsec_nanos()))
            .unwrap_or(std::time::UNIX_EPOCH)
    };
    let times = std::fs::FileTimes::new().set_accessed(to_st(&node.atime)).set_modified(to_st(&node.mtime));
    file.set_times(times).map_err(|e| format!("set times: {e}"))
}

/// Applies ownership (when running as root), mode, xattrs and times to a
/// restored path. Errors are returned as text for the restore report.
pub fn apply_metadata(path: &Path, node: &Node, is_root: bool) -> Result<(), String> {
    let symlink = node.node_type == NodeType::Symlink;
    if is_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    if !symlink {
        let perms = std::fs::Permissions::from_mode(go_mode::to_unix_permissions(node.mode));
        std::fs::set_permissions(path, perms).map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    for xa in &node.extended_attributes {
        if symlink {
            break;
        }
        // Attributes of other namespaces (security.*, trusted.*) may be refused; that is not data loss.
        if let Err(e) = xattr::set(path, &xa.name, &xa.value) {
            tracing::debug!(path = %path.display(), attr = %xa.name, error = %e, "extended attribute not restored");
        }
    }
    let to_ft = |t: &DateTime<FixedOffset>| {
        filetime::FileTime::from_unix_time(t.timestamp(), t.timestamp_subsec_nanos())
    };
    filetime::set_symlink_file_times(path, to_ft(&node.atime), to_ft(&node.mtime))
        .map_err(|e| format!("set times {}: {e}", path.display()))?;
    Ok(())
}
