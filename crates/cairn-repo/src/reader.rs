//! The files of one snapshot, read back verified.
//!
//! Every source's restore and verification starts here: find a file of the
//! snapshot by its path, then read it as a stream of blobs, each checked
//! against its SHA-256 before it is handed out (a blob that does not hash to
//! its id is an error, never data). Small documents (manifests) are read
//! whole; larger files are streamed with a few blobs read ahead.

use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::tree::{Node, NodeType};
use crate::{BlobType, Id, Index, RepoError, Repository, Result, Snapshot};

/// Blobs read ahead while a file is streamed.
pub const READ_AHEAD: usize = 8;

/// Reads the files of one snapshot.
#[derive(Clone, Copy)]
pub struct SnapshotReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    root: Id,
}

impl std::fmt::Debug for SnapshotReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader").field("root", &self.root.short()).finish_non_exhaustive()
    }
}

impl<'a> SnapshotReader<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, snapshot: &Snapshot) -> SnapshotReader<'a> {
        SnapshotReader { repo, index, root: snapshot.tree }
    }

    pub fn repository(&self) -> &'a Repository {
        self.repo
    }

    pub fn index(&self) -> &'a Index {
        self.index
    }

    /// The entry at `path` (`/`-separated, relative to the snapshot root),
    /// whatever its type, or `None` when the snapshot has nothing there.
    pub async fn entry(&self, path: &str) -> Result<Option<Node>> {
        let mut tree_id = self.root;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let tree = self.repo.load_tree(self.index, &tree_id).await?;
            let Some(node) = tree.nodes.into_iter().find(|n| n.name == part.as_bytes()) else {
                return Ok(None);
            };
            if i + 1 == parts.len() {
                return Ok(Some(node));
            }
            match (node.node_type, node.subtree) {
                (NodeType::Dir, Some(sub)) => tree_id = sub,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The file at `path`; an error naming the path when it is missing or
    /// not a file.
    pub async fn file(&self, path: &str) -> Result<Node> {
        match self.entry(path).await? {
            Some(node) if node.node_type == NodeType::File => Ok(node),
            Some(_) => Err(RepoError::SnapshotFile { path: path.into(), problem: "is not a file".into() }),
            None => Err(RepoError::SnapshotFile { path: path.into(), problem: "is missing".into() }),
        }
    }

    /// A file's content, blob by blob, each verified against its SHA-256
    /// before it is handed out; `read_ahead` blobs are fetched ahead.
    pub fn stream(&self, node: &Node, read_ahead: usize) -> impl Stream<Item = Result<Bytes>> + 'a {
        let repo = self.repo;
        let index = self.index;
        let ids = node.content.clone().unwrap_or_default();
        futures::stream::iter(ids)
            .map(move |id| async move { repo.read_blob(index, BlobType::Data, &id).await.map(Bytes::from) })
            .buffered(read_ahead.max(1))
    }

    /// A small file (a manifest) whole.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        let node = self.file(path).await?;
        let mut data = Vec::with_capacity(node.size as usize);
        let mut blobs = std::pin::pin!(self.stream(&node, 4));
        while let Some(piece) = blobs.try_next().await? {
            data.extend_from_slice(&piece);
        }
        Ok(data)
    }

    /// Copies the file at `path` into `dest` (created or truncated); returns its size.
    pub async fn copy_to(&self, path: &str, dest: &Path) -> Result<u64> {
        let node = self.file(path).await?;
        let io = |e: std::io::Error| RepoError::LocalFile { path: dest.to_path_buf(), source: e };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut blobs = std::pin::pin!(self.stream(&node, READ_AHEAD));
        let mut size = 0u64;
        while let Some(piece) = blobs.try_next().await? {
            file.write_all(&piece).await.map_err(io)?;
            size += piece.len() as u64;
        }
        file.flush().await.map_err(io)?;
        Ok(size)
    }
}
