//! The master key and authenticated encryption (AES-256-GCM) of stored secrets.
//!
//! The embedded store seals every API key with the master key before it
//! touches disk; the key id recorded beside each row says which master key
//! sealed it, so a later master-key rotation can find rows still to re-seal.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::Zeroizing;

/// Length of a master key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce in bytes (96 bits).
pub const NONCE_LEN: usize = 12;
/// File name of the master key inside the directory given to [`MasterKey::load_or_create`].
pub const KEY_FILE: &str = "master.key";

/// Errors of the master key and of sealing; none ever carries key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key text is not standard base64 of exactly 32 bytes.
    #[error("the master key is not standard base64 of exactly 32 bytes")]
    InvalidKey,
    /// Reading or writing the master key file failed.
    #[error("master key file I/O failed")]
    Io(#[source] io::Error),
    /// The master key file may be read by group or others.
    #[error("the master key file is readable by group or others; chmod 600 it")]
    InsecurePermissions,
    /// Encryption failed (no OS randomness for the nonce, or an oversized message).
    #[error("encryption failed")]
    Encrypt,
    /// Authenticated decryption failed: wrong key, wrong associated data or tampered data.
    #[error("decryption failed: wrong key or tampered data")]
    Decrypt,
}

/// The 256-bit key that seals every stored secret. Zeroized on drop; never
/// printed (its `Debug` shows only the key id).
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

/// The output of [`MasterKey::seal`]: the random nonce and the ciphertext
/// (with its 16-byte GCM tag appended). Neither is secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl MasterKey {
    /// Parses standard base64 of exactly 32 bytes (surrounding whitespace is
    /// ignored). The error never echoes the input.
    pub fn from_base64(s: &str) -> Result<Self, CryptoError> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(s.trim().as_bytes())
                .map_err(|_| CryptoError::InvalidKey)?,
        );
        if decoded.len() != KEY_LEN {
            return Err(CryptoError::InvalidKey);
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(Self { bytes })
    }

    /// The same key in a second zeroized buffer (a store open that is
    /// tried again needs it once more).
    #[cfg(feature = "local")]
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            bytes: Zeroizing::new(*self.bytes),
        }
    }

    /// A new random key from the operating system's randomness.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(bytes.as_mut_slice());
        Self { bytes }
    }

    /// Reads `dir/master.key` (base64 text), or creates `dir` (mode 0700) and
    /// a new key file (mode 0600) when there is none.
    ///
    /// The new key is written to a private temporary file first and then
    /// hard-linked to `master.key`; the link fails if the name exists, so of
    /// concurrent first runs exactly one wins and the others read the winner's
    /// complete file. A key file readable by group or others is refused.
    pub fn load_or_create(dir: &Path) -> Result<Self, CryptoError> {
        let path = dir.join(KEY_FILE);
        match File::open(&path) {
            Ok(file) => return Self::read_key_file(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(CryptoError::Io(err)),
        }
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(CryptoError::Io)?;
        }
        let key = Self::generate();
        let tmp = dir.join(format!(
            ".{KEY_FILE}.{}.tmp",
            random_hex::<8>().map_err(CryptoError::Io)?
        ));
        let written = write_new_file(&tmp, key.to_base64().as_bytes());
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
        // The temporary name is removed whatever happened; the link (if any) keeps the file.
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir);
                Ok(key)
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                Self::read_key_file(File::open(&path).map_err(CryptoError::Io)?)
            }
            Err(err) => Err(CryptoError::Io(err)),
        }
    }

    /// Hex of the first 8 bytes of SHA-256 of the key: names the key that
    /// sealed a row without revealing it.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.bytes.as_slice());
        hex(&digest[..8])
    }

    /// Encrypts `plaintext` with a fresh random 96-bit nonce, authenticating
    /// `aad` (associated data: not stored, must be given again to open).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| CryptoError::Encrypt)?;
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(Sealed { nonce, ciphertext })
    }

    /// Decrypts and authenticates what [`Self::seal`] produced with the same `aad`.
    pub fn open(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if nonce.len() != NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.bytes.as_slice()))
    }

    fn to_base64(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(STANDARD.encode(self.bytes.as_slice()));
        text.push('\n');
        text
    }

    /// Reads an opened key file after checking (on the open handle, so the
    /// check and the read concern the same file) that only its owner may read it.
    fn read_key_file(mut file: File) -> Result<Self, CryptoError> {
        let meta = file.metadata().map_err(CryptoError::Io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CryptoError::InsecurePermissions);
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text)
            .map_err(|err| match err.kind() {
                io::ErrorKind::InvalidData => CryptoError::InvalidKey,
                _ => CryptoError::Io(err),
            })?;
        Self::from_base64(&text)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(*****, id {})", self.key_id())
    }
}

/// Creates `path` (which must not exist) with mode 0600 and writes `content` durably.
fn write_new_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

/// Best effort: make a new directory entry durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `N` random bytes from the operating system as lowercase hex (for
/// identifiers such as secret version ids and temporary file names).
pub(crate) fn random_hex<const N: usize>() -> io::Result<String> {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|_| io::Error::other("the operating system gave no randomness"))?;
    Ok(hex(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"byok:v1:test";

    #[test]
    fn round_trip() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"sk-secret", AAD).unwrap();
        assert_ne!(sealed.ciphertext.as_slice(), b"sk-secret");
        assert_eq!(sealed.ciphertext.len(), b"sk-secret".len() + 16);
        let plain = key.open(&sealed.nonce, &sealed.ciphertext, AAD).unwrap();
        assert_eq!(plain.as_slice(), b"sk-secret");
        // Fresh nonce per seal.
        assert_ne!(key.seal(b"sk-secret", AAD).unwrap().nonce, sealed.nonce);
        // Empty plaintext works too.
        let empty = key.seal(b"", AAD).unwrap();
        assert!(
            key.open(&empty.nonce, &empty.ciphertext, AAD)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn tampering_is_detected() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"sk-secret", AAD).unwrap();
        let decrypt_err = |r: Result<Zeroizing<Vec<u8>>, CryptoError>| {
            assert!(matches!(r, Err(CryptoError::Decrypt)), "{r:?}");
        };

        for i in 0..sealed.ciphertext.len() {
            let mut ct = sealed.ciphertext.clone();
            ct[i] ^= 0x01;
            decrypt_err(key.open(&sealed.nonce, &ct, AAD));
        }
        let mut nonce = sealed.nonce;
        nonce[0] ^= 0x80;
        decrypt_err(key.open(&nonce, &sealed.ciphertext, AAD));
        decrypt_err(key.open(&sealed.nonce, &sealed.ciphertext, b"byok:v1:other"));
        decrypt_err(key.open(&sealed.nonce, &sealed.ciphertext, b""));
        decrypt_err(MasterKey::generate().open(&sealed.nonce, &sealed.ciphertext, AAD));
        decrypt_err(key.open(&sealed.nonce[..11], &sealed.ciphertext, AAD));
        decrypt_err(key.open(&sealed.nonce, &sealed.ciphertext[..10], AAD));
        decrypt_err(key.open(&sealed.nonce, &[], AAD));
    }

    #[test]
    fn from_base64_checks_length_and_alphabet() {
        let ok = STANDARD.encode([7u8; 32]);
        let key = MasterKey::from_base64(&ok).unwrap();
        assert_eq!(*key.bytes, [7u8; 32]);
        assert!(MasterKey::from_base64(&format!("  {ok}\n")).is_ok());
        for bad in [
            String::new(),
            STANDARD.encode([7u8; 31]),
            STANDARD.encode([7u8; 33]),
            STANDARD.encode([7u8; 16]),
            STANDARD.encode([7u8; 64]),
            "not base64 at all!".to_owned(),
            ok.replace('=', ""),
        ] {
            let err = MasterKey::from_base64(&bad).unwrap_err();
            assert!(matches!(err, CryptoError::InvalidKey), "{bad:?}");
        }
        let err = MasterKey::from_base64("c2VjcmV0LWlucHV0").unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"));
        assert!(!format!("{err:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn key_id_is_stable_and_distinct() {
        let a = MasterKey::from_base64(&STANDARD.encode([1u8; 32])).unwrap();
        let a2 = MasterKey::from_base64(&STANDARD.encode([1u8; 32])).unwrap();
        let b = MasterKey::generate();
        assert_eq!(a.key_id(), a2.key_id());
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id().len(), 16);
        assert!(a.key_id().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn load_or_create_creates_private_file_and_reloads_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state").join("keys");
        let first = MasterKey::load_or_create(&dir).unwrap();
        let file_mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o077, 0, "dir mode {dir_mode:o}");
        let second = MasterKey::load_or_create(&dir).unwrap();
        assert_eq!(*first.bytes, *second.bytes);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
    }

    #[test]
    fn load_or_create_concurrent_first_runs_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| MasterKey::load_or_create(&dir).unwrap().key_id()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }

    #[test]
    fn load_or_create_refuses_readable_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(KEY_FILE);
        std::fs::write(&path, STANDARD.encode([3u8; 32])).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load_or_create(tmp.path()).unwrap_err();
        assert!(matches!(err, CryptoError::InsecurePermissions), "{err:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = MasterKey::load_or_create(tmp.path()).unwrap();
        assert_eq!(*key.bytes, [3u8; 32]);
    }

    #[test]
    fn load_or_create_refuses_garbage_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(KEY_FILE);
        write_new_file(&path, b"short").unwrap();
        let err = MasterKey::load_or_create(tmp.path()).unwrap_err();
        assert!(matches!(err, CryptoError::InvalidKey), "{err:?}");
    }

    #[test]
    fn debug_does_not_print_key_bytes() {
        let b64 = STANDARD.encode([0xabu8; 32]);
        let key = MasterKey::from_base64(&b64).unwrap();
        let printed = format!("{key:?}");
        assert!(printed.starts_with("MasterKey(*****"), "{printed}");
        assert!(printed.contains(&key.key_id()));
        assert!(!printed.contains(&b64));
        assert!(!printed.to_lowercase().contains("abab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }
}
