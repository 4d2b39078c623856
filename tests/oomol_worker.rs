//! The blocks as OOMOL's engine runs them: `script-runner block <name> --address ...` against a
//! real mosquitto broker and a real server, with a test engine playing the engine's side.
