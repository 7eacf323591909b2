//! The load generator's HTTP side: keep-alive HTTP/1.1 connections (hyper, plain HTTP on
//! loopback) that carry many check-ins per connection, and the decoding of answers. It
//! never builds requests (that is [`crate::checkin::sign_request`], the one request
//! builder) and is not the agent's client (the agent posts with `ureq` in
//! [`crate::checkin::post`]): it exists because a benchmark needs thousands of check-ins
//! per second over a few connections, which a blocking client cannot offer.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Load-generator failures (network, unexpected answers, building requests).
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
    #[error("{addr}: {message}")]
    Unexpected { addr: String, message: String },
    #[error("cannot build the request: {0}")]
    Build(String),
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

    /// `host:port` (IPv6 hosts in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One keep-alive HTTP/1.1 connection to the service.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    endpoint: Endpoint,
    timeout: Duration,
}

impl Connection {
    /// Connect (plain HTTP: the load generator runs on loopback).
    pub async fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Connection, ClientError> {
        let addr = endpoint.addr();
        let cerr = |m: String| ClientError::Connect {
            addr: addr.clone(),
            message: m,
        };
        if endpoint.https {
            return Err(cerr(
                "the load generator speaks plain HTTP on loopback, not https".into(),
            ));
        }
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.clone(),
                secs: timeout.as_secs(),
            })?
            .map_err(|e| cerr(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let sender = handshake(TokioIo::new(stream), &addr).await?;
        Ok(Connection {
            sender,
            endpoint: endpoint.clone(),
            timeout,
        })
    }

    /// The `host:port` this connection talks to.
    pub fn addr(&self) -> String {
        self.endpoint.addr()
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
