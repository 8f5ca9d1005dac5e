//! CUDA graphs of decode steps (`Backend::graph_step`): a step key runs eagerly on its first use,
//! is captured on its second and replayed from then on; once a capture fails, every step runs
//! eagerly. Keys name their buffers' owner, so graphs live across blocks and batches of one
//! decode session; at most [`MAX_GRAPHS`] are kept (then all are dropped and recaptured as
//! needed), which bounds their device memory under a server's changing batch shapes.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

use super::device::drv;
use crate::backend::{GraphKey, GraphUse};
use crate::error::Result;

/// Most graphs kept: a server's session sees a few step shapes per block and batch size.
pub(super) const MAX_GRAPHS: usize = 256;

/// The captured graphs by step key, and the state of the capture-on-second-use rule.
pub(super) struct GraphCache {
    graphs: RefCell<HashMap<GraphKey, CudaGraph>>,
    /// Step keys run once eagerly: a key is captured on its second use, so that one-time work
    /// (GEMM tuning) happens outside any capture.
    seen: RefCell<HashSet<GraphKey>>,
    /// A capture is in progress (GEMM tuning must wait for an eager call).
    capturing: Cell<bool>,
    /// Off once a capture failed (then every step runs eagerly).
    on: Cell<bool>,
    captures: Cell<u64>,
    replays: Cell<u64>,
}

impl GraphCache {
    pub fn new() -> Self {
        GraphCache {
            graphs: RefCell::new(HashMap::new()),
            seen: RefCell::new(HashSet::new()),
            capturing: Cell::new(false),
            on: Cell::new(true),
            captures: Cell::new(0),
            replays: Cell::new(0),
        }
    }

    /// A capture is in progress: nothing queued now runs until the graph is launched.
    pub fn capturing(&self) -> bool {
        self.capturing.get()
    }

    /// (graphs captured, graph replays) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.captures.get(), self.replays.get())
    }

    /// Forget every graph and every key seen (their buffers are about to be freed).
    pub fn clear(&self) {
        self.graphs.borrow_mut().clear();
        self.seen.borrow_mut().clear();
    }

    /// Run `step` of key `key` on `stream`: replayed if captured, eagerly on the key's first use,
    /// captured (then launched) on its second.
    pub fn run(
        &self,
        stream: &Arc<CudaStream>,
        key: GraphKey,
        step: &mut dyn FnMut() -> Result<()>,
    ) -> Result<GraphUse> {
        if !self.on.get() {
            step()?;
            return Ok(GraphUse::Eager);
        }
        if let Some(g) = self.graphs.borrow().get(&key) {
            g.launch().map_err(drv("graph launch"))?;
            self.replays.set(self.replays.get() + 1);
            return Ok(GraphUse::Replayed);
        }
        if self.seen.borrow().len() >= 4 * MAX_GRAPHS {
            self.seen.borrow_mut().clear();
        }
        if self.seen.borrow_mut().insert(key) {
            // first use: eagerly, so that one-time set-up (GEMM tuning) stays out of the graph
            step()?;
            return Ok(GraphUse::Eager);
        }
        self.capture(stream, key, step)
    }

    /// Capture `step` (nothing runs while capturing), then launch the graph to run this step. If
    /// the work cannot be captured, run it eagerly, and every later step too.
    fn capture(
        &self,
        stream: &Arc<CudaStream>,
        key: GraphKey,
        step: &mut dyn FnMut() -> Result<()>,
    ) -> Result<GraphUse> {
        if self.graphs.borrow().len() >= MAX_GRAPHS {
            self.graphs.borrow_mut().clear();
        }
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv("begin capture"))?;
        self.capturing.set(true);
        let queued = step();
        self.capturing.set(false);
        match (queued, stream.end_capture(CUgraphInstantiate_flags(0))) {
            (Ok(()), Ok(Some(g))) => {
                g.upload().map_err(drv("graph upload"))?;
                g.launch().map_err(drv("graph launch"))?;
                self.graphs.borrow_mut().insert(key, g);
                self.captures.set(self.captures.get() + 1);
                Ok(GraphUse::Captured)
            }
            // The capture itself was fine: the step's own error (a shape check, say) is the error.
            (Err(e), Ok(Some(_))) => Err(e),
            (queued, captured) => {
                let why = match (&queued, &captured) {
                    (_, Err(e)) => format!("{:?}", e.0),
                    (Err(e), _) => e.to_string(),
                    _ => "empty graph".to_string(),
                };
                eprintln!("warning: CUDA graph capture failed ({why}); running steps without graphs");
                self.on.set(false);
                self.graphs.borrow_mut().clear();
                step()?;
                Ok(GraphUse::Eager)
            }
        }
    }
}
