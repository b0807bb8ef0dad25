//! PEM certificate bundles, read one way everywhere a CA file or a certificate chain is
//! configured (the broker's CA and client certificate, the sidecar's upstream CA, the API
//! runtime's `NODE_EXTRA_CA_CERTS`): other PEM sections (keys, comments) are skipped; a
//! broken certificate or a bundle with none is an error, never a smaller trust set.
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The certificates of `pem`, in order. The error reads after the bundle's name
/// (`"<name>: {error}"`).
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &[u8] = include_bytes!("../../integration-tests/tests/api_runtime_support/private-ca-cert.pem");
    const KEY: &[u8] = include_bytes!("../../integration-tests/tests/api_runtime_support/server-key.pem");

    #[test]
    fn certificates_are_read_keys_skipped_and_garbage_refused() {
        assert_eq!(certificates(CA).unwrap().len(), 1);
        assert_eq!(certificates(&[KEY, CA, CA].concat()).unwrap().len(), 2, "the key is skipped");
        assert_eq!(certificates(KEY).unwrap_err(), "holds no certificate");
        assert_eq!(certificates(b"").unwrap_err(), "holds no certificate");
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        assert!(certificates(broken).unwrap_err().starts_with("is not PEM certificates"));
    }
}
