//! Real servers for the object-storage tests, started on loopback ports and stopped when
//! dropped: moto's S3 server, nginx (HTTP with Range support), and a small proxy that
//! answers every Nth request with a 503 (what no real server does on demand).
//!
//! A missing server is a test failure, never a skip: `.ci/run` installs both.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{what} exited ({st}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on port {port} within 60 s");
}

/// A moto S3 server (`VMDK_TEST_MOTO`, else `moto_server` on PATH).
pub struct Moto {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Moto {
    /// Start one; `env` is passed to it (for example `INITIAL_NO_AUTH_ACTION_COUNT=0`, which
    /// makes it check every request's credentials).
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let program = std::env::var("VMDK_TEST_MOTO").unwrap_or_else(|_| "moto_server".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("moto.log");
        let port = free_port();
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("moto.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the S3 test server '{program}' ({e}): install it with \
                     `pip install 'moto[server]'` or point VMDK_TEST_MOTO at moto_server \
                     (.ci/run does this)"
                )
            });
        wait_for_port(
            port,
            &mut child,
            "moto_server",
            &dir.path().join("moto.err"),
        );
        Moto { child, port, dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests moto has logged so far.
    pub fn logged_requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("moto.err"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") || l.contains("\"PUT ") || l.contains("\"HEAD "))
            .count()
    }

    /// Stop the server now (as if it died).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn create_bucket(&self, bucket: &str) {
        let (st, body) = http(self.port, "PUT", &format!("/{bucket}"), b"");
        assert_eq!(
            st,
            200,
            "creating bucket {bucket}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let (st, body) = http(self.port, "PUT", &format!("/{bucket}/{key}"), data);
        assert_eq!(
            st,
            200,
            "uploading {key}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (st, body) = http(self.port, "GET", &format!("/{bucket}/{key}"), b"");
        assert_eq!(
            st,
            200,
            "downloading {key}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    pub fn exists(&self, bucket: &str, key: &str) -> bool {
        http(self.port, "HEAD", &format!("/{bucket}/{key}"), b"").0 == 200
    }

    /// Multipart uploads begun in `bucket` and neither completed nor aborted.
    pub fn open_uploads(&self, bucket: &str) -> usize {
        let (st, body) = http(self.port, "GET", &format!("/{bucket}?uploads"), b"");
        assert_eq!(
            st,
            200,
            "listing uploads: {}",
            String::from_utf8_lossy(&body)
        );
        String::from_utf8_lossy(&body).matches("<Upload>").count()
    }

    /// The environment a client of this server runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        env_for(&self.endpoint())
    }
}

/// Client environment for an S3 endpoint (test credentials, which moto accepts).
pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request without authentication (moto accepts those unless told to check),
/// the whole answer read.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r).expect("reading the answer");
    let mut out = Vec::new();
    if method != "HEAD" {
        match content_length(&headers) {
            Some(n) => {
                out.resize(n, 0);
                r.read_exact(&mut out).unwrap();
            }
            None => {
                r.read_to_end(&mut out).unwrap();
            }
        }
    }
    (status, out)
}

/// A request or response head: the status (0 for a request) and the header lines, the
/// first line included.
fn read_head(r: &mut impl BufRead) -> Option<(u16, Vec<String>)> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        lines.push(l);
    }
    let status = lines
        .first()?
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some((status, lines))
}

fn content_length(headers: &[String]) -> Option<usize> {
    headers.iter().skip(1).find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// A proxy in front of a server that answers every `every`th request with
/// `503 Slow Down` and forwards the rest.
pub struct FaultProxy {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    pub faults: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(target: u16, every: usize) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (rq, fl, st) = (requests.clone(), faults.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (rq, fl) = (rq.clone(), fl.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(conn, target, every, &rq, &fl);
                });
            }
        });
        FaultProxy {
            port,
            requests,
            faults,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request on `conn` (answered with `Connection: close`, so the client reconnects).
fn serve_one(
    conn: TcpStream,
    target: u16,
    every: usize,
    requests: &AtomicUsize,
    faults: &AtomicUsize,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let Some((_, head)) = read_head(&mut r) else {
        return Ok(());
    };
    let mut body = vec![0; content_length(&head).unwrap_or(0)];
    r.read_exact(&mut body)?;
    let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
    let mut conn = conn;
    if n.is_multiple_of(every) {
        faults.fetch_add(1, Ordering::Relaxed);
        let msg = b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code>\
                    <Message>Please reduce your request rate.</Message></Error>";
        write!(
            conn,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            msg.len()
        )?;
        conn.write_all(msg)?;
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", target))?;
    let mut out = String::new();
    out.push_str(&head[0]);
    out.push_str("\r\n");
    for h in &head[1..] {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    conn.write_all(&answer)?;
    Ok(())
}

/// nginx serving `root` on a loopback port, with its own configuration and temp files.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(root: &Path) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let program = std::env::var("VMDK_TEST_NGINX").unwrap_or_else(|_| nginx_program());
        let mut child = Command::new(&program)
            .args(["-e", &format!("{d}/error.log"), "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the HTTP test server '{program}' ({e}): install Debian's \
                     nginx (.ci/run does this) or point VMDK_TEST_NGINX at it"
                )
            });
        wait_for_port(port, &mut child, "nginx", &dir.path().join("stderr"));
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }

    /// Stop the server now (as if it died).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

fn nginx_program() -> String {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    "nginx".to_string()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every file under `dir`, as (name relative to `dir`, path).
pub fn files_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.push((p.file_name().unwrap().to_str().unwrap().to_string(), p));
        }
    }
    out.sort();
    out
}
