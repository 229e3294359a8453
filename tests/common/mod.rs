//! Shared by the integration tests: a fresh folder, the small generated scene and commands on
//! it, and a GPU server (`realfill serve --backend cpu` on a free loopback port).

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realfill"))
}

/// An empty folder realfill-`prefix`-`name`-PID in the temporary folder.
pub fn tmp(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("realfill-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The scene's checker-and-ramp texture, shifted by `dx` (the reference's view).
pub fn pattern(x: u32, y: u32, dx: u32) -> image::Rgb<u8> {
    let u = x + dx;
    let c = ((u / 6 + y / 6) % 2) as u8;
    image::Rgb([40 + 150 * c, (u * 3 % 200) as u8 + 30, (y * 4 % 200) as u8 + 20])
}

/// target 80×56 with a 24×16 hole, one reference shifted by 5 px; returns their paths.
pub fn scene(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let t = image::RgbImage::from_fn(80, 56, |x, y| pattern(x, y, 0));
    let r = image::RgbImage::from_fn(80, 56, |x, y| pattern(x, y, 5));
    let m = image::GrayImage::from_fn(80, 56, |x, y| {
        image::Luma([if (28..52).contains(&x) && (20..36).contains(&y) { 255 } else { 0 }])
    });
    let (tp, mp, rp) = (dir.join("target.png"), dir.join("mask.png"), dir.join("ref.png"));
    t.save(&tp).unwrap();
    m.save(&mp).unwrap();
    r.save(&rp).unwrap();
    (tp, mp, rp)
}

/// `realfill SUB --target … --mask … --ref …` on the scene in `dir`, with its own cache.
pub fn scene_cmd(dir: &Path, sub: &str) -> Command {
    let mut c = bin();
    c.env("REALFILL_CACHE", dir.join("cache"))
        .args([sub, "--target"])
        .arg(dir.join("target.png"))
        .arg("--mask")
        .arg(dir.join("mask.png"))
        .arg("--ref")
        .arg(dir.join("ref.png"));
    c
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
