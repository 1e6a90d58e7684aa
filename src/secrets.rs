//! The keys of named secrets: values are sealed with XChaCha20-Poly1305 (a
//! random 24-byte nonce per value, the secret's name as associated data, so
//! a ciphertext moved to another name does not open), and cache keys hold
//! an HMAC-SHA256 digest of a value, never the value. Both keys are derived
//! from one master key with HKDF, so neither is the raw master key.
//!
//! The master key is `secrets.key` (base64 of 32 bytes) when configured,
//! else `<data_dir>/secrets.key`, created on first start (mode 0600). Every
//! process of a deployment must use the same key: they already share the
//! data directory.

use std::{
    fmt,
    io::{ErrorKind, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use chacha20poly1305::{
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
    XChaCha20Poly1305, XNonce,
};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The file under the data directory that holds the generated master key.
pub const KEY_FILE: &str = "secrets.key";
/// Bytes of a master key.
pub const KEY_BYTES: usize = 32;

/// A sealed value as stored.
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The derived keys. Cheap to clone; its `Debug` shows nothing.
#[derive(Clone)]
pub struct Keyring(Arc<Keys>);

struct Keys {
    cipher: XChaCha20Poly1305,
    digest_key: [u8; 32],
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyring(***)")
    }
}

impl Keyring {
    pub fn from_master(master: &[u8; KEY_BYTES]) -> Keyring {
        let hk = Hkdf::<Sha256>::new(Some(b"stepwise secrets"), master);
        let mut encryption = [0u8; 32];
        let mut digest_key = [0u8; 32];
        hk.expand(b"stepwise/secrets/encryption/v1", &mut encryption)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        hk.expand(b"stepwise/secrets/digest/v1", &mut digest_key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Keyring(Arc::new(Keys {
            cipher: XChaCha20Poly1305::new(&encryption.into()),
            digest_key,
        }))
    }

    /// The keyring of a deployment: the configured key (already validated
    /// by the configuration), or the key file in `data_dir`, created when
    /// absent.
    pub fn load(configured: &str, data_dir: &Path) -> Result<Keyring, String> {
        let master = if configured.is_empty() {
            key_file(&data_dir.join(KEY_FILE))?
        } else {
            parse_key(configured).map_err(|e| format!("secrets.key: {e}"))?
        };
        Ok(Keyring::from_master(&master))
    }

    pub fn seal(&self, name: &str, value: &str) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: value.as_bytes(),
            aad: name.as_bytes(),
        };
        let ciphertext = self
            .0
            .cipher
            .encrypt(&nonce, payload)
            .expect("XChaCha20-Poly1305 encrypts any value of bounded size");
        Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// The value of secret `name`; an error (without any of the value) when
    /// it was sealed under another key or name, or is damaged.
    pub fn open(&self, name: &str, nonce: &[u8], ciphertext: &[u8]) -> Result<String, String> {
        let fail = || {
            format!(
                "secret {name:?} cannot be decrypted: it was stored under another secrets key \
                 (every stepwise process of a deployment must use the same secrets.key) or is damaged"
            )
        };
        if nonce.len() != 24 {
            return Err(fail());
        }
        let payload = Payload {
            msg: ciphertext,
            aad: name.as_bytes(),
        };
        let plain = self
            .0
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }

    /// The keyed digest of a value (hex HMAC-SHA256): what a cache key holds.
    pub fn digest(&self, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0.digest_key).expect("HMAC takes any key length");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Decodes a base64 master key of exactly [`KEY_BYTES`] bytes.
pub fn parse_key(text: &str) -> Result<[u8; KEY_BYTES], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "is not valid base64 (generate a key with: head -c 32 /dev/urandom | base64)".to_string())?;
    <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "must be the base64 of exactly {KEY_BYTES} bytes, got {} bytes (generate a key with: head -c 32 /dev/urandom | base64)",
            bytes.len()
        )
    })
}

/// Reads the key file, or creates it with a fresh random key. The new key
/// is written to a private temporary file first and then hard-linked into
/// place, which fails when the file exists: two processes starting at once
/// both end up reading the one key that won, never a half-written file.
fn key_file(path: &Path) -> Result<[u8; KEY_BYTES], String> {
    match std::fs::read_to_string(path) {
        Ok(text) => return parse_key(&text).map_err(|e| format!("the key file {}: {e}", path.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read the key file {}: {e}", path.display())),
    }
    let key: [u8; KEY_BYTES] = XChaCha20Poly1305::generate_key(&mut OsRng).into();
    let temporary = temporary_path(path);
    let written = write_private(&temporary, &format!("{}\n", STANDARD.encode(key)));
    let linked = written.and_then(|_| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
            parse_key(&text).map_err(|e| format!("the key file {}: {e}", path.display()))
        }
        Err(e) => Err(format!("cannot create the key file {}: {e}", path.display())),
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", uuid::Uuid::new_v4()));
    path.with_file_name(name)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The umask cannot widen 0600, but be explicit about the result.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let ring = Keyring::from_master(&[7; 32]);
        let sealed = ring.seal("TOKEN", "hunter2-value");
        assert!(!sealed.ciphertext.windows(b"hunter2".len()).any(|w| w == b"hunter2"));
        assert_eq!(
            ring.open("TOKEN", &sealed.nonce, &sealed.ciphertext).unwrap(),
            "hunter2-value"
        );
        let e = ring.open("OTHER", &sealed.nonce, &sealed.ciphertext).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let other = Keyring::from_master(&[8; 32]);
        assert!(other.open("TOKEN", &sealed.nonce, &sealed.ciphertext).is_err());
        // A fresh nonce each time.
        assert_ne!(ring.seal("TOKEN", "x").nonce, ring.seal("TOKEN", "x").nonce);
    }

    #[test]
    fn digests_are_keyed() {
        let a = Keyring::from_master(&[1; 32]);
        let b = Keyring::from_master(&[2; 32]);
        assert_eq!(a.digest("v"), a.digest("v"));
        assert_ne!(a.digest("v"), a.digest("w"));
        assert_ne!(a.digest("v"), b.digest("v"));
        assert_eq!(a.digest("v").len(), 64);
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(parse_key(&STANDARD.encode([0u8; 32])).is_ok());
        assert!(parse_key(&STANDARD.encode([0u8; 16]))
            .unwrap_err()
            .contains("got 16 bytes"));
        assert!(parse_key("not base64!").unwrap_err().contains("base64"));
    }

    #[test]
    fn the_key_file_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(key_file(&path).unwrap(), first);
        // Concurrent first starts agree on one key.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let keys: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| key_file(&path).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files are removed");
    }
}
