//! A throwaway nginx in front of local upstreams: a config written into a temp dir (pid, logs and
//! temp paths inside it), `nginx -g "daemon off;"` as a child, a fast stop on drop. Shared by
//! `host/tests/replicas.rs`-style tests and the bench's `replicas` group (`#[path]` include, std only).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Nginx {
    pub child: Child,
    dir: PathBuf,
}

/// Whether an `nginx` binary is on PATH (Debian's package puts it in /usr/sbin).
pub fn installed() -> bool {
    Command::new("nginx").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

impl Nginx {
    /// Listens on 127.0.0.1:`port` and proxies `location` to `upstreams` (ports on 127.0.0.1),
    /// round robin, passing a POST whose upstream failed to the next one, as the README's sample does.
    pub fn start(dir: &Path, port: u16, location: &str, upstreams: &[u16]) -> std::io::Result<Nginx> {
        let servers: String = upstreams.iter().map(|p| format!("        server 127.0.0.1:{p};\n")).collect();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
                 access_log off;\n\
                 client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 upstream replicas {{\n{servers}        keepalive 32;\n    }}\n\
                 server {{\n\
                     listen 127.0.0.1:{port};\n\
                     location {location} {{\n\
                         proxy_pass http://replicas;\n\
                         proxy_http_version 1.1;\n\
                         proxy_set_header Connection \"\";\n\
                         proxy_next_upstream error timeout http_502 non_idempotent;\n\
                         proxy_connect_timeout 1s;\n\
                         proxy_read_timeout 30s;\n\
                     }}\n\
                 }}\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Nginx { child, dir: dir.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL would leave the worker serving the port: TERM is nginx's fast stop.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("nginx.pid"));
    }
}
