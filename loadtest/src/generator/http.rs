//! A lean HTTP/1.1 client for load generation: a fixed number of keep-alive connections
//! (like wrk's `-c`), each a bare hyper connection. A request waits for a free connection,
//! and that wait counts in its latency (the open model measures from the intended start).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Semaphore};

use crate::generator::stats::Outcome;

/// A loopback base URL, e.g. `http://127.0.0.1:8080`. Anything else is refused: the load
/// generator only ever targets this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("{url:?}: only http:// URLs are supported"))?;
        let hostport = rest.split('/').next().unwrap_or_default();
        let addr: SocketAddr = hostport
            .parse()
            .or_else(|_| {
                let (h, p) = hostport.rsplit_once(':').unwrap_or((hostport, "80"));
                let ip: IpAddr = if h == "localhost" {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    h.parse()?
                };
                Ok::<_, anyhow::Error>(SocketAddr::new(ip, p.parse()?))
            })
            .map_err(|e| anyhow::anyhow!("{url:?}: expected http://127.0.0.1:PORT ({e})"))?;
        if !addr.ip().is_loopback() {
            anyhow::bail!("{url:?}: the load generator only targets loopback addresses");
        }
        Ok(Self { addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Pool of at most `size` HTTP/1.1 connections to one target.
pub struct HttpPool {
    target: Target,
    host: HeaderValue,
    slots: Semaphore,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// A finished exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    /// The `Server-Timing` header, when the target sent one.
    pub server_timing: Option<String>,
}

impl Reply {
    pub fn outcome(&self) -> Outcome {
        if self.status.is_success() {
            Outcome::Ok
        } else {
            Outcome::error(format!("http_{}", self.status.as_u16()))
        }
    }
}

impl HttpPool {
    pub fn new(target: Target, size: usize) -> Self {
        let host = HeaderValue::from_str(&target.addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1"));
        Self {
            target,
            host,
            slots: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, c: SendRequest<Full<Bytes>>) {
        if !c.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Outcome> {
        let tcp = TcpStream::connect(self.target.addr)
            .await
            .map_err(|_| Outcome::error("connect"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| Outcome::error("connect"))?;
        tokio::spawn(async move {
            // Ends when the server closes or the sender is dropped.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request (`path` includes the query) and reads the whole body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Option<Bytes>,
    ) -> Result<Reply, Outcome> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Outcome::error("closed"))?;
        let build = || -> Result<Request<Full<Bytes>>, Outcome> {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, self.host.clone());
            for (k, v) in headers {
                b = b.header(*k, v.as_str());
            }
            if body.is_some() {
                b = b.header(header::CONTENT_TYPE, "application/json");
            }
            b.body(Full::new(body.clone().unwrap_or_default()))
                .map_err(|_| Outcome::error("bad_request"))
        };
        // A pooled connection the server closed meanwhile fails before anything is sent:
        // try once more on a fresh one.
        let mut fresh = false;
        loop {
            let mut conn = match self.take_idle() {
                Some(c) if !fresh => c,
                _ => {
                    fresh = true;
                    self.connect().await?
                }
            };
            if conn.ready().await.is_err() {
                if fresh {
                    return Err(Outcome::error("io"));
                }
                fresh = true;
                continue;
            }
            let resp = match conn.send_request(build()?).await {
                Ok(r) => r,
                Err(e) if !fresh && e.is_canceled() => {
                    fresh = true;
                    continue;
                }
                Err(_) => return Err(Outcome::error("io")),
            };
            let status = resp.status();
            let server_timing = resp
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Outcome::error("io"))?
                .to_bytes();
            self.put_idle(conn);
            return Ok(Reply {
                status,
                body,
                server_timing,
            });
        }
    }

    pub async fn get(
        &self,
        path: &str,
        headers: &[(&'static str, String)],
    ) -> Result<Reply, Outcome> {
        self.send(Method::GET, path, headers, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080")
                .expect("ok")
                .addr
                .port(),
            8080
        );
        assert!(Target::parse("http://localhost:81/x").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("https://127.0.0.1:8080").is_err());
    }
}
