//! The one HTTP client of script-runner (blocking, on ureq): [`Server`] for the API and
//! [`Workflow`], the step client a workflow process uses for durable steps. The CLI's client
//! commands (`script-runner step`, `flow run`), the OOMOL blocks and the benches all call the
//! service through it; it speaks the types of `script-runner-wire` and compiles neither
//! actix-web nor diesel.

pub mod http;
pub mod workflow;

pub use http::{query, segment, HttpError, Server, CONNECT_TIMEOUT, DEFAULT_URL};
pub use script_runner_wire as wire;
pub use workflow::{
    show_duration, Approval, ClientError, CommandResult, ScriptResult, StepOptions, Workflow, KILL_GRACE,
    MAX_CAPTURE_BYTES, TIMED_OUT_EXIT_CODE,
};
