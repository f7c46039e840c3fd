//! TLS as every binary has it: rustls with ring for its crypto, and the certificates an
//! `--http https://...` handler trusts (the system's roots plus a `--ca-cert` bundle).
//!
//! Why ring: it builds from its own C and pre-generated assembly with nothing but a C
//! compiler, on every target, and never looks at the system's libraries. aws-lc-rs
//! (reqwest's default) builds with a C compiler only on targets it ships bindings for;
//! elsewhere, and for FIPS, its build needs cmake and libclang, and its build script
//! first looks for an AWS-LC installed on the system. The price of ring: reqwest is built
//! without a provider of its own, so each process calls [`install_crypto_provider`]
//! before it builds an HTTP client.
//!
//! Why the system's roots are read with rustls-native-certs: they are the CAs curl and
//! every other tool on the host trusts (the distribution's bundle, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`), kept current by the host's package manager, and a CA an
//! administrator added to the system is trusted too. A list compiled into the binary
//! (webpki-roots) would age with the build. reqwest's platform verifier reads the same
//! files on Linux, but refuses to build any client, even an http:// one, on a host
//! without them.

use std::io::Read;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{self, PemObject};

/// Makes ring this process's rustls crypto. Call it before building any reqwest client:
/// reqwest panics without one. Calling it again does nothing.
pub fn install_crypto_provider() {
    // An error only says a provider is installed already: ours, by an earlier call.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The largest `--ca-cert` file read. The bundle of every public CA is about 220 KB;
/// the limit keeps a path such as /dev/zero from being read forever.
pub const MAX_CA_FILE: u64 = 4 << 20;

/// Why the certificates to trust cannot be had. Each names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("--ca-cert {}: {}", path.display(), read_problem(source))]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("--ca-cert {}: the file is larger than {} MiB, far more than a bundle of CA certificates", path.display(), MAX_CA_FILE >> 20)]
    TooLarge { path: PathBuf },
    #[error("--ca-cert {}: the file holds no PEM certificate (a -----BEGIN CERTIFICATE----- block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("--ca-cert {}: the file is not valid PEM: {detail}", path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("--ca-cert {}: certificate {number} in the file is not a valid X.509 certificate ({detail})", path.display())]
    BadCertificate { path: PathBuf, number: usize, detail: String },
    #[error(
        "no certificate authority to trust for https: none on this system{} and no --ca-cert given (install the system's CA certificates, set SSL_CERT_FILE, or pass --ca-cert)",
        match detail { Some(d) => format!(" ({d})"), None => String::new() }
    )]
    NoRoots { detail: Option<String> },
}

fn read_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "the file does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "the file cannot be read (permission denied)".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory, not a file".into(),
        _ => format!("the file cannot be read: {e}"),
    }
}

/// The certificate authorities an https call trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustedRoots {
    /// The system's roots, those of them that parse (a bad one in the system's bundle
    /// is skipped, not fatal: the others still verify).
    pub system: Vec<CertificateDer<'static>>,
    /// The `--ca-cert` bundle, every certificate in it checked.
    pub private: Vec<CertificateDer<'static>>,
    /// The first problem met while reading the system's roots, for the message when
    /// none was found.
    system_problem: Option<String>,
}

impl TrustedRoots {
    /// The system's roots, and the `--ca-cert` bundle if one is given. A bundle that
    /// cannot be used is an error; so are no roots at all when `https` needs some.
    pub fn load(ca_cert: Option<&Path>, https: bool) -> Result<TrustedRoots, TrustError> {
        let private = match ca_cert {
            Some(path) => read_ca_certs(path)?,
            None => Vec::new(),
        };
        let found = rustls_native_certs::load_native_certs();
        let system = found.certs.into_iter().filter(is_certificate).collect::<Vec<_>>();
        let roots = TrustedRoots { system, private, system_problem: found.errors.first().map(|e| e.to_string()) };
        if https && roots.system.is_empty() && roots.private.is_empty() {
            return Err(TrustError::NoRoots { detail: roots.system_problem });
        }
        Ok(roots)
    }

    /// Every root, the system's first.
    pub fn all(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.system.iter().chain(&self.private)
    }
}

/// Reads a `--ca-cert` file: PEM, with one or more certificates, each of which must
/// parse. Other PEM blocks (a key someone left in the file) are ignored.
pub fn read_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let unreadable = |source| TrustError::Unreadable { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_CA_FILE + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CA_FILE {
        return Err(TrustError::TooLarge { path: path.to_path_buf() });
    }
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        let cert = item.map_err(|e| TrustError::BadPem { path: path.to_path_buf(), detail: pem_problem(&e) })?;
        if let Err(e) = rustls::RootCertStore::empty().add(cert.clone()) {
            return Err(TrustError::BadCertificate {
                path: path.to_path_buf(),
                number: certs.len() + 1,
                detail: e.to_string(),
            });
        }
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(TrustError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// Whether `der` is a certificate rustls can take as a root.
fn is_certificate(der: &CertificateDer<'static>) -> bool {
    rustls::RootCertStore::empty().add(der.clone()).is_ok()
}

/// pki-types prints the markers of a PEM error as lists of bytes; a user wants text.
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a block has no -----END {}----- line", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("a malformed BEGIN line ({})", String::from_utf8_lossy(line).trim())
        }
        pem::Error::Base64Decode(detail) => format!("a block is not valid base64 ({detail})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate, made afresh.
    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["ca.test".into()]).unwrap().self_signed(&key).unwrap().pem()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_bundle_of_certificates_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let two = write(dir.path(), "two.pem", format!("# ours\n{}\n{}", ca_pem(), ca_pem()).as_bytes());
        assert_eq!(read_ca_certs(&two).unwrap().len(), 2);
    }

    #[test]
    fn unusable_ca_files_are_named_with_their_problem() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ca_pem();
        let garbage_body = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        let cases = [
            (d.join("missing.pem"), "the file does not exist"),
            (d.to_path_buf(), "is a directory"),
            (write(d, "empty.pem", b""), "holds no PEM certificate"),
            (write(d, "key.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "no PEM"),
            (write(d, "cut.pem", &ca.as_bytes()[..200]), "a block has no -----END CERTIFICATE----- line"),
            (
                write(d, "b64.pem", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
                "not valid base64",
            ),
            (write(d, "body.pem", format!("{ca}{garbage_body}").as_bytes()), "certificate 2 in the file"),
        ];
        for (path, expected) in cases {
            let e = read_ca_certs(&path).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--ca-cert {}: ", path.display())), "{e}");
            assert!(e.contains(expected), "{}: expected {expected:?} in {e}", path.display());
        }
    }
}
