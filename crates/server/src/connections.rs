//! A bound on open connections. Every connection costs the server buffers and a task whether
//! or not it carries a request, so under a flood of clients (an open-loop load generator, a
//! retry storm) their number, not the requests in flight, is what grows memory. The listener
//! holds one permit per open connection; a connection beyond the bound is answered at once
//! with a 503 in OpenAI's error shape (the gateway is the API that takes floods) and
//! `Retry-After`, then closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The answer to a connection beyond the bound.
const REFUSAL: &str = concat!(
    "HTTP/1.1 503 Service Unavailable\r\n",
    "content-type: application/json\r\n",
    "retry-after: 1\r\n",
    "connection: close\r\n",
    "content-length: 184\r\n",
    "\r\n",
    r#"{"error":{"message":"the server is at its limit of open connections (max_connections); nothing was done, retry after a second","type":"server_error","param":null,"code":"overloaded"}}"#,
    "\n"
);

/// Listens on a TCP socket with at most `max_connections` connections open at once.
pub(crate) struct LimitedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    pub(crate) fn new(listener: TcpListener, max_connections: usize) -> LimitedListener {
        LimitedListener {
            listener,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        loop {
            let (stream, address) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let connection = Connection {
                        stream,
                        _permit: permit,
                    };
                    return (connection, address);
                }
                Err(_) => refuse(&stream),
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Answers a connection beyond the bound without waiting for it: whatever request bytes have
/// arrived are read and dropped (closing over unread bytes would reset the connection before
/// the client reads the answer), then the refusal is written if the socket takes it.
fn refuse(stream: &TcpStream) {
    let mut discard = [0u8; 4096];
    let _ = stream.try_read(&mut discard);
    let _ = stream.try_write(REFUSAL.as_bytes());
}

/// An accepted connection; its permit is given back when it closes.
pub(crate) struct Connection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test code: a panic is a failure report.
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response_in_openai_shape() {
        let (head, body) = REFUSAL.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
        assert_eq!(body["error"]["type"], "server_error");
        assert!(head.contains("retry-after: 1"));
    }

    /// With the bound reached, the next connection gets the 503 and the open ones keep working.
    #[tokio::test]
    async fn a_connection_beyond_the_bound_is_refused_with_503() {
        use axum::serve::Listener;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut limited = LimitedListener::new(listener, 1);
        let _first_client = TcpStream::connect(address).await.unwrap();
        let (first, _) = limited.accept().await;
        let mut second = TcpStream::connect(address).await.unwrap();
        second
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        // The refused connection is never handed out; accept waits for a third one.
        let third = tokio::spawn(async move { limited.accept().await });
        let mut answer = String::new();
        second.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"code\":\"overloaded\""), "{answer}");
        drop(first);
        third.abort();
    }
}
