//! A small check-in client: builds signed `vmledger-checkin-request/v1` requests from an
//! instance's real state (its key and ledger) and POSTs them over HTTP/1.1 (plain, or TLS
//! with rustls). Used by the service's tests, the load generator, and available to the
//! appliance side. It does not decide what to re-send or record receipts: that is the
//! agent's job (`checkin`); it only speaks the protocol.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

use crate::identity::Instance;
use crate::keys::{self, SigningKey};
use crate::ledger::Entry;
use crate::protocol::{CHECKIN_FORMAT, CheckinBody, CheckinRequest, Receipt, ServiceError};
use crate::time::{self, Clock};

/// Client-side failures (network, TLS, unexpected answers).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad service URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{addr}: {message}")]
    Http { addr: String, message: String },
    #[error("{addr}: no answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("{addr}: HTTP {status} with a body that is not a {expected}: {message}")]
    Unexpected {
        addr: String,
        status: u16,
        expected: &'static str,
        message: String,
    },
    #[error("cannot build the request: {0}")]
    Build(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A fresh random nonce (32 lowercase hex digits).
pub fn new_nonce() -> Result<String, ClientError> {
    keys::random_bytes::<16>()
        .map(hex::encode)
        .map_err(|e| ClientError::Build(e.to_string()))
}

/// Sign a request carrying `entries` (every entry after the last acknowledged one).
pub fn build_request(
    serial: &str,
    instance: &str,
    key: &SigningKey,
    entries: Vec<Entry>,
    activation_code: Option<&str>,
    sent_at: &str,
) -> Result<CheckinRequest, ClientError> {
    let body = CheckinBody {
        serial: serial.to_string(),
        instance: instance.to_string(),
        public_key: key.public_key_b64(),
        nonce: new_nonce()?,
        sent_at: sent_at.to_string(),
        activation_code: activation_code.map(str::to_string),
        entries,
        hardware: None,
    };
    let req = CheckinRequest::sign(body, key).map_err(|e| ClientError::Build(e.to_string()))?;
    debug_assert_eq!(req.format, CHECKIN_FORMAT);
    Ok(req)
}

/// A request from a real state dir: every ledger entry with seq >= `from_seq`.
pub fn request_from_state(
    inst: &Instance,
    from_seq: u64,
    activation_code: Option<&str>,
    clock: &dyn Clock,
) -> Result<CheckinRequest, ClientError> {
    let ledger = inst
        .ledger()
        .map_err(|e| ClientError::Build(e.to_string()))?;
    let entries = ledger
        .entries_from(from_seq)
        .map_err(|e| ClientError::Build(e.to_string()))?;
    let serial = inst
        .settings
        .serial
        .clone()
        .ok_or_else(|| ClientError::Build("the instance has no serial".into()))?;
    build_request(
        &serial,
        &inst.settings.instance,
        &inst.key,
        entries,
        activation_code,
        &time::format_at(clock.now()),
    )
}

/// What the service answered (one value per request: the size difference between the
/// variants does not matter).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// 200 with a receipt (signature not yet checked: see [`Receipt::verify`]).
    Receipt(Receipt),
    /// A 4xx/5xx with its error body.
    Refused { status: u16, error: ServiceError },
}

/// Where the service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` for the root).
    pub prefix: String,
}

impl Endpoint {
    /// Parse `http://HOST[:PORT][/PREFIX]` or `https://...`.
    pub fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = |m: &str| ClientError::Url {
            url: url.to_string(),
            message: m.to_string(),
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Endpoint {
            https,
            host,
            port,
            prefix,
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// TLS settings for https endpoints: trust the given CA certificates (PEM) in addition to
/// none else (tests, private deployments) or the caller's own config.
pub fn tls_config_with_ca(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem)
        .map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?
    {
        let c = c.map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?;
        roots
            .add(c)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One keep-alive HTTP/1.1 connection to the service.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    endpoint: Endpoint,
    timeout: Duration,
}

impl Connection {
    /// Connect (and, for https, handshake with `tls`).
    pub async fn open(
        endpoint: &Endpoint,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let addr = endpoint.addr();
        let cerr = |m: String| ClientError::Connect {
            addr: addr.clone(),
            message: m,
        };
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.clone(),
                secs: timeout.as_secs(),
            })?
            .map_err(|e| cerr(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let sender = if endpoint.https {
            let cfg = tls.ok_or_else(|| cerr("https needs a TLS configuration".into()))?;
            let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| cerr(e.to_string()))?;
            let tls = tokio::time::timeout(
                timeout,
                tokio_rustls::TlsConnector::from(cfg).connect(name, stream),
            )
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.clone(),
                secs: timeout.as_secs(),
            })?
            .map_err(|e| ClientError::Tls(e.to_string()))?;
            handshake(TokioIo::new(tls), &addr).await?
        } else {
            handshake(TokioIo::new(stream), &addr).await?
        };
        Ok(Connection {
            sender,
            endpoint: endpoint.clone(),
            timeout,
        })
    }

    /// Send one request; returns the status and the body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let addr = self.endpoint.addr();
        let herr = |m: String| ClientError::Http {
            addr: addr.clone(),
            message: m,
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.endpoint.prefix, path))
            .header("host", addr.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| herr(e.to_string()))?;
        let fut = async {
            self.sender.ready().await.map_err(|e| herr(e.to_string()))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| herr(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| herr(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes.to_vec()))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.clone(),
                secs: self.timeout.as_secs(),
            })?
    }

    /// POST a check-in request.
    pub async fn checkin(&mut self, req: &CheckinRequest) -> Result<Reply, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Build(e.to_string()))?;
        let (status, bytes) = self.send("POST", "/v1/checkin", body).await?;
        decode_reply(&self.endpoint.addr(), status, &bytes)
    }
}

async fn handshake<I>(io: I, addr: &str) -> Result<SendRequest<Full<Bytes>>, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ClientError::Connect {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Decode a check-in answer.
pub fn decode_reply(addr: &str, status: u16, bytes: &[u8]) -> Result<Reply, ClientError> {
    if status == 200 {
        serde_json::from_slice::<Receipt>(bytes)
            .map(Reply::Receipt)
            .map_err(|e| ClientError::Unexpected {
                addr: addr.to_string(),
                status,
                expected: "vmledger-receipt/v1",
                message: e.to_string(),
            })
    } else {
        serde_json::from_slice::<ServiceError>(bytes)
            .map(|error| Reply::Refused { status, error })
            .map_err(|e| ClientError::Unexpected {
                addr: addr.to_string(),
                status,
                expected: "vmledger-service-error/v1",
                message: format!("{e}: {}", String::from_utf8_lossy(bytes)),
            })
    }
}

/// One check-in from synchronous code (its own small runtime, one connection).
pub fn checkin_blocking(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    req: &CheckinRequest,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let ep = Endpoint::parse(url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))?;
    rt.block_on(async {
        let mut c = Connection::open(&ep, tls, timeout).await?;
        c.checkin(req).await
    })
}

/// Send any request from synchronous code (tests of bad input use it).
pub fn send_blocking(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let ep = Endpoint::parse(url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))?;
    rt.block_on(async {
        let mut c = Connection::open(&ep, tls, timeout).await?;
        c.send(method, path, body).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:8440").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.prefix.as_str()),
            (false, "127.0.0.1", 8440, "")
        );
        let e = Endpoint::parse("https://license.example.com/api/").unwrap();
        assert_eq!((e.https, e.port, e.prefix.as_str()), (true, 443, "/api"));
        let e = Endpoint::parse("http://[::1]:9/").unwrap();
        assert_eq!(e.addr(), "[::1]:9");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
