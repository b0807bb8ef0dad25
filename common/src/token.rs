//! Single-use job tokens and verified-script-execution (VSE) signatures.
//!
//! A job token is minted by the job manager when it hands a job to a runtime and travels
//! with the job's result (sidecar -> job manager, header [`crate::headers::JOB_TOKEN`]).
//! It is an HMAC-SHA256 over the job id and an expiry, so any replica holding the signing
//! key verifies it without shared memory. "Single use" is enforced by the result store:
//! the first accepted result for a job consumes it, later ones get 409.
//!
//! Format: `v1.<expiry unix secs>.<nonce hex>.<mac base64url>`; the MAC covers
//! `"jt1\n" + job_id + "\n" + expiry + "\n" + nonce`.
use crate::job::JobId;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a presented token was refused. The label is stable for metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TokenError {
    #[error("job token is malformed")]
    Malformed,
    #[error("job token has expired")]
    Expired,
    #[error("job token does not match this job")]
    BadSignature,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Expired => "expired",
            TokenError::BadSignature => "bad_signature",
        }
    }
}

/// Mints and verifies job tokens with one signing key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner([redacted])")
    }
}

impl TokenSigner {
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self { key: key.as_ref().to_vec() }
    }

    /// Derive a signing key from another secret (e.g. the location key) with a domain
    /// label, so the derived key is useless for anything else.
    pub fn derived_from(secret: &str) -> Self {
        Self::new(mac(secret.as_bytes(), b"job-token-signing-key/v1"))
    }

    fn mac_for(&self, job_id: &JobId, expiry: u64, nonce: &str) -> Vec<u8> {
        mac(&self.key, format!("jt1\n{job_id}\n{expiry}\n{nonce}").as_bytes())
    }

    /// Mint a token for `job_id` valid until `expiry_unix_secs`.
    pub fn mint(&self, job_id: &JobId, expiry_unix_secs: u64) -> String {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let tag = self.mac_for(job_id, expiry_unix_secs, &nonce);
        format!("v1.{expiry_unix_secs}.{nonce}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Verify `token` for `job_id` at time `now_unix_secs` (constant-time MAC check).
    /// Returns the token's expiry.
    pub fn verify(&self, job_id: &JobId, token: &str, now_unix_secs: u64) -> Result<u64, TokenError> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(expiry), Some(nonce), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) || expiry.len() > 20 {
            return Err(TokenError::Malformed);
        }
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        if nonce.len() != 16 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(format!("jt1\n{job_id}\n{expiry}\n{nonce}").as_bytes());
        m.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        // Checked after the MAC so a forged token learns nothing about expiry handling.
        if now_unix_secs > expiry {
            return Err(TokenError::Expired);
        }
        Ok(expiry)
    }
}

fn mac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// Canonical JSON: object keys sorted at every level, no whitespace. Independent of
/// serde_json's `preserve_order` feature, so signatures are stable whatever crate
/// features the build unifies.
pub fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).expect("string serializes"));
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).expect("scalar serializes")),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// The VSE signature of a job: base64(HMAC-SHA256(passphrase, runtime_type + "\n" +
/// canonical_json(payload))). Binding the runtime type stops a signed script from being
/// replayed on another runtime.
pub fn vse_signature(passphrase: &str, runtime_type: &str, payload: &serde_json::Value) -> String {
    let msg = format!("{runtime_type}\n{}", canonical_json(payload));
    STANDARD.encode(mac(passphrase.as_bytes(), msg.as_bytes()))
}

/// Why a job's VSE signature was refused (the text goes into the `rejected` result).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VseError {
    #[error("verified script execution is enabled and the job carries no signature")]
    Missing,
    #[error("job signature is not valid base64")]
    Malformed,
    #[error("job signature does not verify with the configured VSE passphrase")]
    Mismatch,
}

/// Verify a job's VSE signature in constant time.
pub fn verify_vse(
    passphrase: &str,
    runtime_type: &str,
    payload: &serde_json::Value,
    signature: Option<&str>,
) -> Result<(), VseError> {
    let sig = signature.ok_or(VseError::Missing)?;
    let sig = STANDARD.decode(sig.trim()).map_err(|_| VseError::Malformed)?;
    let mut m = HmacSha256::new_from_slice(passphrase.as_bytes()).expect("HMAC takes any key length");
    m.update(format!("{runtime_type}\n{}", canonical_json(payload)).as_bytes());
    m.verify_slice(&sig).map_err(|_| VseError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[test]
    fn token_round_trip_and_binding() {
        let s = TokenSigner::new("k");
        let t = s.mint(&id("a"), 1_000);
        assert_eq!(s.verify(&id("a"), &t, 999), Ok(1_000));
        assert_eq!(s.verify(&id("a"), &t, 1_000), Ok(1_000));
        assert_eq!(s.verify(&id("a"), &t, 1_001), Err(TokenError::Expired));
        assert_eq!(s.verify(&id("b"), &t, 0), Err(TokenError::BadSignature), "other job's token");
        assert_eq!(TokenSigner::new("other").verify(&id("a"), &t, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn token_forgeries_refused() {
        let s = TokenSigner::new("k");
        let t = s.mint(&id("a"), 1_000);
        let parts: Vec<&str> = t.split('.').collect();
        // Extending the expiry breaks the MAC.
        let extended = format!("v1.9999999.{}.{}", parts[2], parts[3]);
        assert_eq!(s.verify(&id("a"), &extended, 0), Err(TokenError::BadSignature));
        for bad in [
            "",
            "v1",
            "v2.1.0000000000000000.AA",
            "v1.x.0000000000000000.AA",
            "v1.1.zz.AA",
            "v1.1.0000000000000000.!!",
            "v1.1.0000000000000000.AA.extra",
            "v1.-1.0000000000000000.AA",
            "v1.99999999999999999999999.0000000000000000.AA",
        ] {
            assert_eq!(s.verify(&id("a"), bad, 0), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn derived_signer_differs_from_raw_key() {
        let t = TokenSigner::derived_from("loc").mint(&id("a"), 10);
        assert_eq!(TokenSigner::new("loc").verify(&id("a"), &t, 0), Err(TokenError::BadSignature));
        assert!(TokenSigner::derived_from("loc").verify(&id("a"), &t, 0).is_ok());
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": null}], "c": "x"}});
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[1,{"y":null,"z":0}]},"b":1}"#);
    }

    #[test]
    fn vse_verifies_and_binds_runtime() {
        let p = json!({"script": "ok"});
        let sig = vse_signature("pass", "node-api-runtime", &p);
        assert_eq!(verify_vse("pass", "node-api-runtime", &p, Some(&sig)), Ok(()));
        assert_eq!(verify_vse("pass", "node-browser-runtime", &p, Some(&sig)), Err(VseError::Mismatch));
        assert_eq!(verify_vse("wrong", "node-api-runtime", &p, Some(&sig)), Err(VseError::Mismatch));
        assert_eq!(
            verify_vse("pass", "node-api-runtime", &json!({"script": "evil"}), Some(&sig)),
            Err(VseError::Mismatch)
        );
        assert_eq!(verify_vse("pass", "node-api-runtime", &p, None), Err(VseError::Missing));
        assert_eq!(verify_vse("pass", "node-api-runtime", &p, Some("%%%")), Err(VseError::Malformed));
    }
}
