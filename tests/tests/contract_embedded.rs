//! The store contract against the embedded (SQLite) store, plus what only
//! the embedded store can be asked: no plaintext on disk, the master key
//! matters, tampering is detected, data survives a reopen.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions: a failed step is a failed test"
)]

use byok::crypto::MasterKey;
use byok::domain::{ApiKey, Service, Settings, UserId};
use byok::store::embedded::EmbeddedStore;
use byok::store::{Expected, MetadataStore, SecretStore, StoreError};
use byok_tests::contract::{self, Backend};
use std::path::Path;
use std::sync::Arc;

async fn embedded_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap());
    Backend {
        meta: store.clone(),
        secrets: store.clone(),
        rate: store.clone(),
        audit: store.clone(),
        usage: store.clone(),
        budgets: store.clone(),
        tokens: store.clone(),
        // A second open of the same directory: its own connections and writer thread.
        budgets_elsewhere: Arc::new(
            EmbeddedStore::open(dir.path(), MasterKey::generate()).unwrap(),
        ),
        rotation: store,
        _guard: Box::new(dir),
    }
}

byok_tests::contract_suite!(embedded_backend());

const CANARY: &str = "sk-proj-CANARY-7f3a9c1e5b2d4f6a8c0e";

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

/// Every file under `dir` (incl. the `-wal` and `-shm` files), as bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn raw_db(store: &EmbeddedStore) -> rusqlite::Connection {
    rusqlite::Connection::open(store.db_path()).unwrap()
}

#[tokio::test]
async fn no_plaintext_key_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path(), MasterKey::generate()).unwrap();
    let u = user("canary-user");
    let sref = store
        .put_secret(&u, Service::OpenAi, &ApiKey::new(CANARY), None)
        .await
        .unwrap();
    let rec = contract::record(&u, Service::OpenAi, sref.clone());
    store.put_key(&rec, Expected::Absent).await.unwrap();
    // A second version, so the first is also stored as previous.
    store
        .put_secret(
            &u,
            Service::OpenAi,
            &ApiKey::new(format!("{CANARY}-2")),
            Some(&sref),
        )
        .await
        .unwrap();
    assert_eq!(store.get_secret(&sref).await.unwrap(), ApiKey::new(CANARY));

    let check = |when: &str| {
        let found = files(tmp.path());
        assert!(
            found.iter().any(|(name, _)| name.ends_with("byok.db-wal")),
            "{when}: expected a WAL file"
        );
        for (name, bytes) in &found {
            assert!(
                !contains(bytes, CANARY.as_bytes()),
                "{when}: plaintext key found in {name}"
            );
            assert!(!contains(bytes, b"CANARY"), "{when}: canary part in {name}");
        }
    };
    check("while open");
    drop(store);
    // The WAL may be checkpointed into the main file on close; check again.
    for (name, bytes) in files(tmp.path()) {
        assert!(
            !contains(&bytes, b"CANARY"),
            "after close: plaintext key found in {name}"
        );
    }
}

#[tokio::test]
async fn other_master_key_cannot_decrypt() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path(), MasterKey::generate()).unwrap();
    let sref = store
        .put_secret(&user("u"), Service::Anthropic, &ApiKey::new(CANARY), None)
        .await
        .unwrap();
    drop(store);

    // Another master key is refused when the store opens, before any use.
    let refused = EmbeddedStore::open(tmp.path(), MasterKey::generate());
    assert!(
        matches!(refused, Err(StoreError::WrongMasterKey)),
        "{refused:?}"
    );

    // A row whose master key id was forged to match still fails authentication.
    let other = MasterKey::generate();
    let conn = rusqlite::Connection::open(tmp.path().join("byok.db")).unwrap();
    conn.execute("UPDATE secrets SET master_key_id = ?1", [other.key_id()])
        .unwrap();
    drop(conn);
    let store = EmbeddedStore::open(tmp.path(), other).unwrap();
    let result = store.get_secret(&sref).await;
    assert!(matches!(result, Err(StoreError::Decrypt)), "{result:?}");
    let message = result.unwrap_err().to_string();
    assert!(!message.contains("CANARY"), "{message}");
}

#[tokio::test]
async fn tampered_ciphertext_or_nonce_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path(), MasterKey::generate()).unwrap();
    let u = user("tamper");
    let sref = store
        .put_secret(&u, Service::Groq, &ApiKey::new(CANARY), None)
        .await
        .unwrap();
    let conn = raw_db(&store);
    let read = |column: &str| -> Vec<u8> {
        conn.query_row(
            &format!("SELECT {column} FROM secrets WHERE secret_id = ?1 AND version_id = ?2"),
            [&sref.id, &sref.version],
            |r| r.get(0),
        )
        .unwrap()
    };
    let write = |column: &str, value: &[u8]| {
        let n = conn
            .execute(
                &format!(
                    "UPDATE secrets SET {column} = ?3 WHERE secret_id = ?1 AND version_id = ?2"
                ),
                rusqlite::params![sref.id, sref.version, value],
            )
            .unwrap();
        assert_eq!(n, 1);
    };

    for column in ["ciphertext", "nonce"] {
        let original = read(column);
        for index in [0, original.len() / 2, original.len() - 1] {
            let mut tampered = original.clone();
            tampered[index] ^= 0x01;
            write(column, &tampered);
            let result = store.get_secret(&sref).await;
            assert!(
                matches!(result, Err(StoreError::Decrypt)),
                "{column}[{index}]: {result:?}"
            );
        }
        write(column, &original);
        assert_eq!(store.get_secret(&sref).await.unwrap(), ApiKey::new(CANARY));
    }

    // The row's owner is bound too: reassigning the row to another user fails.
    conn.execute(
        "UPDATE secrets SET user_id = 'mallory' WHERE secret_id = ?1",
        [&sref.id],
    )
    .unwrap();
    let result = store.get_secret(&sref).await;
    assert!(matches!(result, Err(StoreError::Decrypt)), "{result:?}");
}

#[tokio::test]
async fn reopen_with_same_key_keeps_data() {
    let tmp = tempfile::tempdir().unwrap();
    let key_dir = tmp.path().join("keys");
    let data_dir = tmp.path().join("data");
    let u = user("persist");

    let store =
        EmbeddedStore::open(&data_dir, MasterKey::load_or_create(&key_dir).unwrap()).unwrap();
    let previous = store
        .put_secret(
            &u,
            Service::Gateway,
            &ApiKey::new("vck_previous_0123456789"),
            None,
        )
        .await
        .unwrap();
    let current = store
        .put_secret(&u, Service::Gateway, &ApiKey::new(CANARY), Some(&previous))
        .await
        .unwrap();
    let mut rec = contract::record(&u, Service::Gateway, current.clone());
    rec.base_url = Some("https://gw.example.com/v1".to_owned());
    store.put_key(&rec, Expected::Absent).await.unwrap();
    let settings = Settings {
        allow_gateway_fallback: false,
    };
    store.put_settings(&u, settings).await.unwrap();
    drop(store);

    let store =
        EmbeddedStore::open(&data_dir, MasterKey::load_or_create(&key_dir).unwrap()).unwrap();
    let snap = store.load_user(&u).await.unwrap();
    assert_eq!(snap.settings, settings);
    assert_eq!(snap.keys, vec![rec]);
    assert_eq!(
        store.get_secret(&current).await.unwrap(),
        ApiKey::new(CANARY)
    );
    assert_eq!(
        store.get_secret(&previous).await.unwrap(),
        ApiKey::new("vck_previous_0123456789")
    );
}
