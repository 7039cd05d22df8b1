//! Behaviour every [`Backend`] must show, as reusable async checks.
//!
//! Each backend's own tests call [`run_all`] against a fresh, empty
//! location, so the local directory and S3 backends are held to one contract.

use std::sync::Arc;

use bytes::Bytes;

use crate::{Backend, FileType, Handle, PutOptions, StoreError};

fn hex_name(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}

/// Runs every check in order. Panics (test failure) on the first violation.
pub async fn run_all(be: &dyn Backend) {
    create_is_once(be).await;
    put_get_round_trip(be).await;
    range_reads(be).await;
    missing_objects(be).await;
    list_by_type(be).await;
    journals(be).await;
    create_new_refuses_existing(be).await;
    delete_is_idempotent(be).await;
}

pub async fn create_is_once(be: &dyn Backend) {
    be.create().await.expect("create on an empty location");
    be.put(&Handle::config(), Bytes::from_static(b"cfg"), PutOptions::create_new())
        .await
        .expect("first config write");
    assert!(matches!(be.create().await, Err(StoreError::AlreadyExists { .. })));
}

pub async fn put_get_round_trip(be: &dyn Backend) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let h = Handle::new(FileType::Pack, hex_name(0x11));
    be.put(&h, Bytes::from(data.clone()), PutOptions::default()).await.unwrap();
    assert_eq!(be.get(&h, None).await.unwrap(), data);
    assert_eq!(be.stat(&h).await.unwrap().size, data.len() as u64);
    // Overwrite replaces the whole object.
    be.put(&h, Bytes::from_static(b"short"), PutOptions::default()).await.unwrap();
    assert_eq!(be.get(&h, None).await.unwrap(), &b"short"[..]);
    be.put(&h, Bytes::from(data), PutOptions::default()).await.unwrap();
}

pub async fn range_reads(be: &dyn Backend) {
    let h = Handle::new(FileType::Pack, hex_name(0x11));
    let whole = be.get(&h, None).await.unwrap();
    assert_eq!(be.get(&h, Some(10..20)).await.unwrap(), whole[10..20]);
    let end = whole.len() as u64;
    assert_eq!(be.get(&h, Some(end - 4..end)).await.unwrap(), whole[whole.len() - 4..]);
    assert!(be.get(&h, Some(end - 4..end + 10)).await.is_err(), "reading past the end must fail");
}

pub async fn missing_objects(be: &dyn Backend) {
    let h = Handle::new(FileType::Index, hex_name(0x99));
    assert!(be.get(&h, None).await.unwrap_err().is_not_found());
    assert!(be.stat(&h).await.unwrap_err().is_not_found());
    assert!(!be.exists(&h).await.unwrap());
}

pub async fn list_by_type(be: &dyn Backend) {
    for seed in [0x21u8, 0x22, 0x23] {
        let h = Handle::new(FileType::Snapshot, hex_name(seed));
        be.put(&h, Bytes::from(vec![seed; seed as usize]), PutOptions::default()).await.unwrap();
    }
    let mut listed = be.list(FileType::Snapshot).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = listed.iter().map(|o| o.name.clone()).collect();
    assert_eq!(names, vec![hex_name(0x21), hex_name(0x22), hex_name(0x23)]);
    assert_eq!(listed[0].size, 0x21);
    let packs = be.list(FileType::Pack).await.unwrap();
    assert!(packs.iter().any(|o| o.name == hex_name(0x11)), "packs are listed across fan-out dirs");
    assert!(be.list(FileType::Index).await.unwrap().is_empty());
}

/// Journal entries live at their documented paths (an older journal outside
/// `cairn/journal/` included) and are listed together as `<journal>/<entry>`,
/// and only they: other objects under `cairn/` are not journal entries.
pub async fn journals(be: &dyn Backend) {
    let wal = Handle::journal("wal", "000000010000000000000001");
    let oplog = Handle::journal("oplog", "0000000001-0000000002.oplog");
    assert_eq!(wal.path(), "cairn/wal/000000010000000000000001");
    assert_eq!(oplog.path(), "cairn/journal/oplog/0000000001-0000000002.oplog");
    be.put(&wal, Bytes::from_static(b"segment"), PutOptions::create_new()).await.unwrap();
    be.put(&oplog, Bytes::from_static(b"slice"), PutOptions::create_new()).await.unwrap();
    let revocation = Handle::new(FileType::KeyRevocation, hex_name(0x51));
    be.put(&revocation, Bytes::from_static(b"record"), PutOptions::create_new()).await.unwrap();

    let mut listed = be.list(FileType::Journal).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = listed.iter().map(|o| (o.name.as_str(), o.size)).collect();
    assert_eq!(names, [("oplog/0000000001-0000000002.oplog", 5), ("wal/000000010000000000000001", 7)]);
    // A listed name is the handle's name again.
    assert_eq!(be.get(&Handle::new(FileType::Journal, &listed[0].name), None).await.unwrap(), &b"slice"[..]);
    let revocations: Vec<_> =
        be.list(FileType::KeyRevocation).await.unwrap().into_iter().map(|o| o.name).collect();
    assert_eq!(revocations, [hex_name(0x51)]);
    for h in [wal, oplog, revocation] {
        be.delete(&h).await.unwrap();
    }
    assert!(be.list(FileType::Journal).await.unwrap().is_empty());
}

pub async fn create_new_refuses_existing(be: &dyn Backend) {
    let h = Handle::new(FileType::Lock, hex_name(0x31));
    be.put(&h, Bytes::from_static(b"first"), PutOptions::create_new()).await.unwrap();
    let err = be.put(&h, Bytes::from_static(b"second"), PutOptions::create_new()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "got {err:?}");
    assert_eq!(be.get(&h, None).await.unwrap(), &b"first"[..]);
    be.delete(&h).await.unwrap();
}

/// Sixteen writers race to create the same object: exactly one may win.
pub async fn create_new_race<B: Backend + 'static>(be: Arc<B>) {
    let h = Handle::new(FileType::Lock, hex_name(0x41));
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let be = be.clone();
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            be.put(&h, Bytes::from(vec![i; 64]), PutOptions::create_new()).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => winners += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error in race: {e}"),
        }
    }
    assert_eq!(winners, 1);
    be.delete(&h).await.unwrap();
}

pub async fn delete_is_idempotent(be: &dyn Backend) {
    let h = Handle::new(FileType::Snapshot, hex_name(0x21));
    be.delete(&h).await.unwrap();
    be.delete(&h).await.unwrap();
    assert!(!be.exists(&h).await.unwrap());
}
