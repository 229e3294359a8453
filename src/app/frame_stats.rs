//! How long frames take: the UI's own share (measured here) and the whole frame's CPU time as
//! eframe measures it (UI, tessellation, rendering), shown in the status bar and, with
//! REALFILL_FRAME_LOG=1, printed for every frame.

use std::time::Instant;

pub struct FrameStats {
    /// Time the UI spent building the last frames (ms, exponential average).
    ui_ms: f32,
    /// The previous frame's CPU time as eframe measures it.
    total_ms: f32,
    /// Print every frame's time to stderr (REALFILL_FRAME_LOG=1), for measuring.
    log: bool,
    /// Show times in the status bar: the frame's, and a fill's seconds (off for snapshots,
    /// which must not vary).
    pub(super) show: bool,
}

impl Default for FrameStats {
    fn default() -> Self {
        FrameStats { ui_ms: 0.0, total_ms: 0.0, log: crate::switches::get().frame_log, show: true }
    }
}

impl FrameStats {
    /// eframe's measure of the previous frame (`busy`: a job was running, for the log).
    pub fn measured(&mut self, cpu_s: Option<f32>, busy: bool) {
        if let Some(cpu) = cpu_s {
            self.total_ms = cpu * 1000.0;
            if self.log {
                eprintln!("frame {:.2} ms busy={busy}", self.total_ms);
            }
        }
    }

    /// The UI of this frame was built, starting at `t0`.
    pub fn ui_built(&mut self, t0: Instant) {
        let ms = t0.elapsed().as_secs_f32() * 1000.0;
        self.ui_ms = if self.ui_ms == 0.0 { ms } else { 0.9 * self.ui_ms + 0.1 * ms };
    }

    /// The status bar's figure, when times are shown.
    pub fn label(&self) -> Option<String> {
        self.show.then(|| format!("frame {:.1} ms (UI {:.1})", self.total_ms, self.ui_ms))
    }
}
