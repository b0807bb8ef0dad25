//! Secrets compared in constant time and never printed.
use std::fmt;
use subtle::ConstantTimeEq;

/// A secret string (API key, passphrase). `Debug`/`Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The raw value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Constant-time comparison against a presented value (the length is not secret).
    pub fn matches(&self, presented: &[u8]) -> bool {
        !self.0.is_empty() && self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `bytes` random bytes as lowercase hex: generated keys and per-process secrets.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_and_redacts() {
        let s = Secret::new("k3y");
        assert!(s.matches(b"k3y"));
        assert!(!s.matches(b"k3"));
        assert!(!s.matches(b"k3y "));
        assert!(!Secret::new("").matches(b""), "an empty secret must never match");
        assert_eq!(format!("{s:?} {s}"), "Secret([redacted]) [redacted]");
    }

    #[test]
    fn random_hex_has_two_digits_per_byte_and_differs_per_call() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{a}");
        assert_ne!(a, b);
    }
}
