//! Detached data signatures by the org signing subkey, hashed as the data
//! streams in (the body is never buffered whole).

use super::token_signer::SeamSigner;
use super::{OrgKey, PgpError, PgpResultExt, Signed, check_token_signature};
use crate::signer::Signer;
use pgp::crypto::hash::Context;
use pgp::packet::signature::SignatureBuilder;
use pgp::serialize::Marshal;
use pgp::types::SignatureType;
use sequoia_openpgp as pgp;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// Binary or text signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMode {
    /// Signature type 0x00: the bytes as they are.
    Binary,
    /// Signature type 0x01: line endings normalized to CRLF.
    Text,
}

/// A finished detached signature.
#[derive(Debug, Clone)]
pub struct SignatureOutput {
    /// The signature packet, armored or binary as asked.
    pub bytes: Vec<u8>,
    /// SHA-256 of the signed data as received (for the audit log).
    pub data_sha256: [u8; 32],
    /// Bytes of data signed.
    pub data_len: u64,
}

/// Text mode: every CRLF, lone LF and lone CR is emitted as CRLF; a CR at
/// the end of one chunk and an LF at the start of the next are one break.
fn normalize_line_endings(last_was_cr: &mut bool, chunk: &[u8], mut out: impl FnMut(&[u8])) {
    let mut start = 0;
    for (i, &b) in chunk.iter().enumerate() {
        match b {
            b'\n' if *last_was_cr && i == start => {
                start = i + 1;
                *last_was_cr = false;
            }
            b'\r' | b'\n' => {
                out(&chunk[start..i]);
                out(b"\r\n");
                start = i + 1;
                *last_was_cr = b == b'\r';
            }
            _ => *last_was_cr = false,
        }
    }
    out(&chunk[start..]);
}

/// A signature in the making: feed the data, then sign.
pub struct PendingSignature {
    hash: Context,
    mode: SignMode,
    last_was_cr: bool,
    audit: Sha256,
    len: u64,
}

impl std::fmt::Debug for PendingSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSignature")
            .field("mode", &self.mode)
            .field("len", &self.len)
            .finish()
    }
}

impl PendingSignature {
    /// Starts hashing for a signature by `org`'s signing subkey held by `signer`.
    pub fn new(org: &OrgKey, signer: &dyn Signer, mode: SignMode) -> Result<Self, PgpError> {
        let hash = org
            .signing_hash(signer)
            .context()
            .pgp("starting the hash")?
            .for_signature(4);
        Ok(Self {
            hash,
            mode,
            last_was_cr: false,
            audit: Sha256::new(),
            len: 0,
        })
    }

    /// Feeds a chunk of data.
    pub fn update(&mut self, chunk: &[u8]) {
        self.audit.update(chunk);
        self.len += chunk.len() as u64;
        match self.mode {
            SignMode::Binary => self.hash.update(chunk),
            SignMode::Text => self.update_text(chunk),
        }
    }

    fn update_text(&mut self, chunk: &[u8]) {
        let hash = &mut self.hash;
        normalize_line_endings(&mut self.last_was_cr, chunk, |b| hash.update(b));
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no data was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Signs in the token (blocks) and serializes the signature packet.
    pub fn sign(
        self,
        org: &OrgKey,
        signer: &dyn Signer,
        now: SystemTime,
        armor: bool,
    ) -> Result<SignatureOutput, PgpError> {
        let typ = match self.mode {
            SignMode::Binary => SignatureType::Binary,
            SignMode::Text => SignatureType::Text,
        };
        let mut seam = SeamSigner::new(signer, org.signing_key().clone());
        let check = self.hash.clone();
        let sig = SignatureBuilder::new(typ)
            .set_signature_creation_time(now)
            .pgp("preparing the signature")?
            .sign_hash(&mut seam, self.hash)
            .pgp("signing the data")?;
        check_token_signature(&sig, org.signing_key(), Signed::Data(check))?;
        let packet = pgp::Packet::from(sig);
        let bytes = if armor {
            let mut w = pgp::armor::Writer::new(Vec::new(), pgp::armor::Kind::Signature)
                .map_err(anyhow::Error::from)
                .pgp("armoring the signature")?;
            packet.serialize(&mut w).pgp("serializing the signature")?;
            w.finalize()
                .map_err(anyhow::Error::from)
                .pgp("armoring the signature")?
        } else {
            let mut v = Vec::new();
            packet.serialize(&mut v).pgp("serializing the signature")?;
            v
        };
        Ok(SignatureOutput {
            bytes,
            data_sha256: self.audit.finalize().into(),
            data_len: self.len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cr = false;
        for c in chunks {
            normalize_line_endings(&mut cr, c, |b| out.extend_from_slice(b));
        }
        out
    }

    #[test]
    fn every_line_ending_becomes_crlf() {
        assert_eq!(
            normalize(&[b"a\r\nb\nc\rd\n\n"]),
            b"a\r\nb\r\nc\r\nd\r\n\r\n"
        );
        assert_eq!(normalize(&[b"\r\r\n"]), b"\r\n\r\n");
        assert_eq!(normalize(&[b"no break"]), b"no break");
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let text: &[u8] = b"one\r\ntwo\nthree\rfour\r\n\r\nfive\r";
        let whole = normalize(&[text]);
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(
                    normalize(&[&text[..i], &text[i..j], &text[j..]]),
                    whole,
                    "split at {i},{j}"
                );
            }
        }
    }
}
