//! How the broker client reaches the broker: directly, or through an HTTP proxy
//! (absolute-form requests for `http://` brokers, a CONNECT tunnel for `https://` ones),
//! with rustls on top for `https://`.
use crate::broker::BrokerError;
use base64::Engine as _;
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest CONNECT response head we read from a proxy.
const MAX_CONNECT_RESPONSE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the broker URL has no host")]
    NoHost,
    #[error("connecting to {target}: {source}")]
    Tcp { target: String, source: io::Error },
    #[error("proxy refused the tunnel to {target}: {status_line}")]
    ProxyRefused { target: String, status_line: String },
    #[error("proxy answered the CONNECT with something that is not HTTP")]
    ProxyGarbage,
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS handshake with {host}: {source}")]
    Tls { host: String, source: io::Error },
    #[error("connecting timed out after {0:?}")]
    Timeout(Duration),
}

/// The proxy as the connector needs it.
#[derive(Clone, Debug)]
pub struct ProxyTarget {
    pub host: String,
    pub port: u16,
    /// `Basic ...`, sent with CONNECT and with every absolute-form request.
    pub authorization: Option<HeaderValue>,
}

impl ProxyTarget {
    pub fn basic_auth(username: &str, password: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
        v.set_sensitive(true);
        v
    }
}

#[derive(Clone)]
pub struct BrokerConnector {
    pub proxy: Option<Arc<ProxyTarget>>,
    pub tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
}

/// A TCP stream, TLS or not, remembering whether it leads to a proxy (then hyper sends
/// requests in absolute form).
pub struct BrokerStream {
    io: StreamKind,
    proxied: bool,
}

enum StreamKind {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for BrokerStream {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl AsyncRead for BrokerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamKind::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamKind::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BrokerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            StreamKind::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamKind::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamKind::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamKind::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamKind::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamKind::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tower::Service<Uri> for BrokerConnector {
    type Response = TokioIo<BrokerStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.connect_timeout;
            match tokio::time::timeout(timeout, this.connect(uri)).await {
                Ok(r) => r.map(TokioIo::new),
                Err(_) => Err(ConnectError::Timeout(timeout)),
            }
        })
    }
}

impl BrokerConnector {
    async fn connect(self, uri: Uri) -> Result<BrokerStream, ConnectError> {
        let https = uri.scheme_str() == Some("https");
        // `Uri::host` keeps IPv6 brackets; sockets and TLS names want them off.
        let host = uri.host().ok_or(ConnectError::NoHost)?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let Some(proxy) = &self.proxy else {
            let tcp = tcp_connect(&host, port).await?;
            return if https {
                Ok(BrokerStream {
                    io: StreamKind::Tls(Box::new(self.tls_handshake(&host, tcp).await?)),
                    proxied: false,
                })
            } else {
                Ok(BrokerStream { io: StreamKind::Plain(tcp), proxied: false })
            };
        };
        let mut tcp = tcp_connect(&proxy.host, proxy.port).await?;
        if !https {
            return Ok(BrokerStream { io: StreamKind::Plain(tcp), proxied: true });
        }
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        connect_tunnel(&mut tcp, &authority, proxy.authorization.as_ref()).await?;
        Ok(BrokerStream { io: StreamKind::Tls(Box::new(self.tls_handshake(&host, tcp).await?)), proxied: false })
    }

    async fn tls_handshake(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| ConnectError::ServerName(host.to_string()))?;
        TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls { host: host.to_string(), source })
    }
}

async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| ConnectError::Tcp { target: format!("{host}:{port}"), source })?;
    // Requests are small; do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Open a CONNECT tunnel through the proxy on `tcp` to `authority`.
async fn connect_tunnel(
    tcp: &mut TcpStream,
    authority: &str,
    authorization: Option<&HeaderValue>,
) -> Result<(), ConnectError> {
    let io_err = |source| ConnectError::Tcp { target: authority.to_string(), source };
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(auth) = authorization {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    tcp.write_all(&head).await.map_err(io_err)?;
    // Read the answer head byte-wise-ish: the proxy sends nothing after it until we speak
    // TLS, so reading up to the blank line never swallows tunnel bytes.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_CONNECT_RESPONSE {
            return Err(ConnectError::ProxyGarbage);
        }
        let n = tcp.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            return Err(io_err(io::Error::new(io::ErrorKind::UnexpectedEof, "proxy closed the connection")));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status_line = String::from_utf8_lossy(buf.split(|b| *b == b'\n').next().unwrap_or_default()).trim().to_string();
    match connect_status(&status_line) {
        Some(200..=299) => Ok(()),
        Some(_) => Err(ConnectError::ProxyRefused { target: authority.to_string(), status_line }),
        None => Err(ConnectError::ProxyGarbage),
    }
}

/// The status code of an HTTP/1 status line, e.g. `HTTP/1.1 407 Proxy Authentication Required`.
pub fn connect_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// PEM material for the broker connection beyond the public roots (`brokerTls.*`).
#[derive(Clone, Debug, Default)]
pub struct TlsMaterial {
    /// Extra trust anchors (a private CA, a TLS-intercepting proxy's CA).
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key for mutual TLS (both or neither).
    pub client_cert_pem: Vec<u8>,
    pub client_key_pem: Vec<u8>,
    /// Why the files could not be read: the client refuses to be built.
    pub unreadable: Option<String>,
}

impl TlsMaterial {
    /// Read the files `brokerTls.*` names; an unreadable one is named.
    pub fn read(ca_file: &str, client_cert_file: &str, client_key_file: &str) -> Result<Self, String> {
        let read = |what: &str, path: &str| -> Result<Vec<u8>, String> {
            if path.is_empty() {
                return Ok(Vec::new());
            }
            std::fs::read(path).map_err(|e| format!("brokerTls.{what} {path:?}: {e}"))
        };
        Ok(Self {
            ca_pem: read("caFile", ca_file)?,
            client_cert_pem: read("clientCertFile", client_cert_file)?,
            client_key_pem: read("clientKeyFile", client_key_file)?,
            unreadable: None,
        })
    }

    pub fn unreadable(reason: String) -> Self {
        Self { unreadable: Some(reason), ..Self::default() }
    }
}

/// rustls settings: webpki roots plus the system's plus `material`'s CA, or — only when
/// explicitly configured — no certificate verification at all (a corporate proxy
/// re-signing TLS); with `material`'s client certificate when one is given.
pub fn tls_config(accept_any_certificate: bool, material: &TlsMaterial) -> Result<ClientConfig, BrokerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let invalid = |m: String| BrokerError::InvalidConfig(m);
    if let Some(reason) = &material.unreadable {
        return Err(invalid(reason.clone()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let client_auth = match (material.client_cert_pem.is_empty(), material.client_key_pem.is_empty()) {
        (true, true) => None,
        (false, false) => {
            let chain = common::pem::certificates(&material.client_cert_pem)
                .map_err(|e| invalid(format!("brokerTls.clientCertFile {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&material.client_key_pem)
                .map_err(|e| invalid(format!("brokerTls.clientKeyFile is not a PEM private key: {e}")))?;
            Some((chain, key))
        }
        _ => return Err(invalid("brokerTls.clientCertFile and brokerTls.clientKeyFile go together".into())),
    };
    let builder = if accept_any_certificate {
        tracing::warn!(
            "broker TLS certificate verification is DISABLED (brokerApiProxySelfSignedCert): \
             any certificate is accepted, so the broker connection can be intercepted"
        );
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "skipping a system certificate store entry");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system root certificates loaded");
        if !material.ca_pem.is_empty() {
            let certs =
                common::pem::certificates(&material.ca_pem).map_err(|e| invalid(format!("brokerTls.caFile {e}")))?;
            let count = certs.len();
            for cert in certs {
                roots.add(cert).map_err(|e| invalid(format!("brokerTls.caFile: a certificate is not a CA: {e}")))?;
            }
            tracing::info!(count, "broker CA certificates added (brokerTls.caFile)");
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid(format!("brokerTls client certificate and key do not match: {e}")))?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any server certificate but still checks the handshake signatures, so the
/// connection is at least bound to the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
