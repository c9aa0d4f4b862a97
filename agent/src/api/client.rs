//! A client of the local API, for the `skiff-agent` subcommands.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ErrorBody;

/// Why a call failed, in one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {socket}: {source} (is `skiff-agent serve` running?)")]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status (404 for an unknown image or container).
        status: u16,
        message: String,
    },
    #[error("talking to the agent: {0}")]
    Protocol(String),
}

fn protocol(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Talks to one agent's socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A response whose body is read line by line.
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lines")
    }
}

impl Lines {
    /// The next line, or None at the end.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line).map(Some).map_err(protocol);
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame.map_err(protocol)?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => return Ok(None),
            }
        }
    }
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.display().to_string(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(protocol)?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "skiff-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(protocol)?;
        let resp = sender.send_request(req).await.map_err(protocol)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(protocol)?
            .to_bytes();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    /// A call with a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(serde_json::to_vec).transpose().map_err(protocol)?;
        let resp = self.send(method, path, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(protocol)?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(protocol)
    }

    /// A call with no answer body.
    pub async fn call_empty(&self, method: Method, path: &str) -> Result<(), ClientError> {
        let resp = self.send(method, path, None).await?;
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    /// A GET whose answer streams JSON lines.
    pub async fn get_stream(&self, path: &str) -> Result<Lines, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// A call whose answer streams JSON lines.
    pub async fn stream(&self, path: &str, body: &impl Serialize) -> Result<Lines, ClientError> {
        let body = serde_json::to_vec(body).map_err(protocol)?;
        let resp = self.send(Method::POST, path, Some(body)).await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Protocol(format!("status {}", resp.status())));
        }
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

/// Percent-encodes a query value.
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
