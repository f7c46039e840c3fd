//! A certificate authority made by the test, server certificates it signs (valid, for
//! another name, expired), and an HTTPS API on 127.0.0.1 that presents one of them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A private CA, as an in-house service would have one.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A server certificate with its private key.
pub struct ServerCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { issuer: Issuer::new(params, key), pem }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA's certificate to `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A certificate for `names` (host names or IP addresses), valid from 1975 to 4096
    /// (rcgen's defaults).
    pub fn server_cert(&self, names: &[&str]) -> ServerCert {
        self.sign(names, |_| {})
    }

    /// A certificate for `names` that expired at the start of 2021.
    pub fn expired_server_cert(&self, names: &[&str]) -> ServerCert {
        self.sign(names, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn sign(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> ServerCert {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert { chain: vec![cert.der().clone()], key: PrivatePkcs8KeyDer::from(key.serialize_der()) }
    }
}

/// An HTTPS API on 127.0.0.1: every POST with a JSON body naming a `video_id` gets 200
/// and `analysed <id>`. It counts what it sees.
pub struct HttpsApi {
    pub port: u16,
    /// The JSON bodies of the calls that got through.
    pub calls: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Connections whose TLS handshake failed (the client refused our certificate).
    pub refused_handshakes: Arc<AtomicUsize>,
}

impl HttpsApi {
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

/// Starts an [`HttpsApi`] presenting `cert`, on a task of the caller's runtime.
pub async fn https_api(cert: ServerCert) -> HttpsApi {
    shared::tls::install_crypto_provider();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(cert.chain, PrivateKeyDer::Pkcs8(cert.key))
        .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let calls: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let refused_handshakes: Arc<AtomicUsize> = Arc::default();
    let seen = calls.clone();
    let app =
        axum::Router::new().fallback(axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                let answer = format!("analysed {}", body["video_id"]);
                seen.lock().unwrap().push(body);
                answer
            }
        }));
    let listener =
        TlsListener { tcp, acceptor: TlsAcceptor::from(Arc::new(config)), refused: refused_handshakes.clone() };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    HttpsApi { port, calls, refused_handshakes }
}

/// TCP connections that completed a TLS handshake, for `axum::serve`.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    refused: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            // Handshakes run one at a time here; the timeout keeps a client that never
            // sends its hello from holding up the others.
            match tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                _ => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
