//! A small HTTP server that answers every request with one status and records what it got:
//! the other end of health-check pings.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A recording HTTP server on a loopback port, for the life of the test process.
#[derive(Debug, Clone)]
pub struct Recorder {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    /// Starts a server that answers `status` to everything.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    #[must_use]
    pub fn start(status: u16) -> Recorder {
        let server = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!(
            "http://{}/ping/check-uuid",
            server.local_addr().expect("a bound address")
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in server.incoming().flatten() {
                if let Some(request) = read_request(&stream) {
                    seen.lock().expect("the requests").push(request);
                }
                let _ = write!(
                    &stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Recorder { url, requests }
    }

    /// Its URL: `http://127.0.0.1:PORT/ping/check-uuid`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request so far, as `METHOD /path body`.
    ///
    /// # Panics
    ///
    /// If the server thread panicked while recording.
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("the requests").clone()
    }
}

/// `METHOD /path body` of one request (its body as long as `Content-Length` says).
fn read_request(stream: &std::net::TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next()?, words.next()?);
    Some(format!(
        "{method} {path} {}",
        String::from_utf8_lossy(&body)
    ))
}
