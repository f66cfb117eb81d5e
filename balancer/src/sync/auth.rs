//! The shared key and the HMAC-SHA256 tag at the end of every datagram.
//! Peers share one key: whoever holds it can steer dialogs to any backend,
//! so it is read from a file only its owner can read, or from the
//! configuration file, which has the same owner and mode.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::wire::TAG_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Below 128 bits a key could be searched for; HMAC takes any length above.
pub const MIN_KEY: usize = 16;
/// SHA-256's block: HMAC hashes longer keys down, so more adds nothing.
pub const MAX_KEY: usize = 64;

#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

/// Never prints the key: `Debug` output ends up in logs.
impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is neither hex nor base64")]
    Encoding,
    #[error("is {0} bytes: from {MIN_KEY} to {MAX_KEY} bytes")]
    Length(usize),
    #[error("{0}: {1}")]
    File(String, String),
}

impl Key {
    /// Hex if the text is only hex digits, else standard base64 (padded or
    /// not): `openssl rand -hex 32` and `openssl rand -base64 32` both work.
    /// Random base64 of 16 bytes or more is all hex digits with negligible
    /// probability, so the guess does not mislead.
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let t = text.trim();
        let bytes = if !t.is_empty()
            && t.len().is_multiple_of(2)
            && t.bytes().all(|b| b.is_ascii_hexdigit())
        {
            (0..t.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&t[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| KeyError::Encoding)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                .map_err(|_| KeyError::Encoding)?
        };
        if !(MIN_KEY..=MAX_KEY).contains(&bytes.len()) {
            return Err(KeyError::Length(bytes.len()));
        }
        Ok(Key(bytes))
    }

    /// Reads the key from a file. A file others may read is used, with a
    /// warning: refusing it would stop a failover setup at its first start
    /// for what is a matter of the host's policy.
    pub fn read(path: &std::path::Path) -> Result<Key, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let name = path.display().to_string();
        let meta =
            std::fs::metadata(path).map_err(|e| KeyError::File(name.clone(), e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!("sync key file {name} is readable by others: chmod 600 it");
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError::File(name.clone(), e.to_string()))?;
        Key::parse(&text).map_err(|e| KeyError::File(name, format!("the key {e}")))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// Appends the tag over everything in `datagram`.
    pub fn sign(&self, datagram: &mut Vec<u8>) {
        let mut m = self.mac();
        m.update(datagram);
        datagram.extend_from_slice(&m.finalize().into_bytes());
    }

    /// The datagram without its tag, if the tag is whole and right. The
    /// comparison is constant-time (`verify_slice`), and a tag shorter than
    /// [`TAG_LEN`] is refused rather than compared on its prefix.
    pub fn verify<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let body_len = datagram.len().checked_sub(TAG_LEN)?;
        let (body, tag) = datagram.split_at(body_len);
        let mut m = self.mac();
        m.update(body);
        m.verify_slice(tag).ok().map(|()| body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parses_hex_and_base64() {
        let k = Key::parse(HEX).unwrap();
        assert_eq!(k.0, (0u8..32).collect::<Vec<_>>());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&k.0);
        assert_eq!(Key::parse(&b64).unwrap(), k);
        assert_eq!(Key::parse(b64.trim_end_matches('=')).unwrap(), k);
        assert_eq!(Key::parse(&format!("  {HEX}\n")).unwrap(), k);
        assert_eq!(Key::parse("00ff"), Err(KeyError::Length(2)));
        assert_eq!(Key::parse(""), Err(KeyError::Length(0)));
        assert_eq!(Key::parse("not a key!"), Err(KeyError::Encoding));
        assert_eq!(Key::parse(&"ab".repeat(65)), Err(KeyError::Length(65)));
        assert!(!format!("{k:?}").contains("0001"));
    }

    #[test]
    fn reads_a_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sync-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("key");
        std::fs::write(&p, format!("{HEX}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Key::read(&p).unwrap(), Key::parse(HEX).unwrap());
        std::fs::write(&p, "short").unwrap();
        let e = Key::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("key") && e.contains(&p.display().to_string()),
            "{e}"
        );
        let e = Key::read(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tags_check_whole_datagrams() {
        let k = Key::parse(HEX).unwrap();
        let mut d = b"some datagram".to_vec();
        k.sign(&mut d);
        assert_eq!(d.len(), 13 + TAG_LEN);
        assert_eq!(k.verify(&d), Some(&b"some datagram"[..]));
        // Another key, a changed byte, a truncated tag: refused.
        let other = Key::parse(&"11".repeat(32)).unwrap();
        assert_eq!(other.verify(&d), None);
        let mut changed = d.clone();
        changed[0] ^= 1;
        assert_eq!(k.verify(&changed), None);
        for cut in 1..=TAG_LEN {
            assert_eq!(k.verify(&d[..d.len() - cut]), None, "cut {cut}");
        }
        assert_eq!(k.verify(&[]), None);
    }
}
