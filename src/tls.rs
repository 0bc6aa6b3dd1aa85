//! Server-side TLS: PEM loading, SNI certificate selection (exact, `*.wildcard`, default),
//! ALPN h2 + http/1.1, TLS 1.2/1.3 with rustls' strong default suites, session tickets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate to load: names it answers for, PEM paths.
#[derive(Debug, Clone, PartialEq)]
pub struct CertSpec {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub default: bool,
}

/// A PEM file that could not be used, or a TLS configuration that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("tls: {0}")]
    Config(String),
}

/// Which file of a [`CertSpec`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFile {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`), including a key that does not match its certificate.
    Key,
}

impl CertFile {
    /// The configuration key naming this file.
    pub fn field(self) -> &'static str {
        match self {
            CertFile::Cert => "cert",
            CertFile::Key => "key",
        }
    }
}

/// Why [`CertSet::load`] failed: which certificate (index into the specs) and which of its
/// files, so the caller can point at the exact setting.
#[derive(Debug, thiserror::Error)]
pub enum CertLoadError {
    /// `specs[index]`'s `file` could not be loaded.
    #[error("{source}")]
    Spec {
        /// Index into the specs passed to `load`.
        index: usize,
        /// The file that failed.
        file: CertFile,
        /// What was wrong with it (names the path).
        #[source]
        source: TlsError,
    },
    /// No specs were given.
    #[error("no certificates configured")]
    Empty,
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// All certificates in a PEM file, leaf first.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found in PEM file"));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// Certificates chosen by SNI. Index 0.. in configuration order.
#[derive(Debug)]
pub struct CertSet {
    keys: Vec<Arc<CertifiedKey>>,
    names: Vec<Vec<String>>,
    exact: HashMap<String, usize>,
    /// Keyed by the suffix after `*`, e.g. `.example.com`.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl CertSet {
    /// Load every certificate; an error names the spec and file that failed.
    pub fn load(specs: &[CertSpec]) -> Result<CertSet, CertLoadError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let mut set = CertSet {
            keys: Vec::new(),
            names: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: specs.iter().position(|s| s.default).unwrap_or(0),
        };
        for (i, spec) in specs.iter().enumerate() {
            let at = |file| {
                move |source| CertLoadError::Spec {
                    index: i,
                    file,
                    source,
                }
            };
            let chain = load_certs(&spec.cert).map_err(at(CertFile::Cert))?;
            let key = load_key(&spec.key).map_err(at(CertFile::Key))?;
            let signer = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| at(CertFile::Key)(file_err(&spec.key, e)))?;
            let ck = CertifiedKey::new(chain, signer);
            ck.keys_match().map_err(|e| {
                at(CertFile::Key)(file_err(
                    &spec.key,
                    format!("does not match {}: {e}", spec.cert.display()),
                ))
            })?;
            set.keys.push(Arc::new(ck));
            let mut names = Vec::new();
            for n in &spec.names {
                let n = n.to_ascii_lowercase();
                match n.strip_prefix('*') {
                    Some(suffix) => set.wildcard.entry(suffix.to_owned()).or_insert(i),
                    None => set.exact.entry(n.clone()).or_insert(i),
                };
                names.push(n);
            }
            set.names.push(names);
        }
        if set.keys.is_empty() {
            return Err(CertLoadError::Empty);
        }
        Ok(set)
    }

    /// The certificate index served for an SNI name (`None` → default).
    pub fn index_for(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else { return self.default };
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        if let Some(dot) = name.find('.') {
            if let Some(&i) = self.wildcard.get(&name[dot..]) {
                return i;
            }
        }
        self.default
    }

    /// Does certificate `idx` cover `host` (lowercase, no port)? Wildcards cover one label.
    /// A certificate configured without names covers everything.
    pub fn covers(&self, idx: usize, host: &str) -> bool {
        let Some(names) = self.names.get(idx) else {
            return false;
        };
        names.is_empty()
            || names.iter().any(|n| match n.strip_prefix('*') {
                Some(suffix) => host
                    .find('.')
                    .is_some_and(|dot| dot > 0 && &host[dot..] == suffix),
                None => n == host,
            })
    }
}

impl ResolvesServerCert for CertSet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let idx = self.index_for(hello.server_name());
        self.keys.get(idx).cloned()
    }
}

/// A server configuration for a certificate set: ALPN h2 + http/1.1, tickets and a cache.
pub(crate) fn server_config(certs: Arc<CertSet>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // TLS 1.3 resumes by ticket (stateless); this cache serves TLS 1.2 session IDs only, and
    // rustls allocates it up front (~100 B per slot).
    cfg.session_storage = ServerSessionMemoryCache::new(4_096);
    cfg.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}
