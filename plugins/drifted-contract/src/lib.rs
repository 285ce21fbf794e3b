//! `drifted-contract`: a step plugin built, as a plugin author might, against a stale copy of
//! the contract (`wit/plugin.wit` here: `call-context` has no `deadline-ms`). The runtime must
//! refuse it at upload with an error that says which export does not match and why.

wit_bindgen::generate!({ path: "wit", world: "step-plugin" });

use exports::wasmtx::plugin::step::Guest;
use wasmtx::plugin::types::{CallContext, Outcome};

struct Drifted;

impl Guest for Drifted {
    fn execute(ctx: CallContext) -> Outcome {
        Outcome::Success(ctx.input)
    }

    fn compensate(ctx: CallContext) -> Outcome {
        Outcome::Success(ctx.input)
    }
}

export!(Drifted);
