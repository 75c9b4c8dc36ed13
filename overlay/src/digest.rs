//! Content digests (`sha256:<64 hex>`), DiffIDs and ChainIDs.
//!
//! ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)),
//! both in their `sha256:<hex>` string form (OCI image-spec config.md).

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// A validated sha256 digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parse `sha256:<64 lowercase hex>`; other algorithms are refused (we store by sha256).
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            Error::new(ErrorKind::Invalid, format!("digest {s:?}: only sha256 is supported"))
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("digest {s:?}: not 64 lowercase hex digits"),
            ));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// ChainID of `parent` (None for a base layer) plus `diff_id`.
    pub fn chain(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
        match parent {
            None => diff_id.clone(),
            Some(p) => Digest::of(format!("{} {}", p.0, diff_id.0).as_bytes()),
        }
    }

    /// ChainIDs of every prefix of `diff_ids`.
    pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
        let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
        for d in diff_ids {
            let next = Digest::chain(out.last(), d);
            out.push(next);
        }
        out
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Digest> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Read the rest of the stream (e.g. bytes after the tar end marker, which are part of the
    /// DiffID) and return the digest and total length.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts everything written through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter { inner, hasher: Sha256::new(), count: 0 }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chain_id_follows_the_spec_formula() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = Digest::chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn parse_rejects_bad_digests() {
        let refused = |s: &str| crate::error::err_text(Digest::parse(s), ErrorKind::Invalid);
        assert!(refused("sha512:00").contains("only sha256 is supported"));
        assert!(refused("sha256:../../etc/passwd").contains("not 64 lowercase hex digits"));
        assert!(refused(&format!("sha256:{}", "A".repeat(64))).contains("not 64 lowercase hex"));
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&ok).unwrap().hex(), "a".repeat(64));
    }

    #[test]
    fn rt_digest_serde() {
        let d = Digest::of(b"x");
        let j = serde_json::to_string(&d).unwrap();
        let back: Digest = serde_json::from_str(&j).unwrap();
        assert_eq!(back, d);
    }
}
