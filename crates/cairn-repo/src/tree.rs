//! Trees: the directory listings snapshots are made of.
//!
//! A tree blob is the JSON `{"nodes":[...]}` followed by a newline, exactly as
//! restic writes it; its id is the SHA-256 of those bytes. Nodes are sorted by
//! name. Node fields mirror restic's `Node` struct (names quoted the way Go's
//! `strconv.Quote` does, modes in Go's `os.FileMode` bit layout), so restic
//! can restore what cairn backs up and the other way round.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::gocompat::{quote_name, unquote_name};
use crate::id::Id;

/// Go `os.FileMode` type bits, as restic stores them in `mode`.
pub mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
    pub const PERM: u32 = 0o777;

    /// Converts a Unix `st_mode` into Go's FileMode bits (restic's mask applied).
    pub fn from_unix(st_mode: u32) -> u32 {
        let mut m = st_mode & PERM;
        if st_mode & 0o4000 != 0 {
            m |= SETUID;
        }
        if st_mode & 0o2000 != 0 {
            m |= SETGID;
        }
        if st_mode & 0o1000 != 0 {
            m |= STICKY;
        }
        m |= match st_mode & 0o170000 {
            0o040000 => DIR,
            0o120000 => SYMLINK,
            0o060000 => DEVICE,
            0o020000 => DEVICE | CHAR_DEVICE,
            0o010000 => NAMED_PIPE,
            0o140000 => SOCKET,
            _ => 0,
        };
        m
    }

    /// Permission, setuid/setgid and sticky bits as a Unix mode (no type bits).
    pub fn to_unix_permissions(go: u32) -> u32 {
        let mut m = go & PERM;
        if go & SETUID != 0 {
            m |= 0o4000;
        }
        if go & SETGID != 0 {
            m |= 0o2000;
        }
        if go & STICKY != 0 {
            m |= 0o1000;
        }
        m
    }
}

/// What a node is; restic's `type` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    File,
    Dir,
    Symlink,
    /// Block device.
    Dev,
    Chardev,
    Fifo,
    Socket,
    /// Anything a newer restic may write that cairn does not know.
    #[serde(other)]
    Unknown,
}

/// One extended attribute (value base64 in JSON, as Go encodes `[]byte`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedAttribute {
    pub name: String,
    #[serde(serialize_with = "ser_b64", deserialize_with = "de_b64")]
    pub value: Vec<u8>,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    #[serde(serialize_with = "ser_name", deserialize_with = "de_name")]
    pub name: Vec<u8>,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    pub mtime: DateTime<FixedOffset>,
    pub atime: DateTime<FixedOffset>,
    pub ctime: DateTime<FixedOffset>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device_id: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub links: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub linktarget: String,
    /// Raw bytes of a link target that is not valid UTF-8 (restic ≥ 0.16).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_b64",
        deserialize_with = "de_opt_b64"
    )]
    pub linktarget_raw: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extended_attributes: Vec<ExtendedAttribute>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device: u64,
    /// Data blob ids, in order. Always an array for files (restic's `check`
    /// rejects a file with `null` content), `null` for everything else.
    #[serde(default)]
    pub content: Option<Vec<Id>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn ser_name<S: Serializer>(name: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&quote_name(name))
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    unquote_name(&s).map_err(serde::de::Error::custom)
}

fn ser_b64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(v))
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <Option<String>>::deserialize(d)?.unwrap_or_default();
    B64.decode(s).map_err(serde::de::Error::custom)
}

fn ser_opt_b64<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&B64.encode(v)),
        None => s.serialize_none(),
    }
}

fn de_opt_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    match <Option<String>>::deserialize(d)? {
        Some(s) => B64.decode(s).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

impl Node {
    /// The name as it appears on a Unix file system.
    pub fn name_os(&self) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&self.name)
    }

    /// The name for messages (lossy for non-UTF-8 names).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// The symlink target as raw bytes.
    pub fn link_target_bytes(&self) -> Vec<u8> {
        match &self.linktarget_raw {
            Some(raw) => raw.clone(),
            None => self.linktarget.as_bytes().to_vec(),
        }
    }

    /// Sets the link target, keeping non-UTF-8 targets exact in `linktarget_raw`.
    pub fn set_link_target(&mut self, target: &[u8]) {
        match std::str::from_utf8(target) {
            Ok(s) => {
                self.linktarget = s.to_string();
                self.linktarget_raw = None;
            }
            Err(_) => {
                self.linktarget = String::from_utf8_lossy(target).into_owned();
                self.linktarget_raw = Some(target.to_vec());
            }
        }
    }
}

/// A directory listing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Serialises the tree the way restic does (JSON plus a trailing newline),
    /// sorting nodes by name first.
    pub fn to_blob(&mut self) -> Vec<u8> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = serde_json::to_vec(self).expect("trees always serialise");
        out.push(b'\n');
        out
    }

    pub fn from_blob(data: &[u8]) -> Result<Tree, serde_json::Error> {
        serde_json::from_slice(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_tree_and_keeps_shape() {
        let text = r#"{"nodes":[{"name":"testfile","type":"file","mode":420,"mtime":"2014-12-06T17:50:23.34513538+01:00","atime":"2014-12-06T17:50:23.338468713+01:00","ctime":"2014-12-06T17:50:23.34513538+01:00","uid":1000,"gid":100,"user":"fd0","inode":416863351,"size":1234,"links":1,"content":["50f77b3b4291e8411a027b9f9b9e64658181cc676ce6ba9958b95f268cb1109d"]},{"name":"sub","type":"dir","mode":2147484141,"mtime":"2014-12-06T17:50:23.34513538+01:00","atime":"2014-12-06T17:50:23.338468713+01:00","ctime":"2014-12-06T17:50:23.34513538+01:00","uid":0,"gid":0,"content":null,"subtree":"b26e315b0988ddcd1cee64c351d13a100fedbc9fdbb144a67d1b765ab280b4dc","generic_attributes":{}}]}"#;
        let mut tree = Tree::from_blob(text.as_bytes()).unwrap();
        assert_eq!(tree.nodes[0].node_type, NodeType::File);
        assert_eq!(tree.nodes[0].content.as_ref().unwrap().len(), 1);
        assert_eq!(tree.nodes[1].mode & go_mode::DIR, go_mode::DIR);
        let blob = tree.to_blob();
        assert!(blob.ends_with(b"}\n"));
        let s = String::from_utf8(blob).unwrap();
        // sorted by name: "sub" < "testfile"
        assert!(s.find("\"sub\"").unwrap() < s.find("\"testfile\"").unwrap());
        assert!(s.contains(r#""content":null,"subtree":"b26e"#));
    }

    #[test]
    fn odd_names_round_trip() {
        for name in [&b"quote\"back\\slash"[..], b"new\nline", b"caf\xe9", "日本語".as_bytes()] {
            let node = Node {
                name: name.to_vec(),
                node_type: NodeType::File,
                mode: 0o644,
                mtime: DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").unwrap(),
                atime: DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").unwrap(),
                ctime: DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").unwrap(),
                uid: 0,
                gid: 0,
                user: String::new(),
                group: String::new(),
                inode: 0,
                device_id: 0,
                size: 0,
                links: 0,
                linktarget: String::new(),
                linktarget_raw: None,
                extended_attributes: vec![],
                device: 0,
                content: Some(vec![]),
                subtree: None,
                error: String::new(),
            };
            let mut tree = Tree { nodes: vec![node] };
            let back = Tree::from_blob(&tree.to_blob()).unwrap();
            assert_eq!(back.nodes[0].name, name);
            assert_eq!(back.nodes[0].content, Some(vec![]));
        }
    }

    #[test]
    fn unix_modes_map_to_go_file_modes() {
        assert_eq!(go_mode::from_unix(0o100644), 0o644);
        assert_eq!(go_mode::from_unix(0o040755), 2147484141);
        assert_eq!(go_mode::from_unix(0o120777), 134218239);
        assert_eq!(go_mode::from_unix(0o104755), go_mode::SETUID | 0o755);
        assert_eq!(go_mode::to_unix_permissions(go_mode::SETUID | go_mode::STICKY | 0o700), 0o5700);
    }
}
