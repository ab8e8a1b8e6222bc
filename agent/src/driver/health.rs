//! Health probes against a model server on the node's loopback: an HTTP GET or a bare TCP
//! connect.
//!
//! The HTTP probe is a hand-written HTTP/1.0 request (one line out, one status line back) so the
//! agent needs no HTTP client stack for it; every probe is bounded by its timeout and reads at
//! most `RESPONSE_BYTES_MAX` bytes, so a hung or chatty server cannot stall the supervisor.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HealthProbe;

/// Enough for any sane status line; a server that sends more before a line break is unhealthy.
const RESPONSE_BYTES_MAX: usize = 1024;

/// Probes once; `Err` carries a reason fit for an operator (it ends up in a StatusChange).
pub(crate) async fn probe(probe: &HealthProbe, port: u16, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match probe {
            HealthProbe::Off => Ok(()),
            HealthProbe::Tcp => connect(port).await.map(drop),
            HealthProbe::Http(path) => http_get(port, path).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer on 127.0.0.1:{port} within {} ms",
            timeout.as_millis()
        )),
    }
}

async fn connect(port: u16) -> Result<TcpStream, String> {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))
}

async fn http_get(port: u16, path: &str) -> Result<(), String> {
    let mut stream = connect(port).await?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {path} on port {port}: cannot send request: {e}"))?;
    let mut response = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !response.contains(&b'\n') && response.len() < RESPONSE_BYTES_MAX {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("GET {path} on port {port}: cannot read response: {e}"))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    match parse_status(&response) {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET {path} on port {port} returned HTTP {code}")),
        None => Err(format!(
            "GET {path} on port {port}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        )),
    }
}

/// The status code of an `HTTP/1.x NNN reason` line at the start of `response`.
fn parse_status(response: &[u8]) -> Option<u16> {
    let line_end = response.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK"),
            None,
            "no complete line yet"
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20000 OK\r\n"), None);
    }
}
