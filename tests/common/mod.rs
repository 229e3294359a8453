//! Shared by the integration tests that need a GPU server: `realfill serve --backend cpu` on
//! a free loopback port.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realfill"))
}

/// A running `realfill serve --backend cpu` on a free loopback port; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    /// What the server printed on stdout before it started serving.
    pub banner: String,
}

impl Server {
    pub fn start(token_file: &Path) -> Server {
        let mut child = bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--backend", "cpu", "--token-file"])
            .arg(token_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        let mut url = None;
        // The banner ends with the line for clients.
        while !banner.lines().last().is_some_and(|l| l.starts_with("clients:")) {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "server ended before listening: {banner}");
            banner.push_str(&line);
            if let Some(u) = line.trim().strip_prefix("listening on ") {
                url = Some(u.to_string());
            }
        }
        let url = url.expect("the banner names the address");
        Server { child, url, banner }
    }

    /// Stop it and return what it logged on stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut log);
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
