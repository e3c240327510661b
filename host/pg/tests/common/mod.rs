//! A throwaway PostgreSQL cluster per test: `initdb` into a temp dir, `pg_ctl start` on a free
//! port of 127.0.0.1 (socket in the same dir), stopped and removed on drop. PostgreSQL refuses
//! to run as root, so as root the cluster belongs to the `postgres` user (what the Debian
//! `postgresql` package creates) and its tools run through `runuser`.
//!
//! `initdb` and `pg_ctl` are looked up on PATH, then in /usr/lib/postgresql/<version>/bin
//! (where Debian puts them). A missing PostgreSQL fails the test: CI installs it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The directory holding initdb and pg_ctl.
fn pg_bin() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !found.is_empty() {
            // Debian's /usr/bin wrappers need a cluster config; the real binaries are beside
            // pg_ctl in the versioned directory, which a symlink on PATH points into.
            let real = std::fs::canonicalize(&found).unwrap_or_else(|_| PathBuf::from(&found));
            return real.parent().unwrap().to_path_buf();
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql)",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestCluster {
    pub fn start() -> TestCluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("pg")
            .tempdir_in("/tmp")
            .unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown of the cluster dir to postgres failed (is there a postgres user?)"
            );
        }
        let data = dir.path().join("data");
        let cluster = TestCluster {
            dir,
            bin,
            as_postgres,
            port: 0,
        };
        let out = cluster
            .run("initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "swapbot",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A port taken between here and the start is retried.
        let mut cluster = cluster;
        for _ in 0..5 {
            let port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB -c max_connections=60",
                cluster.dir.path().display()
            );
            let log = cluster.dir.path().join("log");
            let out = cluster
                .run("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .output()
                .unwrap();
            if out.status.success() {
                cluster.port = port;
                return cluster;
            }
            eprintln!(
                "pg_ctl start on {port} failed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("could not start PostgreSQL");
    }

    fn run(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL of the cluster's `postgres` database (password-less: trust auth).
    pub fn url(&self) -> String {
        format!("postgres://swapbot@127.0.0.1:{}/postgres", self.port)
    }

    /// A fresh database of the cluster (tests that need two schemas side by side).
    pub async fn create_database(&self, name: &str) -> String {
        let admin = self.admin().await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        format!("postgres://swapbot@127.0.0.1:{}/{name}", self.port)
    }

    /// A plain connection for checks behind the store's back.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self
            .run("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        // TempDir removes the directory (root may remove postgres's files; a non-root run owns
        // them).
    }
}
